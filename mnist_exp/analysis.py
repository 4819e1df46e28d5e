"""Runs from MLflow into pandas: one row per variant (model x regularizer x optimizer), seeds pooled.

The comparison columns answer the course's questions directly: how far each variant is from
the plain MLP and from plain LeNet-5 trained the same way (same optimizer, epochs, data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from mnist_exp import tracking

# The same run is identified by these columns in every table this module builds.
VARIANT_COLUMNS = ["variant", "model", "regularizer", "optimizer"]
BASELINES = {"vs_mlp": "mlp", "vs_lenet5": "lenet5"}  # the unregularized model each row is compared to


class AnalysisError(RuntimeError):
    """Nothing to analyze; the message says why and what to run."""


@dataclass
class Selection:
    runs: pd.DataFrame  # one row per run of the selection, every status
    description: str  # which sweep (or "all runs") was selected

    @property
    def finished(self) -> pd.DataFrame:
        """FINISHED runs, one per config: a config re-trained with force=true counts once, its latest."""
        finished = self.runs[self.runs["status"] == "FINISHED"].sort_values("start_time")
        return finished.drop_duplicates(f"tags.{tracking.CONFIG_HASH}", keep="last")

    @property
    def unfinished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "FINISHED"]


def select_runs(tracking_uri: str, experiment: str, sweep: str = "latest") -> Selection:
    """The runs of one sweep ('latest', a parent run ID or a sweep key), or of all sweeps ('all')."""
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
    is_parent = runs.get(f"tags.{tracking.ROLE}", pd.Series(index=runs.index, dtype=object)) == "sweep"
    parents, children = runs[is_parent], runs[~is_parent]

    if sweep == "all":
        return Selection(children, f"all {len(children)} runs of experiment {experiment!r}")
    if parents.empty:
        if sweep != "latest":
            raise AnalysisError(f"--sweep {sweep}: experiment {experiment!r} holds no sweeps (train.py -m ...)")
        return Selection(children, f"all {len(children)} runs of experiment {experiment!r} (it holds no sweeps)")
    if sweep == "latest":
        parent = parents.sort_values(f"tags.{tracking.LAST_LAUNCH}").iloc[-1]
    else:
        matches = parents[
            parents["run_id"].str.startswith(sweep) | (parents[f"tags.{tracking.SWEEP_KEY}"] == sweep)
        ]
        if len(matches) != 1:
            known = "; ".join(f"{r.run_id[:8]} ({r.run_name})" for r in parents.itertuples())
            raise AnalysisError(f"--sweep {sweep} matches {len(matches)} sweeps; known sweeps: {known}")
        parent = matches.iloc[0]
    member_column = f"tags.{tracking.sweep_tag(parent[f'tags.{tracking.SWEEP_KEY}'])}"
    members = children[children.get(member_column, pd.Series(index=children.index, dtype=object)) == "1"]
    return Selection(members, f"sweep {parent['run_id'][:8]} ({parent['run_name']})")


def _require_store(tracking_uri: str) -> None:
    """Reading must not create an empty sqlite store as a side effect."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = Path(tracking_uri[len("sqlite:///") :])
        if not path.exists():
            raise AnalysisError(f"no MLflow store at {path.resolve()} ({tracking_uri}): run train.py first, "
                                "or pass --tracking-uri")
    elif parsed.scheme in ("http", "https"):
        tracking._check_server(tracking_uri)


def _runs_frame(runs: list) -> pd.DataFrame:
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _context_key(run: pd.Series) -> str:
    """Everything a run's baseline must share with it: all settings but model, regularizer and seed."""
    context = {
        key: value
        for key, value in run.items()
        if key.startswith("params.")
        and not key[len("params."):].startswith(tracking.NOT_IDENTITY + ("model.", "regularizer.", "trainer.seed", "data.", "trainer.resolved"))
    }
    data = {key: run.get(key) for key in ("params.data.train_sha256", "params.data.test_sha256")}
    return hashlib.sha256(json.dumps({**context, **data}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def variant_table(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: accuracy statistics over its seeds, and its distance to the baselines."""
    if finished.empty:
        raise AnalysisError("no FINISHED runs to compare")
    runs = pd.DataFrame({
        "variant_hash": finished[f"tags.{tracking.VARIANT_HASH}"],
        "context": finished.apply(_context_key, axis=1),
        "model": finished["params.model.name"],
        "regularizer": finished["params.regularizer.name"],
        "optimizer": finished["params.optimizer.name"],
        "params": finished["params.model.parameters"].astype(int),
        "epochs": finished["params.trainer.epochs"].astype(int),
        "final_test_acc": 100 * finished["metrics.test_acc"],
        "best_test_acc": 100 * finished["metrics.best_test_acc"],
        "test_loss": finished["metrics.test_loss"],
        "train_acc": 100 * finished["metrics.train_acc"],
        "train_eval_acc": 100 * finished["metrics.train_eval_acc"],
        "train_time_s": finished["metrics.train_time_s"],
    })
    runs["variant"] = runs["model"] + "/" + runs["regularizer"] + "/" + runs["optimizer"]
    runs["gap"] = runs["train_eval_acc"] - runs["final_test_acc"]  # both measured in eval mode

    grouped = runs.groupby(["variant_hash", "context"], sort=False)
    table = grouped[["variant", "model", "regularizer", "optimizer", "params", "epochs"]].first()
    table["n"] = grouped.size()
    for metric in ("final_test_acc", "best_test_acc", "test_loss", "train_acc", "train_eval_acc", "gap", "train_time_s"):
        table[metric] = grouped[metric].mean()
    table["final_test_acc_std"] = grouped["final_test_acc"].std(ddof=1)  # NaN for a single seed
    table = table.reset_index()

    for column, model in BASELINES.items():
        baseline = table[(table["model"] == model) & (table["regularizer"] == "none")]
        reference = baseline.drop_duplicates("context").set_index("context")["final_test_acc"]
        table[column] = table["final_test_acc"] - table["context"].map(reference)
    _disambiguate(table)
    # Reading order: per optimizer, the MLP first, then LeNet-5 plain, then its regularized variants.
    table["_model_rank"] = table["model"].map({"mlp": 0, "lenet5": 1})
    table["_regularized"] = table["regularizer"] != "none"
    table = table.sort_values(["optimizer", "_model_rank", "_regularized", "regularizer"], kind="stable")
    return table.drop(columns=["variant_hash", "context", "_model_rank", "_regularized"]).reset_index(drop=True)


def _disambiguate(table: pd.DataFrame) -> None:
    """Variants that share a model/regularizer/optimizer name differ elsewhere (lr, epochs, data): say so."""
    duplicated = table["variant"].duplicated(keep=False)
    if duplicated.any():
        table.loc[duplicated, "variant"] = table.loc[duplicated].apply(
            lambda row: f"{row['variant']} [{row['variant_hash'][:6]}]", axis=1
        )


def format_table(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.6g")
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    shown = pd.DataFrame({
        "variant": table["variant"],
        "params": table["params"],
        "n": table["n"],
        "test acc % (final)": [
            f"{m:.2f}" if pd.isna(s) else f"{m:.2f} ± {s:.2f}"
            for m, s in zip(table["final_test_acc"], table["final_test_acc_std"])
        ],
        "best test acc %": table["best_test_acc"].map("{:.2f}".format),
        "test loss": table["test_loss"].map("{:.4f}".format),
        "train acc %": table["train_eval_acc"].map("{:.2f}".format),
        "gap (pp)": table["gap"].map("{:+.2f}".format),
        "epochs": table["epochs"],
        "train time s": table["train_time_s"].map("{:.1f}".format),
        "Δ vs MLP (pp)": table["vs_mlp"].map(_signed),
        "Δ vs LeNet-5 (pp)": table["vs_lenet5"].map(_signed),
    })
    return shown.to_markdown(index=False, disable_numparse=True)


def _signed(value: float) -> str:
    return "" if pd.isna(value) else f"{value:+.2f}"
