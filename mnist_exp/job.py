"""One Hydra job, top to bottom: skip it, resume it or train it; a failure is recorded on its run, always closed."""

from __future__ import annotations

import logging
import math
import os
import resource
import traceback
from dataclasses import replace
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mnist_exp import checkpoints, console, logged_model, plots, record, search, tracking
from mnist_exp.data import load_mnist
from mnist_exp.formats import DataError
from mnist_exp.models import build_model
from mnist_exp.predictions import write_split
from mnist_exp.regularization import layer_switches, variant_name
from mnist_exp.shipped import PixelClassifier
from mnist_exp.stopping import RAISE, REQUEUE, STOPS, Interrupted, JobSignals
from mnist_exp.sweep import JobOutcome, SweepInfo, read_sweep_info, run_name, write_job_status
from mnist_exp.training import Diverged, Training, TrainingState, evaluate, fit, resolve_device
from mnist_exp.validation import ConfigError, validate

log = logging.getLogger("mnist_exp")

# Errors whose message says everything the user needs; anything else also prints its traceback.
USER_ERRORS = (ConfigError, DataError, tracking.TrackingError, Diverged)
# MLflow samples every 10 s by default, later than many of our runs end. A sample reads the run and logs
# ~10 values: 29 ms of CPU on a busy 2-core machine, 1.5% of a 2 s interval (benchmarks/system_metrics.py).
SYSTEM_METRICS_INTERVAL_S = 2
FINAL_METRICS = {
    "test": (record.FINAL_TEST_LOSS, record.FINAL_TEST_ACC),
    "validation": (record.FINAL_VAL_LOSS, record.FINAL_VAL_ACC),
}


def run_hydra_job(cfg: DictConfig) -> float | None:
    """The task function behind train.py; returns the run's objective (objective_of), which Optuna maximizes."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep = read_sweep_info(hydra_cfg.sweep.dir) if multirun else None
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    launch_id = sweep.launch_id if sweep else None
    signals = JobSignals()
    try:
        outcome = run_job(cfg, sweep, output_dir, overrides, signals)
    except tracking.TrackingError as error:  # no MLflow run could be opened to record it on
        outcome = JobOutcome("failed", overrides, None, str(error))
    except KeyboardInterrupt as interrupt:  # what follows is the stop's row of stopping.STOPS
        cause = getattr(interrupt, "cause", interrupt)
        stop = signals.stop_of(cause)  # again: a preemption noted since the run was closed decides
        run_id, name = getattr(interrupt, "run_id", None), getattr(interrupt, "run_name", None)
        write_job_status(output_dir, JobOutcome(stop.job, overrides, run_id, stop.reason, launch_id, name))
        if stop.then == REQUEUE:  # no result: the launching process waits for the requeued job
            raise (cause if isinstance(cause, SystemExit) else SystemExit(-1)) from None
        if stop.then == RAISE:
            raise
        log.error("KILLED: %s", stop.reason)
        return None
    write_job_status(output_dir, replace(outcome, launch_id=launch_id))
    if outcome.status == "failed":
        log.error("FAILED: %s", outcome.error)
        if not multirun:
            raise SystemExit(1)  # the message above says it all; no Hydra traceback on top
    return outcome.objective


def run_job(
    cfg: DictConfig, sweep: SweepInfo | None, output_dir: Path, overrides: list[str], signals: JobSignals
) -> JobOutcome:
    params = record.flat_params(cfg)
    config_hash = record.config_hash(params)
    client, experiment_id = tracking.connect(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    drawn = bool(os.environ.get(search.TRIAL_ENV))  # by an Optuna search: values named to 3 significant figures
    name = run_name(variant_label(cfg), cfg.trainer.seed, overrides, sweep.swept if sweep else [], drawn)
    console.announce(name, cfg.trainer.epochs)
    data = problem = None
    try:  # a bad value or bad data still gets a run, FAILED, that says why
        validate(cfg, overrides)
        if cfg.trainer.threads is not None:
            torch.set_num_threads(cfg.trainer.threads)
        device = resolve_device(cfg.trainer.device)
        data = load_mnist(cfg.data)
    except Exception as error:  # recorded on the run below, whatever it was
        problem, device = error, torch.device("cpu")

    data_params = record.data_params(data) if data is not None else None
    twins = tracking.runs_with_config(client, experiment_id, config_hash, data_params) if data is not None else []
    identity = data_params and record.data_identity(data_params)
    checkpoint_file = checkpoints.checkpoint_path(cfg.trainer.checkpoint_dir, config_hash, identity)
    claim = None
    if problem is None:  # only one process at a time trains an identity: tracking.Claim
        if skipped := _skip(cfg, twins, overrides):
            return skipped
        known = {run.info.run_id for run in twins if run.info.status == "FINISHED"}
        claim = tracking.Claim.take(client, experiment_id, checkpoint_file.stem, partial(_say_waiting, cfg.force))
        twins = tracking.runs_with_config(client, experiment_id, config_hash, data_params)
        if skipped := _skip(cfg, twins, overrides, known):  # finished while we waited for the claim
            claim.release(finished=True)
            return skipped
    status = "FAILED"
    try:
        tags = {
            **record.hashes(params),
            record.VARIANT: variant_label(cfg),
            **tracking.context_tags(device, torch.get_num_threads()),
            **({record.PARENT: sweep.parent_run_id} if sweep else {}),
        }
        run_params = {**params, **(data_params or {})}
        run_id, checkpoint = _open_run(client, experiment_id, cfg, run_params, name, tags, twins, checkpoint_file)
        if claim is not None:
            claim.note_run(run_id, name)
        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
        if cfg.mlflow.system_metrics and not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # two INFO lines per run otherwise
        # The active run: MLflow fluent calls in this job land in it. Resumed, its system metrics continue.
        mlflow.start_run(run_id=run_id, log_system_metrics=cfg.mlflow.system_metrics)
        log.info(f"MLflow run {run_id} ({name}) in experiment {cfg.mlflow.experiment} at {cfg.mlflow.tracking_uri}")
        _log_hydra_files(output_dir, logs=False)  # from the start: `analyze.py --command` works for any run

        status = "FINISHED"
        with signals.sigterm_interrupts():
            try:
                trial = search.job_trial(cfg)  # None unless an Optuna search launched this job
                if problem is not None:
                    raise problem
                objective = train_and_log(cfg, data, device, checkpoint, checkpoint_file, output_dir, trial)
            except search.Pruned as pruned:  # the search stopped an unpromising trial: its epochs so far stand
                log.info("%s", pruned)
                mlflow.set_tag(record.PRUNED, str(pruned))
                _log_hydra_files(output_dir)
                # Its checkpoint stays: this config trained in full later (a grid, --command) resumes this run.
                return JobOutcome("pruned", overrides, run_id, None, None, name, pruned.value)
            except BaseException as error:
                stop = signals.stop_of(error)
                status = stop.run if stop else "FAILED"
                traceback_file = output_dir / record.TRACEBACK_FILE
                traceback_file.write_text(traceback.format_exc())
                if stop is None and not isinstance(error, USER_ERRORS):
                    log.error("%s", traceback.format_exc())
                message = stop.reason if stop else f"{type(error).__name__}: {error}"
                try:
                    client.set_tag(run_id, record.ERROR, " ".join(message.split())[:5000])  # the run closes below
                    client.log_artifact(run_id, str(traceback_file))
                    _log_hydra_files(output_dir)
                except Exception as tracking_error:  # the store itself may be what failed
                    log.error("could not record the failure in MLflow: %s", tracking_error)
                if stop:
                    raise Interrupted(run_id, name, stop, error) from None
                return JobOutcome("failed", overrides, run_id, message, None, name)
            finally:
                try:
                    mlflow.end_run(status)
                except Exception as close_error:  # the store may be what failed; the run is recorded so far
                    log.error("could not close the MLflow run: %s", close_error)
        for run in twins:  # runs of this config a search pruned, now trained in full: tagged with their successor
            if run.info.run_id != run_id and record.PRUNED in run.data.tags:
                client.set_tag(run.info.run_id, record.SUPERSEDED_BY, run_id)
        return JobOutcome("finished", overrides, run_id, None, None, name, objective)
    finally:
        if claim is not None:
            claim.release(finished=status == "FINISHED")


def _skip(cfg, twins: list, overrides: list[str], known: set[str] | None = None) -> JobOutcome | None:
    """A skipped job's outcome if an identical run FINISHED; with force=true, one not `known` before the claim."""
    for run in twins:
        if run.info.status != "FINISHED" or record.PRUNED in run.data.tags:
            continue
        if cfg.force and (known is None or run.info.run_id in known):
            continue
        trained_by, now = run.data.tags.get(record.CODE_VERSION, "unrecorded code"), tracking.code_version()[1]
        other_code = "" if trained_by == now else f", trained by other code ({trained_by}; this is {now})"
        why = f"already FINISHED on the same data{other_code}; force=true trains it again"
        if cfg.force:
            why = "was trained by another launch while this one waited: with force=true, the new run this one asked for"
        info = run.info
        log.info(f"skipped: identical run {info.run_id} ({info.run_name}) {why}")
        return JobOutcome("skipped", overrides, info.run_id, None, None, info.run_name, objective_of(run.data.metrics))
    return None


def _say_waiting(force: bool, holder: dict[str, str]) -> None:
    run = holder.get("run") or "its run (not opened yet)"
    reuse = "reuses it as the new run force=true asks for" if force else "reuses it"
    log.info(
        f"waiting: {run}, the same config on the same data, is being trained by pid {holder.get('pid')} on "
        f"{holder.get('host')}; this job {reuse} once it finishes, or takes over if it stops"
    )


def variant_label(cfg) -> str:
    regularizers, scheduler = variant_name(cfg.regularizer), OmegaConf.select(cfg, "scheduler.name")
    return record.variant(cfg.model.name, regularizers, cfg.optimizer.name, scheduler)


def _open_run(client, experiment_id, cfg, params, name, tags, twins, checkpoint_file):
    """Resume the run a checkpoint belongs to (killed, failed or pruned), or start one; close runs left RUNNING."""
    checkpoint = None if cfg.force else checkpoints.load(checkpoint_file)
    unfinished = {r.info.run_id: r for r in twins if r.info.status != "FINISHED" or record.PRUNED in r.data.tags}
    if checkpoint is not None and checkpoint.run_id in unfinished:
        run_id = checkpoint.run_id
        tracking.forget_failure(client, unfinished[run_id])
        log.info("resuming run %s after epoch %d", run_id, checkpoint.progress.epochs_done)
    else:
        checkpoint = None
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    for run in twins:
        if run.info.status == "RUNNING" and run.info.run_id != run_id:
            # We hold the claim, so its process died without a checkpoint here: this run continues it.
            client.set_tag(run.info.run_id, record.ERROR, STOPS["abandoned"].reason.format(run_id=run_id))
            client.set_terminated(run.info.run_id, STOPS["abandoned"].run)
    return run_id, checkpoint


def train_and_log(
    cfg, data, device, checkpoint, checkpoint_file: Path, output_dir: Path, trial: search.JobTrial | None = None
) -> float | None:
    """A run's steps, as in pytorch/examples' mnist: model, optimizer, epochs, then the results."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.trainer.seed)
    built = build_model(cfg.model, layer_switches(cfg.regularizer))
    training = Training.from_config(built.model.to(device), cfg, device, data.train)
    log.info(
        f"{built.description}: {built.parameters} parameters (LeNet-5: {built.lenet5_parameters}); "
        f"data: {data.source} ({data.location}), {len(data.train)} train / {len(data.test)} test images; "
        f"{device}, {torch.get_num_threads()} threads"
    )
    datasets, run = logged_model.datasets(data), mlflow.active_run().info
    if checkpoint:  # resumed: the epochs a kill between checkpoint and log_metrics left unlogged are logged now
        state = checkpoint.restore(training)
        logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run.run_id, record.TEST_ACC)}
        for metrics in state.history:
            if metrics.epoch not in logged:
                mlflow.log_metrics(metrics.as_metrics(), step=metrics.epoch)
    else:  # a new run's record of what it trains and on which data
        state = TrainingState()
        regularizers, mean, std = variant_name(cfg.regularizer), training.inputs.mean, training.inputs.std
        values = (built.parameters, built.lenet5_parameters, built.description, regularizers, mean, std)
        mlflow.log_params(dict(zip(record.RESULT_PARAMS, map(str, values), strict=True)))  # in RESULT_PARAMS' order
        logged_model.log_datasets(datasets)
        if data.fallback:
            mlflow.set_tag(record.FALLBACK, data.fallback)
    batches = math.ceil(len(data.train) / cfg.trainer.batch_size)
    with console.ProgressBars(run.run_name, cfg.trainer.epochs, state.epochs_done, batches) as bars:

        def on_epoch_end(state: TrainingState) -> None:
            checkpoints.save(checkpoint_file, run.run_id, training, state)  # before logging: a resume fills the gap
            mlflow.log_metrics(state.history[-1].as_metrics(), step=state.history[-1].epoch)
            bars.epoch(state.history[-1])
            if trial is not None:
                trial.epoch_end(state.history)  # raises search.Pruned to stop an unpromising trial

        fit(training, data, cfg.trainer, state, on_epoch_end, bars.batch)

    predictions = _log_evaluations(cfg, training, data, datasets, state)
    # The config, history, curves, confusion matrix, the answer per image of each split, Hydra's files.
    title, folder = f"{built.description} ({variant_label(cfg)})", output_dir / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / record.CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    history = pd.DataFrame([{"epoch": m.epoch, **m.as_metrics()} for m in state.history])
    history.to_csv(folder / record.HISTORY_FILE, index=False)
    plots.learning_curves(state.history, title, folder / record.CURVES_FIGURE)
    counts = plots.confusion_matrix(data.test.labels.numpy(), predictions["test"].numpy())
    pd.DataFrame(counts).to_csv(folder / f"{record.CONFUSION}.csv", header=False, index=False)
    plots.confusion_figure(counts, f"{title}: test confusion matrix", folder / f"{record.CONFUSION}.png")
    for split, predicted in predictions.items():  # what significance needs to count the test images as noise
        scored = getattr(data, split)
        write_split(folder, split, predicted.numpy(), scored.labels.numpy(), scored.sha256)
    mlflow.log_artifacts(str(folder))
    _log_hydra_files(output_dir)
    checkpoint_file.unlink(missing_ok=True)  # the run is complete in MLflow; the weights live there now
    delivered = state.history[(state.best_epoch or state.epochs_done) - 1]
    return objective_of(delivered.as_metrics())


def objective_of(metrics: dict[str, float]) -> float | None:
    """What a sweeper maximizes: the validation accuracy, never the test's (no tuning on the test set)."""
    return metrics.get(record.VAL_ACC)


def _log_evaluations(cfg, training: Training, data, datasets, state: TrainingState) -> dict[str, torch.Tensor]:
    """Summary metrics and the delivered model with what it scores; returns its predictions per split."""
    model, inputs, device, batch = training.delivered, training.inputs, training.device, cfg.trainer.eval_batch_size
    splits = {"test": data.test, "validation": data.validation}
    scores = {key: evaluate(model, split, batch, inputs, device) for key, split in splits.items() if split is not None}
    # Per-epoch train metrics are running averages in training mode (dropout, augmentation): the gap needs this one.
    train_eval_loss, train_eval_acc, _ = evaluate(model, data.train, batch, inputs, device)
    summary = {
        record.BEST_TEST_ACC: max(m.test_acc for m in state.history),
        record.TRAIN_EVAL_LOSS: train_eval_loss,
        record.TRAIN_EVAL_ACC: train_eval_acc,
        record.TRAIN_TIME: state.train_time_s,
        # The process's peak so far: in a sweep's reused worker, the largest of its jobs up to this one.
        record.PEAK_RSS: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if training.early_stopping is not None:  # which epoch's weights are delivered, and when training ended
        summary.update({record.BEST_EPOCH: state.best_epoch, record.STOPPED_EPOCH: state.epochs_done})
    mlflow.log_metrics(summary, step=state.epochs_done)
    shipped = PixelClassifier(model, inputs.mean, inputs.std).eval()
    model_info = logged_model.log_model(shipped, data.test.images[:5], variant_label(cfg))
    for split, (loss, acc, _) in scores.items():  # each linked to the model and the split it scores
        metrics = dict(zip(FINAL_METRICS[split], (loss, acc), strict=True))
        mlflow.log_metrics(metrics, step=state.epochs_done, model_id=model_info.model_id, dataset=datasets[split])
    return {split: predicted for split, (_, _, predicted) in scores.items()}


def _log_hydra_files(output_dir: Path, logs: bool = True) -> None:
    """The job's composed config (.hydra/) and its log, as Hydra wrote them, under hydra/."""
    for path in [*(output_dir / ".hydra").glob("*.yaml"), *(output_dir.glob("*.log") if logs else [])]:
        mlflow.log_artifact(str(path), record.HYDRA_FOLDER)
