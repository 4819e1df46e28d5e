"""Selecting runs: the runs of some sweeps (or all) as one row per run (mlflow.search_runs's columns), filtered."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import pandas as pd

from mnist_exp import record, tracking
from mnist_exp.sweep import sweep_members

INFO = ("run_id", "run_name", "experiment_id", "status", "start_time")  # each run's columns from its RunInfo
HISTORY = (record.TEST_ACC, record.TEST_LOSS, record.TRAIN_ACC, record.TRAIN_LOSS, record.LR)  # histories()'s metrics
FILTER_ALIASES = {"model": "model.name", "regularizer": record.REGULARIZERS, "optimizer": "optimizer.name"}


class AnalysisError(RuntimeError):
    """Nothing to analyze; the message says why and what to run."""


@dataclass
class Selection:
    runs: pd.DataFrame  # one row per run of the selection, every status
    description: str  # which sweep(s), or "all runs", were selected
    parent_run_ids: list[str] = field(default_factory=list)  # each sweep's first launch: where its report goes
    sweep_keys: list[str] = field(default_factory=list)  # what a command adding runs to them names (mlflow.extends)

    @property
    def finished(self) -> pd.DataFrame:
        """FINISHED runs, one per identity (config and data read): one re-trained with force=true counts once."""
        finished = self.runs[_compared(self.runs)].sort_values("start_time")
        identity = [f"tags.{record.CONFIG_HASH}", *(f"params.{key}" for key in record.DATA_IDENTITY)]
        return finished.drop_duplicates([c for c in identity if c in finished], keep="last")

    @property
    def unfinished(self) -> pd.DataFrame:
        """Runs not compared: not FINISHED, or FINISHED early because a search pruned them."""
        return self.runs[~_compared(self.runs)]


def _confirmed(runs: pd.DataFrame) -> pd.Series:
    """'recipe' or 'plain' for the runs a search's confirmation trained (record.CONFIRMATION on its sweep run)."""
    tags = column(runs, f"tags.{record.CONFIRMATION}").dropna()
    return runs["run_id"].map({run_id: role for tag in tags for role, ids in json.loads(tag).items() for run_id in ids})


def _compared(runs: pd.DataFrame) -> pd.Series:
    return (runs["status"] == "FINISHED") & column(runs, f"tags.{record.PRUNED}").isna()


def select_runs(tracking_uri: str, experiment: str, sweep: str | list[str] = "latest") -> Selection:
    """The runs of some sweeps (see find_sweep), or of all runs ('all'), of a store that exists, its runs migrated."""
    from mlflow.tracking import MlflowClient

    tracking.check_store(tracking_uri, "--tracking-uri ")
    path = tracking.sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        raise AnalysisError(f"no MLflow store at {path} ({tracking_uri}): run train.py first, or pass --tracking-uri")
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise AnalysisError(f"no experiment named {experiment!r} in {tracking_uri} (experiments there: {names})")
    try:
        record.migrate(client, found)
    except record.RecordError as error:
        raise AnalysisError(f"{tracking_uri}: {error}") from None
    runs = pd.DataFrame([_row(run) for run in client.search_runs([found.experiment_id], max_results=50_000)])
    if runs.empty:
        raise AnalysisError(f"experiment {experiment!r} in {tracking_uri} has no runs yet: run train.py first")
    runs["confirmed"] = _confirmed(runs)
    is_parent = column(runs, f"tags.{record.ROLE}") == "sweep"
    parents, children = runs[is_parent], runs[~is_parent]

    sweeps = [sweep] if isinstance(sweep, str) else list(sweep)
    if "all" in sweeps:
        return Selection(children, f"all {len(children)} runs of experiment {experiment!r}")
    if parents.empty:
        if sweeps != ["latest"]:
            raise AnalysisError(
                f"--sweep {' '.join(sweeps)}: experiment {experiment!r} holds no sweeps (train.py -m ...)"
            )
        return Selection(children, f"all {len(children)} runs of experiment {experiment!r} (it holds no sweeps)")
    parents = parents.assign(
        sweep=column(parents, f"tags.{record.EXTENDS}").fillna(parents[f"tags.{record.SWEEP_KEY}"]),
        launched=column(parents, f"tags.{record.LAST_LAUNCH}").fillna(""),
    )
    nested = column(children, f"tags.{record.PARENT}")
    members_of = functools.cache(
        lambda parent: sweep_members(client, parent) | set(children.loc[nested == parent, "run_id"])
    )
    keys, bases, described, notes = [], [], [], []
    for selector in sweeps:
        key, passed = find_sweep(
            parents, selector, lambda parent: _compared(children[children["run_id"].isin(members_of(parent))]).any()
        )
        launches = parents[parents["sweep"] == key].sort_values("start_time")
        first = launches.iloc[0]
        keys.append(key)
        bases.append(first["run_id"])
        more = f" and {len(launches) - 1} more launch(es) of it" if len(launches) > 1 else ""
        described.append(f"sweep {first['run_id'][:8]} ({first['run_name']}){more}")
        notes += [f"{p.run_id[:8]} ({p.status}, {p.run_name})" for p in passed.itertuples()]
    members = set().union(*(members_of(p) for p in parents.loc[parents["sweep"].isin(keys), "run_id"]))
    description = " + ".join(described)
    if notes:
        description += f"; later launches with no FINISHED run, not read: {'; '.join(notes)}"
    return Selection(children[children["run_id"].isin(members)], description, bases, keys)


def find_sweep(parents: pd.DataFrame, selector: str, has_finished_run) -> tuple[str, pd.DataFrame]:
    """(the sweep's key, later launches passed over) for --sweep's `selector` (docs/analysis.md, "Which sweep")."""
    if selector == "latest":
        ordered = parents.sort_values("launched", ascending=False)
        for position, parent in enumerate(ordered.itertuples()):
            if has_finished_run(parent.run_id):
                return parent.sweep, ordered.iloc[:position]
        return ordered.iloc[0]["sweep"], parents.iloc[:0]  # none has: the latest, whose runs say why
    names = parents["run_name"]
    exact = (
        parents["run_id"].str.startswith(selector)
        | parents[["sweep", f"tags.{record.SWEEP_KEY}"]].eq(selector).any(axis=1)
        | names.isin([selector, f"sweep: {selector}"])
    )
    matches = parents[exact] if exact.any() else parents[names.str.contains(selector, regex=False)]
    keys = matches["sweep"].unique()
    if len(keys) == 1:
        return keys[0], parents.iloc[:0]
    if len(keys) == 0:
        raise AnalysisError(f"--sweep {selector} matches no sweep; known sweeps: {_launches(parents)}")
    raise AnalysisError(f"--sweep {selector} matches {len(keys)} sweeps; give one's key: {_launches(matches)}")


def _launches(parents: pd.DataFrame) -> str:
    """Each sweep of `parents`, latest first: 'KEY (2 launches, latest FAILED, 2026-12-05 10:00:00): sweep: ...'."""
    described = []
    for key, launches in sorted(parents.groupby("sweep"), key=lambda item: item[1]["launched"].max(), reverse=True):
        latest, first = launches.sort_values("launched").iloc[-1], launches.sort_values("start_time").iloc[0]
        count = f"{len(launches)} launches, latest " if len(launches) > 1 else ""
        when = latest["launched"][:19].replace("T", " ")
        described.append(f"{key} ({count}{latest['status']}, {when}): {first['run_name']}")
    return "; ".join(described)


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column that may be absent (no run carries that param, metric or tag)."""
    return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)


def metric(frame: pd.DataFrame, key: str) -> pd.Series:
    """A metric as floats; NaN for runs without it."""
    return pd.to_numeric(column(frame, f"metrics.{key}"), errors="coerce").astype(float)


def _row(run) -> dict:
    data = {f"{kind}.{k}": v for kind in ("params", "metrics", "tags") for k, v in getattr(run.data, kind).items()}
    return {**{name: getattr(run.info, name) for name in INFO}, **data}


def apply_filters(runs: pd.DataFrame, filters: list[str]) -> pd.DataFrame:
    """Keep runs whose params match every `key=value` (model=lenet5, optimizer.lr=0.01, ...)."""
    for condition in filters:
        key, separator, value = (part.strip() for part in condition.partition("="))
        if not separator:
            raise AnalysisError(f"--filter {condition!r}: expected key=value, e.g. model=lenet5")
        name = f"params.{FILTER_ALIASES.get(key, key)}"
        if name not in runs:
            known = sorted({*FILTER_ALIASES, *(c[len("params.") :] for c in runs if c.startswith("params."))})
            raise AnalysisError(f"--filter {condition!r}: no run has a setting {key!r}; known: {', '.join(known)}")
        runs = runs[runs[name] == value]
    return runs


def histories(tracking_uri: str, runs: pd.DataFrame, keys=HISTORY) -> pd.DataFrame:
    """Per-epoch metrics of `runs`: columns run_id, variant, epoch, and one per key (fractions)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    frames = []
    for run_id, variant in zip(runs["run_id"], runs[f"tags.{record.VARIANT}"]):
        series = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in keys}
        history = pd.DataFrame(series).sort_index().rename_axis("epoch").reset_index()
        frames.append(history.assign(run_id=run_id, variant=variant))
    return pd.concat(frames, ignore_index=True)[["run_id", "variant", "epoch", *keys]]
