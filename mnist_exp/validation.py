"""Checks a composed config against its one description, mnist_exp.schema, before any work."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields, is_dataclass

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from mnist_exp.schema import out_of_range


class ConfigError(ValueError):
    """A config value out of range; the message names the key and the allowed values."""


def validate(cfg, overrides: Sequence[str] = ()) -> None:
    """Every out-of-range value of cfg, in one ConfigError; `overrides` are the job's (Hydra's overrides.task)."""
    if missing := sorted(OmegaConf.missing_keys(cfg)):  # the checks below would stop at the first
        raise ConfigError(
            "; ".join(f"{key} has no value: give it in its conf/ file or as {key}=VALUE" for key in missing)
        )
    problems = [*_node_problems(cfg, "", cfg), *_repeated_regularizers(overrides)]
    if problems:
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
            if key in node and (problem := _field_problem(f"{path}{key}", node[key], spec.metadata)):
                yield problem
        if cross_check := getattr(schema, "cross_check", None):  # rules that read other settings
            yield from cross_check(node, cfg)
    for key, value in node.items():
        if isinstance(value, DictConfig):
            yield from _node_problems(value, f"{path}{key}.", cfg)


def _field_problem(key: str, value, rule) -> str | None:
    if "choices" in rule:
        choices = list(get_object(rule["choices"]))
        return None if value in choices else out_of_range(key, value, f"one of {', '.join(choices)}")
    if "ok" in rule and not rule["ok"](value):
        return out_of_range(key, list(value) if OmegaConf.is_list(value) else value, rule["allowed"])
    return None


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
