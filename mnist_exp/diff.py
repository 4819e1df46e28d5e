"""analyze.py --diff: two runs, or two variants' FINISHED seeds, side by side (docs/analysis.md)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from mnist_exp import record
from mnist_exp.runs import AnalysisError, Selection, column, histories

# Tags that are settings of a run: what code trained it, on how many threads.
SETTING_TAGS = {record.CODE_VERSION: "code version", record.THREADS: "threads (used)", record.DEVICE: "device"}


class Side(NamedTuple):
    """One side of a diff: a run, or the FINISHED seeds of a variant."""

    label: str
    runs: pd.DataFrame  # rows of a runs.Selection


def find(selection: Selection, ref: str) -> Side:
    """The run or variant `ref` names in `selection`; an AnalysisError names what exists."""
    runs = selection.runs
    by_id = runs[(runs["run_id"] == ref) | (runs["run_id"].str.startswith(ref) if len(ref) >= 6 else False)]
    by_name = runs[runs["run_name"] == ref].sort_values("start_time")
    if len(by_id) == 1 or len(by_name):  # a name used twice (force=true trained it again): its latest run
        run = by_id if len(by_id) == 1 else by_name.iloc[[-1]]
        return Side(f"run {run['run_id'].iloc[0][:8]} ({run['run_name'].iloc[0]})", run)
    finished = selection.finished
    seeds = finished[column(finished, f"tags.{record.VARIANT}") == ref]
    seeds = seeds.iloc[pd.to_numeric(seeds["params.trainer.seed"]).argsort(kind="stable")] if len(seeds) else seeds
    if seeds[f"tags.{record.VARIANT_HASH}"].nunique() > 1:
        raise AnalysisError(
            f"{ref!r} names {seeds[f'tags.{record.VARIANT_HASH}'].nunique()} variants that differ in other "
            f"settings; name one of their runs: {'; '.join(sorted(seeds['run_name']))}"
        )
    if seeds.empty:
        known = sorted(column(runs, f"tags.{record.VARIANT}").dropna().unique())
        raise AnalysisError(
            f"no run ID, run name or variant {ref!r} (with FINISHED runs) in this experiment; "
            f"variants: {', '.join(known) or 'none'}"
        )
    return Side(f"variant {ref} ({len(seeds)} run{'s' * (len(seeds) > 1)})", seeds)


def settings(side: Side) -> dict[str, str]:
    """Each setting (params, and SETTING_TAGS) as one value, or its values over the side's runs."""
    runs = side.runs.dropna(axis=1, how="all")
    keys = {c[len("params.") :] for c in runs if c.startswith("params.")} | set(SETTING_TAGS)

    def values(key: str) -> pd.Series:  # each run's param or tag, "-" where it has neither
        return column(runs, f"params.{key}").fillna(column(runs, f"tags.{key}")).fillna("-")

    return {SETTING_TAGS.get(key, key): ", ".join(dict.fromkeys(values(key))) for key in sorted(keys)}


def final_metrics(side: Side) -> dict[str, str]:
    """Each metric's last value (mean ± std over a variant's runs); system/ metrics left out."""
    recorded = side.runs.dropna(axis=1, how="all")
    names = sorted(c for c in recorded if c.startswith("metrics.") and not c.startswith("metrics.system/"))
    frame = recorded[names].rename(columns=lambda c: c[len("metrics.") :]).astype(float)
    if len(frame) == 1:
        return {key: f"{value:.6g}" for key, value in frame.iloc[0].items()}
    return {key: f"{values.mean():.6g} ± {values.std(ddof=1):.2g}" for key, values in frame.items()}


def diff_text(a: Side, b: Side) -> str:
    """The settings that differ and the final metrics, as two markdown tables."""

    def table(first: dict, second: dict, header: str, only_differing: bool) -> str:
        rows = [(key, first.get(key, "-"), second.get(key, "-")) for key in sorted(first.keys() | second.keys())]
        rows = [row for row in rows if row[1] != row[2] or not only_differing]
        frame = pd.DataFrame(rows, columns=[header, "A", "B"])
        return frame.to_markdown(index=False, disable_numparse=True) if rows else f"no {header} differs"

    differing = table(settings(a), settings(b), "setting", True)
    metrics = table(final_metrics(a), final_metrics(b), "final metric", False)
    return f"A: {a.label}\nB: {b.label}\n\n{differing}\n\n{metrics}"


def plot(tracking_uri: str, a: Side, b: Side, path: Path) -> Path:
    """Both sides' per-epoch curves (plots.side_curves), saved as `path`."""
    from mnist_exp import plots

    sides = [histories(tracking_uri, side.runs, plots.SIDE_KEYS) for side in (a, b)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return plots.save(plots.side_curves(sides, f"A: {a.label}\nB: {b.label}"), path, tight=False)
