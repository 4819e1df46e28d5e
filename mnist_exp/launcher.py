"""The default launcher of `train.py -m`: jobs side by side on the cores this process may use.

The launch callback has checked every job's config before the sweep began (mnist_exp/grid.py); here
each job's cost is estimated from its fast composition (grid.JobConfigs), the longest jobs start first,
each is composed by Hydra as it starts, and worker processes, started once and reused, each run one
job at a time with `threads` torch threads. Workers send their log lines and epochs to this
process, which prints them prefixed with the job's name, never interleaved mid-line, under one
progress line for the whole sweep on a terminal. Ctrl-C stops every worker: each closes its run
KILLED, and the same command resumes them (mnist_exp/stopping.py: what each stop does). Hydra finds
it through hydra_plugins/mnist_exp.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

from mnist_exp import grid

log = logging.getLogger(__name__)

# Relative cost of one epoch (LeNet-5's convolutions against the MLP's matrix products), to start
# the longest jobs first so the sweep does not end on one long job with a core left idle.
MODEL_COST = {"lenet5": 5.0, "lenet5_32": 7.0, "mlp": 1.0}
STOP_GRACE_S = 60  # after Ctrl-C, how long workers get to close their runs before they are killed


def plan(jobs: int, cores: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, torch threads per job): one thread per job while there are more jobs than cores,
    the spare cores shared out among the jobs otherwise (a single job gets every core)."""
    threads = threads or max(1, cores // max(1, min(jobs, cores)))
    workers = workers or max(1, cores // threads)
    return max(1, min(workers, jobs)), threads


def job_cost(cfg: DictConfig) -> float:
    """Roughly proportional to a job's run time: its epochs times its images times its model's cost."""
    images = cfg.data.limit_train or 60_000
    return cfg.trainer.epochs * images * MODEL_COST.get(cfg.model.name, 5.0)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Job:
    index: int
    overrides: list[str]
    cost: float
    threads: int | None  # as the job's config requests (trainer.threads)
    config: DictConfig | None = None  # composed when it starts
    name: str = ""
    epochs: int = 0
    epoch: int = 0
    result: JobReturn | None = None
    done_cost: float = field(default=0.0)


class ParallelLauncher(Launcher):
    def __init__(self, workers: int | None = None, threads_per_job: int | None = None) -> None:
        self.workers, self.threads_per_job = workers, threads_per_job
        self.config = self.task_function = self.hydra_context = None
        self.threads = 1  # each job's torch threads where its config leaves them to the launcher

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = grid.JobConfigs(self.config.hydra.job.config_name, self.hydra_context.config_loader)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            config = configs(overrides)
            jobs.append(Job(initial_job_idx + i, list(overrides), job_cost(config), config.trainer.threads))
        requested = {j.threads for j in jobs} - {None}
        workers, self.threads = plan(
            len(jobs), available_cores(), self.workers, self.threads_per_job or (max(requested) if requested else None)
        )
        if workers == 1:  # nothing to run side by side: this process runs them, as Hydra's basic launcher does
            log.info(f"Launching {len(jobs)} job(s) in this process with {self.threads} thread(s)")
            return [self._run_here(job) for job in jobs]
        log.info(f"Launching {len(jobs)} jobs on {workers} workers x {self.threads} thread(s), longest first")
        for job in jobs:
            log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
        order = sorted(jobs, key=lambda j: -j.cost)
        with Pool(workers, self.threads, self.hydra_context, self.task_function) as pool, SweepDisplay(jobs) as display:
            pool.run(order, display, self._compose)
        return [job.result for job in jobs]

    def _run_here(self, job: Job) -> JobReturn:
        log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
        result = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=self._compose(job),
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        # As Hydra's BasicLauncher does: back to the launcher's logging, out of this job's log file.
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return result

    def _compose(self, job: Job) -> DictConfig:
        """The job's config, as Hydra composes it, when it starts."""
        job.config = self.hydra_context.config_loader.load_sweep_config(self.config, job.overrides)
        with open_dict(job.config):
            job.config.hydra.job.id = job.index
            job.config.hydra.job.num = job.index
            if job.config.trainer.threads is None:  # the job logs the threads it was given
                job.config.trainer.threads = self.threads
        return job.config


class Pool:
    """Worker processes, each fed one job at a time; events from all of them arrive on one queue."""

    def __init__(self, size: int, threads: int, hydra_context, task_function):
        self.size, self.threads = size, threads
        import cloudpickle  # the task function lives in train.py's __main__: plain pickle cannot ship it

        self.payload = cloudpickle.dumps((hydra_context, task_function, Singleton.get_state()))
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or locks
        self.events = self.context.Queue()
        self.workers: dict[int, tuple[Any, Any, Job | None]] = {}  # worker id -> (process, its task queue, job)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        for process, tasks, _ in self.workers.values():
            if process.is_alive():
                tasks.put(None)
        for process, _, _ in self.workers.values():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def _start(self, worker_id: int) -> None:
        tasks = self.context.Queue()
        process = self.context.Process(
            target=_worker,
            args=(worker_id, tasks, self.events, self.threads, self.payload),
            name=f"mnist-exp worker {worker_id}",
        )  # not daemon: jobs fork decoders
        process.start()
        self.workers[worker_id] = (process, tasks, None)

    def run(self, order: list[Job], display: SweepDisplay, compose) -> None:
        """Every job of `order`, in that order, each composed (compose(job)) as a worker takes it."""
        waiting, by_index = list(order), {job.index: job for job in order}
        for worker_id in range(min(self.size, len(order))):
            self._start(worker_id)
        try:
            while waiting or any(job is not None for _, _, job in self.workers.values()):
                for worker_id, (process, tasks, job) in list(self.workers.items()):
                    if job is None and waiting and process.is_alive():
                        job = waiting.pop(0)
                        tasks.put((job.index, compose(job)))
                        self.workers[worker_id] = (process, tasks, job)
                    elif job is not None and not process.is_alive():  # died without a word (out of memory?)
                        reason = _close_dead_job(job, process)
                        # COMPLETED with no value, as a failed job returns: Hydra raises nothing of its own
                        job.result = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED, _return_value=None)
                        display.line(job, f"FAILED: {reason}")
                        display.finished(job)
                        self._start(worker_id)
                self._receive(by_index, display)
        except KeyboardInterrupt:
            self._stop(display)
            raise

    def _receive(self, by_index: dict[int, Job], display: SweepDisplay) -> None:
        try:
            kind, worker_id, index, payload = self.events.get(timeout=0.2)
        except queue.Empty:
            return
        job = by_index[index]
        if kind == "log":
            display.line(job, payload)
        elif kind == "start":
            job.name, job.epochs, job.epoch = payload
            display.advance(job)
        elif kind == "epoch":
            job.epoch = payload
            display.advance(job)
        elif kind == "done":
            import cloudpickle

            job.result = cloudpickle.loads(payload)
            process, tasks, _ = self.workers[worker_id]
            self.workers[worker_id] = (process, tasks, None)
            display.finished(job)

    def _stop(self, display: SweepDisplay) -> None:
        """Ctrl-C or SIGTERM: every running job closes its run KILLED; then the workers end."""
        display.message(
            "interrupted: stopping every job (their runs are closed as KILLED; the same command resumes them)"
        )
        for process, _, job in self.workers.values():
            if process.is_alive() and job is not None:
                os.kill(process.pid, signal.SIGINT)  # the terminal may have sent one already: workers take one
        deadline = time.monotonic() + STOP_GRACE_S
        while any(p.is_alive() for p, _, j in self.workers.values() if j is not None) and time.monotonic() < deadline:
            try:
                kind, worker_id, index, payload = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "done":
                process, tasks, _ = self.workers[worker_id]
                self.workers[worker_id] = (process, tasks, None)


def _close_dead_job(job: Job, process) -> str:
    """A job whose worker died without reporting (SIGKILL, the out-of-memory killer): its run is closed
    FAILED with the cause (the same command resumes it) and its status written for the sweep's summary."""
    from mnist_exp import tracking
    from mnist_exp.stopping import STOPS
    from mnist_exp.sweep import JobOutcome, read_sweep_info, write_job_status

    code, stop = process.exitcode, STOPS["worker_died"]
    reason = stop.reason.format(
        cause=f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    )
    run_id, name = None, job.name or None
    try:
        client, _ = tracking.connect(job.config.mlflow.tracking_uri, job.config.mlflow.experiment)
        run_id, name = tracking.fail_orphaned_run(client, process.pid, reason) or (None, name)
    except Exception as error:  # the store may be why it died: the summary still names the job
        log.warning("could not close the run of the dead worker: %s", error)
    output_dir = Path(str(job.config.hydra.sweep.dir)) / str(job.config.hydra.sweep.subdir)
    output_dir.mkdir(parents=True, exist_ok=True)
    info = read_sweep_info(str(job.config.hydra.sweep.dir))
    launch_id = info.launch_id if info else None
    write_job_status(output_dir, JobOutcome(stop.job, job.overrides, run_id, reason, launch_id, name))
    return reason


def _worker(worker_id: int, tasks, events, threads: int, payload: bytes) -> None:
    """A worker process: runs the jobs it is given, one at a time, reporting to the launching process."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # before torch is imported
    from mnist_exp.stopping import Interrupts

    Interrupts(once=True)  # the first Ctrl-C or SIGTERM stops the job; a second must not stop its cleanup
    import cloudpickle

    hydra_context, task_function, singleton_state = cloudpickle.loads(payload)
    launcher = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=1)
        except queue.Empty:
            if os.getppid() != launcher:  # the launching process died without telling us: end, do not linger
                return
            continue
        except KeyboardInterrupt:
            return
        if task is None:
            return
        index, config = task
        setup_globals()
        Singleton.set_state(singleton_state)
        try:
            result = run_job(
                hydra_context=hydra_context,
                task_function=_forward_logs(task_function, events, worker_id, index),
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        except KeyboardInterrupt:  # the job closed its run as KILLED and wrote its status
            result = JobReturn(
                overrides=list(config.hydra.overrides.task), status=JobStatus.FAILED, _return_value=KeyboardInterrupt()
            )
            events.put(("done", worker_id, index, cloudpickle.dumps(result)))
            return
        # cloudpickle: Hydra's plugin scan imports its config classes twice, which plain pickle refuses
        events.put(("done", worker_id, index, cloudpickle.dumps(result)))


def _forward_logs(task_function, events, worker_id: int, index: int):
    """Run the task with its console log lines and progress sent to the launching process, through a
    console.Channel that replaces its console log handler (or, with none, sends progress only)."""

    def task(cfg):
        from mnist_exp.console import Channel

        root, channel = logging.getLogger(), Channel(events, worker_id, index)
        shown = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]
        channel.setLevel(shown[0].level if shown else logging.CRITICAL + 1)
        channel.setFormatter(shown[0].formatter if shown else None)
        for handler in shown:
            root.removeHandler(handler)
        root.addHandler(channel)
        return task_function(cfg)

    return task


class SweepDisplay:
    """One progress line for the whole sweep on a terminal (jobs done, running jobs and their epoch,
    elapsed, ETA), the jobs' log lines above it; plain prefixed lines without a terminal."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs
        self.total = sum(job.cost for job in jobs)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            # A terminal that never said its size reports 0 x 0, on which tqdm draws nothing.
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            self.bar = tqdm(
                total=self.total,
                file=sys.stderr,
                leave=True,
                dynamic_ncols=sized,
                ncols=None if sized else 120,
                nrows=None if sized else 24,
                bar_format="{desc} | {elapsed} elapsed, ETA {remaining}",
            )
            self._refresh()

    def __enter__(self) -> SweepDisplay:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def line(self, job: Job, text: str) -> None:
        prefix = f"[{job.name or '#' + str(job.index)}] "
        self.message("\n".join(prefix + part for part in text.splitlines()))

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def finished(self, job: Job) -> None:
        job.epoch = job.epochs
        self.advance(job, done=True)

    def advance(self, job: Job, done: bool = False) -> None:
        """The job started or finished an epoch."""
        progress = job.cost if done else job.cost * job.epoch / max(1, job.epochs)
        if self.bar is not None:
            self.bar.update(progress - job.done_cost)
            self._refresh()
        job.done_cost = progress

    def _refresh(self) -> None:
        finished = sum(1 for job in self.jobs if job.result is not None)
        running = [
            f"{job.name} (epoch {job.epoch}/{job.epochs})" for job in self.jobs if job.name and job.result is None
        ]
        self.bar.set_description_str(
            f"sweep {finished}/{len(self.jobs)} jobs done" + (f" | running: {', '.join(running)}" if running else ""),
            refresh=True,
        )
