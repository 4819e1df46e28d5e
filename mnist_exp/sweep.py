"""The sweep's protocol: preflight, parent run, jobs' status files, launcher hook, members, summary (docs/mlflow.md)."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist_exp import record, stopping, validation  # tracking (mlflow) imported where used: config errors stay instant

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
STATUS_FILE = "job_status.json"
IGNORED_OVERRIDES = ("force=", "mlflow.")  # the same sweep, re-run with force=true or logged elsewhere
NAMED_BY_VARIANT = ("model", "regularizer", "optimizer", "scheduler", "trainer.seed")  # already in every run's name
MAX_LISTED = 60  # members listed in the parent run's description; all of them are in record.MEMBERS_FILE
NOTE_LIMIT = 8_000  # MLflow's limit on a tag: it cuts a longer description, with a warning on stderr
MAX_RUN_NAME = 250  # MLflow's limit on a run name
FAILED = ("failed", "killed")  # job statuses that make the sweep fail
# An epoch's relative cost per image (convolutions against matrix products): the longest jobs start first.
MODEL_COST = {"lenet5": 5.0, "lenet5_32": 7.0, "mlp": 1.0}


@dataclass(frozen=True)
class SweepInfo:
    key: str  # identifies the sweep command: the same command reopens the same parent run
    name: str
    parent_run_id: str
    experiment_id: str
    launch_id: str  # this launch of the sweep: a reused sweep folder may hold statuses of earlier ones
    swept: list[str] = field(default_factory=list)  # the keys the sweep varies: they name its runs
    launcher: str = ""  # "host pid" of the launching process: one sweep folder serves one live launch


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job: written by the job to its folder, read back by the launching process."""

    status: str  # finished | skipped | failed | killed | pruned
    overrides: list[str]
    run_id: str | None
    error: str | None = None
    launch_id: str | None = None
    run_name: str | None = None
    objective: float | None = None  # the final validation accuracy, with a validation split


def swept_keys(task_overrides: list[str], sweeper_params: dict) -> list[str]:
    """Keys the sweep varies: its sweep overrides, and the sweeper's params the command line does not pin."""
    try:
        parsed = OverridesParser.create().parse_overrides(task_overrides)
    except Exception:  # Hydra reports a malformed override itself, with a better message
        parsed = []
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return keys + [str(key) for key in sweeper_params if str(key) not in {o.key_or_group for o in parsed}]


def sweep_identity(task_overrides: list[str], sweeper_params: dict | None = None) -> tuple[str, str]:
    """(key, name): the key ignores order, force and the store; the name leads with what the sweep varies."""
    kept = sorted(o for o in task_overrides if not o.startswith(IGNORED_OVERRIDES))
    swept = swept_keys(kept, sweeper_params or {})
    by_key = {override_key(o): o for o in kept}
    # A sweeper's expression without its blanks (tag(log,interval(0.001,0.3))): the name splits between overrides.
    choices = [by_key.get(key, f"{key}={''.join(str((sweeper_params or {}).get(key)).split())}") for key in swept]
    fixed = [_short_paths(o) for o in kept if override_key(o) not in swept]
    name = " ".join(choices) + (f" ({' '.join(fixed)})" if fixed and choices else " ".join(fixed))
    return hashlib.sha256((" ".join(kept) or "(defaults)").encode()).hexdigest()[:12], name or "(defaults)"


def run_name(variant: str, seed: int, overrides: list[str], swept: list[str], drawn: bool = False) -> str:
    """'mlp/none/adam lr=0.003 seed=0': the variant, then this job's other swept values (`drawn`: 3 figures)."""
    values = {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    shown = [key for key in swept if key in values and key not in NAMED_BY_VARIANT]
    # optimizer.lr -> lr, regularizer.dropout.p -> dropout.p: the group is clear from the value.
    extras = [f"{key.split('.', 1)[-1]}={_short_value(values[key], 3 if drawn else None)}" for key in shown]
    return " ".join([variant, *extras, f"seed={seed}"])


def override_key(override: str) -> str:
    """The key an override sets: 'optimizer.lr' of 'optimizer.lr=0.1', '+trainer.x=1' or '~data.limit_train'."""
    return override.split("=", 1)[0].lstrip("+~")


def _short_value(value: str, figures: int | None = None) -> str:
    if "/" in value:
        return value.rstrip("/").rsplit("/", 1)[-1]
    return significant(value, figures) if figures else value


def significant(value: str, figures: int = 3) -> str:
    """A number to `figures` significant figures where that is shorter (0.0228811 -> 0.0229); else as it is."""
    try:
        rounded = f"{float(value):.{figures}g}"
    except ValueError:
        return value
    return rounded if len(rounded) < len(value) else value


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut between words (never inside one), '…' marking the cut."""
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def _short_paths(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key}=…/{_short_value(value)}" if "/" in value else override


def read_sweep_info(sweep_dir: str) -> SweepInfo | None:
    path = Path(sweep_dir) / SWEEP_FILE
    return SweepInfo(**json.loads(path.read_text())) if path.exists() else None


def write_job_status(output_dir: Path, status: JobOutcome) -> None:
    (Path(output_dir) / STATUS_FILE).write_text(json.dumps(asdict(status), indent=2))


def read_job_statuses(sweep_dir: str, launch_id: str) -> list[JobOutcome]:
    statuses = [JobOutcome(**json.loads(p.read_text())) for p in sorted(Path(sweep_dir).rglob(STATUS_FILE))]
    return [status for status in statuses if status.launch_id == launch_id]


def launch_plan(cfg: DictConfig, threads: int | None = None) -> tuple[float, int | None]:
    """The parallel launcher's hook: a job's cost and the threads it asks for (given `threads` if it asks none)."""
    if threads is not None and cfg.trainer.threads is None:
        cfg.trainer.threads = threads
    images = cfg.data.limit_train or 60_000
    return cfg.trainer.epochs * images * MODEL_COST.get(cfg.model.name, 5.0), cfg.trainer.threads


def worker_died(config: DictConfig, pid: int, cause: str) -> None:
    """The parallel launcher's hook for a job whose worker died: its run closed FAILED, its status written."""
    from mnist_exp import tracking

    stop, run_id, name = stopping.STOPS["worker_died"], None, None
    reason = stop.reason.format(cause=cause)
    try:
        client, _ = tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
        run_id, name = tracking.fail_orphaned_run(client, pid, reason) or (None, None)
    except Exception as error:  # the store may be why it died: the summary still names the job
        log.warning("could not close the run of the dead worker: %s", error)
    output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
    output_dir.mkdir(parents=True, exist_ok=True)
    info = read_sweep_info(str(config.hydra.sweep.dir))
    overrides = list(config.hydra.overrides.task)
    write_job_status(output_dir, JobOutcome(stop.job, overrides, run_id, reason, info and info.launch_id, name))


def open_sweep_run(client, experiment_id: str, sweep_key: str, name: str, extends: str | None = None) -> str:
    """A sweep's parent run: the same command's, reopened unless a launch of it still runs (then one of its own)."""
    from mnist_exp import tracking

    # Microseconds: two sweeps launched in the same second must still order for `--sweep latest`.
    tags = {record.LAST_LAUNCH: datetime.now().isoformat(timespec="microseconds"), record.LAUNCHER: _this_launcher()}
    tags |= tracking.source_tags() | ({record.EXTENDS: extends} if extends else {})
    for run in _sweep_runs(client, experiment_id, sweep_key):
        if run.info.status != "RUNNING" or _launcher_alive(run.data.tags.get(record.LAUNCHER, "")) is False:
            client.update_run(run.info.run_id, status="RUNNING", name=name)
            for key, value in tags.items():
                client.set_tag(run.info.run_id, key, value)
            return run.info.run_id
    tags = {record.ROLE: "sweep", record.SWEEP_KEY: sweep_key, **tags}
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def _sweep_runs(client, experiment_id: str, sweep_key: str, **kwargs) -> list:
    query = f"tags.`{record.SWEEP_KEY}` = '{sweep_key}' and tags.`{record.ROLE}` = 'sweep'"
    return client.search_runs([experiment_id], filter_string=query, **kwargs)


def _this_launcher() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _launcher_alive(launcher: str) -> bool | None:
    """Whether the process that launched a sweep ("host pid") still runs; None on another host (unknown)."""
    from mnist_exp import tracking

    host, _, pid = launcher.partition(" ")
    return tracking.pid_alive(int(pid)) if host == socket.gethostname() and pid.isdigit() else None


def sweep_members(client, parent_run_id: str) -> set[str]:
    """Every run a sweep used, trained or reused, as its launching process listed them on the parent run."""
    if not any(a.path == record.MEMBERS_FILE for a in client.list_artifacts(parent_run_id)):
        return set()  # still running, or stopped before listing them: its nested runs are all there is
    with tempfile.TemporaryDirectory() as folder:
        members = json.loads(Path(client.download_artifacts(parent_run_id, record.MEMBERS_FILE, folder)).read_text())
    return {member["run_id"] for member in members}


def summarize(statuses: list[JobOutcome]) -> str:
    counts = Counter(job.status for job in statuses)  # pruned: trials an Optuna pruner stopped early
    shown = [f"{counts[s]} {s}" for s in ("finished", "skipped", "failed", "killed")]
    shown += [f"{counts['pruned']} pruned"] if counts["pruned"] else []
    lines = [f"sweep summary: {', '.join(shown)}"]
    for job in statuses:
        if job.status in FAILED:
            lines.append(f"  {job.status.upper()}: {' '.join(job.overrides) or '(defaults)'}: {job.error}")
    return "\n".join(lines)


def members_description(info: SweepInfo, statuses: list[JobOutcome], stopped: str | None) -> str:
    """The parent run's description in `mlflow ui`: every member, reused ones too, linked."""
    lines = [f"**Sweep** `{info.name}`", "", *([f"Stopped early: {stopped}.", ""] if stopped else [])]
    listed = [s for s in statuses if s.run_id]
    for i, job in enumerate(listed):
        verb = {"skipped": "reused (already FINISHED)"}.get(job.status, job.status)
        link = f"#/experiments/{info.experiment_id}/runs/{job.run_id}?workflowType=machine_learning"
        line = f"- [{job.run_name or job.run_id}]({link}): {verb}"
        if i == MAX_LISTED or sum(map(len, lines)) + len(lines) + len(line) > NOTE_LIMIT - 100:  # 100: the last line
            lines.append(f"- … and {len(listed) - i} more, listed in {record.MEMBERS_FILE}")
            break
        lines.append(line)
    return "\n".join(lines)


class LaunchCallback(Callback):
    """Hydra calls this around every launch of train.py, a single run or a `-m` sweep."""

    def __init__(self) -> None:
        self.open_sweep: tuple[DictConfig, SweepInfo] | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.experiment_id = _preflight(config, sweeping=False)[1]

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        from mnist_exp import tracking

        print(f"run: {tracking.ui_hint(config.mlflow.tracking_uri, self.experiment_id)}", flush=True)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweeper_params = dict(config.hydra.sweeper.get("params") or {})
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower() and not config.data.validation_size:
            _exit(
                "a hyperparameter search must not tune on the test set: hold out a validation split "
                "with data.validation_size=N (e.g. data.validation_size=1000)"
            )
        client, experiment_id = _preflight(config, sweeping=True)
        task_overrides = list(config.hydra.overrides.task)
        key, name = sweep_identity(task_overrides, sweeper_params)
        swept = swept_keys(task_overrides, sweeper_params)
        previous = read_sweep_info(config.hydra.sweep.dir)
        if previous and _launcher_alive(previous.launcher):
            _exit(
                f"hydra.sweep.dir={config.hydra.sweep.dir} is in use by a sweep still running (launched by "
                f"{previous.launcher}, as 'host pid'); wait for it, or give this one another folder"
            )
        extends = _extended_sweep(client, experiment_id, config.mlflow.extends)
        self.interrupts = stopping.Interrupts()  # before the parent run: _close reads it
        parent = open_sweep_run(client, experiment_id, key, clip(f"sweep: {name}", MAX_RUN_NAME), extends)
        info = SweepInfo(key, name, parent, experiment_id, uuid.uuid4().hex, swept, _this_launcher())
        (Path(config.hydra.sweep.dir) / SWEEP_FILE).write_text(json.dumps(asdict(info), indent=2))
        log.info("MLflow: experiment %s, sweep run %s (%s)", config.mlflow.experiment, parent, name)
        self.open_sweep = (config, info)
        atexit.register(self._close, early=True)  # Hydra rejected a job, or an interrupt: never leave it RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self._close():
            sys.exit(1)

    def _close(self, early: bool = False) -> bool:
        """Record the members and the summary on the parent run and close it, if open; True if any job failed."""
        from mnist_exp import tracking

        if self.open_sweep is None:  # closed, or on_multirun_start failed and said so
            return False
        (config, info), self.open_sweep = self.open_sweep, None
        statuses = read_job_statuses(config.hydra.sweep.dir, info.launch_id)
        interrupted = self.interrupts.received is not None
        reason = "for the reason printed on the console (e.g. Hydra rejected a job's config)"
        stopped = f"the launcher stopped after {len(statuses)} job(s), {reason}" if early else None
        if early and interrupted:
            stopped = stopping.STOPS["interrupt"].reason
        summary = summarize(statuses) + (f"\nsweep stopped early: {stopped}" if stopped else "")
        failed = any(j.status in FAILED for j in statuses)
        try:
            client, _ = tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
            client.log_text(info.parent_run_id, summary + "\n", record.SWEEP_SUMMARY)
            members = [asdict(s) for s in statuses if s.run_id]  # sweep_members reads them back
            client.log_dict(info.parent_run_id, members, record.MEMBERS_FILE)
            client.set_tag(info.parent_run_id, record.NOTE, members_description(info, statuses, stopped))
            for result in sorted(Path(config.hydra.sweep.dir).glob("*.yaml")):  # multirun.yaml; Optuna's best
                client.log_artifact(info.parent_run_id, str(result))
            status = "FAILED" if stopped or failed else "FINISHED"
            client.set_terminated(info.parent_run_id, stopping.STOPS["interrupt"].sweep if interrupted else status)
            url = tracking.ui_hint(config.mlflow.tracking_uri, info.experiment_id)
        except Exception as error:  # the store may be gone; the summary must still be printed
            url = f"(could not record the sweep in MLflow: {error})"
        print(f"{summary}\nruns: {url}", flush=True)
        return failed


def _extended_sweep(client, experiment_id: str, key: str | None) -> str | None:
    """The key of the sweep that mlflow.extends=KEY adds runs to: KEY, or the sweep KEY itself extends."""
    if not key:
        return None
    found = _sweep_runs(client, experiment_id, key, max_results=1)
    if not found:
        _exit(f"mlflow.extends={key}: no sweep of this experiment has that key; the report prints the one to give")
    return found[0].data.tags.get(record.EXTENDS, key)


def _preflight(config: DictConfig, sweeping: bool):
    """Fail before any job when a job's config, the store or the output folder is unusable; creating the store
    once here keeps parallel jobs from racing to create a fresh sqlite file (which corrupts it)."""
    if problems := validation.check_launch(config, sweeping=sweeping):  # a refused job: no run of this launch may exist
        _exit(*problems[:-1], problems[-1] + ("; nothing was launched" if sweeping else ""))
    from mnist_exp import tracking

    try:  # the store first: one that refuses writes leaves no output folder behind
        connected = tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
    except tracking.TrackingError as error:
        _exit(str(error))
    key = "hydra.sweep.dir" if sweeping else "hydra.run.dir"
    output_dir = OmegaConf.select(config, key)
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()  # a write test
    except OSError as error:
        _exit(
            f"cannot write the output folder {output_dir} ({key}): {error.strerror}; "
            f"run from a writable folder or set {key}=<writable folder>"
        )
    return connected


def _exit(*lines: str) -> None:
    for line in lines:
        print(f"train.py: error: {line}", file=sys.stderr, flush=True)
    sys.exit(1)
