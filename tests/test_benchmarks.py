"""The benchmarks in smoke mode: tiny sizes, so they keep running as the code changes.

They print figures; nothing here judges a timing, only that each script still works end to end
and prints its tables, each with the rows and columns it promises, every figure a number.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if p.name != "benchlib.py")


# What each script's smoke run prints: for each table (found by the start of its title), its
# columns, how many leading columns name a row (the rest hold figures), the rows it promises (by
# the start of their name cells) and the figure columns no row may leave empty (None: all of them).
EXPECTED_TABLES = {
    "augmentation.py": {
        "Augmentation of ": (
            ["contender", "s per epoch", "images/s", "vs ours", "of a LeNet-5 epoch"],
            1,
            [
                "ours: affine",
                "torchvision per image: affine",
                "ours: affine + elastic",
                "torchvision per image: affine + elastic",
                "LeNet-5 training epoch",
            ],
            ["s per epoch", "images/s", "of a LeNet-5 epoch"],
        ),
    },
    "data_prep.py": {
        "Data preparation, ": (
            ["step", "seconds", "images/s", "vs reference", "vs PIL alone"],
            1,
            [
                "reference decode",
                "PIL decode alone",
                "ours: read_course_split, workers=0",
                "ours: read_course_split, workers=1",
                "ours: load_split, cold",
                "ours: load_split, warm",
            ],
            None,
        ),
    },
    "epoch_throughput.py": {
        "Training throughput": (
            [
                "model",
                "batch",
                "steps",
                "seed img/s",
                "preloaded img/s",
                "ours NCHW img/s",
                "ours img/s",
                "ours/seed",
                "ours/preloaded",
            ],
            1,
            ["lenet5 64", "lenet5 256", "mlp 64", "mlp 256"],
            None,
        ),
        "Evaluation throughput": (
            ["model", "batch", "seed img/s", "ours NCHW img/s", "ours img/s", "ours/seed"],
            1,
            ["lenet5", "mlp"],
            None,
        ),
    },
    "grid.py": {
        "Grid of 1 run,": (
            ["launcher", "wall s (each sweep)", "wall s (mean)", "CPU s user+sys (each)", "peak RSS of a job"],
            1,
            ["default", "hydra/launcher=basic", "hydra/launcher=joblib"],
            None,
        ),
    },
    "hardware_efficiency.py": {
        "FLOP/s achieved": (
            ["model", "pass", "forward MACs/image", "images/s", "GFLOP/s", "of peak"],
            2,
            [
                f"{model} {step}"
                for model in ("lenet5", "mlp")
                for step in ("train, batch 64", "train, batch 256", "evaluate, batch 1000")
            ]
            + ["torch.mm"],
            ["GFLOP/s", "of peak"],
        ),
    },
    "search_pruning.py": {
        "Search of ": (
            ["pruner", "wall s", "best val_acc", "completed", "pruned", "epochs trained"],
            1,
            ["none", "median"],
            None,
        ),
    },
    "run_overhead.py": {
        "Per-run overhead in one process": (
            ["step", "first run (s)", "later runs, median (s)"],
            1,
            [
                "whole job",
                "  of which training",
                "  of which logging the MLflow model",
                "per-run overhead",
                "seed: fluent mlflow",
            ],
            None,
        ),
        "Whole processes": (["process", "seconds (best)"], 1, ["python train.py --help"], None),
    },
    "sweep_prep.py": {
        "Sweep preparation": (
            ["sweeper", "jobs", "first line s", "sweep run line s", "then first job s", "first job s"],
            2,
            ["grid 20"],
            None,
        ),
    },
    "system_metrics.py": {
        "One system metrics sample": (
            ["step", "CPU s (best)", "wall s (best)", "CPU share of the interval"],
            1,
            ["read the machine", "read the run", "log the sample", "one sample"],
            ["CPU s (best)", "wall s (best)"],
        ),
        "Runs with system metrics on and off": (
            ["step", "off, median (s)", "on, median (s)", "cost"],
            1,
            ["whole job", "  of which training"],
            None,
        ),
    },
}
# A figure: 12.9, 14,532, 3.5x, 8.4%, 926 MiB, <0.01 s; several (one per sweep) separated by ", ".
FIGURE = re.compile(r"[<>~]?[+-]?\d[\d,]*(\.\d+)?(e[+-]?\d+)?( ?(x|%|s|MiB|GiB|GB|ms))?")


def is_figure(cell: str) -> bool:
    return all(FIGURE.fullmatch(part) for part in cell.split(", ")) if cell else False


def markdown_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{title: (header, rows)} for each pipe table in `text`; a table's title is the last text line above it."""
    tables, title, lines = {}, None, text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            title = lines[i].strip() or title
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append([cell.strip() for cell in lines[i].strip().strip("|").split("|")])
            i += 1
        assert len(block) >= 2 and all(set(cell) <= set("-:") for cell in block[1]), f"not a table: {block}"
        tables[title] = (block[0], block[2:])
    return tables


def check_tables(script: str, stdout: str) -> None:
    tables = markdown_tables(stdout)
    for title_start, (columns, keys, promised, required) in EXPECTED_TABLES[script].items():
        found = [title for title in tables if title.startswith(title_start)]
        assert found, f"{script}: no table titled {title_start!r}; tables: {list(tables)}\n{stdout[-3000:]}"
        header, rows = tables[found[0]]
        assert header == columns, f"{script}, {found[0]}: columns {header}"
        assert all(len(row) == len(columns) for row in rows), f"{script}, {found[0]}: ragged rows {rows}"
        names = [" ".join(row[:keys]) for row in rows]
        for name in promised:  # a row's name cells, and the figures after them, start with the promised words
            assert any(" ".join(row).startswith(name.strip()) for row in rows), (
                f"{script}, {found[0]}: no row {name.strip()!r}; rows: {names}"
            )
        for row, name in zip(rows, names):
            for column, cell in zip(columns[keys:], row[keys:]):
                needed = required is None or column in required
                assert is_figure(cell) or (not cell and not needed), (
                    f"{script}, {found[0]}, row {name!r}: {column} = {cell!r} is not a number"
                )


def test_the_table_check_tells_figures_from_anything_else():
    assert all(is_figure(c) for c in ("12.9", "14,532", "0.00236", "3.5x", "8.4%", "926 MiB", "14.2, 15.0", "100%"))
    assert not any(is_figure(c) for c in ("", "nan", "n/a", "-", "x", "fast", "1.2.3.4x"))


def test_every_benchmark_script_is_covered():
    assert SCRIPTS == [
        "augmentation.py",
        "data_prep.py",
        "epoch_throughput.py",
        "grid.py",
        "hardware_efficiency.py",
        "run_overhead.py",
        "search_pruning.py",
        "sweep_prep.py",
        "system_metrics.py",
    ]
    assert sorted(EXPECTED_TABLES) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_smoke_mode_and_prints_a_table(script):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # A header line, then its rule: "| ---" or, with alignment marks, "|:---" / "|---:".
    assert "\n| " in result.stdout and re.search(r"^\|[ :]?---", result.stdout, re.M), result.stdout[-2000:]
    check_tables(script, result.stdout)
