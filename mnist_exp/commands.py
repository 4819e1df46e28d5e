"""Every command the analysis prints, from each run's own overrides as Hydra logged them (docs/analysis.md)."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from mnist_exp import record, tracking
from mnist_exp.runs import AnalysisError
from mnist_exp.sweep import override_key, sweep_identity

GRIDS = ("grid", "basic")  # sweepers whose job's overrides train that job again (a search's would search again)


def launch(client, run_id: str, run_name: str = "") -> tuple[list[str], bool, str | None]:
    """(overrides, whether a grid launched it so they train it again, its folder), from its logged Hydra files."""

    def read(name: str):
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = client.download_artifacts(run_id, f"{record.HYDRA_FOLDER}/{name}.yaml", folder)
            except Exception:  # MLflow raises several types for a missing artifact
                named = f" ({run_name})" if run_name else ""
                raise AnalysisError(f"run {run_id}{named} has no {record.HYDRA_FOLDER}/{name}.yaml") from None
            return yaml.safe_load(Path(path).read_text())

    runtime = read("hydra")["hydra"]["runtime"]
    return read("overrides") or [], runtime["choices"].get("hydra/sweeper", "basic") in GRIDS, runtime.get("cwd")


def run_command(client, side) -> tuple[str, str]:
    """(the train.py command re-creating the run of `side`, where and with what code to run it)."""
    if len(side.runs) != 1:
        names = "; ".join(side.runs["run_name"])
        raise AnalysisError(f"--command needs one run; {side.label} has {len(side.runs)}: {names}")
    run = side.runs.iloc[0]
    tags = {key[len("tags.") :]: value for key, value in run.items() if key.startswith("tags.") and not pd.isna(value)}
    overrides, grid, cwd = launch(client, run["run_id"], run["run_name"])
    if record.THREADS in tags and not any(override_key(o) == "trainer.threads" for o in overrides):
        overrides = [*overrides, f"trainer.threads={tags[record.THREADS]}"]
    if not grid:
        overrides = [*overrides, "hydra.mode=RUN"]  # a search's trial: its overrides would search again
    script = os.path.relpath(tracking.TRAIN_SCRIPT, cwd)
    script = script if not script.startswith("..") else str(tracking.TRAIN_SCRIPT)
    line = " ".join(["python", shlex.quote(script), *map(shlex.quote, overrides)])
    trained_by, now = tags.get(record.CODE_VERSION, "unrecorded"), tracking.code_version()[1]
    code = f"code {now}" + ("" if trained_by == now else f"; the run was trained by {trained_by}")
    if record.PRUNED in tags:  # it cannot be re-created as it stopped: its config trained in full
        return line, (
            f"run it from {cwd} ({code}). No command re-creates this run as it stopped "
            f"({tags[record.PRUNED]}: the pruner judged it against other trials); this one trains its "
            "config in full, resuming this run from its checkpoint where that is still there, else in a new run "
            "that supersedes it"
        )
    return line, f"run it from {cwd} ({code}); add force=true to train it again beside the run"


def with_overrides(table: pd.DataFrame, tracking_uri: str, sweep_key: str | None = None) -> pd.DataFrame:
    """`table` with each variant's overrides (less seed and extends; None for a search's trial) and `sweep_key`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    def overrides(run_id: str) -> list[str] | None:
        found, grid, _ = launch(client, run_id)
        return [o for o in found if override_key(o) not in ("trainer.seed", "mlflow.extends")] if grid else None

    return table.assign(overrides=[overrides(run_ids[-1]) for run_ids in table["run_ids"]], sweep_key=sweep_key)


def _sweeps(rows: list, seeds: list[int], extra: tuple[str, ...] = ()) -> list[list[str]] | None:
    """The `train.py -m` sweeps' overrides training `seeds` of each row (one sweep where they differ in one value)."""
    if not seeds:  # `trainer.seed=` with no value would train the default seed, not what was asked
        raise ValueError("a command that adds seeds needs at least one seed")
    lists = [getattr(row, "overrides", None) for row in rows]
    if any(not isinstance(x, list) for x in lists):
        return None
    replaced = {o.split("=", 1)[0] for o in extra}
    lists = [[o for o in x if o.split("=", 1)[0] not in replaced] + list(extra) for x in lists]
    contiguous = len(seeds) > 3 and seeds == list(range(seeds[0], seeds[-1] + 1))
    values = f"range({seeds[0]},{seeds[-1] + 1})" if contiguous else ",".join(map(str, seeds))  # Hydra's range
    distinct = list(dict.fromkeys(tuple(x) for x in lists))
    keys = {tuple(o.split("=", 1)[0] for o in x) for x in distinct}
    differing = [i for i in range(len(distinct[0])) if len({x[i] for x in distinct}) > 1] if len(keys) == 1 else []
    if len(differing) == 1:
        (i,) = differing
        merged = ",".join(x[i].split("=", 1)[1] for x in distinct)
        distinct = [(*distinct[0][:i], f"{distinct[0][i].split('=', 1)[0]}={merged}", *distinct[0][i + 1 :])]
    return [[*x, f"trainer.seed={values}"] for x in distinct]


def train_command(rows: list, seeds: list[int], extra: tuple[str, ...] = (), pooled: bool = False) -> str | None:
    """`train.py -m` lines training `seeds` of each row (None for a search's trial); `pooled`: in the rows' sweep."""
    keys = {getattr(row, "sweep_key", None) for row in rows}
    if pooled and len(keys) == 1 and None not in keys:
        extra = (*extra, f"mlflow.extends={next(iter(keys))}")
    if (sweeps := _sweeps(rows, seeds, extra)) is None:
        return None
    return " && ".join(" ".join(["python train.py -m", *map(shlex.quote, x)]) for x in sweeps)


def analyze_command(rows: list, seeds: list[int], extra: tuple[str, ...] = ()) -> str:
    """The analyze.py line reading exactly the sweeps train_command(rows, seeds, extra) trains, where it gives one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeps = _sweeps(rows, seeds, extra)
    parsed = OverridesParser.create().parse_overrides(sweeps[0])
    settings = {o.key_or_group: o.value() for o in parsed if not o.is_sweep_override()}  # Hydra's escapes undone
    options = {"mlflow.tracking_uri": "--tracking-uri", "mlflow.experiment": "--experiment"}
    store = [f"{option} {shlex.quote(str(settings[key]))}" for key, option in options.items() if key in settings]
    return " ".join(["python analyze.py", *store, *(f"--sweep {sweep_identity(x)[0]}" for x in sweeps)])


def fresh_seeds(rows: list, count: int) -> list[int]:
    """`count` seeds none of the rows has used: a re-test that has not seen the selection's numbers."""
    start = max((seed for row in rows for seed in row.seeds), default=-1) + 1
    return list(range(start, start + count))


def more_seeds(rows: list, needed: int) -> list[int]:
    """The seeds that bring each row to `needed` seeds, counting up from the highest used; at least one."""
    return fresh_seeds(rows, max(needed - max(len(row.seeds) for row in rows), 1))
