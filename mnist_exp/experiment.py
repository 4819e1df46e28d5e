"""One Hydra job, top to bottom: skip it, resume it or train it, and always close its MLflow run.

A failure is recorded on the run (FAILED, the error as a tag, the traceback as an artifact)
and reported to the sweep, which goes on with the other jobs.
"""

from __future__ import annotations

import logging
import math
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mnist_exp import checkpoints, plots, tracking
from mnist_exp.console import RunProgress
from mnist_exp.data import load_mnist
from mnist_exp.formats import DataError
from mnist_exp.models import build_model
from mnist_exp.regularization import model_features, train_augmentation, variant_name, weight_decay
from mnist_exp.sweep import JobStatus, SweepInfo, read_sweep_info, write_job_status
from mnist_exp.training import Diverged, InputPipeline, Progress, evaluate, fit, make_optimizer, resolve_device
from mnist_exp.validation import ConfigError, validate

log = logging.getLogger("mnist_exp")

# Errors whose message says everything the user needs; anything else also prints its traceback.
USER_ERRORS = (ConfigError, DataError, tracking.TrackingError, Diverged)


@dataclass
class JobOutcome:
    status: str  # finished | skipped | failed | killed
    run_id: str | None
    objective: float | None  # final val_acc with a validation split, else final test_acc
    error: str | None = None


def run_hydra_job(cfg: DictConfig) -> float | None:
    """The task function behind train.py. Returns the run's objective, the value Optuna maximizes:
    the final validation accuracy when data.validation_size holds some out, else the test accuracy."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep = read_sweep_info(hydra_cfg.sweep.dir) if multirun else None
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    launch_id = sweep.launch_id if sweep else None
    try:
        outcome = run_job(cfg, sweep, output_dir)
    except tracking.TrackingError as error:  # no MLflow run could be opened to record it on
        outcome = JobOutcome("failed", None, None, str(error))
    except KeyboardInterrupt:
        write_job_status(str(output_dir), JobStatus("killed", overrides, None, "interrupted", launch_id))
        raise
    write_job_status(str(output_dir), JobStatus(outcome.status, overrides, outcome.run_id, outcome.error, launch_id))
    if outcome.status == "failed":
        log.error("FAILED: %s", outcome.error)
        if not multirun:
            raise SystemExit(1)  # the message above says it all; no Hydra traceback on top
    return outcome.objective


def run_job(cfg: DictConfig, sweep: SweepInfo | None, output_dir: Path) -> JobOutcome:
    params = tracking.flat_params(cfg)
    config_hash = tracking.config_hash(params)
    client, experiment_id = tracking.connect(cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    membership = {tracking.sweep_tag(sweep.key): "1"} if sweep else {}
    existing = tracking.runs_with_config(client, experiment_id, config_hash)

    finished = [run for run in existing if run.info.status == "FINISHED"]
    if finished and not cfg.force:
        run = finished[0]
        if membership:
            tracking.set_tags(client, run.info.run_id, membership)
        log.info("skipped: identical run %s already FINISHED (force=true trains it again)", run.info.run_id)
        return JobOutcome("skipped", run.info.run_id, objective_of(run.data.metrics))

    checkpoint_file = checkpoints.checkpoint_path(cfg.trainer.checkpoint_dir, config_hash)
    run_id, checkpoint = _open_run(client, experiment_id, cfg, params, config_hash, existing, checkpoint_file, sweep)
    if membership:
        tracking.set_tags(client, run_id, membership)

    previous_sigterm = _sigterm_raises_interrupt()
    try:
        objective = train_and_log(cfg, client, run_id, checkpoint, checkpoint_file, output_dir)
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        traceback_file = output_dir / "traceback.txt"
        traceback_file.write_text(traceback.format_exc())
        if not isinstance(error, USER_ERRORS + (KeyboardInterrupt,)):
            log.error("%s", traceback.format_exc())
        try:
            tracking.record_failure(client, run_id, error, traceback_file, status)
        except Exception as tracking_error:  # the store itself may be what failed
            log.error("could not record the failure in MLflow: %s", tracking_error)
        if isinstance(error, KeyboardInterrupt):
            raise
        return JobOutcome("failed", run_id, None, f"{type(error).__name__}: {error}")
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return JobOutcome("finished", run_id, objective)


def variant_label(cfg) -> str:
    """model/regularizer/optimizer, e.g. lenet5/l2+dropout/sgd: how runs, bars and tables name a variant."""
    return f"{cfg.model.name}/{variant_name(cfg.regularizer)}/{cfg.optimizer.name}"


def _open_run(client, experiment_id, cfg, params, config_hash, existing, checkpoint_file, sweep):
    """Resume the run a checkpoint belongs to, or start a new one; close runs a kill left RUNNING."""
    checkpoint = None if cfg.force else checkpoints.load(checkpoint_file)
    unfinished = {run.info.run_id: run for run in existing if run.info.status != "FINISHED"}
    if checkpoint is not None and checkpoint.run_id in unfinished:
        run_id = checkpoint.run_id
        client.update_run(run_id, status="RUNNING")
        if tracking.ERROR in unfinished[run_id].data.tags:
            client.delete_tag(run_id, tracking.ERROR)  # the error of the attempt being resumed
        log.info("resuming run %s after epoch %d", run_id, checkpoint.progress.epochs_done)
    else:
        checkpoint = None
        tags = {
            tracking.CONFIG_HASH: config_hash,
            tracking.VARIANT_HASH: tracking.config_hash(params, ignore=("trainer.seed",)),
            tracking.VARIANT: variant_label(cfg),
            **({tracking.PARENT: sweep.parent_run_id} if sweep else {}),
        }
        run_id = tracking.create_run(client, experiment_id, f"{variant_label(cfg)} seed={cfg.trainer.seed}", tags)
        tracking.log_params(client, run_id, params)
    for run in existing:
        if run.info.status == "RUNNING" and run.info.run_id != run_id:
            # Its process died before its first checkpoint (or it was run with force=true): it can
            # only be continued by this run, so it must not stay RUNNING forever.
            tracking.set_tags(client, run.info.run_id, {tracking.ERROR: f"abandoned: superseded by run {run_id}"})
            tracking.finish(client, run.info.run_id, "KILLED")
    return run_id, checkpoint


def train_and_log(cfg, client, run_id: str, checkpoint, checkpoint_file: Path, output_dir: Path) -> float:
    validate(cfg)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(cfg.trainer.device)

    data = load_mnist(cfg.data)
    torch.manual_seed(cfg.trainer.seed)
    built = build_model(cfg.model, model_features(cfg.regularizer))
    model = built.model.to(device)
    optimizer = make_optimizer(model, cfg.optimizer, weight_decay(cfg.regularizer))
    log.info(
        "%s: %d parameters (LeNet-5: %d); data: %s (%s), %d train / %d test images; %s, %d threads",
        built.description, built.parameters, built.lenet5_parameters, data.source, data.location,
        len(data.train), len(data.test), device, torch.get_num_threads(),
    )
    progress = Progress() if checkpoint is None else _resume(client, run_id, checkpoint, data, model, optimizer)
    tracking.log_params(client, run_id, {
        "model.parameters": str(built.parameters),
        "model.lenet5_parameters": str(built.lenet5_parameters),
        "model.description": built.description,
        "regularizer.name": variant_name(cfg.regularizer),
        "data.resolved_source": data.source,
        "data.location": data.location,
        "data.train_size": str(len(data.train)),
        "data.test_size": str(len(data.test)),
        "data.validation_size_used": str(len(data.validation) if data.validation is not None else 0),
        "data.train_sha256": data.train.sha256,
        "data.test_sha256": data.test.sha256,
        "trainer.resolved_device": str(device),
        "trainer.resolved_threads": str(torch.get_num_threads()),
    })
    if data.fallback:
        tracking.set_tags(client, run_id, {tracking.FALLBACK: data.fallback})

    inputs = InputPipeline(cfg.data.mean, cfg.data.std, train_augmentation(cfg.regularizer))
    batches = math.ceil(len(data.train) / cfg.trainer.batch_size)
    title = variant_label(cfg)
    with RunProgress(title, cfg.trainer.epochs, progress.epochs_done, batches) as display:

        def on_epoch_end(progress: Progress) -> None:
            checkpoints.save(checkpoint_file, run_id, model, optimizer, progress)  # before logging: see _resume
            metrics = progress.history[-1]
            tracking.log_metrics(client, run_id, metrics.as_metrics(), step=metrics.epoch)
            display.epoch(metrics)

        fit(model, optimizer, data, cfg.trainer, inputs, device, progress, on_epoch_end, display.batch)

    _log_results(cfg, client, run_id, model, data, inputs, device, progress, f"{built.description} ({title})",
                 output_dir / "artifacts")
    tracking.finish(client, run_id, "FINISHED")
    checkpoints.remove(checkpoint_file)  # the run is complete in MLflow; the weights live there now
    return objective_of(progress.history[-1].as_metrics())


def objective_of(metrics: dict[str, float]) -> float | None:
    """What a sweeper maximizes: validation accuracy when a validation split is held out, else test accuracy."""
    return metrics.get("val_acc", metrics.get("test_acc"))


def _resume(client, run_id: str, checkpoint, data, model, optimizer) -> Progress:
    recorded = client.get_run(run_id).data.params
    if (recorded.get("data.train_sha256"), recorded.get("data.test_sha256")) != (data.train.sha256, data.test.sha256):
        raise DataError(
            f"the data changed since run {run_id} was checkpointed, so it cannot be resumed; "
            "add force=true to train from scratch"
        )
    model.load_state_dict(checkpoint.model_state)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    logged = tracking.logged_steps(client, run_id, "test_acc")
    for metrics in checkpoint.progress.history:  # a kill between checkpoint and log_metrics leaves a gap
        if metrics.epoch not in logged:
            tracking.log_metrics(client, run_id, metrics.as_metrics(), step=metrics.epoch)
    return checkpoint.progress


def _log_results(cfg, client, run_id, model, data, inputs, device, progress: Progress, title: str, folder: Path):
    """Summary metrics and the artifacts: config, history, curves, confusion matrix, weights."""
    _, _, predictions = evaluate(model, data.test, cfg.trainer.eval_batch_size, inputs, device)
    # Per-epoch train metrics are running averages in training mode (dropout on, images augmented);
    # the generalization gap needs the finished model's accuracy on the training images themselves.
    train_eval_loss, train_eval_acc, _ = evaluate(model, data.train, cfg.trainer.eval_batch_size, inputs, device)
    tracking.log_metrics(client, run_id, {
        "best_test_acc": max(m.test_acc for m in progress.history),
        "train_eval_loss": train_eval_loss,
        "train_eval_acc": train_eval_acc,
        "train_time_s": progress.train_time_s,
    }, step=progress.epochs_done)

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "history.csv").write_text(_history_csv(progress))
    plots.learning_curves(progress.history, title, folder / "learning_curves.png")
    counts = plots.confusion_matrix(data.test.labels.numpy(), predictions.numpy())
    np.savetxt(folder / "confusion_matrix.csv", counts, fmt="%d", delimiter=",")
    plots.confusion_figure(counts, f"{title}: test confusion matrix", folder / "confusion_matrix.png")
    torch.save(model.state_dict(), folder / "model_state.pt")
    tracking.log_artifacts(client, run_id, folder)


def _history_csv(progress: Progress) -> str:
    rows = [{"epoch": m.epoch, **m.as_metrics()} for m in progress.history]
    lines = [",".join(rows[0])] + [",".join(str(value) for value in row.values()) for row in rows]
    return "\n".join(lines) + "\n"


def _sigterm_raises_interrupt():
    """Turn SIGTERM (SLURM preemption, `kill`) into KeyboardInterrupt so the run is closed as KILLED."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (some launchers): leave signals alone
        return None
