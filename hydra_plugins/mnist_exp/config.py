"""The plugins' configs in Hydra's ConfigStore, for any Hydra app: hydra/launcher=parallel, hydra/sweeper=grid,
hydra/sweeper=optuna with hydra/sweeper/sampler=tpe|random and hydra/sweeper/pruner=median|none."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ParallelLauncherConf:
    _target_: str = "hydra_plugins.mnist_exp.ParallelLauncher"
    workers: int | None = None  # jobs side by side; None: the usable cores / threads_per_job, at most one per job
    threads_per_job: int | None = None  # None: the most a job asks for (mnist-exp: trainer.threads), else cores / jobs


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.mnist_exp.GridSweeper"
    params: dict[str, str] | None = None  # key: a,b | range(a,b) | choice(a,b); the command line wins


@dataclass
class ConfirmConf:
    seeds: int = 0  # 0: no confirmation (experiment=tune: 3)
    overrides: list[str] = field(default_factory=list)  # what they change from the trials: [data.validation_size=0]


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnist_exp.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "median"}])
    _recursive_: bool = False  # the sweeper builds the sampler (seeded per trial) and each job the pruner
    sampler: Any = MISSING  # an optuna.samplers class and its arguments: hydra/sweeper/sampler=tpe|random
    pruner: Any = MISSING  # an optuna.pruners class and its arguments: hydra/sweeper/pruner=median|none
    direction: str = "maximize"  # the jobs return their validation accuracy
    study_name: str | None = None  # None: the experiment and the sweep's overrides: the same command, the same study
    storage: str | None = None  # None: <store>.optuna.db beside a sqlite MLflow store, else optuna.db here
    n_trials: int = 20  # trials in the study, counting those of earlier launches
    n_jobs: int = 1  # trials launched at once (side by side with the parallel launcher)
    heartbeat_interval: int = 10  # s between the beats of each running trial: launches of one search share its trials
    grace_period: int = 60  # s without a beat after which another launch fails the trial and asks it again
    max_retry: int | None = 3  # times a trial is asked again after its launch died (None: always)
    params: dict[str, Any] | None = None  # key: choice(a,b) | range(a,b) | interval(a,b) | tag(log, interval(a,b))
    confirm: ConfirmConf = field(default_factory=ConfirmConf)  # the best recipe and the plain model on fresh seeds


store = ConfigStore.instance()
store.store(group="hydra/launcher", name="parallel", node=ParallelLauncherConf, provider="mnist_exp")
store.store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="mnist_exp")
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="mnist_exp")
# Seeded: trial k draws with seed + k, so resumed or concurrent launches never draw alike.
store.store(group="hydra/sweeper/sampler", name="tpe", node={"_target_": "optuna.samplers.TPESampler", "seed": 0})
store.store(group="hydra/sweeper/sampler", name="random", node={"_target_": "optuna.samplers.RandomSampler", "seed": 0})
# median: stops a trial whose validation accuracy after an epoch is below the median of earlier trials' there.
store.store(
    group="hydra/sweeper/pruner",
    name="median",
    node={"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0},
)
store.store(group="hydra/sweeper/pruner", name="none", node={"_target_": "optuna.pruners.NopPruner"})
