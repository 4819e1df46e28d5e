"""The README's grid through train.py: the default launcher against Hydra's sequential one and joblib.

    .venv/bin/python benchmarks/grid.py                  # 6 runs x 10 epochs x 60k images, twice each: ~15 minutes
    .venv/bin/python benchmarks/grid.py --epochs 2 --repeats 1
    .venv/bin/python benchmarks/grid.py --smoke          # 1-job sweeps, 1 epoch x 1k images (CI)

Runs `train.py -m model=lenet5,mlp regularizer=none,l2,dropout` in a temporary folder (its own
sqlite store, checkpoints and Hydra outputs) on the 60k-image course tar of benchmarks/.cache, with
the decoded-tensor cache filled before timing (benchmarks/data_prep.py times the cold decode):
  1. the plain command: the default launcher (mnist_exp/launcher.py) picks workers and threads;
  2. hydra/launcher=basic: Hydra's sequential launcher, one job at a time with every core;
  3. hydra/launcher=joblib hydra.launcher.n_jobs=2 trainer.threads=1: the previous way to go parallel.
The launchers take turns (1, 2, 3, 1, 2, 3, ...) so a drift of the machine hits them alike. For each
sweep: wall time, and the CPU time of the whole process tree (/usr/bin/time's user and system
seconds, which count every worker that was waited for). Every run logs its process's peak resident
memory (`peak_rss_mib`): the table shows the largest per job and the sum of the two largest
processes that ran side by side.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

GRID = ["model=lenet5,mlp", "regularizer=none,l2,dropout"]
LAUNCHERS = {
    "default (no override)": [],
    "hydra/launcher=basic (sequential)": ["hydra/launcher=basic"],
    "hydra/launcher=joblib n_jobs=2, 1 thread": [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.threads=1",
    ],
}
TARGET_WALL_S, TARGET_RATIO = 85.0, 0.75  # issue #14, for the 10-epoch grid on 60k images


def sweep(command: list[str], cwd: Path, log: Path) -> tuple[float, float, float]:
    """(wall seconds, user CPU seconds, system CPU seconds) of one sweep and every process it waited for."""
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(
            ["/usr/bin/time", "-f", "CPU_S=%U %S"] + command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    wall = time.perf_counter() - started
    text = log.read_text()
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{text[-3000:]}")
    user, system = map(float, re.findall(r"CPU_S=([\d.]+) ([\d.]+)", text)[-1])
    return wall, user, system


def peak_rss(tracking_uri: str) -> list[tuple[str, float]]:
    """(run name, peak_rss_mib) of every training run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mnist-exp")
    runs = client.search_runs([experiment.experiment_id], filter_string="metrics.peak_rss_mib > 0")
    return [(run.info.run_name, run.data.metrics["peak_rss_mib"]) for run in runs]


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="sweeps per launcher, interleaved")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stores) and print its path")
    args = p.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("benchmarks/grid.py needs GNU time (/usr/bin/time; Debian package `time`) to count the workers' CPU")
    train_size, test_size = benchlib.sizes(args.smoke)
    grid = ["model=mlp", "regularizer=none"] if args.smoke else GRID  # smoke: one job (the default: in its process)
    epochs, repeats = (1, 1) if args.smoke else (args.epochs, args.repeats)
    folder = benchlib.course_dataset(train_size, test_size)
    from mnist_exp.launcher import available_cores  # what the default launcher plans with

    print(f"# {benchlib.machine_line()}, {available_cores()} cores usable")
    print(
        f"# data: {folder} ({train_size} train / {test_size} test); "
        f"{epochs} epoch{'' if epochs == 1 else 's'} per run; "
        f"sweep: {' '.join(grid)}; {repeats} sweep(s) per launcher, interleaved"
    )

    work = Path(tempfile.mkdtemp(prefix="mnist-exp-grid-"))
    try:
        cache = work / "cache"
        benchlib.load_course(folder, cache)  # warm the decoded-tensor cache the runs will find
        if args.smoke:  # the store's ~6 s of migrations once, not in each of the three sweeps
            from mlflow.tracking import MlflowClient

            MlflowClient(f"sqlite:///{work}/empty.db").search_experiments()
        common = [
            f"data.root={folder}",
            "data.source=course",
            f"data.cache_dir={cache}",
            f"trainer.epochs={epochs}",
            "force=true",
        ]  # every sweep trains: none may skip runs an earlier one finished
        if args.threads is not None:
            common.append(f"trainer.threads={args.threads}")
        measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in LAUNCHERS}
        memory: dict[str, list[tuple[str, float]]] = {name: [] for name in LAUNCHERS}
        for repeat in range(repeats):
            for index, (name, overrides) in enumerate(LAUNCHERS.items()):
                run_dir = work / f"{index}-{repeat}"
                run_dir.mkdir()
                if args.smoke:
                    shutil.copy(work / "empty.db", run_dir / "mlflow.db")
                command = [
                    sys.executable,
                    str(benchlib.ROOT / "train.py"),
                    "-m",
                    *grid,
                    *common,
                    *overrides,
                    f"mlflow.tracking_uri=sqlite:///{run_dir}/mlflow.db",
                    f"trainer.checkpoint_dir={run_dir}/checkpoints",
                    f"hydra.sweep.dir={run_dir}/sweep",
                ]
                measured[name].append(sweep(command, run_dir, run_dir / "sweep.log"))
                memory[name] += peak_rss(f"sqlite:///{run_dir}/mlflow.db")

        rows = []
        for name, results in measured.items():
            walls = [wall for wall, _, _ in results]
            cpus = [user + system for _, user, system in results]
            peaks = sorted((mib for _, mib in memory[name]), reverse=True)
            rows.append(
                [
                    name,
                    ", ".join(f"{w:.1f}" for w in walls),
                    statistics.mean(walls),
                    ", ".join(f"{c:.0f}" for c in cpus),
                    f"{peaks[0]:.0f} MiB" if peaks else "-",
                ]
            )
        runs = len(memory[next(iter(LAUNCHERS))]) // repeats
        print(
            benchlib.table(
                ["launcher", "wall s (each sweep)", "wall s (mean)", "CPU s user+sys (each)", "peak RSS of a job"],
                rows,
                f"Grid of {runs} run{'s' * (runs != 1)}, {train_size} training images x {epochs} epochs",
            )
        )

        default, sequential = (statistics.mean(w for w, _, _ in measured[n]) for n in list(LAUNCHERS)[:2])
        default_peaks = sorted((mib for _, mib in memory[list(LAUNCHERS)[0]]), reverse=True)
        side_by_side = sum(default_peaks[:2])
        print(
            f"\ndefault launcher: {default:.1f} s wall = {default / sequential:.2f}x the sequential launcher's "
            f"{sequential:.1f} s (target <= {TARGET_WALL_S:.0f} s and <= {TARGET_RATIO}x for the 10-epoch 60k grid); "
            f"two jobs side by side at most {side_by_side:.0f} MiB (target 2.2 GB)"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
