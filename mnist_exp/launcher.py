"""hydra/launcher=parallel, for any Hydra app: jobs side by side in reused worker processes (docs/scaling.md)."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle  # the task function may live in __main__, and Hydra's plugin scan imports its classes twice
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_exp import grid, stopping

log = logging.getLogger(__name__)

STOP_GRACE_S = 60  # after Ctrl-C, how long workers get to close their runs before they are killed
SWEEP_DIR = {"job_dir_key": "hydra.sweep.dir", "job_subdir_key": "hydra.sweep.subdir"}


class WorkerDied(RuntimeError):
    """A job's worker process ended without its result (SIGKILL, the out-of-memory killer)."""


def plan(jobs: int, cores: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per job): one thread a job while jobs outnumber cores, else the cores shared out."""
    threads = threads or max(1, cores // max(1, min(jobs, cores)))
    workers = workers or max(1, cores // threads)
    return max(1, min(workers, jobs)), threads


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Job:
    index: int
    overrides: list[str]
    cost: float = 1.0  # launch_plan's
    threads: int | None = None  # launch_plan's: those the job asks for
    config: DictConfig | None = None  # composed when it starts
    name: str = ""
    epochs: int = 0
    epoch: int = 0
    result: JobReturn | None = None
    done_cost: float = 0.0


def launch(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    config, context = launcher.config, launcher.hydra_context
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    hooks = OmegaConf.get_type(config)
    launch_plan = getattr(hooks, "launch_plan", None)
    jobs = [Job(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
    if launch_plan is not None:  # one composition per distinct choice of groups, not one per job
        configs = grid.JobConfigs(config.hydra.job.config_name, context.config_loader)
        for job in jobs:
            job.cost, job.threads = launch_plan(configs(job.overrides))
    threads = launcher.threads_per_job or max((job.threads for job in jobs if job.threads), default=None)
    workers, threads = plan(len(jobs), available_cores(), launcher.workers, threads)

    def compose(job: Job) -> DictConfig:
        job.config = context.config_loader.load_sweep_config(config, job.overrides)
        with open_dict(job.config):
            job.config.hydra.job.id = job.config.hydra.job.num = job.index
        if launch_plan is not None:
            launch_plan(job.config, threads)
        return job.config

    if workers == 1:  # nothing to run side by side: this process runs them, as Hydra's basic launcher does
        log.info(f"Launching {len(jobs)} job(s) in this process with {threads} thread(s)")
        for job in jobs:
            log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
            job.result = run_job(
                hydra_context=context, task_function=launcher.task_function, config=compose(job), **SWEEP_DIR
            )
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)  # back out of the job's log file
        return [job.result for job in jobs]
    first = ", longest first" if launch_plan is not None else ""
    log.info(f"Launching {len(jobs)} jobs on {workers} workers x {threads} thread(s){first}")
    for job in jobs:
        log.info(f"\t#{job.index} : {' '.join(filter_overrides(job.overrides))}")
    display = SweepDisplay(jobs)
    with display.bar:  # the progress line ends with the sweep
        order = sorted(jobs, key=lambda job: -job.cost)  # stable: Hydra's order without the hook
        Pool(workers, threads, context, launcher.task_function).run(order, display, compose, hooks)
    return [job.result for job in jobs]


@dataclass
class Worker:
    process: Any
    tasks: Any  # its queue of (job index, job config); None ends it
    job: Job | None = None


class Pool:
    """Worker processes, each fed one job at a time; events from all of them arrive on one queue."""

    def __init__(self, size: int, threads: int, hydra_context, task_function):
        self.size, self.threads = size, threads
        self.payload = cloudpickle.dumps((hydra_context, task_function, Singleton.get_state()))
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or locks
        self.events = self.context.Queue()
        self.workers: list[Worker] = []

    def _start(self, number: int) -> Worker:
        tasks = self.context.Queue()
        # Not daemon: jobs may start processes of their own.
        process = self.context.Process(target=_worker, args=(number, tasks, self.events, self.threads, self.payload))
        process.start()
        return Worker(process, tasks)

    def run(self, order: list[Job], display: SweepDisplay, compose, hooks) -> None:
        """Every job of `order`, in that order, each composed as a worker takes it; then the workers end."""
        waiting, by_index = list(order), {job.index: job for job in order}
        worker_died = getattr(hooks, "worker_died", None)
        self.workers = [self._start(number) for number in range(min(self.size, len(order)))]
        try:
            while waiting or any(worker.job for worker in self.workers):
                for number, worker in enumerate(self.workers):
                    if worker.job is None and waiting and worker.process.is_alive():
                        worker.job = waiting.pop(0)
                        worker.tasks.put((worker.job.index, compose(worker.job)))
                    elif worker.job is not None and not worker.process.is_alive():  # SIGKILL, out of memory
                        job, pid, code = worker.job, worker.process.pid, worker.process.exitcode
                        cause = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                        died = WorkerDied(f"its worker process (pid {pid}) was {cause}")
                        job.result = JobReturn(overrides=job.overrides, status=JobStatus.FAILED)
                        job.result.return_value = died
                        if worker_died is not None:  # the task records it, and says what the job returns
                            job.result.status = JobStatus.COMPLETED
                            job.result.return_value = worker_died(job.config, pid, cause)
                        display.line(job, f"FAILED: {died}")
                        display.advance(job)
                        self.workers[number] = self._start(number)
                self._receive(by_index, display)
        except KeyboardInterrupt:
            display.message("interrupted: stopping every running job")
            busy = [worker for worker in self.workers if worker.job is not None and worker.process.is_alive()]
            for worker in busy:  # the terminal may have sent it already: workers take one
                os.kill(worker.process.pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_GRACE_S
            while any(worker.process.is_alive() for worker in busy) and time.monotonic() < deadline:
                self._receive(by_index, display)
            raise
        finally:
            for worker in self.workers:
                worker.tasks.put(None)  # ends it once its job is done
            for worker in self.workers:
                worker.process.join(timeout=10)
                if worker.process.is_alive():
                    worker.process.kill()

    def _receive(self, by_index: dict[int, Job], display: SweepDisplay) -> None:
        try:
            kind, number, index, payload = self.events.get(timeout=0.2)
        except queue.Empty:
            return
        job = by_index[index]
        if kind == "log":
            display.line(job, payload)
            return
        if kind == "progress":
            job.name, job.epochs, job.epoch = payload
        else:  # done
            job.result, self.workers[number].job = cloudpickle.loads(payload), None
        display.advance(job)


class Channel(logging.handlers.QueueHandler):
    """A job's console log handler: its log lines and progress, as (kind, worker, job, payload), to the launcher."""

    def __init__(self, events, number: int, index: int):
        super().__init__(events)
        self.number, self.index = number, index

    def enqueue(self, record: logging.LogRecord) -> None:  # record.msg: the line as formatted
        self.report("log", record.msg)

    def report(self, kind: str, payload) -> None:
        self.queue.put((kind, self.number, self.index, payload))


def _worker(number: int, tasks, events, threads: int, payload: bytes) -> None:
    """A worker process: runs the jobs it is given, one at a time, reporting to the launching process."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # before any library reads them
    stopping.Interrupts(once=True)  # the first Ctrl-C or SIGTERM stops the job; a second must not stop its cleanup
    hydra_context, task_function, singleton_state = cloudpickle.loads(payload)
    launcher = os.getppid()
    while os.getppid() == launcher:  # else the launching process died without telling us: end, do not linger
        try:
            task = tasks.get(timeout=1)
        except queue.Empty:
            continue
        except KeyboardInterrupt:
            return
        if task is None:
            return
        index, config = task
        setup_globals()
        Singleton.set_state(singleton_state)
        stopped, forwarded = False, _forward(task_function, events, number, index)
        try:
            result = run_job(hydra_context=hydra_context, task_function=forwarded, config=config, **SWEEP_DIR)
        except KeyboardInterrupt:  # the job closed what it had open; this worker ends
            result, stopped = JobReturn(overrides=list(config.hydra.overrides.task), status=JobStatus.FAILED), True
            result.return_value = KeyboardInterrupt()  # not the job's own: it may not survive pickling
        events.put(("done", number, index, cloudpickle.dumps(result)))
        if stopped:
            return


def _forward(task_function, events, number: int, index: int):
    """The task, a Channel in place of its console log handler (with none, the Channel sends progress only)."""

    def task(cfg):
        root, channel = logging.getLogger(), Channel(events, number, index)
        shown = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]
        channel.setLevel(shown[0].level if shown else logging.CRITICAL + 1)
        channel.setFormatter(shown[0].formatter if shown else None)
        for handler in shown:
            root.removeHandler(handler)
        root.addHandler(channel)
        return task_function(cfg)

    return task


class SweepDisplay:
    """One progress line for the sweep on a terminal, the jobs' log lines above it; else plain prefixed lines."""

    def __init__(self, jobs: list[Job]):
        from tqdm import tqdm

        self.jobs, shown = jobs, sys.stderr.isatty()
        # A terminal that never said its size reports 0 x 0, on which tqdm draws nothing.
        sized = shown and os.get_terminal_size(sys.stderr.fileno()).columns > 0
        size = {"dynamic_ncols": True} if sized else {"ncols": 120, "nrows": 24}
        bar_format = "{desc} | {elapsed} elapsed, ETA {remaining}"
        total = sum(job.cost for job in jobs)  # a disabled bar ignores updates
        self.bar = tqdm(total=total, file=sys.stderr, bar_format=bar_format, disable=not shown, **size)
        self._refresh()

    def line(self, job: Job, text: str) -> None:
        self.message("\n".join(f"[{job.name or '#' + str(job.index)}] {part}" for part in text.splitlines()))

    def message(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)
        sys.stdout.flush()

    def advance(self, job: Job) -> None:
        """The job started, finished an epoch, or ended."""
        progress = job.cost if job.result is not None else job.cost * job.epoch / max(1, job.epochs)
        self.bar.update(progress - job.done_cost)
        job.done_cost = progress
        self._refresh()

    def _refresh(self) -> None:
        running = [f"{j.name} (epoch {j.epoch}/{j.epochs})" for j in self.jobs if j.name and j.result is None]
        done = f"sweep {sum(job.result is not None for job in self.jobs)}/{len(self.jobs)} jobs done"
        self.bar.set_description_str(done + (f" | running: {', '.join(running)}" if running else ""), refresh=True)
