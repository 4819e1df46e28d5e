"""mnist-exp's Hydra plugins, thin classes that import their work (mnist_exp/launcher.py, grid.py, search.py) only
when a sweep runs: Hydra imports this package at every start. Their configs: config.py."""

from collections.abc import Sequence

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ParallelLauncher(Launcher):
    def __init__(self, workers: int | None = None, threads_per_job: int | None = None) -> None:
        self.workers, self.threads_per_job = workers, threads_per_job

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mnist_exp import launcher

        return launcher.launch(self, job_overrides, initial_job_idx)


class _Sweeper(Sweeper):
    """A sweeper's setup: its config, and the launcher it hands its jobs to."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )


class GridSweeper(_Sweeper):
    def __init__(self, params: dict[str, str] | None = None) -> None:
        self.params = params or {}

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from mnist_exp import grid

        return grid.sweep(self, arguments)


class OptunaSweeper(_Sweeper):
    def __init__(self, **settings) -> None:  # config.OptunaSweeperConf: the sweep reads them in config.hydra.sweeper
        pass

    def sweep(self, arguments: list[str]) -> None:
        from mnist_exp import search

        search.sweep(self, arguments)
