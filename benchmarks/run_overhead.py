"""Per-run overhead: everything a run costs besides training, and `python train.py --help`.

    .venv/bin/python benchmarks/run_overhead.py            # ~1 minute
    .venv/bin/python benchmarks/run_overhead.py --smoke    # seconds (CI)

Part 1 runs the real job (mnist_exp.job.run_job) in this process on 64 images for one
epoch, against a fresh sqlite store in a temporary folder, and subtracts the run's own training
time: what remains is the per-run overhead (identity lookup, run, params, datasets, checkpoint,
metrics, final evaluations, the MLflow model, figures, artifacts). The first run pays one-time
costs (SQLAlchemy's engine, the optimizer's torch._dynamo import, the first model's pickling,
matplotlib's first figure); the table shows it and the median of the following runs, which is
what every further run of a sweep's worker pays. The reference is the seed way of logging: mlflow's
fluent API, one call per value.

Part 2 times what a run does after its last epoch besides logging, on the 60k/10k course data:
job._log_evaluations evaluates the test split again (for the confusion matrix) and the whole
training split (train_eval_*). With the figures, this is the pause between a LeNet-5 run's last
epoch line and the next job of a sweep.

Part 3 times whole processes: `python train.py --help`, importing mnist_exp.job, and a
run with ~0 training work (64 images, 1 epoch) end to end.
"""

from __future__ import annotations

import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

PYTHON = sys.executable
TRAIN = str(benchlib.ROOT / "train.py")


def one_run(workdir: Path, index: int) -> tuple[float, float, float]:
    """The real job (mnist_exp.job.run_job) on 64 images for 1 epoch: (wall s, training s, model logging s)."""
    import mlflow

    from mnist_exp import job, logged_model
    from mnist_exp.stopping import JobSignals

    cfg = benchlib.compose(
        [
            f"trainer.seed={index}",
            f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            f"trainer.checkpoint_dir={workdir}/checkpoints",
            "trainer.epochs=1",
            "data.source=sample",
            "data.limit_train=64",
            "data.limit_test=64",
            f"data.cache_dir={workdir}/cache",
        ]
    )
    output_dir = workdir / "outputs" / str(index)
    output_dir.mkdir(parents=True)
    log_model, timed = logged_model.log_model, {}

    def timed_log_model(*args):
        started = time.perf_counter()
        result = log_model(*args)
        timed["s"] = time.perf_counter() - started
        return result

    job.logged_model.log_model = timed_log_model
    try:
        started = time.perf_counter()
        outcome = job.run_job(cfg, None, output_dir, [], JobSignals())
        seconds = time.perf_counter() - started
    finally:
        job.logged_model.log_model = log_model
    assert outcome.status == "finished", outcome
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(outcome.run_id)
    return seconds, run.data.metrics["train_time_s"], timed["s"]


def seed_run(workdir: Path, index: int, params: dict, folder: Path) -> None:
    """The same bookkeeping the seed way: mlflow's fluent API, one call per value."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("seed")
    with mlflow.start_run(run_name=f"seed {index}"):
        for key, value in params.items():
            mlflow.log_param(key, value)
        for key, value in {
            "train_loss": 0.5,
            "train_acc": 0.9,
            "test_loss": 0.4,
            "test_acc": 0.91,
            "epoch_time_s": 1.0,
        }.items():
            mlflow.log_metric(key, value, step=1)
        mlflow.log_artifacts(str(folder))


def final_evaluations(repeats: int) -> None:
    """The evaluations job._log_evaluations runs after training, on full-size data."""
    import torch

    from mnist_exp import training
    from mnist_exp.training import InputPipeline, evaluate

    folder = benchlib.course_dataset(*benchlib.FULL_SIZES)
    data = benchlib.load_course(folder, benchlib.CACHE / "tensor-cache")
    inputs, cpu, channels_last = (
        InputPipeline(benchlib.MEAN, benchlib.STD),
        torch.device("cpu"),
        training._channels_last,
    )
    layouts = {"NCHW batches": lambda x: x, "as shipped": channels_last}
    rows = []
    for name in ("lenet5", "mlp"):
        model, _ = benchlib.build(name)
        best = {(label, split): float("inf") for label in layouts for split in ("test", "train")}
        for _ in range(repeats + 1):  # interleaved; the first round warms up
            for label, layout in layouts.items():
                training._channels_last = layout
                try:
                    for split in ("test", "train"):
                        seconds = benchlib.best_of(1, lambda: evaluate(model, getattr(data, split), 1000, inputs, cpu))
                        best[label, split] = min(best[label, split], seconds)
                finally:
                    training._channels_last = channels_last
        for label in layouts:
            rows.append(
                [name, label, best[label, "test"], best[label, "train"], best[label, "test"] + best[label, "train"]]
            )
    print(
        benchlib.table(
            [
                "model",
                "evaluate",
                f"test split again, {len(data.test)} (s)",
                f"train split, {len(data.train)} (s)",
                "total (s)",
            ],
            rows,
            "After the last epoch: job._log_evaluations's evaluations (batch 1000)",
        )
    )


def wall(command: list[str], repeats: int, cwd: Path) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            command,
            cwd=cwd,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=6, help="simulated runs (the first pays one-time costs)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each subprocess timing (best kept)")
    args = p.parse_args()
    if args.smoke:
        args.runs, args.repeats = 2, 1
    benchlib.set_threads(args.threads)
    print(f"# {benchlib.machine_line()}")

    with tempfile.TemporaryDirectory(prefix="mnist-exp-overhead-") as temporary:
        workdir = Path(temporary)
        started = time.perf_counter()
        importlib.import_module("mnist_exp.job")  # torch, mlflow, matplotlib: what a job imports

        import_time = time.perf_counter() - started
        from mnist_exp import record, tracking

        started = time.perf_counter()  # what the sweep's preflight does once per store
        tracking.connect(f"sqlite:///{workdir}/mlflow.db", "mnist-exp")
        store_creation = time.perf_counter() - started
        measured = [one_run(workdir, index) for index in range(args.runs)]
        seed_times = []
        params = record.flat_params(benchlib.compose([]))
        (workdir / "artifacts").mkdir()
        (workdir / "artifacts" / "history.csv").write_text("epoch,test_acc\n1,0.9\n")
        for index in range(args.runs):
            started = time.perf_counter()
            seed_run(workdir, index, params, workdir / "artifacts")
            seed_times.append(time.perf_counter() - started)

        def row(label, values):
            return [label, values[0], statistics.median(values[1:] or values)]

        rows = [
            row("whole job (run_job), 64 images x 1 epoch", [m[0] for m in measured]),
            row("  of which training (train_time_s)", [m[1] for m in measured]),
            row("  of which logging the MLflow model", [m[2] for m in measured]),
            row("per-run overhead: whole job - training", [m[0] - m[1] for m in measured]),
            row("seed: fluent mlflow, one call per value (logging only)", seed_times),
        ]
        print(
            benchlib.table(
                ["step", "first run (s)", "later runs, median (s)"],
                rows,
                f"Per-run overhead in one process, {args.runs} runs, {len(params)} params",
            )
        )
        print(
            f"(in this process: importing mnist_exp.job took {import_time:.2f} s; creating the "
            f"sqlite store, once per store, {store_creation:.2f} s)"
        )

        if not args.smoke:
            final_evaluations(args.repeats)

        run_dir = workdir / "e2e"
        run_dir.mkdir()
        rows = [["python train.py --help", wall([PYTHON, TRAIN, "--help"], args.repeats, run_dir)]]
        if not args.smoke:  # the rest starts torch several times: tens of seconds
            tiny = [
                PYTHON,
                TRAIN,
                "data.source=sample",
                "data.limit_train=64",
                "data.limit_test=64",
                "trainer.epochs=1",
                f"data.cache_dir={workdir}/cache",
                "force=true",
                f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            ]
            connect = (
                "import time; from mnist_exp import tracking; t = time.perf_counter(); "
                f"tracking.connect('sqlite:///{workdir}/mlflow.db', 'mnist-exp'); "
                "print(time.perf_counter() - t)"
            )
            in_child = min(
                float(
                    subprocess.run([PYTHON, "-c", connect], capture_output=True, text=True, check=True).stdout.split()[
                        -1
                    ]
                )
                for _ in range(args.repeats)
            )
            rows += [
                ["python -c pass", wall([PYTHON, "-c", "pass"], args.repeats, run_dir)],
                ["python -c 'import torch'", wall([PYTHON, "-c", "import torch"], args.repeats, run_dir)],
                [
                    "python -c 'import mnist_exp.job'",
                    wall([PYTHON, "-c", "import mnist_exp.job"], args.repeats, run_dir),
                ],
                ["  tracking.connect to an existing store, first call in a process", in_child],
                ["python train.py, 64 images x 1 epoch (existing store)", wall(tiny, args.repeats, run_dir)],
            ]
        print(benchlib.table(["process", "seconds (best)"], rows, "Whole processes"))


if __name__ == "__main__":
    main()
