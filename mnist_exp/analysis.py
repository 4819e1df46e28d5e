"""Runs from MLflow into pandas: one row per variant (model x regularizer x optimizer x data), seeds pooled.

Each variant is compared with its baseline trained alike (every setting and the data equal but the
model and the regularizer): a regularized variant with its model unregularized, the plain MLP with
plain LeNet-5, image by image over seeds and test images (mnist_exp.significance); each family (the
variants sharing a baseline) gets Holm-adjusted verdicts and Bonferroni intervals. Runs trained on
different data are never pooled or compared. Accuracies are percentages here, named `..._pct`, and
differences percentage points, `..._pp`; MLflow and history.csv hold fractions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import yaml

from mnist_exp import tracking
from mnist_exp.significance import MCNEMAR, SMALLEST_EFFECT_PP, Difference, Estimate, accuracy, difference, judge
from mnist_exp.sweep import clip, significant, sweep_identity, sweep_members

# --metric: which accuracy of a run counts. `val` ranks on the validation split, to choose a recipe
# without looking at the test set.
METRICS = {"final": "final_test_acc", "best": "best_test_acc", "val": "final_val_acc"}
HEADERS = {"final": "test acc %", "best": "best-epoch test acc %", "val": "validation acc %"}
# The split whose per-image answers a metric is about; the best epoch's are not kept (it is chosen on test).
SPLITS = {"final": "test", "val": "validation"}
SORT_KEYS = {  # --sort name: (column, ascending); best first
    "test_acc": ("acc_pct", False),
    "best_test_acc": ("best_test_acc_pct", False),
    "test_loss": ("test_loss", True),
    "gap": ("gap_pp", True),
    "params": ("params", True),
    "train_time_s": ("train_time_s", True),
    "variant": ("variant", True),
}
FILTER_ALIASES = {"model": "model.name", "regularizer": "regularizer.name", "optimizer": "optimizer.name"}
# Identity settings that a baseline may differ in: what the comparison is about, and the seed.
COMPARED = ("model.", "regularizer.", "trainer.seed")
# Params a run derives from its settings: never what tells two variants apart.
DERIVED = (
    "model.parameters",
    "model.lenet5_parameters",
    "model.description",
    "regularizer.name",
    "data.",
    "trainer.resolved",  # _device, _threads: runs before 1edc110 (2026-11-26) logged them; until none is analyzed
    "trainer.seed",
)
# A collapsed seed: near chance (10 digits: 10%), or this far below the median of its variant's other seeds.
CHANCE_PCT, COLLAPSE_PP = 20.0, 10.0
WIDTH = 120  # the default terminal table fits this many columns
GRIDS = ("grid", "basic")  # sweepers whose job's overrides train that job again (a search's would search again)
# Short names for the narrow table and the figures, printed as a key where used.
SHORT = {
    "batchnorm": "bn",
    "augment": "aug",
    "dropout": "drop",
    "label_smoothing": "ls",
    "early_stopping": "es",
    "onecycle": "1cyc",
    "cosine": "cos",
}


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
        """FINISHED runs, one per identity: a run re-trained with force=true counts once, its latest."""
        finished = self.runs[_compared(self.runs)].sort_values("start_time")
        identity = [f"tags.{tracking.CONFIG_HASH}", *(f"params.{key}" for key in tracking.DATA_IDENTITY)]
        return finished.drop_duplicates([c for c in identity if c in finished], keep="last")

    @property
    def unfinished(self) -> pd.DataFrame:
        """Runs not compared: not FINISHED, or FINISHED early because a search pruned them."""
        return self.runs[~_compared(self.runs)]


def _compared(runs: pd.DataFrame) -> pd.Series:
    """FINISHED and not stopped early by a search's pruner."""
    return (runs["status"] == "FINISHED") & _column(runs, f"tags.{tracking.PRUNED}").isna()


def select_runs(tracking_uri: str, experiment: str, sweep: str | list[str] = "latest") -> Selection:
    """The runs of some sweeps (see find_sweep), or of all runs ('all').

    A sweep is every launch of one command (its key; two launches at once each get a parent run) and
    every launch that adds runs to it (mlflow.extends=KEY, which the report's commands carry)."""
    _require_store(tracking_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise AnalysisError(f"no experiment named {experiment!r} in {tracking_uri} (experiments there: {names})")
    runs = _runs_frame(client.search_runs([found.experiment_id], max_results=50_000))
    if runs.empty:
        raise AnalysisError(f"experiment {experiment!r} in {tracking_uri} has no runs yet: run train.py first")
    is_parent = _column(runs, f"tags.{tracking.ROLE}") == "sweep"
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
        sweep=_column(parents, f"tags.{tracking.EXTENDS}").fillna(parents[f"tags.{tracking.SWEEP_KEY}"])
    )
    parents = parents.assign(launched=_column(parents, f"tags.{tracking.LAST_LAUNCH}").fillna(""))
    members_of = functools.cache(
        lambda parent: (
            sweep_members(client, parent)
            | set(children.loc[_column(children, f"tags.{tracking.PARENT}") == parent, "run_id"])
        )
    )
    keys, described, notes = [], [], []
    for selector in sweeps:
        key, passed = find_sweep(
            parents, selector, lambda parent: _compared(children[children["run_id"].isin(members_of(parent))]).any()
        )
        keys.append(key)
        launches = parents[parents["sweep"] == key].sort_values("start_time")
        first = launches.iloc[0]
        more = f" and {len(launches) - 1} more launch(es) of it" if len(launches) > 1 else ""
        described.append(f"sweep {first['run_id'][:8]} ({first['run_name']}){more}")
        notes += [f"{p.run_id[:8]} ({p.status}, {p.run_name})" for p in passed.itertuples()]
    members = set().union(*(members_of(p) for p in parents.loc[parents["sweep"].isin(keys), "run_id"]))
    description = " + ".join(described)
    if notes:
        description += f"; later launches with no FINISHED run, not read: {'; '.join(notes)}"
    bases = [parents[parents["sweep"] == key].sort_values("start_time")["run_id"].iloc[0] for key in keys]
    return Selection(children[children["run_id"].isin(members)], description, bases, keys)


def find_sweep(parents: pd.DataFrame, selector: str, has_finished_run) -> tuple[str, pd.DataFrame]:
    """(the sweep's key, the later launches passed over) for `selector`: 'latest' (the latest launch with a
    FINISHED run, failed and aborted launches passed over; the latest if none has one), a sweep's key, a
    parent run ID (or its first characters), a sweep's full name, or words of one that only one sweep's
    launches hold. `parents` carries each parent run's `sweep` (its key, or the key it extends) and
    `launched` (its last launch)."""
    if selector == "latest":
        ordered = parents.sort_values("launched", ascending=False)
        for position, parent in enumerate(ordered.itertuples()):
            if has_finished_run(parent.run_id):
                return parent.sweep, ordered.iloc[:position]
        return ordered.iloc[0]["sweep"], parents.iloc[:0]  # none has: the latest, whose runs say why
    names = parents["run_name"]
    exact = (
        parents["run_id"].str.startswith(selector)
        | (parents["sweep"] == selector)
        | (parents[f"tags.{tracking.SWEEP_KEY}"] == selector)
        | (names == selector)
        | (names == f"sweep: {selector}")
    )
    matches = parents[exact] if exact.any() else parents[names.str.contains(selector, regex=False)]
    keys = matches["sweep"].unique()
    if len(keys) == 1:
        return keys[0], parents.iloc[:0]
    if len(keys) == 0:
        raise AnalysisError(f"--sweep {selector} matches no sweep; known sweeps: {_launches(parents)}")
    raise AnalysisError(f"--sweep {selector} matches {len(keys)} sweeps; give one's key: {_launches(matches)}")


def _launches(parents: pd.DataFrame) -> str:
    """Each sweep of `parents`, latest first, as --sweep takes it: 'KEY (FAILED, 2026-12-05 10:00:00): sweep: ...',
    with its first launch's name and its latest launch's status and time, and how many launches it had."""
    described = []
    for key, launches in sorted(parents.groupby("sweep"), key=lambda item: item[1]["launched"].max(), reverse=True):
        latest, first = launches.sort_values("launched").iloc[-1], launches.sort_values("start_time").iloc[0]
        count = f"{len(launches)} launches, latest " if len(launches) > 1 else ""
        when = latest["launched"][:19].replace("T", " ")
        described.append(f"{key} ({count}{latest['status']}, {when}): {first['run_name']}")
    return "; ".join(described)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column that may be absent (no run carries that tag yet)."""
    return frame[name] if name in frame else pd.Series(None, index=frame.index, dtype=object)


def _metric(frame: pd.DataFrame, key: str) -> pd.Series:
    """A metric as floats; NaN for runs logged before the metric existed."""
    return pd.to_numeric(_column(frame, f"metrics.{key}"), errors="coerce").astype(float)


def _require_store(tracking_uri: str) -> None:
    """Reading must not create an empty sqlite store as a side effect."""
    tracking.check_store(tracking_uri, "--tracking-uri ")
    path = tracking.sqlite_path(tracking_uri)
    if path is not None and not path.exists():
        raise AnalysisError(f"no MLflow store at {path} ({tracking_uri}): run train.py first, or pass --tracking-uri")
    if urlparse(tracking_uri).scheme in ("http", "https"):
        tracking.check_server(tracking_uri)


def _runs_frame(runs: list) -> pd.DataFrame:
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def apply_filters(runs: pd.DataFrame, filters: list[str]) -> pd.DataFrame:
    """Keep runs whose params match every `key=value` (model=lenet5, optimizer.lr=0.01, ...)."""
    for condition in filters:
        key, separator, value = condition.partition("=")
        if not separator:
            raise AnalysisError(f"--filter {condition!r}: expected key=value, e.g. model=lenet5")
        column = f"params.{FILTER_ALIASES.get(key.strip(), key.strip())}"
        if column not in runs:
            known = sorted({*FILTER_ALIASES, *(c[len("params.") :] for c in runs if c.startswith("params."))})
            raise AnalysisError(
                f"--filter {condition!r}: no run has a setting {key.strip()!r}; known: {', '.join(known)}"
            )
        runs = runs[runs[column] == value.strip()]
    return runs


def _context_key(run: pd.Series) -> str:
    """Everything a run's baseline must share with it: every setting but model, regularizer and seed,
    and the data it read (by content: the same digits from a tar or from IDX files match)."""
    context = {
        key: value
        for key, value in run.items()
        if key.startswith("params.")
        and not key[len("params.") :].startswith(tracking.NOT_IDENTITY + COMPARED + DERIVED)
    }
    data = {key: run.get(f"params.{key}") for key in tracking.DATA_IDENTITY}
    return hashlib.sha256(json.dumps({**context, **data}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings(params: dict[str, str]) -> str:
    """A run's own settings (JSON) from its params, without the seed and what follows from the others:
    equal for the runs of one variant, and for a config composed with the same overrides."""
    recorded = {key: value for key, value in params.items() if not pd.isna(value)}
    return json.dumps(tracking.identity(recorded, ignore=DERIVED), sort_keys=True)


def _data_label(run: pd.Series) -> str:
    """'sample 8000/2000 (offline fallback)': where a run's digits came from, and how many."""
    source = run.get("params.data.resolved_source")
    if pd.isna(source):
        return "unrecorded"
    label = f"{source} {run.get('params.data.train_size')}/{run.get('params.data.test_size')}"
    validation = run.get("params.data.validation_size_used")
    label += "" if pd.isna(validation) or validation == "0" else f" +{validation} val"
    return label + (" (offline fallback)" if not pd.isna(run.get(f"tags.{tracking.FALLBACK}")) else "")


def per_run(finished: pd.DataFrame, metric: str = "final") -> pd.DataFrame:
    """The numbers of each finished run, in percent, with its variant, its data and its comparison context."""
    final = _metric(finished, "final_test_acc").fillna(_metric(finished, "test_acc"))  # runs older than final_*
    runs = pd.DataFrame(
        {
            "run_id": finished["run_id"],
            "variant_hash": finished[f"tags.{tracking.VARIANT_HASH}"],
            "context": finished.apply(_context_key, axis=1),
            "data": finished.apply(_data_label, axis=1),
            "settings": finished.apply(
                lambda run: settings({k[len("params.") :]: v for k, v in run.items() if k.startswith("params.")}),
                axis=1,
            ),
            "model": finished["params.model.name"],
            "regularizer": finished["params.regularizer.name"],
            "optimizer": finished["params.optimizer.name"],
            "scheduler": _column(finished, "params.scheduler.name").fillna("none"),
            "params": finished["params.model.parameters"].astype(int),
            "epochs": finished["params.trainer.epochs"].astype(int),
            "train_size": pd.to_numeric(_column(finished, "params.data.train_size")),
            "final_test_acc_pct": 100 * final,
            "best_test_acc_pct": 100 * _metric(finished, "best_test_acc"),
            "test_loss": _metric(finished, "final_test_loss").fillna(_metric(finished, "test_loss")),
            "train_eval_acc_pct": 100 * _metric(finished, "train_eval_acc"),
            "train_time_s": _metric(finished, "train_time_s"),
            "seed": pd.to_numeric(_column(finished, "params.trainer.seed")),
            "val_acc_pct": 100 * _metric(finished, "final_val_acc"),
            "digest": _column(finished, f"params.{tracking.SPLIT_DIGEST[SPLITS.get(metric, 'test')]}"),
        }
    )
    runs["acc_pct"] = runs["final_test_acc_pct"] if metric == "final" else 100 * _metric(finished, METRICS[metric])
    schedule = runs["scheduler"].map(lambda name: "" if name == "none" else f"+{name}")
    runs["variant"] = runs["model"] + "/" + runs["regularizer"] + "/" + runs["optimizer"] + schedule
    runs["gap_pp"] = runs["train_eval_acc_pct"] - runs["final_test_acc_pct"]  # the same model, both in eval mode
    return runs.reset_index(drop=True)


def variant_table(
    finished: pd.DataFrame,
    metric: str = "final",
    sort: str | None = None,
    answers: dict | None = None,
    smallest_effect: float = SMALLEST_EFFECT_PP,
    half_width: float | None = None,
) -> pd.DataFrame:
    """One row per variant: accuracy over its seeds, and its distance to the baselines.

    `answers`: {run_id: correct per image} on the metric's split (mnist_exp.predictions); a variant
    with every run's gets a 95% interval over seeds and images, and comparisons image by image.
    `vs_mlp_pp` / `vs_lenet5_pp`: difference of mean accuracy to the unregularized MLP / LeNet-5
    trained the same way on the same data. `vs_baseline_pp` compares a regularized variant with its own
    model unregularized, and the plain MLP with plain LeNet-5: COMPARISON's columns, judged within the
    family sharing that baseline against `smallest_effect` (pp), planned by it or by `half_width`.
    `collapsed` names seeds far below the others (kept in every statistic).
    """
    if finished.empty:
        raise AnalysisError("no FINISHED runs to compare")
    runs = per_run(finished, metric)
    grouped = runs.groupby(["variant_hash", "context"], sort=False)
    table = grouped[
        [
            "variant",
            "model",
            "regularizer",
            "optimizer",
            "scheduler",
            "data",
            "settings",
            "params",
            "epochs",
            "train_size",
            "digest",
        ]
    ].first()
    table["n"] = grouped.size()
    for column in (
        "acc_pct",
        "final_test_acc_pct",
        "best_test_acc_pct",
        "test_loss",
        "train_eval_acc_pct",
        "gap_pp",
        "train_time_s",
        "val_acc_pct",
    ):
        table[column] = grouped[column].mean()
    table["gap_pp_std"] = grouped["gap_pp"].std(ddof=1)
    table["acc_pct_samples"] = grouped["acc_pct"].apply(list)
    table["seeds"] = grouped["seed"].apply(lambda seeds: [int(s) for s in seeds])
    table["run_ids"] = grouped["run_id"].apply(list)
    answers = answers or {}
    table["answers"] = [  # {seed: correct per image}; None where a run has none
        dict(zip(r.seeds, (answers[i] for i in r.run_ids))) if all(i in answers for i in r.run_ids) else None
        for r in table.itertuples()
    ]
    estimates = [
        accuracy(np.stack(list(r.answers.values())))
        if r.answers is not None
        else Estimate(
            np.mean(r.acc_pct_samples), np.std(r.acc_pct_samples, ddof=1) if r.n > 1 else np.nan, r.n, np.nan, np.nan
        )
        for r in table.itertuples()
    ]
    table["acc_pct_std"] = [e.std for e in estimates]
    table["acc_pct_ci_low"] = [e.ci_low for e in estimates]
    table["acc_pct_ci_high"] = [e.ci_high for e in estimates]
    table["collapsed"] = [collapsed_seeds(r.acc_pct_samples, r.seeds, r.run_ids) for r in table.itertuples()]
    table = table.reset_index()
    table.attrs["judging"] = {"smallest_effect": smallest_effect, "half_width": half_width}

    plain = table[table["regularizer"] == "none"]
    for column, model in (("vs_mlp_pp", "mlp"), ("vs_lenet5_pp", "lenet5")):
        reference = plain[plain["model"] == model].drop_duplicates("context").set_index("context")["acc_pct"]
        table[column] = table["acc_pct"] - table["context"].map(reference)
    _compare_with_baselines(table, plain)
    _disambiguate(table)
    table = _sorted(table, sort).drop(columns=["variant_hash"]).reset_index(drop=True)
    table.attrs["metric"] = metric
    return table


def collapsed_seeds(accuracies: list[float], seeds: list[int], run_ids: list[str]) -> list[str]:
    """Seeds below CHANCE_PCT, or COLLAPSE_PP or more below the median of the variant's other seeds:
    'seed 2 (run 1a2b3c4d, 11.35%)'."""
    notes = []
    for i, (acc, seed, run_id) in enumerate(zip(accuracies, seeds, run_ids)):
        others = accuracies[:i] + accuracies[i + 1 :]
        if acc < CHANCE_PCT or (others and acc <= np.median(others) - COLLAPSE_PP):
            notes.append(f"seed {seed} (run {run_id[:8]}, {acc:.2f}%)")
    return notes


def comparison(a, b) -> dict:
    """a against b (table rows) image by image over their seeds: the numbers the table and the report
    show; adjust() adds the family's verdict, interval and plan."""
    if a.answers is None or b.answers is None or a.digest != b.digest:
        why = "no per-image answers" if a.answers is None or b.answers is None else "other test images"
        d = Difference(a.acc_pct - b.acc_pct, np.nan, np.nan, np.nan, None, min(a.n, b.n), 0, why)
    else:
        d = difference(a.answers, b.answers)
    return {
        "baseline": b.variant,
        "vs_baseline_pp": d.diff,
        "p_value": d.p_value,
        "test": d.test,
        "why_untested": d.why,
        "n_compared": d.seeds,
        "images": d.images,
        "difference": d,
    }


def adjust(comparisons: list[dict], judging: dict) -> list[dict]:
    """One family of comparisons (one question): Holm-adjusted p, Bonferroni interval, verdict, plan
    (significance.judge; `judging`: the table's smallest effect and half-width)."""
    for c, j in zip(comparisons, judge([c["difference"] for c in comparisons], **judging)):
        c.update(
            p_adj=j.p_adj,
            confidence=j.confidence,
            vs_baseline_pp_ci_low=j.ci_low,
            vs_baseline_pp_ci_high=j.ci_high,
            verdict=j.verdict,
            holm_only=j.holm_only,
            seeds_needed=j.seeds_needed,
            larger_test_set=j.larger_test_set,
            floor_half_width=j.floor_half_width,
        )
    return comparisons


COMPARISON = [
    "baseline",
    "vs_baseline_pp",
    "vs_baseline_pp_ci_low",
    "vs_baseline_pp_ci_high",
    "confidence",
    "p_value",
    "p_adj",
    "test",
    "why_untested",
    "n_compared",
    "images",
    "verdict",
    "holm_only",
    "seeds_needed",
    "larger_test_set",
    "floor_half_width",
]


def _compare_with_baselines(table: pd.DataFrame, plain: pd.DataFrame) -> None:
    rows = {(r.model, r.context): r for r in plain.itertuples()}
    families: dict[tuple, list[tuple[int, dict]]] = {}
    for i, row in zip(table.index, table.itertuples()):
        baseline_model = row.model if row.regularizer != "none" else ("lenet5" if row.model == "mlp" else None)
        baseline = rows.get((baseline_model, row.context))
        if baseline is not None:
            families.setdefault((baseline_model, row.model, row.context), []).append((i, comparison(row, baseline)))
    for column in COMPARISON:
        table[column] = None if column in ("baseline", "test", "why_untested", "verdict") else np.nan
    for column in ("seeds_needed", "holm_only", "larger_test_set"):
        table[column] = table[column].astype(object)
    for members in families.values():
        for (i, _), c in zip(members, adjust([c for _, c in members], table.attrs["judging"])):
            for column in COMPARISON:
                table.at[i, column] = c[column]


def _sorted(table: pd.DataFrame, sort: str | None) -> pd.DataFrame:
    if sort is not None:
        if sort not in SORT_KEYS:
            raise AnalysisError(f"--sort {sort}: choose one of {', '.join(SORT_KEYS)}")
        column, ascending = SORT_KEYS[sort]
        return table.sort_values(column, ascending=ascending, kind="stable")
    # Reading order: per optimizer, the MLP first, then LeNet-5 plain, then its regularized variants.
    order = table.assign(
        _model_rank=table["model"].map({"mlp": 0, "lenet5": 1}), _regularized=table["regularizer"] != "none"
    ).sort_values(["data", "optimizer", "_model_rank", "_regularized", "regularizer"], kind="stable")
    return table.loc[order.index]


def _disambiguate(table: pd.DataFrame) -> None:
    """Variants that share a model/regularizer/optimizer name differ elsewhere: name what differs,
    'mlp/none/sgd lr=0.02' (numbers to the fewest significant figures, from 3, that tell the rows apart),
    or the data when that is all."""
    duplicated = table["variant"].duplicated(keep=False)
    for variant, rows in table[duplicated].groupby("variant"):
        settings = [json.loads(s) for s in rows["settings"]]
        differing = sorted({key for s in settings for key in s if any(o.get(key) != s.get(key) for o in settings)})
        for figures in (3, 4, 6, 17):  # 17: every digit of a float
            labels = [
                " ".join([variant, *(_setting(key, s.get(key, "-"), figures) for key in differing)])
                if differing
                else f"{variant} [{data}]"
                for s, data in zip(settings, rows["data"])
            ]
            if len(set(labels)) == len(labels):
                break
        if len(set(labels)) < len(labels):  # same settings, other data: both differ
            labels = [f"{label} [{data}]" for label, data in zip(labels, rows["data"])]
        table.loc[rows.index, "variant"] = labels


def _setting(key: str, value: str, figures: int) -> str:
    """'lr=0.0229': a setting in a label, its group left out, a number to `figures` significant figures."""
    return f"{key.split('.', 1)[-1]}={significant(value, figures)}"


def histories(
    tracking_uri: str, finished: pd.DataFrame, keys=("test_acc", "test_loss", "train_acc", "train_loss", "lr")
):
    """Per-epoch metrics of every finished run: columns run_id, variant, epoch, and one per key (fractions)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    variants = per_run(finished)
    frames = []
    for run in variants.itertuples():
        series = {key: {m.step: m.value for m in client.get_metric_history(run.run_id, key)} for key in keys}
        frame = pd.DataFrame(series).rename_axis("epoch").reset_index()
        frame.insert(0, "variant", run.variant)
        frame.insert(0, "run_id", run.run_id)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def choose_best(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """The best of `rows` (seeded variants first) and what it was chosen on: 'validation' where every
    row has a validation accuracy (data.validation_size), else 'test' (its margin then is optimistic)."""
    seeded = rows[rows["n"] >= 2]
    rows = seeded if len(seeded) else rows
    basis = "validation" if rows["val_acc_pct"].notna().all() else "test"
    column = "val_acc_pct" if basis == "validation" else "acc_pct"
    return rows.sort_values(column, ascending=False, kind="stable").iloc[0], basis


def hydra_file(client, run_id: str, name: str, run_name: str = ""):
    """A file Hydra wrote for the run's job (hydra/NAME.yaml, logged by mnist_exp.job), parsed."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, f"hydra/{name}.yaml", folder)
        except Exception:  # MLflow raises several types for a missing artifact
            raise AnalysisError(
                f"run {run_id}{f' ({run_name})' * bool(run_name)} has no hydra/{name}.yaml to say how it was "
                "launched: it was trained by code that logged Hydra's files only as a run ended, and stopped before"
            ) from None
        return yaml.safe_load(Path(path).read_text())


def with_overrides(table: pd.DataFrame, tracking_uri: str, sweep_key: str | None = None) -> pd.DataFrame:
    """`table` with each variant's overrides of conf/train.yaml, as Hydra logged them for its latest run, the
    seed and mlflow.extends left out: what train_command trains again (None for a search's trial, whose
    overrides would launch the search again, and for runs older than Hydra's files, 1edc110); and the
    `sweep_key` of the sweep they were selected from, which seeds added to it extend."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)

    def overrides(run_id: str) -> list[str] | None:
        try:
            if hydra_file(client, run_id, "hydra")["hydra"]["runtime"]["choices"].get("hydra/sweeper") not in GRIDS:
                return None
            logged = hydra_file(client, run_id, "overrides") or []
        except AnalysisError:
            return None
        return [o for o in logged if o.split("=", 1)[0].lstrip("+~") not in ("trainer.seed", "mlflow.extends")]

    return table.assign(overrides=[overrides(run_ids[-1]) for run_ids in table["run_ids"]], sweep_key=sweep_key)


def _sweeps(rows: list, seeds: list[int], extra: tuple[str, ...] = ()) -> list[list[str]] | None:
    """The overrides of the `python train.py -m` sweeps training `seeds` of each row's variant (with `extra`
    overrides), merged into one sweep where the variants' overrides differ in one value only; None without
    overrides."""
    if not seeds:  # `trainer.seed=` with no value would train the default seed, not what was asked
        raise ValueError("a command that adds seeds needs at least one seed")
    lists = [getattr(row, "overrides", None) for row in rows]
    if any(not isinstance(x, list) for x in lists):
        return None
    replaced = {o.split("=", 1)[0] for o in extra}
    lists = [[o for o in x if o.split("=", 1)[0] not in replaced] + list(extra) for x in lists]
    contiguous = len(seeds) > 3 and seeds == list(range(seeds[0], seeds[-1] + 1))
    seeds_override = (
        f"trainer.seed=range({seeds[0]},{seeds[-1] + 1})"  # Hydra's sweep range
        if contiguous
        else "trainer.seed=" + ",".join(str(s) for s in seeds)
    )
    distinct = list(dict.fromkeys(tuple(x) for x in lists))
    keys = {tuple(o.split("=", 1)[0] for o in x) for x in distinct}
    differing = [i for i in range(len(distinct[0])) if len({x[i] for x in distinct}) > 1] if len(keys) == 1 else []
    if len(differing) == 1:
        (i,) = differing
        values = ",".join(x[i].split("=", 1)[1] for x in distinct)
        distinct = [(*distinct[0][:i], f"{distinct[0][i].split('=', 1)[0]}={values}", *distinct[0][i + 1 :])]
    return [[*x, seeds_override] for x in distinct]


def train_command(rows: list, seeds: list[int], extra: tuple[str, ...] = (), pooled: bool = False) -> str | None:
    """One `python train.py -m` line (or several, joined by &&) training `seeds` of each row's variant;
    finished runs are skipped. None where a row has no overrides (a search's trial). `pooled`: the new
    seeds join the rows' sweep (mlflow.extends=its key), so analyze.py reads them with it; a re-test on
    fresh seeds stays apart."""
    keys = {getattr(row, "sweep_key", None) for row in rows}
    if pooled and len(keys) == 1 and None not in keys:
        extra = (*extra, f"mlflow.extends={next(iter(keys))}")
    sweeps = _sweeps(rows, seeds, extra)
    if sweeps is None:
        return None
    return " && ".join(" ".join(["python train.py -m", *map(shlex.quote, x)]) for x in sweeps)


def analyze_command(rows: list, seeds: list[int], extra: tuple[str, ...] = (), report: str | None = None) -> str:
    """The `python analyze.py` line that reads exactly the sweeps train_command(rows, seeds, extra) runs,
    by their keys: those runs alone. Call it only where train_command gives a command."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeps = _sweeps(rows, seeds, extra)
    parsed = OverridesParser.create().parse_overrides(sweeps[0])
    settings = {o.key_or_group: o.value() for o in parsed if not o.is_sweep_override()}  # Hydra's escapes undone
    store = [
        f"{option} {shlex.quote(str(settings[key]))}"
        for key, option in (("mlflow.tracking_uri", "--tracking-uri"), ("mlflow.experiment", "--experiment"))
        if key in settings
    ]
    sweep_args = [f"--sweep {sweep_identity(x)[0]}" for x in sweeps]
    return " ".join(["python analyze.py", *store, *sweep_args, *([f"--report {report}"] if report else [])])


def fresh_seeds(rows: list, count: int) -> list[int]:
    """`count` seeds none of the rows has used: a re-test that has not seen the selection's numbers."""
    used = {seed for row in rows for seed in row.seeds}
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


def more_seeds(rows: list, needed: int) -> list[int]:
    """The seeds that bring each row to `needed` seeds, counting up from the highest used; at least one."""
    have = max(len(row.seeds) for row in rows)
    return fresh_seeds(rows, max(needed - have, 1))


def named_variants(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows a model name selects: each of its words (split at - and .) that names an option of a
    variant's groups keeps the variants with that option (mnist-lenet5: LeNet-5's; lenet5-dropout: LeNet-5's
    with dropout); a name naming none keeps all. Refused when no row is left."""
    conf = tracking.TRAIN_SCRIPT.parent / "conf"
    groups = ("model", "regularizer", "optimizer", "scheduler")
    options = {group: {path.stem for path in (conf / group).glob("*.yaml")} for group in groups}
    words = sorted({word for word in re.split(r"[-.]", name) if any(word in known for known in options.values())})
    chosen = {group: table[group].str.split("+") for group in groups}  # each variant's options, per group
    kept = pd.Series(True, index=table.index)
    for word in words:
        having = [chosen[group].map(lambda values, w=word: w in values) for group in groups if word in options[group]]
        kept &= pd.concat(having, axis=1).any(axis=1)
    if not kept.any():
        raise AnalysisError(
            f"--register {name}: the name says {' and '.join(words)}, which no variant of this selection is "
            f"({', '.join(table['variant'])}); give another name, or select such runs (--sweep, --filter)"
        )
    return table[kept]


def register_best(
    tracking_uri: str, table: pd.DataFrame, finished: pd.DataFrame, name: str, metric: str
) -> tuple[str, str, str, bool]:
    """Register the model of the best variant that `name` selects (named_variants; by mean over seeds, on
    validation where every variant has a validation split) in the Model Registry.

    Of that variant's seeds, the run with the highest accuracy on the same split supplies the weights.
    Returns the variant, the models:/NAME/<version> URI, the split it was chosen on, and whether that
    version is new: a model already registered under NAME keeps its version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    best, basis = choose_best(named_variants(table, name))
    runs = per_run(finished, metric).set_index("run_id").loc[best.run_ids]
    run_id = runs["val_acc_pct" if basis == "validation" else "acc_pct"].idxmax()
    chosen_on = "final_val_acc" if basis == "validation" else METRICS[metric]
    mlflow.set_tracking_uri(tracking_uri)
    try:
        (model,) = mlflow.search_logged_models(
            filter_string=f"source_run_id = '{run_id}'",
            output_format="list",
            experiment_ids=[finished.set_index("run_id").loc[run_id, "experiment_id"]],
        )
        client = mlflow.MlflowClient(tracking_uri)
        same = [
            v
            for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if v.source == model.model_uri
        ]
        if same:
            return best.variant, f"models:/{name}/{same[0].version}", basis, False
        version = mlflow.register_model(
            model.model_uri,
            name,
            tags={
                "variant": best.variant,
                "metric": chosen_on,
                "variant_mean_pct": f"{best.acc_pct:.2f}",
                "seeds": str(best.n),
                "data": best.data,
                "run_id": run_id,
            },
        )
    except (MlflowException, ValueError) as error:  # ValueError: the run logged no model (or several)
        raise AnalysisError(
            f"--register {name}: cannot register the model of run {run_id} "
            f"({best.variant}): {str(error).splitlines()[0]}"
        ) from None
    return best.variant, f"models:/{name}/{version.version}", basis, True


def format_table(table: pd.DataFrame, fmt: str, wide: bool = False) -> str:
    """markdown for people: by default what fits WIDTH columns, `wide` every column, then notes (collapsed
    seeds, the key to short names); csv and json keep every column but the per-image answers,
    `acc_pct_samples` holding each seed's accuracy (in the order of `seeds`)."""
    if fmt == "csv":
        return table.drop(columns="answers").to_csv(index=False, float_format="%.6g")
    if fmt == "json":
        return table.drop(columns="answers").to_json(orient="records", indent=2)
    smallest = table.attrs["judging"]["smallest_effect"]
    accuracy = HEADERS[table.attrs.get("metric", "final")]
    marked = table["variant"] + table["collapsed"].map(lambda notes: " *" if notes else "")
    common = {
        "n": table["n"],
        accuracy: [_mean_std(m, s) for m, s in zip(table["acc_pct"], table["acc_pct_std"])],
        "95% CI": [_interval(lo, hi) for lo, hi in zip(table["acc_pct_ci_low"], table["acc_pct_ci_high"])],
    }
    if wide:
        shown = pd.DataFrame(
            {
                "variant": marked,
                "data": table["data"],
                "params": table["params"],
                **common,
                "best %": table["best_test_acc_pct"].map(_number("{:.2f}")),
                "val %": table["val_acc_pct"].map(_number("{:.2f}")),
                "test loss": table["test_loss"].map(_number("{:.4f}")),
                "train (eval) %": table["train_eval_acc_pct"].map(_number("{:.2f}")),
                "gap pp": table["gap_pp"].map(_number("{:+.2f}")),
                "epochs": table["epochs"],
                "time s": table["train_time_s"].map(_number("{:.1f}")),
                "Δ MLP pp": table["vs_mlp_pp"].map(_signed),
                "Δ LeNet-5 pp": table["vs_lenet5_pp"].map(_signed),
                "vs baseline": [_versus(row, smallest) for row in table.itertuples()],
                "seeds needed": [_plan(row) for row in table.itertuples()],
            }
        )
        return shown.to_markdown(index=False, disable_numparse=True) + _notes(table, {}, smallest)
    narrow = pd.DataFrame(
        {
            **common,
            "Δ baseline pp (CI)": [_diff(row) for row in table.itertuples()],
            "p Holm": table["p_adj"].map(_p),
            "verdict": [_verdict_word(row, smallest) for row in table.itertuples()],
        }
    )
    key: dict[str, str] = {}
    for shorten, compact in ((False, False), (True, False), (True, True)):
        labels = marked.map(lambda v: short(v, key)) if shorten else marked
        columns = narrow.loc[:, (narrow != "").any()] if compact else narrow  # compact: without columns no row fills
        text = pd.concat([labels.rename("variant"), columns], axis=1).to_markdown(index=False, disable_numparse=True)
        if max(map(len, text.splitlines())) <= WIDTH:
            break
    else:  # still too wide: labels cut between words, never inside a number (--wide shows them whole)
        room = WIDTH - max(map(len, text.splitlines())) + labels.str.len().max()
        labels = labels.map(clip, limit=room)
        text = pd.concat([labels.rename("variant"), columns], axis=1).to_markdown(index=False, disable_numparse=True)
    return text + _notes(table, key, smallest, compared="p Holm" in columns)


def short(variant: str, key: dict[str, str] | None = None) -> str:
    """The variant with SHORT's abbreviations; those used are added to `key`."""
    for name, abbreviation in SHORT.items():
        if name in variant:
            variant = variant.replace(name, abbreviation)
            if key is not None:
                key[abbreviation] = name
    return variant


def _notes(table: pd.DataFrame, key: dict[str, str], smallest: float, compared: bool = True) -> str:
    """Under the table: what Δ compares and what its intervals cover (where shown), collapsed seeds by run id,
    the key to short names."""
    lines = []
    if compared:
        lines.append(
            "Δ baseline: against the same model unregularized (the MLP: against LeNet-5), trained alike, image by "
            "image; intervals cover other seeds and other digits drawn like the test set (95% for accuracy; for Δ, "
            "1 - 0.05/m within each baseline's family of m: Bonferroni); p Holm: adjusted within that family; "
            f"verdict: Holm's, and '<{smallest:g}' or '±{smallest:g}' where the whole interval lies within "
            f"±{smallest:g} pp, the smallest difference worth having (within: no difference worth having); "
            "'1 seed': McNemar's test, about that seed's models only."
        )
    lines += [
        f"* {row.variant}: collapsed {', '.join(row.collapsed)}; kept in every statistic"
        for row in table.itertuples()
        if row.collapsed
    ]
    if key:
        lines.append("key: " + ", ".join(f"{short} = {name}" for short, name in key.items()))
    text = "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in lines)
    return f"\n\n{text}" if text else ""


def _number(template: str):
    return lambda value: "" if pd.isna(value) else template.format(value)


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _interval(low: float, high: float) -> str:
    return "" if pd.isna(low) else f"{low:.2f}–{high:.2f}"


_signed = _number("{:+.2f}")


def _p(p: float) -> str:
    """A p-value in three decimals; never 0.000, which reads as certainty."""
    return "" if pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _verdict_word(row, smallest: float) -> str:
    """The narrow table's verdict: 'better', 'better <0.5', '±0.5' (no difference worth having), 'undecided',
    or why there is no test; ', 1 seed' for McNemar's."""
    if pd.isna(row.baseline):
        return ""
    if row.test is None:
        return row.why_untested
    word = {
        "better by less": f"better <{smallest:g}",
        "worse by less": f"worse <{smallest:g}",
        "equivalent": f"±{smallest:g}",
    }.get(row.verdict, row.verdict)
    return word + (", 1 seed" if row.test == MCNEMAR else "")


def _versus(row, smallest: float) -> str:
    """'+0.41 vs lenet5/none/sgd (seeds x images, p=0.012, Holm 0.036: better)'."""
    if pd.isna(row.baseline):
        return ""
    if row.test is None:
        return f"{row.vs_baseline_pp:+.2f} vs {row.baseline} ({row.why_untested}: no test)"
    return (
        f"{row.vs_baseline_pp:+.2f} vs {row.baseline} ({row.test}, p {_p(row.p_value)}, "
        f"Holm {_p(row.p_adj)}: {_verdict_word(row, smallest)})"
    )


def _plan(row) -> str:
    if row.larger_test_set is True:
        return "larger test set"
    return "" if pd.isna(row.seeds_needed) else str(int(row.seeds_needed))


def _diff(row) -> str:
    """'+0.41 (-0.20 to +1.02)'; the difference alone where there is no test."""
    if pd.isna(row.baseline):
        return ""
    if pd.isna(row.vs_baseline_pp_ci_low):
        return f"{row.vs_baseline_pp:+.2f}"
    return f"{row.vs_baseline_pp:+.2f} ({row.vs_baseline_pp_ci_low:+.2f} to {row.vs_baseline_pp_ci_high:+.2f})"
