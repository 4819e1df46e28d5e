"""mnist_exp/stopping.py: each stop told apart by what raised it, real signals turned into interrupts, the
table shown to users in docs/stopping.md, and, through submitit's local executor, SLURM's time limit."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import REPO, job_runs, run_script
from submitit.core.utils import UncompletedJobError

from mnist_exp import stopping
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


@pytest.mark.parametrize(
    ("error", "submitit", "preempted", "stop"),
    [
        (KeyboardInterrupt(), False, False, "interrupt"),
        (KeyboardInterrupt(), True, False, "cancelled"),  # scancel's SIGTERM: the other jobs go on
        (KeyboardInterrupt(), True, True, "preempted"),  # the SIGTERM that follows SLURM's requeue
        (SystemExit(-1), True, False, "preempted"),  # submitit exits once it requeued the job
        (UncompletedJobError("timed-out too many times"), True, True, "time_limit"),  # USR2 noted, yet no requeue
        (UncompletedJobErrorLookalike(), True, False, None),
        (RuntimeError("boom"), False, False, None),
    ],
)
def test_each_stop_is_told_apart_by_what_raised_it(monkeypatch, handlers, error, submitit, preempted, stop):
    if submitit:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    else:
        monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    signal.signal(signal.SIGUSR2, lambda *_: None)  # stands where submitit's requeueing handler is
    signals = JobSignals()
    if preempted:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert signals.preempted is preempted
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


def test_docs_show_the_same_table():
    page = (REPO / "docs" / "stopping.md").read_text()
    for stop in STOPS.values():
        row = f"| {stop.event} | {stop.run} | {stop.job} | {stop.sweep} | {stop.exit} |"
        assert row in page, f"docs/stopping.md lacks, or differs from, stopping.STOPS's row:\n{row}"
    assert page.count("\n| ") == 1 + len(STOPS), "a header and one row per stop, no other"
    assert stopping.__doc__ and "docs/stopping.md" in stopping.__doc__


@pytest.mark.slow
def test_a_submitit_job_at_its_time_limit_closes_its_run_killed_and_the_sweep_goes_on(project_dir):
    # The local executor sends USR2 signal_delay_s before timeout_min, as SLURM does; under a
    # 1-minute limit submitit counts it as the time limit and raises UncompletedJobError in the job.
    sweep_dir = project_dir / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=local_executor",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=40",
        "model=mlp",
        "data.source=sample",
        "data.limit_train=2000",
        "data.limit_test=200",
        "trainer.epochs=500",
        "trainer.threads=1",
        "mlflow.system_metrics=false",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=project_dir,
        timeout=120,
    )

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep summary: 0 finished, 0 skipped, 0 failed, 1 killed" in result.stdout
    assert STOPS["time_limit"].reason in result.stdout, "the summary names the time limit, not a preemption"
    assert "stopped early" not in result.stdout, "the job ended with a result: the launcher did not fail"
    (run,) = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert run.info.status == "KILLED"
    assert run.data.tags["mnist_exp.error"] == STOPS["time_limit"].reason
    (status,) = [json.loads(p.read_text()) for p in Path(sweep_dir).rglob("job_status.json")]
    assert (status["status"], status["error"]) == ("killed", STOPS["time_limit"].reason)
