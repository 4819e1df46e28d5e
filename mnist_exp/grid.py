"""hydra/sweeper=grid: Hydra's basic sweeper's jobs, in its order, none composed before it starts (Hydra's composes
each job twice: minutes for a thousand, benchmarks/sweep_prep.py); JobConfigs, every job's config fast."""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Sequence
from pathlib import Path

from hydra import compose  # the running app's config loader (GlobalHydra); without Hydra's node
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def sweep(sweeper, arguments: list[str]) -> list:
    """hydra/sweeper=grid (hydra_plugins.mnist_exp.GridSweeper): every job at once to the launcher."""
    jobs = expand(arguments, sweeper.params, sweeper.hydra_context.config_loader)
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(sweeper.config, sweep_dir / "multirun.yaml")  # as Hydra's sweepers do
    results = sweeper.launcher.launch(jobs, initial_job_idx=0)
    for result in results:
        _ = result.return_value  # raises a job's exception, as Hydra's basic sweeper does
    return [results]


def expand(arguments: Sequence[str], params: dict | None = None, config_loader=None, strict: bool = True):
    """Hydra's basic sweeper's jobs (the command line over `params`); not `strict`: intervals left out for a search."""
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


class JobConfigs:
    """A job's config without Hydra's node: composed once per choice of config groups, then its values applied."""

    def __init__(self, config_name: str, config_loader):
        self.config_name, self.groups = config_name, _groups(config_loader)
        self.search_path = repr(config_loader.get_search_path().get_path())  # where the files came from

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        parsed = [_parsed(line) for line in overrides]
        # Those that change the defaults list (a group's option) rather than a value:
        chosen = [o for o in parsed if o.key_or_group in self.groups or o.package is not None or o.is_delete()]
        config = copy.deepcopy(_composed(self.config_name, self.search_path, tuple(o.input_line for o in chosen)))
        try:
            for override in parsed:
                if override not in chosen:
                    _apply(config, override)
        except (OmegaConfBaseException, ValueError):
            return compose(self.config_name, list(overrides))
        return config


def _groups(config_loader, parent: str = "") -> set[str]:
    """Every config group, nested ones as hydra/launcher."""
    paths = [f"{parent}/{name}".lstrip("/") for name in config_loader.list_groups(parent)]
    return set(paths).union(*(_groups(config_loader, path) for path in paths))


_parsed = functools.cache(OverridesParser.create().parse_override)


@functools.cache
def _composed(config_name: str, search_path: str, chosen: tuple[str, ...]) -> DictConfig:
    config = compose(config_name, list(chosen))
    OmegaConf.resolve(config)  # once: the job's interpolations read the environment only
    return config


def _apply(config: DictConfig, override: Override) -> None:
    """A value override, as Hydra's config loader applies it after composing the defaults list."""
    key, value = override.key_or_group, override.value()
    taken = OmegaConf.select(config, key, throw_on_missing=False) is not None
    if override.is_add() and taken and not isinstance(value, (dict, list)):
        raise ValueError(f"{override.input_line}: an item is already at {key}")
    OmegaConf.update(config, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
