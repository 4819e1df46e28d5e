"""The same Optuna search with and without pruning: wall time and best validation accuracy.

    .venv/bin/python benchmarks/search_pruning.py            # 20 trials x 5 epochs of LeNet-5 on mnist-10k, ~3-4 min
    .venv/bin/python benchmarks/search_pruning.py --smoke    # 2 trials x 2 epochs on 300 images (CI)

Each search is `train.py -m hparams_search=lenet5_optuna data.source=sample` (the shipped
mnist-10k: 7,000 training images after the 1,000 held out for validation), one trial at a time,
in a fresh folder with its own MLflow store and study, the sampler seeded alike: first with
hydra/sweeper/pruner=none, then with the default median pruner. Epochs trained are counted from
the study's per-epoch reports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

PRUNERS = ("none", "median")


def search(work: Path, pruner: str, overrides: list[str]) -> list:
    """One whole search in its own folder: [pruner, wall s, best value, completed, pruned, epochs trained]."""
    import optuna
    import yaml

    folder = work / pruner
    folder.mkdir()
    command = [
        sys.executable,
        str(benchlib.ROOT / "train.py"),
        "-m",
        "hparams_search=lenet5_optuna",
        f"hydra/sweeper/pruner={pruner}",
        *overrides,
        f"hydra.sweep.dir={folder}/sweep",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(
            f"search_pruning.py: the search with pruner={pruner} failed:\n{result.stdout[-3000:]}"
            f"{result.stderr[-3000:]}"
        )
    best = yaml.safe_load((folder / "sweep" / "optimization_results.yaml").read_text())["best_value"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=None, storage=f"sqlite:///{folder}/mlflow.optuna.db").trials
    states = [t.state.name for t in trials]
    epochs = sum(len(t.intermediate_values) for t in trials)
    return [pruner, wall, f"{100 * best:.2f}%", states.count("COMPLETE"), states.count("PRUNED"), epochs]


def main() -> None:
    p = benchlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    trials, epochs = (2, 2) if args.smoke else (args.trials, args.epochs)
    print(f"# {benchlib.machine_line()}")
    work = Path(tempfile.mkdtemp(prefix="mnist-exp-search-"))
    try:
        overrides = [
            "data.source=sample",
            f"data.cache_dir={work}/cache",
            f"trainer.epochs={epochs}",
            f"hydra.sweeper.n_trials={trials}",
        ]
        if args.smoke:
            overrides += ["data.limit_train=300", "data.limit_test=100", "data.validation_size=100"]
        if args.threads is not None:
            overrides.append(f"trainer.threads={args.threads}")
        # a 2-trial smoke search can prune its second trial once the first has completed
        startup = ["hydra.sweeper.pruner.n_startup_trials=1"] if args.smoke else []
        rows = [search(work, pruner, overrides + (startup if pruner == "median" else [])) for pruner in PRUNERS]
        print(
            benchlib.table(
                ["pruner", "wall s", "best val_acc", "completed", "pruned", "epochs trained"],
                rows,
                f"Search of {trials} trials x {epochs} epochs (hparams_search=lenet5_optuna, "
                f"{'300 images' if args.smoke else 'mnist-10k'})",
            )
        )
        (_, plain, *_), (_, pruned, *_) = rows
        print(f"\nmedian pruner: {pruned:.1f} s wall = {pruned / plain:.2f}x the search without pruning")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
