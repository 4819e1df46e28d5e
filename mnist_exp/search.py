"""Hyperparameter search: Optuna's ask-and-tell behind a Hydra sweeper (hydra/sweeper=optuna).

The sweeper asks the study for trials, turns each into the overrides of one Hydra job and hands
them to the launcher, n_jobs at a time; each job reports its validation accuracy per epoch to its
trial through the study's storage (jobs may run in other processes, even on other machines) and
stops when the pruner says so; the sweeper tells the study how each trial ended. The study lives
in an SQLite file beside the MLflow store, so the same command continues it after a kill or with
a larger n_trials. Hydra finds the sweeper through hydra_plugins/mnist_exp. Optuna is imported
inside functions: Hydra imports this module on every start of train.py.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

TRIAL_ENV = "MNIST_EXP_OPTUNA_TRIAL"  # a job's trial id, set through hydra.job.env_set: every launcher passes it
TRIAL_TAG = "mnist_exp.trial"  # the trial number, on the trial's MLflow run
PRUNED_TAG = "mnist_exp.pruned"  # why a run stopped early, on a pruned trial's (FINISHED) run
REQUEUED = "requeued"  # user attr of a trial a killed search left RUNNING: failed, its params asked again
PRUNED_AT = "pruned_at_epoch"  # user attr set by the job: tells the sweeper the trial was pruned
RESULTS_FILE = "optimization_results.yaml"  # in the sweep folder; the sweep's callback logs it on the sweep run


class Pruned(Exception):
    """The pruner stopped this trial: its run ends FINISHED with the epochs it trained."""

    def __init__(self, message: str, value: float):
        super().__init__(message)
        self.value = value


def storage_url(storage: str | None, tracking_uri: str) -> str:
    """The study's storage: as configured, else `<store>.optuna.db` beside a sqlite MLflow store
    (Optuna and MLflow both keep an alembic_version table, so they cannot share one database),
    else optuna.db in the launch folder."""
    if storage:
        return storage
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri[len("sqlite:///") :])
        return f"sqlite:///{store.with_name(store.stem + '.optuna.db')}"
    return "sqlite:///optuna.db"


def study_name(configured: str | None, experiment: str, sweep_key: str) -> str:
    """As configured, else the experiment and the sweep's key: the same command finds the same study."""
    return configured or f"{experiment}/{sweep_key}"


def shown(url: str) -> str:
    """A storage URL fit to print: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def distribution(override: Override) -> Any:
    """Hydra's sweep syntax as an Optuna distribution: choice(...) or a,b -> categorical,
    range(a,b[,step]) -> integers (as Hydra, without b), interval(a,b) -> uniform, tag(log, ...) -> log scale."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and not value.shuffle and all(isinstance(v, int) for v in values) and values:
        return IntDistribution(min(values), max(values), step=abs(int(value.step)))
    return CategoricalDistribution(values)


def search_space(params: dict, arguments: list[str]) -> tuple[dict, list[str]]:
    """({key: distribution}, fixed overrides) from hydra.sweeper.params and the command line, which wins."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    space, fixed = {}, {}
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return space, list(fixed.values())


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: DictConfig,
        pruner: DictConfig,
        params: DictConfig | None = None,
    ) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler, self.pruner, self.params = sampler, pruner, params
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from mnist_exp.sweep import read_sweep_info

        optuna.logging.disable_default_handler()  # its lines go through Hydra's logging, like ours
        optuna.logging.enable_propagation()
        space, fixed = search_space(OmegaConf.to_container(self.params or {}), arguments)
        if not space:
            raise ValueError(
                "hydra.sweeper.params: nothing to search; give at least one key a choice, range "
                "or interval, e.g. optimizer.lr='tag(log, interval(1e-4, 0.1))'"
            )
        info = read_sweep_info(self.config.hydra.sweep.dir)  # written by the sweep's callback before this
        name = study_name(self.study_name, self.config.mlflow.experiment, info.key)
        url = storage_url(self.storage, self.config.mlflow.tracking_uri)
        study = optuna.create_study(
            study_name=name, storage=url, sampler=self._sampler(0), direction=self.direction, load_if_exists=True
        )
        requeued = self._requeue_interrupted(study)
        study.sampler = self._sampler(len(study.trials))  # a resumed study must not draw its first trials again
        log.info(
            "Optuna study %s in %s: %d of %d trials done%s; pruner %s",
            name,
            shown(url),
            counted(study),
            self.n_trials,
            f", {requeued} interrupted trial(s) asked again" if requeued else "",
            type(instantiate(self.pruner)).__name__,
        )
        index = 0
        while (todo := self.n_trials - counted(study)) > 0:
            trials = [study.ask(space) for _ in range(min(todo, self.n_jobs))]
            overrides = [
                [*fixed, *(f"{k}={v}" for k, v in t.params.items()), f"++hydra.job.env_set.{TRIAL_ENV}={t._trial_id}"]
                for t in trials
            ]
            returns = self.launcher.launch(overrides, initial_job_idx=index)
            index += len(returns)
            for trial, ret in zip(trials, returns):
                self._tell(study, trial, ret)
        self._report_best(study, info)

    def _sampler(self, offset: int):
        """The configured sampler, its seed moved on by the trials the study already has."""
        seed = self.sampler.get("seed")
        return instantiate(self.sampler, **({"seed": seed + offset} if seed is not None else {}))

    @staticmethod
    def _requeue_interrupted(study) -> int:
        """Trials left RUNNING by a killed search (one search per study at a time): failed, and their
        params asked again first, so the same MLflow run resumes from its checkpoint."""
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in stale:
            study._storage.set_trial_user_attr(trial._trial_id, REQUEUED, True)
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"resumes_trial": trial.number})
        return len(stale)

    @staticmethod
    def _tell(study, trial, ret) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        value = ret.return_value if ret.status == JobStatus.COMPLETED else None
        pruned_at = study._storage.get_trial(trial._trial_id).user_attrs.get(PRUNED_AT)
        if value is not None and pruned_at is not None:
            study.tell(trial, state=TrialState.PRUNED)
            outcome = f"pruned after epoch {pruned_at}"
        elif value is not None:
            study.tell(trial, float(value))
            outcome = f"{value:.4f}"
        else:  # the job failed (and said why) or was stopped: the search goes on
            study.tell(trial, state=TrialState.FAIL)
            outcome = "failed"
        log.info("trial %d: %s", trial.number, outcome)

    def _report_best(self, study, info) -> None:
        """Print the best trial, write RESULTS_FILE and record both on the sweep's MLflow run."""
        from optuna.trial import TrialState

        from mnist_exp import tracking

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("no trial completed: no best trial")
            return
        best = study.best_trial
        log.info("best trial %d: value %.4f, params %s", best.number, best.value, best.params)
        results = {
            "name": "optuna",
            "study": study.study_name,
            "best_trial": best.number,
            "best_params": best.params,
            "best_value": best.value,
        }
        OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir) / RESULTS_FILE)
        client, _ = tracking.connect(self.config.mlflow.tracking_uri, self.config.mlflow.experiment)
        client.log_metric(info.parent_run_id, "best_value", best.value)
        client.set_tag(info.parent_run_id, "mnist_exp.best_trial", str(best.number))
        client.set_tag(info.parent_run_id, "mnist_exp.best_params", json.dumps(best.params))
        client.set_tag(info.parent_run_id, "mnist_exp.optuna_study", study.study_name)


def counted(study) -> int:
    """Trials that count toward n_trials: every finished one but those a kill interrupted (asked again)."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and not t.user_attrs.get(REQUEUED))
    )


class JobTrial:
    """The Optuna trial a job is, seen from inside the job: reports each epoch's validation accuracy
    and raises Pruned when the pruner stops the trial (never at the last epoch: nothing to save there)."""

    def __init__(self, trial, epochs: int):
        self.trial, self.epochs, self.reported = trial, epochs, set()

    def epoch_end(self, history) -> None:
        for metrics in history:  # a resumed run reports the epochs it trained before, too
            if metrics.epoch not in self.reported and metrics.val_acc is not None:
                self.trial.report(metrics.val_acc, metrics.epoch)
                self.reported.add(metrics.epoch)
        latest = history[-1]
        if latest.epoch < self.epochs and self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_AT, latest.epoch)
            raise Pruned(
                f"pruned by {type(self.trial.study.pruner).__name__} after epoch {latest.epoch} of "
                f"{self.epochs} (trial {self.trial.number}, val_acc {latest.val_acc:.4f})",
                latest.val_acc,
            )


def job_trial(cfg) -> JobTrial | None:
    """The trial of this job when a search launched it (its id in TRIAL_ENV), else None. Tags the
    active MLflow run with the trial number and records the run on the trial."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    import mlflow
    import optuna
    from hydra.core.hydra_config import HydraConfig

    from mnist_exp.sweep import read_sweep_info

    hydra = HydraConfig.get()
    name = study_name(hydra.sweeper.study_name, cfg.mlflow.experiment, read_sweep_info(hydra.sweep.dir).key)
    study = optuna.load_study(
        study_name=name,
        storage=storage_url(hydra.sweeper.storage, cfg.mlflow.tracking_uri),
        pruner=instantiate(hydra.sweeper.pruner),
        sampler=optuna.samplers.RandomSampler(),
    )  # the job samples nothing
    trial = optuna.trial.Trial(study, int(trial_id))
    run_id = mlflow.active_run().info.run_id
    mlflow.set_tag(TRIAL_TAG, str(trial.number))
    trial.set_user_attr("mlflow_run_id", run_id)
    return JobTrial(trial, cfg.trainer.epochs)
