"""What MLflow's system metrics (mlflow.system_metrics=true, a sample every 2 s) cost a run.

    .venv/bin/python benchmarks/system_metrics.py            # ~2 minutes
    .venv/bin/python benchmarks/system_metrics.py --smoke    # seconds (CI)

Part 1 times one sample as MLflow's monitor thread takes it, against a sqlite store: reading
CPU, memory, disk and network (and GPU where present) with psutil, then reading the run (the
monitor checks it is still RUNNING) and logging the values. Its share of a run's time is that
sample's cost divided by the sampling interval: what the thread takes from training.

Part 2 runs the real job (mnist_exp.job.run_job) in this process, alternately with system metrics
on and off, on the offline sample (LeNet-5): the difference of the medians, as a share of a run
with them off, is the cost seen end to end (noisier than part 1 on a busy machine).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import benchlib


def cpu_and_wall(repeats: int, fn) -> tuple[float, float]:
    """The least CPU time (this thread's) and wall time of `repeats` calls of fn()."""
    cpu, wall = [], []
    for _ in range(repeats):
        started_cpu, started = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return min(cpu), min(wall)


def one_sample(workdir: Path, repeats: int) -> list[list]:
    """CPU and wall seconds of each step of one sample, best of `repeats`; the share is CPU time's:
    what the monitor thread takes from training (waiting on sqlite's file takes no CPU)."""
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from mnist_exp.job import SYSTEM_METRICS_INTERVAL_S

    store = f"sqlite:///{workdir}/mlflow.db"
    client = mlflow.MlflowClient(store)
    run_id = client.create_run(client.create_experiment("sample")).info.run_id
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=store)

    def publish():
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()

    monitor.collect_metrics()  # psutil's first CPU reading only starts its clock
    collect = cpu_and_wall(repeats, monitor.collect_metrics)
    read = cpu_and_wall(repeats, lambda: client.get_run(run_id))
    collect_and_log = cpu_and_wall(repeats, lambda: (monitor.collect_metrics(), publish()))  # logs need a sample
    log = tuple(both - alone for both, alone in zip(collect_and_log, collect))
    total = tuple(map(sum, zip(collect, read, log)))
    share = f"{100 * total[0] / SYSTEM_METRICS_INTERVAL_S:.2f}%"
    return [
        ["read the machine (psutil)", *collect, ""],
        ["read the run (is it RUNNING?)", *read, ""],
        ["log the sample's values", *log, ""],
        [f"one sample, every {SYSTEM_METRICS_INTERVAL_S} s", *total, share],
    ]


def one_run(workdir: Path, index: int, on: bool, size: list[str]) -> tuple[float, float]:
    """The real job with system metrics on or off: (wall s, train_time_s)."""
    import mlflow

    from mnist_exp import job
    from mnist_exp.stopping import JobSignals

    cfg = benchlib.compose(
        [
            f"trainer.seed={index}",
            f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"trainer.checkpoint_dir={workdir}/checkpoints",
            "data.source=sample",
            "force=true",
            f"data.cache_dir={workdir}/cache",
            f"mlflow.system_metrics={str(on).lower()}",
            *size,
        ]
    )
    output_dir = workdir / "outputs" / f"{index}-{on}"
    output_dir.mkdir(parents=True)
    started = time.perf_counter()
    outcome = job.run_job(cfg, None, output_dir, [], JobSignals())
    seconds = time.perf_counter() - started
    assert outcome.status == "finished", outcome
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(outcome.run_id)
    assert on == any(key.startswith("system/") for key in run.data.metrics), "system metrics not as asked"
    return seconds, run.data.metrics["train_time_s"]


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="runs with and without system metrics, alternating")
    p.add_argument("--repeats", type=int, default=20, help="repeats of each step of a sample (best kept)")
    args = p.parse_args()
    if args.smoke:
        args.pairs, args.repeats = 1, 3
        os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "0.1"  # a smoke run ends long before 2 s
    size = (
        ["model=mlp", "data.limit_train=64", "data.limit_test=64", "trainer.epochs=1"]
        if args.smoke
        else ["model=lenet5", "trainer.epochs=2"]
    )
    benchlib.set_threads(args.threads)
    print(f"# {benchlib.machine_line()}")

    with tempfile.TemporaryDirectory(prefix="mnist-exp-system-metrics-") as temporary:
        workdir = Path(temporary)
        os.chdir(workdir)  # MLflow puts a new experiment's artifacts in ./mlruns
        rows = one_sample(workdir, args.repeats)
        print(
            benchlib.table(
                ["step", "CPU s (best)", "wall s (best)", "CPU share of the interval"],
                rows,
                "One system metrics sample, as MLflow's monitor thread takes it",
            )
        )

        one_run(workdir, 0, True, size)  # warm-up: one-time costs (imports, first figure, store creation)
        timings = {True: [], False: []}
        for index in range(1, args.pairs + 1):
            for on in (True, False) if index % 2 else (False, True):
                timings[on].append(one_run(workdir, index, on, size))
        rows = []
        for label, column in (("whole job (run_job)", 0), ("  of which training (train_time_s)", 1)):
            on, off = (statistics.median(t[column] for t in timings[state]) for state in (True, False))
            rows.append([label, off, on, f"{100 * (on - off) / off:+.1f}%"])
        print(
            benchlib.table(
                ["step", "off, median (s)", "on, median (s)", "cost"],
                rows,
                f"Runs with system metrics on and off, {args.pairs} each, {' '.join(size)}",
            )
        )


if __name__ == "__main__":
    main()
