"""mnist_exp/stopping.py: each stop told apart by what raised it, real signals turned into interrupts, the
table shown to users in docs/stopping.md, and, through submitit's local executor, a preempted job requeued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Hold, job_runs
from submitit.core.utils import UncompletedJobError

from mnist_exp.stopping import STOPS, Interrupts, JobSignals


@pytest.fixture
def handlers():
    """Leave SIGINT, SIGTERM and SIGUSR2 as they were."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class UncompletedJobErrorLookalike(Exception):
    """Named as submitit's error, but not it: a name alone must not make a time limit."""


UncompletedJobErrorLookalike.__name__ = "UncompletedJobError"


class SubmititHandler:
    """Stands where submitit's requeueing handler is (a bound method of its SignalHandler, which judges the
    time-out with has_timed_out); the real class is checked to have that method."""

    def __init__(self, timed_out: bool):
        self.timed_out = timed_out

    def has_timed_out(self) -> bool:
        return self.timed_out

    def handle(self, signum, frame) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "submitit", "usr2", "stop"),
    [
        (KeyboardInterrupt(), False, None, "interrupt"),
        (KeyboardInterrupt(), True, None, "cancelled"),  # scancel's SIGTERM: the other jobs go on
        (KeyboardInterrupt(), True, "preempted", "preempted"),  # the SIGTERM that follows SLURM's requeue
        (KeyboardInterrupt(), True, "timed out", "time_limit"),  # the limit's SIGTERM before submitit acted
        (SystemExit(-1), True, None, "preempted"),  # submitit exits once it requeued the job
        (SystemExit(-1), True, "timed out", "preempted"),  # a time-out with retries left: requeued, it resumes
        (UncompletedJobError("timed-out too many times"), True, "timed out", "time_limit"),  # no requeue
        (UncompletedJobErrorLookalike(), True, None, None),
        (RuntimeError("boom"), False, None, None),
    ],
)
def test_each_stop_is_told_apart_by_what_raised_it(monkeypatch, handlers, error, submitit, usr2, stop):
    from submitit.core.job_environment import SignalHandler

    assert callable(getattr(SignalHandler, "has_timed_out", None)), "the verdict JobSignals asks submitit for"
    if submitit:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    else:
        monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    signal.signal(signal.SIGUSR2, SubmititHandler(timed_out=usr2 == "timed out").handle)
    signals = JobSignals()
    if usr2:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert signals.preempted is bool(usr2)
    assert signals.stop_of(error) is (STOPS[stop] if stop else None)


def test_sigterm_interrupts_a_job_only_while_its_run_is_open(handlers):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with pytest.raises(KeyboardInterrupt), JobSignals().sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_a_sweeps_interrupts_are_remembered_and_once_ignores_the_second(handlers):
    interrupts = Interrupts(once=True)
    with pytest.raises(KeyboardInterrupt), JobSignals().sigterm_interrupts():  # a job in the sweep's process
        os.kill(os.getpid(), signal.SIGTERM)
    assert interrupts.received == signal.SIGTERM, "the sweep, not only the job, knows it was interrupted"
    os.kill(os.getpid(), signal.SIGINT)  # ignored: it must not break the first one's cleanup


def test_docs_show_the_statuses_each_stop_gives():
    # The table's first and last columns (what stops it, how train.py exits) are written for people, by hand.
    page = (REPO / "docs" / "stopping.md").read_text()
    for stop in STOPS.values():
        cells = f"| {stop.run} | {stop.job} | {stop.sweep} |"
        assert cells in page, f"docs/stopping.md lacks, or differs from, stopping.STOPS's statuses:\n{cells}"
    assert page.count("\n| ") == 1 + len(STOPS), "a header and one row per stop, no other"


def submitit_task(sweep_dir: Path) -> int | None:
    """The pid of the process that runs a submitit job of this sweep (python -m submitit.core._submit)."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode() if entry.name.isdigit() else ""
        except OSError:
            continue
        if "submitit.core._submit" in command and str(sweep_dir) in command:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_resumes_its_run(project_dir):
    # USR2 long before timeout_min is a preemption: submitit requeues the job and exits with the local
    # executor's requeue code, which the job must pass on for the executor to start it again.
    sweep_dir = project_dir / "sweep"
    command = [
        "-m",
        "hydra/launcher=local_executor",
        "model=lenet5",
        "data.source=sample",
        "data.limit_train=300",
        "data.limit_test=100",
        "trainer.epochs=2",
        "trainer.threads=1",
        "mlflow.system_metrics=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    hold = Hold(project_dir / "hold", epoch=1)  # the job waits after epoch 1 until the signal lands
    # submitit's job imports mnist_exp from this checkout
    env = {**os.environ, **hold.env, "PYTHONPATH": f"{hold.env['PYTHONPATH']}{os.pathsep}{REPO}"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *command], cwd=project_dir, env=env, stdout=subprocess.PIPE, text=True
    )
    hold.wait(alive=process)
    os.kill(submitit_task(sweep_dir), signal.SIGUSR2)
    output, _ = process.communicate(timeout=300)

    assert process.returncode == 0, output[-3000:]
    assert "sweep summary: 1 finished, 0 skipped, 0 failed, 0 killed" in output
    (run,) = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert run.info.status == "FINISHED"
    log = "".join(p.read_text() for p in sweep_dir.rglob("*_log.out"))
    assert "this job is preempted" in log and f"resuming run {run.info.run_id} after epoch" in log
