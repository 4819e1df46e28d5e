"""Checks a composed config against mnist_exp.schema before any work, and every job of a launch (check_launch)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import fields, is_dataclass

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)

SAY_CHECKING = 100  # jobs from which checking them takes long enough (~0.2 s and more) to say so


class ConfigError(ValueError):
    """A config value out of range; the message names the key and the allowed values."""


def out_of_range(key: str, value, allowed: str) -> str:
    if isinstance(value, str) and value.strip() != value or value == "":
        value = repr(value)  # blanks would not show
    return f"{key}={value} is out of range: must be {allowed}"


def validate(cfg, overrides: Sequence[str] = ()) -> None:
    """Every out-of-range value of cfg, in one ConfigError; `overrides` are the job's (Hydra's overrides.task)."""
    if missing := sorted(OmegaConf.missing_keys(cfg)):  # the checks below would stop at the first
        raise ConfigError(
            "; ".join(f"{key} has no value: give it in its conf/ file or as {key}=VALUE" for key in missing)
        )
    if problems := [*_node_problems(cfg, "", cfg), *_repeated_regularizers(overrides)]:
        raise ConfigError("; ".join(problems))


def _node_problems(node: DictConfig, path: str, cfg: DictConfig) -> Iterator[str]:
    """What the schema of `node` (its dataclass, which Hydra keeps as its type) and of every node below refuses."""
    schema = OmegaConf.get_type(node)
    if is_dataclass(schema):
        known = {f.name: f for f in fields(schema)}
        for key in node:  # Hydra's `+key=value` can add keys no schema knows; a typo there must not pass silently
            if key not in known:
                settings = ", ".join(sorted(k for k in known if not k.startswith("_")))
                yield f"{path}{key} is not a setting (added with +?); known: {settings}"
        for key, spec in known.items():
            if key not in node:
                continue
            rule, value = spec.metadata, node[key]
            if "choices" in rule and value not in (choices := list(get_object(rule["choices"]))):
                yield out_of_range(f"{path}{key}", value, f"one of {', '.join(choices)}")
            elif "ok" in rule and not rule["ok"](value):
                yield out_of_range(f"{path}{key}", list(value) if OmegaConf.is_list(value) else value, rule["allowed"])
        if cross_check := getattr(schema, "cross_check", None):  # rules that read other settings
            yield from cross_check(node, cfg)
    for key, value in node.items():
        if isinstance(value, DictConfig):
            yield from _node_problems(value, f"{path}{key}.", cfg)


def _repeated_regularizers(overrides: Sequence[str]) -> Iterator[str]:
    """regularizer=[l2,l2]: Hydra merges the two l2 into one, so only the override itself shows the repeat."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = [o for o in overrides if o.lstrip("+~").startswith("regularizer=")]
    if not chosen:  # the parser costs milliseconds to create: a grid of thousands checks every job
        return
    for override in OverridesParser.create().parse_overrides(chosen):
        names = override.value()
        if repeated := sorted({name for name in names if names.count(name) > 1}) if isinstance(names, list) else []:
            yield (
                f"regularizer={override.get_value_element_as_str()} names {', '.join(repeated)} more than "
                "once: list each regularizer once, e.g. regularizer=[l2,dropout]"
            )


def check_launch(config: DictConfig, sweeping: bool) -> list[str]:
    """What composing or validate() refuses in any job of this launch (or the one job): each once, in how many jobs."""
    from mnist_exp.grid import JobConfigs, expand

    loader = GlobalHydra.instance().config_loader()
    overrides = list(config.hydra.overrides.task)
    search = "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower()  # its params are its to pick
    params = {} if search else dict(config.hydra.sweeper.get("params") or {})
    jobs = expand(overrides, params, loader, strict=False) if sweeping else [overrides]
    if len(jobs) >= SAY_CHECKING:
        log.info("checking the configs of %d jobs", len(jobs))
    configs = JobConfigs(config.hydra.job.config_name, loader)
    problems: dict[str, list[list[str]]] = {}
    for job in jobs:
        try:
            validate(configs(job), job)
        except (ConfigError, HydraException, OmegaConfBaseException) as error:
            # Hydra's and OmegaConf's messages span lines, and Hydra's hide their cause.
            text = str(error).split("Config search path")[0]
            if error.__cause__ is not None and str(error.__cause__):
                text += f": {str(error.__cause__).splitlines()[0]}"
            problems.setdefault(" ".join(text.split()), []).append(job)
    shared = set(jobs[0]).intersection(*jobs) if jobs else set()  # not what tells the jobs apart
    lines = []
    for message, found in problems.items():
        example = " ".join(line for line in found[0] if line not in shared)
        counted = f" (in {len(found)} of {len(jobs)} jobs{', e.g. ' + example if example else ''})"
        lines.append(message + (counted if len(jobs) > 1 else ""))
    return lines
