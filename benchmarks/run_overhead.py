"""Per-run overhead: everything a run costs besides training, and `python train.py --help`.

    .venv/bin/python benchmarks/run_overhead.py            # ~1 minute
    .venv/bin/python benchmarks/run_overhead.py --smoke    # seconds (CI)

Part 1 times, in this process, the steps mnist_exp.experiment performs around the training of
one run, with the same calls and a fresh sqlite store in a temporary folder: compose the config,
tracking.connect, look for identical runs, create_run + log_params, the second log_params, one
epoch's checkpoint + log_metrics, the matplotlib figures, the artifact files, log_artifacts,
finish. The first run pays one-time costs (SQLAlchemy engine and schema check, matplotlib's first
figure); the table shows it and the median of the following runs, which is what every further
run of a sweep pays. The reference is the seed way of logging the same things: mlflow's fluent
API (start_run, log_param per key, log_metric per value, log_artifacts, end_run).

Part 2 times what a run does after its last epoch besides logging, on the 60k/10k course data:
experiment._log_results evaluates the test split again (for the confusion matrix) and the whole
training split (train_eval_*). With the figures, this is the pause between a LeNet-5 run's last
epoch line and the next job of a sweep.

Part 3 times whole processes: `python train.py --help`, importing mnist_exp.experiment, and a
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


class Clock:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, step: str, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[step] = self.times.get(step, 0.0) + time.perf_counter() - started
        return result


def one_run(clock: Clock, workdir: Path, index: int, model, data) -> None:
    """The non-training steps of mnist_exp.experiment.run_job + train_and_log + _log_results."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from mnist_exp import checkpoints, plots, tracking
    from mnist_exp.experiment import _history_csv
    from mnist_exp.training import EpochMetrics, Progress

    overrides = [f"trainer.seed={index}", f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
                 f"trainer.checkpoint_dir={workdir}/checkpoints", "trainer.epochs=1"]
    cfg = clock("compose config (Hydra)", benchlib.compose, overrides)
    params = tracking.flat_params(cfg)
    config_hash = tracking.config_hash(params)
    client, experiment_id = clock("tracking.connect", tracking.connect, cfg.mlflow.tracking_uri, cfg.mlflow.experiment)
    clock("runs_with_config (search_runs)", tracking.runs_with_config, client, experiment_id, config_hash)
    tags = {tracking.CONFIG_HASH: config_hash, tracking.VARIANT_HASH: config_hash, tracking.VARIANT: "lenet5/none/sgd"}
    run_id = clock("create_run + log_params", lambda: (
        rid := tracking.create_run(client, experiment_id, f"bench {index}", tags),
        tracking.log_params(client, rid, params))[0])
    clock("log_params (resolved: sizes, hashes)", tracking.log_params, client, run_id,
          {f"data.extra_{i}": str(i) for i in range(11)})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    progress = Progress([EpochMetrics(1, 0.5, 0.9, 0.4, 0.91, 1.0)], 1.0)
    checkpoint_file = checkpoints.checkpoint_path(cfg.trainer.checkpoint_dir, config_hash)
    clock("per epoch: checkpoint (fsync)", checkpoints.save, checkpoint_file, run_id, model, optimizer, progress)
    clock("per epoch: log_metrics", tracking.log_metrics, client, run_id, progress.history[-1].as_metrics(), 1)
    clock("summary log_metrics", tracking.log_metrics, client, run_id,
          {"best_test_acc": 0.9, "train_eval_loss": 0.3, "train_eval_acc": 0.9, "train_time_s": 1.0}, 1)
    folder = workdir / "outputs" / str(index) / "artifacts"
    folder.mkdir(parents=True)

    def files():
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (folder / "history.csv").write_text(_history_csv(progress))
        np.savetxt(folder / "confusion_matrix.csv", counts, fmt="%d", delimiter=",")
        torch.save(model.state_dict(), folder / "model_state.pt")

    labels = data.test.labels.numpy()
    counts = plots.confusion_matrix(labels, labels)
    clock("figure: learning curves", plots.learning_curves, progress.history, "bench", folder / "learning_curves.png")
    clock("figure: confusion matrix", plots.confusion_figure, counts, "bench", folder / "confusion_matrix.png")
    clock("artifact files (yaml, csv, weights)", files)
    clock("log_artifacts", tracking.log_artifacts, client, run_id, folder)
    clock("finish", tracking.finish, client, run_id, "FINISHED")
    clock("remove checkpoint", checkpoints.remove, checkpoint_file)


def seed_run(clock: Clock, workdir: Path, index: int, params: dict, folder: Path) -> None:
    """The same bookkeeping the seed way: mlflow's fluent API, one call per value."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment("seed")
    with mlflow.start_run(run_name=f"seed {index}"):
        for key, value in params.items():
            mlflow.log_param(key, value)
        for key, value in {"train_loss": 0.5, "train_acc": 0.9, "test_loss": 0.4, "test_acc": 0.91,
                           "epoch_time_s": 1.0}.items():
            mlflow.log_metric(key, value, step=1)
        mlflow.log_artifacts(str(folder))


def final_evaluations(repeats: int) -> None:
    """The evaluations experiment._log_results runs after training, on full-size data."""
    import torch

    from mnist_exp import training
    from mnist_exp.training import InputPipeline, evaluate

    folder = benchlib.course_dataset(*benchlib.FULL_SIZES)
    data = benchlib.load_course(folder, benchlib.CACHE / "tensor-cache")
    inputs, cpu, channels_last = InputPipeline(benchlib.MEAN, benchlib.STD), torch.device("cpu"), training._channels_last
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
            rows.append([name, label, best[label, "test"], best[label, "train"], best[label, "test"] + best[label, "train"]])
    print(benchlib.table(
        ["model", "evaluate", f"test split again, {len(data.test)} (s)", f"train split, {len(data.train)} (s)",
         "total (s)"], rows, "After the last epoch: experiment._log_results's evaluations (batch 1000)"))


def wall(command: list[str], repeats: int, cwd: Path) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
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
        importlib.import_module("mnist_exp.experiment")  # torch, mlflow, matplotlib: what a job imports

        import_time = time.perf_counter() - started
        from mnist_exp.data import load_mnist
        from mnist_exp.models import Features, LeNet5

        data = load_mnist(benchlib.compose([f"data.cache_dir={workdir}/cache", "data.source=sample"]).data)
        model = LeNet5("relu", Features())
        from mnist_exp import tracking

        started = time.perf_counter()  # what the sweep's preflight does once per store
        tracking.connect(f"sqlite:///{workdir}/mlflow.db", "mnist-exp")
        store_creation = time.perf_counter() - started
        clocks = []
        for index in range(args.runs):
            clock = Clock()
            one_run(clock, workdir, index, model, data)
            clocks.append(clock)
        seed_clocks = []
        params = tracking.flat_params(benchlib.compose([]))
        for index in range(args.runs):
            clock = Clock()
            clock("seed: fluent mlflow, one call per value", seed_run, clock, workdir, index, params,
                  workdir / "outputs" / "0" / "artifacts")
            seed_clocks.append(clock)

        steps = list(clocks[0].times)
        rows = []
        for step in steps:
            later = [c.times[step] for c in clocks[1:]] or [clocks[0].times[step]]
            rows.append([step, clocks[0].times[step], statistics.median(later)])
        first_total = sum(clocks[0].times.values())
        later_total = statistics.median([sum(c.times.values()) for c in clocks[1:]] or [first_total])
        rows.append(["TOTAL per run (ours)", first_total, later_total])
        seed_key = "seed: fluent mlflow, one call per value"
        seed_later = statistics.median([c.times[seed_key] for c in seed_clocks[1:]] or [seed_clocks[0].times[seed_key]])
        rows.append([seed_key + " (logging only)", seed_clocks[0].times[seed_key], seed_later])
        print(benchlib.table(["step", "first run (s)", "later runs, median (s)"], rows,
                             f"Per-run overhead in one process, {args.runs} runs, {len(params)} params"))
        print(f"(in this process: importing mnist_exp.experiment took {import_time:.2f} s; creating the "
              f"sqlite store, once per store, {store_creation:.2f} s)")

        if not args.smoke:
            final_evaluations(args.repeats)

        run_dir = workdir / "e2e"
        run_dir.mkdir()
        rows = [["python train.py --help", wall([PYTHON, TRAIN, "--help"], args.repeats, run_dir)]]
        if not args.smoke:  # the rest starts torch several times: tens of seconds
            tiny = [PYTHON, TRAIN, "data.source=sample", "data.limit_train=64", "data.limit_test=64",
                    "trainer.epochs=1", f"data.cache_dir={workdir}/cache", "force=true",
                    f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db"]
            connect = ("import time; from mnist_exp import tracking; t = time.perf_counter(); "
                       f"tracking.connect('sqlite:///{workdir}/mlflow.db', 'mnist-exp'); "
                       "print(time.perf_counter() - t)")
            in_child = min(float(subprocess.run([PYTHON, "-c", connect], capture_output=True, text=True,
                                                check=True).stdout.split()[-1]) for _ in range(args.repeats))
            rows += [
                ["python -c pass", wall([PYTHON, "-c", "pass"], args.repeats, run_dir)],
                ["python -c 'import torch'", wall([PYTHON, "-c", "import torch"], args.repeats, run_dir)],
                ["python -c 'import mnist_exp.experiment'",
                 wall([PYTHON, "-c", "import mnist_exp.experiment"], args.repeats, run_dir)],
                ["  tracking.connect to an existing store, first call in a process", in_child],
                ["python train.py, 64 images x 1 epoch (existing store)", wall(tiny, args.repeats, run_dir)],
            ]
        print(benchlib.table(["process", "seconds (best)"], rows, "Whole processes"))


if __name__ == "__main__":
    main()
