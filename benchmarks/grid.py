"""Grid wall time: the course sweep through train.py, sequential vs. joblib, and one run's peak RSS.

    .venv/bin/python benchmarks/grid.py                 # 6 runs x 2 epochs x 60k images, ~3 minutes
    .venv/bin/python benchmarks/grid.py --epochs 10 --skip-sequential   # the full-length grid (4-minute target)
    .venv/bin/python benchmarks/grid.py --smoke         # 2-job sweeps, 1 epoch x 1k images (CI)

Runs, in a temporary folder (its own sqlite store, checkpoints and Hydra outputs) on the 60k-image
course tar of benchmarks/.cache (cache of decoded tensors filled before timing, so every variant
starts warm; benchmarks/data_prep.py times the cold decode):
  1. one run (model=lenet5): wall time and peak RSS (/usr/bin/time's maximum resident set size;
     without /usr/bin/time, getrusage(RUSAGE_CHILDREN), the largest child so far);
  2. train.py -m model=lenet5,mlp regularizer=none,l2,dropout   (Hydra's sequential launcher);
  3. the same with hydra/launcher=joblib hydra.launcher.n_jobs=2 trainer.threads=1.
For the sequential sweep it also reads Hydra's log timestamps and reports, per job, the time from
its last epoch line to the next job's start: the final evaluation, figures, artifact logging and
Hydra's setup of the next job.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

GRID = ["model=lenet5,mlp", "regularizer=none,l2,dropout"]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[?\w*\]? ?-? ?(.*)$")


def run(command: list[str], cwd: Path, log: Path) -> tuple[float, float | None]:
    """(wall seconds, peak RSS MiB of the process tree's largest process, when measurable)."""
    timer = ["/usr/bin/time", "-f", "PEAK_RSS_KB=%M"] if Path("/usr/bin/time").exists() else []
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(timer + command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - started
    text = log.read_text()
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{text[-3000:]}")
    found = re.findall(r"PEAK_RSS_KB=(\d+)", text)
    if found:
        return seconds, int(found[-1]) / 1024
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def job_gaps(log: Path, finished: float) -> list[tuple[str, float, float]]:
    """(job overrides, seconds from its start to its last epoch line, seconds from there to the next job
    or, for the last job, to the end of the process at time.time() `finished`)."""
    events = []
    for line in log.read_text().splitlines():
        match = STAMP.match(line)
        if match:
            when = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((when, match[3]))
    starts = [(t, m.split(":", 1)[1].strip()) for t, m in events if re.match(r"\s*#\d+ :", m)]
    gaps = []
    for k, (start, name) in enumerate(starts):
        stop = starts[k + 1][0] if k + 1 < len(starts) else finished
        epochs = [t for t, m in events if start <= t <= stop and re.match(r"epoch \d+/\d+", m)]
        last = epochs[-1] if epochs else start
        gaps.append((" ".join(o for o in name.split() if o.startswith(("model=", "regularizer="))), last - start, stop - last))
    return gaps


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--skip-sequential", action="store_true", help="no sequential sweep (for --epochs 10)")
    p.add_argument("--skip-single", action="store_true", help="no single run")
    p.add_argument("--grid", nargs="+", default=GRID, help=f"the sweep's overrides (default: {' '.join(GRID)})")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, store) and print its path")
    args = p.parse_args()
    train_size, test_size = benchlib.sizes(args.smoke)
    grid = ["model=lenet5,mlp", "regularizer=none"] if args.smoke else args.grid
    epochs = 1 if args.smoke else args.epochs
    folder = benchlib.course_dataset(train_size, test_size)
    print(f"# {benchlib.machine_line()}")
    print(f"# data: {folder} ({train_size} train / {test_size} test); {epochs} epochs per run")

    work = Path(tempfile.mkdtemp(prefix="mnist-exp-grid-"))
    try:
        cache = work / "cache"
        benchlib.load_course(folder, cache)  # warm the decoded-tensor cache the runs will find
        common = [f"data.root={folder}", "data.source=course", f"data.cache_dir={cache}", f"trainer.epochs={epochs}",
                  f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db", f"trainer.checkpoint_dir={work}/checkpoints",
                  "force=true"]  # every variant trains: none may skip runs an earlier one finished
        if args.threads is not None:
            common.append(f"trainer.threads={args.threads}")
        train = [sys.executable, str(benchlib.ROOT / "train.py")]

        rows = []
        if not (args.skip_single or args.smoke):
            seconds, rss = run([*train, "model=lenet5", *common, f"hydra.run.dir={work}/single"], work,
                               work / "single.log")
            rows.append(["one run: model=lenet5", seconds, f"{rss:.0f} MiB"])
        if not args.skip_sequential:
            seconds, rss = run([*train, "-m", *grid, *common, f"hydra.sweep.dir={work}/sequential"], work,
                               work / "sequential.log")
            rows.append([f"sweep {' '.join(grid)}, sequential launcher",
                         seconds, f"{rss:.0f} MiB"])
            gaps = job_gaps(work / "sequential.log", time.time())
        seconds, rss = run([*train, "-m", *grid, *common, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                            "trainer.threads=1", f"hydra.sweep.dir={work}/joblib"], work, work / "joblib.log")
        rows.append([f"sweep {' '.join(grid)}, joblib n_jobs=2, trainer.threads=1", seconds, f"{rss:.0f} MiB"])
        print(benchlib.table(["what", "wall seconds", "peak RSS (largest process)"], rows,
                             f"Grid wall time, {train_size} training images x {epochs} epochs"))
        if not args.skip_sequential:
            print(benchlib.table(
                ["sequential job", "start -> last epoch line (s)", "last epoch line -> next job (s)"],
                [[name, a, b] for name, a, b in gaps],
                "Where the sequential sweep's time goes (from Hydra's log timestamps)"))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
