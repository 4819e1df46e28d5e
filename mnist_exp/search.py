"""Hyperparameter search (hydra/sweeper=optuna): Optuna's ask-and-tell over a stored study that launches share,
and each job's side of its trial (docs/search.md). Optuna is imported inside functions: every job imports this."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_exp import confirmation, record, tracking
from mnist_exp.sweep import read_sweep_info

log = logging.getLogger(__name__)

TRIAL_ENV = "MNIST_EXP_OPTUNA_TRIAL"  # a job's trial number, set through hydra.job.env_set: every launcher passes it
PRUNED_AT = "pruned_at_epoch"  # user attr set by the job: tells the sweeper the trial was pruned


class Pruned(Exception):
    """The pruner stopped this trial: its run ends FINISHED with the epochs it trained."""

    def __init__(self, message: str, value: float):
        super().__init__(message)
        self.value = value


def study_location(settings: DictConfig, mlflow: DictConfig, sweep_key: str) -> tuple[str, str]:
    """(study name, storage URL) as configured, else: experiment/sweep key (the same command, the same study);
    <store>.optuna.db beside a sqlite MLflow store (each has an alembic_version table), else optuna.db here."""
    url = settings.storage or "sqlite:///optuna.db"
    if not settings.storage and mlflow.tracking_uri.startswith("sqlite:///"):
        store = Path(mlflow.tracking_uri.removeprefix("sqlite:///"))
        url = f"sqlite:///{store.with_name(store.stem + '.optuna.db')}"
    return settings.study_name or f"{mlflow.experiment}/{sweep_key}", url


def distribution(override: Override) -> Any:
    """Hydra's sweep syntax as an Optuna distribution: choices, range (without b, as Hydra), interval, tag(log)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_interval_sweep():
        integers = isinstance(value.start, int) and isinstance(value.end, int)
        return (IntDistribution if integers else FloatDistribution)(value.start, value.end, log="log" in value.tags)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and not value.shuffle and all(isinstance(v, int) for v in values) and values:
        return IntDistribution(min(values), max(values), step=abs(int(value.step)))
    return CategoricalDistribution(values)


def search_space(params: dict, arguments: list[str]) -> tuple[dict, list[str]]:
    """({key: distribution}, fixed overrides) from hydra.sweeper.params and the command line, which wins."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    last: dict[str, Override] = {}
    for override in parsed:  # the later one wins, in the later one's place
        last.pop(override.get_key_element(), None)
        last[override.get_key_element()] = override
    space = {key: distribution(o) for key, o in last.items() if o.is_sweep_override()}
    return space, [f"{key}={o.get_value_element_as_str()}" for key, o in last.items() if not o.is_sweep_override()]


def sweep(sweeper, arguments: list[str]) -> None:
    """hydra/sweeper=optuna: trials until the study holds n_trials, then the best trial and its confirmation."""
    import optuna
    from sqlalchemy.engine import make_url

    config, settings = sweeper.config, sweeper.config.hydra.sweeper
    space, fixed = search_space(OmegaConf.to_container(settings.params or {}), arguments)
    if not space:
        raise ValueError(
            "hydra.sweeper.params: nothing to search; give at least one key a choice, range "
            "or interval, e.g. optimizer.lr='tag(log, interval(1e-4, 0.1))'"
        )
    if not 0 < settings.heartbeat_interval < settings.grace_period:
        raise ValueError(
            f"hydra.sweeper.grace_period={settings.grace_period} must exceed hydra.sweeper.heartbeat_interval="
            f"{settings.heartbeat_interval} > 0: a trial is failed after grace_period s without a heartbeat"
        )
    if settings.storage and make_url(settings.storage).password:
        raise ValueError(
            "hydra.sweeper.storage holds a password, which every trial's logged Hydra config would keep: "
            "put it in the database's own password file instead (PostgreSQL: ~/.pgpass or PGPASSFILE)"
        )
    info = read_sweep_info(config.hydra.sweep.dir)  # written by the sweep's callback before this
    name, url = study_location(settings, config.mlflow, info.key)  # no password: refused above
    client, _ = tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
    with study_claimed(client, info.experiment_id, name):  # launches creating one study at once race on its tables
        storage = open_storage(url, settings)
        study = optuna.create_study(study_name=name, storage=storage, direction=settings.direction, load_if_exists=True)
    (counted, running), pruner = tally(study.get_trials(deepcopy=False)), type(instantiate(settings.pruner)).__name__
    done = f"{counted} of {settings.n_trials} trials done, {len(running)} running"
    log.info("Optuna study %s in %s: %s; pruner %s", name, url, done, pruner)
    index, waiting_for = 0, None
    with contextlib.closing(Heartbeat(storage, storage.get_study_id_from_name(name))) as heartbeat:
        while True:
            with study_claimed(client, info.experiment_id, name):  # one launch asks at a time: never over n_trials
                optuna.storages.fail_stale_trials(study)  # failed and queued again by the retry callback
                counted, running = tally(study.get_trials(deepcopy=False))
                free = settings.n_trials - counted - len(running)
                asked = [_ask(study, space, heartbeat, settings.sampler) for _ in range(min(free, settings.n_jobs))]
            if not asked:
                if not running:
                    break
                if running != waiting_for:
                    log.info(
                        "waiting for trial(s) %s of another launch (asked again if silent for %d s)",
                        *(", ".join(map(str, running)), settings.grace_period),
                    )
                    waiting_for = running
                heartbeat.stopped.wait(storage.get_heartbeat_interval())
                continue
            env = f"++hydra.job.env_set.{TRIAL_ENV}"  # every launcher passes it to the job
            overrides = [[*fixed, *(f"{k}={v}" for k, v in t.params.items()), f"{env}={t.number}"] for t in asked]
            try:
                returns = sweeper.launcher.launch(overrides, initial_job_idx=index)
            except BaseException:  # Ctrl-C, SIGTERM: the next launch asks these trials again at once
                for trial in asked:
                    _fail_and_retry(study, storage, heartbeat.trial_ids.pop(trial.number), trial)
                raise
            index += len(returns)
            for trial, ret in zip(asked, returns):
                _tell(study, storage, heartbeat.trial_ids.pop(trial.number), trial, ret)
    _report_best(study, info, client, Path(config.hydra.sweep.dir) / record.OPTUNA_RESULTS)
    if settings.confirm.seeds:
        confirmation.confirm(sweeper.launcher, config, fixed, study, info, index)


def _ask(study, space: dict, heartbeat: Heartbeat, sampler: DictConfig):
    """A trial to run: a queued retry first, else a new one; beating from now on."""
    # Trial k is drawn with seed + k: a resumed study, or two launches at once, never draw alike.
    offset, seed = len(study.get_trials(deepcopy=False)), sampler.get("seed")
    study.sampler = instantiate(sampler, **({"seed": seed + offset} if seed is not None else {}))
    trial = study.ask(space)
    heartbeat.add(trial.number)
    return trial


def _tell(study, storage, trial_id: int, trial, ret) -> None:
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    value = ret.return_value if ret.status == JobStatus.COMPLETED else None
    pruned_at = storage.get_trial_user_attrs(trial_id).get(PRUNED_AT)  # the job's, from the store
    if value is None:  # the job failed (and said why): the search goes on
        state, outcome = TrialState.FAIL, "failed"
    elif pruned_at is not None:
        state, outcome, value = TrialState.PRUNED, f"pruned after epoch {pruned_at}", None
    else:
        state, outcome, value = None, f"{value:.4f}", float(value)  # None: Optuna fails a NaN or inf objective
    told = study.tell(trial, value, state=state, skip_if_finished=True)
    if told.state == TrialState.FAIL and state != TrialState.FAIL:
        outcome += " (but another launch had failed it as stale and queued it again: its retry reuses this run)"
    log.info("trial %d: %s", trial.number, outcome)


def _fail_and_retry(study, storage, trial_id: int, trial) -> None:
    """A trial this launch stopped: FAIL and queued again as a stale one is, so the next launch asks it at once."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study.tell(trial, state=TrialState.FAIL)
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))
    except (ValueError, UpdateFinishedTrialError):  # "Cannot tell a FAIL trial": another launch queued it
        return
    except Exception as error:  # the store may be what failed: the trial goes stale, then is asked again
        log.warning("trial %d: stopped; not queued again (%s)", trial.number, error)
        return
    log.info("trial %d: stopped; queued again, its run resumes at the next launch", trial.number)


def _report_best(study, info, client, results_file: Path) -> None:
    """Print the best trial, write record.OPTUNA_RESULTS and record both on the sweep's MLflow run."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.warning("no trial completed: no best trial")
        return
    best = study.best_trial
    log.info("best trial %d: value %.4f, params %s", best.number, best.value, best.params)
    results = {"name": "optuna", "study": study.study_name, "best_trial": best.number}
    OmegaConf.save(OmegaConf.create({**results, "best_params": best.params, "best_value": best.value}), results_file)
    client.log_metric(info.parent_run_id, record.BEST_VALUE, best.value)
    client.set_tag(info.parent_run_id, record.BEST_TRIAL, str(best.number))
    client.set_tag(info.parent_run_id, record.BEST_PARAMS, json.dumps(best.params))
    client.set_tag(info.parent_run_id, record.STUDY, study.study_name)


def open_storage(url: str, settings: DictConfig):
    """The study's RDBStorage: a trial silent for grace_period s is asked again; SQLite writers wait 120 s to lock.
    Optuna's lines go through Hydra's logging, without warnings that our heartbeats are experimental or unusual."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")  # outside optimize
    return RDBStorage(
        url,
        engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
        heartbeat_interval=settings.heartbeat_interval,
        grace_period=settings.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry),
    )


@contextlib.contextmanager
def study_claimed(client, experiment_id: str, name: str):
    """The study's tracking.Claim while this launch creates it or asks trials (Optuna has no public lock: this
    costs about five MLflow calls per ask, and a 2 s wait when another launch holds it)."""
    key = "study-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    claim = tracking.Claim.take(client, experiment_id, key, lambda holder: None)
    try:
        yield
    finally:
        claim.release(finished=True)


class Heartbeat(threading.Thread):
    """Beats for this launch's running trials (Optuna's own beats only inside study.optimize), by trial ID."""

    def __init__(self, storage, study_id: int):
        super().__init__(daemon=True)
        self.storage, self.study_id, self.stopped = storage, study_id, threading.Event()
        self.trial_ids: dict[int, int] = {}
        self.start()

    def close(self) -> None:
        self.stopped.set()
        self.join()

    def add(self, number: int) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.record_heartbeat(trial_id)  # at once: a trial that never beat is never found stale
        self.trial_ids[number] = trial_id

    def run(self) -> None:
        while not self.stopped.wait(self.storage.get_heartbeat_interval()):
            for trial_id in list(self.trial_ids.values()):
                with contextlib.suppress(Exception):  # a busy store: grace_period allows several missed beats
                    self.storage.record_heartbeat(trial_id)


def tally(trials: list) -> tuple[int, list[int]]:
    """(trials counted toward n_trials: finished ones, a failed one queued again only as its retry; running ones)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    retried = {number for t in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    counted = sum(1 for t in trials if t.state in done or (t.state == TrialState.FAIL and t.number not in retried))
    return counted, [t.number for t in trials if t.state == TrialState.RUNNING]


class JobTrial:
    """A job's trial: reports each epoch's validation accuracy, raises Pruned when the pruner says so."""

    def __init__(self, trial, epochs: int):
        self.trial, self.epochs, self.reported, self.ended = trial, epochs, 0, False

    def epoch_end(self, history) -> None:
        import optuna

        if self.ended:
            return
        latest = history[-1]
        try:
            for metrics in history[self.reported :]:  # a resumed run reports the epochs it trained before, too
                if metrics.val_acc is not None:
                    self.trial.report(metrics.val_acc, metrics.epoch)
            self.reported = len(history)
            if latest.epoch < self.epochs and self.trial.should_prune():
                self.trial.set_user_attr(PRUNED_AT, latest.epoch)
                raise Pruned(
                    f"pruned by {type(self.trial.study.pruner).__name__} after epoch {latest.epoch} of "
                    f"{self.epochs} (trial {self.trial.number}, val_acc {latest.val_acc:.4f})",
                    latest.val_acc,
                )
        except optuna.exceptions.UpdateFinishedTrialError:
            self.orphaned()

    def orphaned(self) -> None:
        log.warning(
            "trial %d was failed as stale by another launch (no heartbeat from this one); "
            "this run trains on and the trial's retry reuses it",
            self.trial.number,
        )
        self.ended = True


def job_trial(cfg) -> JobTrial | None:
    """This job's trial when a search launched it (its number in TRIAL_ENV), the run and trial linked; else None."""
    number = os.environ.get(TRIAL_ENV)
    if not number:
        return None
    import mlflow
    import optuna
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    name, url = study_location(hydra.sweeper, cfg.mlflow, read_sweep_info(hydra.sweep.dir).key)
    storage = open_storage(url, hydra.sweeper)
    pruner, sampler = instantiate(hydra.sweeper.pruner), optuna.samplers.RandomSampler()  # the job samples nothing
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), int(number))
    # Optuna's docs leave Trial(study, id) to study.optimize; it is the public way to report to a trial that
    # another process asked.
    trial = optuna.trial.Trial(study, trial_id)
    mlflow.set_tag(record.TRIAL, str(trial.number))
    job = JobTrial(trial, cfg.trainer.epochs)
    try:
        if trial.user_attrs.get(PRUNED_AT) is not None:  # a retry inherits its stale original's user attrs
            trial.set_user_attr(PRUNED_AT, None)
        trial.set_user_attr("mlflow_run_id", mlflow.active_run().info.run_id)
    except optuna.exceptions.UpdateFinishedTrialError:  # its launch died before this job started
        job.orphaned()
    return job
