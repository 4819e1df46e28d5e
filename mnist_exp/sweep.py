"""Launch-level bookkeeping, run by Hydra in the launching process around a run or a `-m` sweep.

Before any job starts it checks the output folder, creates the MLflow store and experiment
once (parallel jobs racing to create a fresh sqlite store corrupt it) and opens the sweep's
parent run. Jobs find the
parent through a small file in the sweep folder, which works with every launcher. At the end
it prints what happened to each job and exits non-zero if any failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
STATUS_FILE = "job_status.json"
IGNORED_OVERRIDES = ("force=", "mlflow.")  # the same sweep, re-run with force=true or logged elsewhere


@dataclass(frozen=True)
class SweepInfo:
    key: str  # identifies the sweep command: the same command reopens the same parent run
    name: str
    parent_run_id: str
    experiment_id: str
    launch_id: str  # this launch of the sweep: a reused sweep folder may hold statuses of earlier ones


@dataclass(frozen=True)
class JobStatus:
    status: str  # finished | skipped | failed | killed
    overrides: list[str]
    run_id: str | None
    error: str | None = None
    launch_id: str | None = None


def sweep_identity(task_overrides: list[str]) -> tuple[str, str]:
    kept = sorted(o for o in task_overrides if not o.startswith(IGNORED_OVERRIDES))
    name = " ".join(kept) or "(defaults)"
    return hashlib.sha256(name.encode()).hexdigest()[:12], name


def read_sweep_info(sweep_dir: str) -> SweepInfo | None:
    path = Path(sweep_dir) / SWEEP_FILE
    return SweepInfo(**json.loads(path.read_text())) if path.exists() else None


def write_job_status(output_dir: str, status: JobStatus) -> None:
    (Path(output_dir) / STATUS_FILE).write_text(json.dumps(asdict(status), indent=2))


def read_job_statuses(sweep_dir: str, launch_id: str) -> list[JobStatus]:
    statuses = [JobStatus(**json.loads(p.read_text())) for p in sorted(Path(sweep_dir).rglob(STATUS_FILE))]
    return [status for status in statuses if status.launch_id == launch_id]


def summarize(statuses: list[JobStatus]) -> str:
    counts = {s: sum(1 for j in statuses if j.status == s) for s in ("finished", "skipped", "failed", "killed")}
    lines = [f"sweep summary: {', '.join(f'{n} {s}' for s, n in counts.items())}"]
    for job in statuses:
        if job.status in ("failed", "killed"):
            lines.append(f"  {job.status.upper()}: {' '.join(job.overrides) or '(defaults)'}: {job.error}")
    return "\n".join(lines)


class LaunchCallback(Callback):
    """Hydra calls this around every launch of train.py, a single run or a `-m` sweep."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _preflight(config, config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        client, experiment_id = _preflight(config, config.hydra.sweep.dir, "hydra.sweep.dir")
        from mnist_exp import tracking

        key, name = sweep_identity(list(config.hydra.overrides.task))
        parent = tracking.open_sweep_run(client, experiment_id, key, f"sweep: {name}"[:250])
        info = SweepInfo(key, name, parent, experiment_id, uuid.uuid4().hex)
        (Path(config.hydra.sweep.dir) / SWEEP_FILE).write_text(json.dumps(asdict(info), indent=2))
        log.info("MLflow: experiment %s, sweep run %s (%s)", config.mlflow.experiment, parent, name)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from mnist_exp import tracking

        info = read_sweep_info(config.hydra.sweep.dir)
        if info is None:  # on_multirun_start failed, and said so
            return
        statuses = read_job_statuses(config.hydra.sweep.dir, info.launch_id)
        summary = summarize(statuses)
        failed = any(j.status in ("failed", "killed") for j in statuses)
        client, _ = tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
        client.log_text(info.parent_run_id, summary + "\n", "sweep_summary.txt")
        for result in sorted(Path(config.hydra.sweep.dir).glob("*.yaml")):  # multirun.yaml; Optuna's best
            client.log_artifact(info.parent_run_id, str(result))
        tracking.finish(client, info.parent_run_id, "FAILED" if failed else "FINISHED")
        print(summary, flush=True)
        if failed:
            sys.exit(1)


def _preflight(config: DictConfig, output_dir: str, key: str):
    """Fail before any job with one line when the output folder or the tracking store is unusable.

    Creating the store here, once, also keeps parallel jobs from racing to create a fresh sqlite file.
    """
    from mnist_exp import tracking

    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(output_dir) / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        _exit(f"cannot write the output folder {output_dir} ({key}): {error.strerror}; "
              f"run from a writable folder or set {key}=<writable folder>")
    try:
        return tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
    except tracking.TrackingError as error:
        _exit(str(error))


def _exit(message: str) -> None:
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
