"""The grid of `train.py -m a=1,2 b=x,y` (hydra/sweeper=grid, the default), for any number of jobs.

Hydra's basic sweeper composes every job's config before the first job starts, and a launcher then
composes each again: 0.1 s a job, minutes for a thousand (benchmarks/sweep_prep.py). GridSweeper lists
the same jobs in the same order and composes none of them: the launch callback has checked every job
before the sweep opened any run (check), and each job is composed in full by its launcher when it
starts. Checking, and the default launcher's cost estimates, read JobConfigs: one composition per
distinct choice of config groups (model=..., experiment=...), the job's other overrides then set as
Hydra sets them.
"""

from __future__ import annotations

import collections
import copy
import functools
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger(__name__)
SAY_CHECKING = 100  # jobs from which checking them takes long enough (~0.2 s and more) to say so


def expand(arguments: Sequence[str], params: dict | None = None, config_loader=None, strict: bool = True):
    """Every job of the grid, as Hydra's basic sweeper lists them: `params` (hydra.sweeper.params) first, a
    key the command line sets taking its place, then the cartesian product of every key's values. Not
    `strict`: a key swept over an interval is left out (a search's sweeper picks its values)."""
    lines = [*(f"{key}={value}" for key, value in (params or {}).items()), *arguments]
    by_key: dict[str, list[str]] = {}
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(lines):
        key = override.get_key_element()
        if not override.is_sweep_override():
            by_key[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            by_key[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        elif strict:
            raise HydraException(f"{override.input_line}: a grid takes lists, range() and choice(), not intervals")
        else:
            by_key.pop(key, None)
    return [list(job) for job in itertools.product(*by_key.values())]


def groups(config_loader, parent: str = "") -> set[str]:
    """Every config group, nested ones as hydra/launcher."""
    found = set()
    for name in config_loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        found |= {path, *groups(config_loader, path)}
    return found


@functools.cache
def _parsed(line: str) -> Override:
    return _PARSER.parse_override(line)


_PARSER = OverridesParser.create()


class JobConfigs:
    """A job's config (without Hydra's node) from its overrides, fast: Hydra composes once per distinct
    choice of config groups (and once per process: the launch callback's compositions serve the launcher),
    the job's value overrides are then applied as Hydra applies them. Where that refuses an override,
    Hydra composes the job itself, and raises what it raises."""

    def __init__(self, config_name: str, config_loader):
        self.config_name, self.groups = config_name, groups(config_loader)
        self.search_path = repr(config_loader.get_search_path().get_path())  # where the files came from

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        parsed = [_parsed(line) for line in overrides]
        chosen = tuple(o.input_line for o in parsed if self._chooses(o))
        config = copy.deepcopy(_composed(self.config_name, self.search_path, chosen))
        try:
            for override in parsed:
                if not self._chooses(override):
                    _apply(config, override)
        except (OmegaConfBaseException, ValueError):
            return _job_part(_compose(self.config_name, list(overrides)))
        return config

    def _chooses(self, override: Override) -> bool:
        """Whether an override changes the defaults list (a group's option) rather than a value."""
        return override.key_or_group in self.groups or override.package is not None or override.is_delete()


@functools.cache
def _composed(config_name: str, search_path: str, chosen: tuple[str, ...]) -> DictConfig:
    config = _job_part(_compose(config_name, list(chosen)))
    OmegaConf.resolve(config)  # once: the job's interpolations read the environment only
    return config


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose  # the running app's config loader (GlobalHydra)

    return compose(config_name, overrides)


def _job_part(config: DictConfig) -> DictConfig:
    if "hydra" in config:
        with open_dict(config):
            del config["hydra"]
    return config


def _apply(config: DictConfig, override: Override) -> None:
    """A value override, as Hydra's config loader applies it after composing the defaults list."""
    key, value = override.key_or_group, override.value()
    taken = OmegaConf.select(config, key, throw_on_missing=False) is not None
    if override.is_add() and taken and not isinstance(value, (dict, list)):
        raise ValueError(f"{override.input_line}: an item is already at {key}")
    OmegaConf.update(config, key, value, merge=True, force_add=override.is_add() or override.is_force_add())


def check(config: DictConfig, sweeping: bool) -> list[str]:
    """What Hydra's composition or mnist_exp.validation refuses in any job of this launch, each problem once
    with how many jobs have it; [] when every job may run. Without `sweeping`, the launch is one job."""
    from hydra.core.global_hydra import GlobalHydra

    from mnist_exp.validation import ConfigError, validate

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
            problems.setdefault(_one_line(error), []).append(job)
    every = collections.Counter(line for job in jobs for line in job)
    swept = {line for line, count in every.items() if count < len(jobs)}  # what tells the jobs apart
    return [
        message + (f" (in {len(found)} of {len(jobs)} jobs{_example(found[0], swept)})" if len(jobs) > 1 else "")
        for message, found in problems.items()
    ]


def _one_line(error: Exception) -> str:
    """Hydra's and OmegaConf's messages span lines, and Hydra's hide their cause."""
    text = str(error).split("Config search path")[0]
    if error.__cause__ is not None and str(error.__cause__):
        text += f": {str(error.__cause__).splitlines()[0]}"
    return " ".join(text.split())


def _example(job: list[str], swept: set[str]) -> str:
    values = [line for line in job if line in swept]
    return f", e.g. {' '.join(values)}" if values else ""


class GridSweeper(Sweeper):
    """hydra/sweeper=grid: the jobs of Hydra's basic sweeper, launched without composing them first."""

    def __init__(self, params: dict | None = None):
        self.params = params or {}
        self.config = self.hydra_context = self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]):
        jobs = expand(arguments, self.params, self.hydra_context.config_loader)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's sweepers do
        results = self.launcher.launch(jobs, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # raises a job's exception, as Hydra's basic sweeper does
        return [results]
