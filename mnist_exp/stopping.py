"""Stopping from outside: each stop's run, job and sweep status and what follows (STOPS, docs/stopping.md)."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

# What the job's process does once its run is closed; None: the job ends without a value, the sweep goes on.
RAISE = "raise"  # KeyboardInterrupt up to train.py (exit 130); in a sweep, every running job stops likewise
REQUEUE = "requeue"  # the process ends without a result: SLURM starts the job again, which resumes and finishes it


@dataclass(frozen=True)
class Stop:
    run: str  # the job's MLflow run status
    job: str  # the job's status (job_status.json, the sweep summary)
    sweep: str  # the sweep's parent run status
    reason: str  # on the run (tag mnist_exp.error) and in the sweep summary
    then: str | None = None  # RAISE, REQUEUE or None


RESUMES = "the same command resumes"
INTERRUPTED = f"interrupted (Ctrl-C or SIGTERM); {RESUMES} it"
PREEMPTED = "preempted: SLURM requeued the job, which resumes the run"
TIME_LIMIT = f"stopped at its time limit (hydra.launcher.timeout_min); {RESUMES} it"
WORKER_DIED = f"its worker process was {{cause}} (out of memory?); {RESUMES} its run"
REOPENED = "RUNNING, until the same command reopens it"
STOPS = {  # Stop(the job's MLflow run, the job, the sweep's parent run, the reason recorded, what follows)
    "interrupt": Stop("KILLED", "killed", "KILLED", INTERRUPTED, RAISE),
    "cancelled": Stop("KILLED", "killed", "FAILED", INTERRUPTED),
    "preempted": Stop("KILLED", "killed", "not stopped", PREEMPTED, REQUEUE),
    "time_limit": Stop("KILLED", "killed", "FAILED", TIME_LIMIT),
    "worker_died": Stop("FAILED", "failed", "FAILED", WORKER_DIED),
    "abandoned": Stop("KILLED", "none", REOPENED, "abandoned: superseded by run {run_id}"),
}


class Interrupted(KeyboardInterrupt):
    """A job stopped from outside while its run was open; carries the run, the stop and what raised it."""

    def __init__(self, run_id: str, name: str, stop: Stop, cause: BaseException):
        super().__init__(f"run {run_id}: {stop.reason}")
        self.run_id, self.run_name, self.stop, self.cause = run_id, name, stop, cause


class Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt, remembered (`received`); once=True ignores later ones."""

    def __init__(self, once: bool = False):
        self.once, self.received = once, None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._interrupt)

    def _interrupt(self, signum, frame) -> None:
        self.received = signum
        if self.once:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _raise_interrupt(signum, frame)


class JobSignals:
    """A job's side: SIGTERM stops it as Ctrl-C does; under submitit, preemption is noted before submitit requeues."""

    def __init__(self):
        self.submitit = bool(os.environ.get("SUBMITIT_EXECUTOR"))
        self.preempted = self.timed_out = False
        signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")) if self.submitit else None
        submitits = signal.getsignal(signum) if signum else None
        if callable(submitits):

            def note(number, frame):
                self.preempted = True
                # submitit's own verdict, taken first: SLURM's SIGTERM may interrupt its handler before it acts.
                judge = getattr(getattr(submitits, "__self__", None), "has_timed_out", None)
                self.timed_out = bool(judge and judge())
                submitits(number, frame)

            signal.signal(signum, note)

    def stop_of(self, error: BaseException) -> Stop | None:
        """Which stop `error` is, or None for an error of the job's own."""
        # Raised by submitit's USR2 handler (no preemption), or the limit's SIGTERM came before submitit acted.
        submitit = sys.modules.get("submitit.core.utils")  # loaded if it raised: never imported here (slow)
        time_limit = submitit is not None and isinstance(error, submitit.UncompletedJobError)
        if time_limit or (self.timed_out and not isinstance(error, SystemExit)):
            return STOPS["time_limit"]
        if self.preempted or isinstance(error, SystemExit):  # submitit requeues a preempted job, then exits
            return STOPS["preempted"]
        if isinstance(error, KeyboardInterrupt):
            return STOPS["cancelled" if self.submitit else "interrupt"]
        return None

    @contextmanager
    def sigterm_interrupts(self):
        """SIGTERM raises KeyboardInterrupt inside the block, unless this process's Interrupts already does."""
        previous = signal.getsignal(signal.SIGTERM)
        with ExitStack() as restore:
            if not isinstance(getattr(previous, "__self__", None), Interrupts):
                with suppress(ValueError):  # not the main thread (some launchers): leave signals alone
                    signal.signal(signal.SIGTERM, _raise_interrupt)
                    if previous is not None:  # None: a handler set outside Python, which cannot be put back
                        restore.callback(signal.signal, signal.SIGTERM, previous)
            yield


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
