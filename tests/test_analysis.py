"""analysis.py on a synthetic MLflow store written with the real client: runs carry the params,
tags and metrics mnist_exp.experiment logs, with accuracies chosen so every expected number
below can be checked by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from mnist_exp import tracking
from mnist_exp.analysis import AnalysisError, format_table, select_runs, variant_table

PARAMETERS = {"lenet5": 44_426, "mlp": 44_106}


def log_run(client, experiment_id, model, regularizer, optimizer, seed, test_acc, train_eval_acc,
            status="FINISHED", epochs=2, tags=None):
    params = {
        "model.name": model, "regularizer.name": regularizer, "optimizer.name": optimizer,
        "model.parameters": str(PARAMETERS[model]), "trainer.epochs": str(epochs), "trainer.seed": str(seed),
        "data.train_sha256": "a" * 64, "data.test_sha256": "b" * 64,
    }
    run_tags = {
        tracking.CONFIG_HASH: tracking.config_hash(params),
        tracking.VARIANT_HASH: tracking.config_hash(params, ignore=("trainer.seed",)),
        tracking.VARIANT: f"{model}/{regularizer}/{optimizer}",
        **(tags or {}),
    }
    run_id = tracking.create_run(client, experiment_id, f"{model}/{regularizer}/{optimizer} seed={seed}", run_tags)
    tracking.log_params(client, run_id, params)
    if status == "FINISHED":
        tracking.log_metrics(client, run_id, {
            "test_acc": test_acc, "best_test_acc": test_acc + 0.001, "test_loss": 1 - test_acc,
            "train_acc": train_eval_acc - 0.01, "train_eval_acc": train_eval_acc, "train_time_s": 10.0 + seed,
        }, step=epochs)
    tracking.finish(client, run_id, status)
    return run_id


# (model, regularizer, optimizer, seed, test_acc, train_eval_acc)
GRID = [
    ("mlp", "none", "sgd", 0, 0.90, 0.95),
    ("mlp", "none", "sgd", 1, 0.92, 0.96),
    ("mlp", "none", "sgd", 2, 0.94, 0.97),
    ("lenet5", "none", "sgd", 0, 0.97, 0.99),
    ("lenet5", "none", "sgd", 1, 0.99, 1.00),
    ("lenet5", "dropout", "sgd", 0, 0.98, 0.985),
    ("lenet5", "dropout", "sgd", 1, 0.985, 0.99),
    ("lenet5", "l2", "sgd", 0, 0.975, 0.98),
    ("mlp", "none", "adam", 0, 0.80, 0.81),
    ("lenet5", "none", "adam", 0, 0.85, 0.86),
]

# By hand, in percent: mean and sample standard deviation over the seeds; the gap is
# train_eval_acc - test_acc averaged over seeds; deltas compare with the plain MLP / plain
# LeNet-5 trained with the same optimizer (adam rows never borrow the sgd baselines).
EXPECTED = pd.DataFrame(
    [
        # variant,              n, mean,  std,             gap, vs_mlp, vs_lenet5
        ("mlp/none/adam",       1, 80.0,  math.nan,        1.0, 0.0,    -5.0),
        ("lenet5/none/adam",    1, 85.0,  math.nan,        1.0, 5.0,    0.0),
        ("mlp/none/sgd",        3, 92.0,  2.0,             4.0, 0.0,    -6.0),
        ("lenet5/none/sgd",     2, 98.0,  math.sqrt(2),    1.5, 6.0,    0.0),
        ("lenet5/dropout/sgd",  2, 98.25, 0.5 / math.sqrt(2), 0.5, 6.25, 0.25),
        ("lenet5/l2/sgd",       1, 97.5,  math.nan,        0.5, 5.5,    -0.5),
    ],
    columns=["variant", "n", "test_acc", "test_acc_std", "gap", "vs_mlp", "vs_lenet5"],
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store, several experiments: creating a store costs seconds, an experiment does not."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    client = MlflowClient(uri)

    grid = client.create_experiment("grid")
    for row in GRID:
        log_run(client, grid, *row)
    log_run(client, grid, "lenet5", "batchnorm", "sgd", 0, 0.0, 0.0, status="FAILED")

    client.create_experiment("empty")
    failed = client.create_experiment("failed-only")
    for seed in (0, 1):
        log_run(client, failed, "lenet5", "none", "sgd", seed, 0.0, 0.0, status="FAILED")

    sweeps = client.create_experiment("sweeps")
    runs = {}
    parents = {}
    for key in ("keya", "keyb"):
        parents[key] = tracking.open_sweep_run(client, sweeps, key, f"sweep: {key}")
        # The launch stamp has one-second resolution; give the two sweeps distinct launch times.
        tracking.set_tags(client, parents[key], {tracking.LAST_LAUNCH: {"keya": "2026-01-01T10:00:00", "keyb": "2026-01-01T11:00:00"}[key]})
    membership = {"r1": ["keya"], "r2": ["keya", "keyb"], "r3": ["keyb"], "r4": []}  # r2: skipped by sweep B, still a member
    for seed, (name, keys) in enumerate(membership.items()):
        tags = {tracking.sweep_tag(k): "1" for k in keys}
        if keys:
            tags[tracking.PARENT] = parents[keys[0]]
        runs[name] = log_run(client, sweeps, "lenet5", "none", "sgd", seed, 0.9, 0.95, tags=tags)
    return {"uri": uri, "client": client, "runs": runs, "parents": parents}


# --- the variant table ---


def test_variant_table_pools_seeds_and_compares_with_both_baselines(store):
    table = variant_table(select_runs(store["uri"], "grid", "all").finished)

    actual = table[EXPECTED.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(actual, EXPECTED, check_dtype=False, atol=1e-9)


def test_variant_table_carries_the_other_columns_as_means(store):
    table = variant_table(select_runs(store["uri"], "grid", "all").finished).set_index("variant")

    dropout = table.loc["lenet5/dropout/sgd"]
    assert (dropout["model"], dropout["regularizer"], dropout["optimizer"]) == ("lenet5", "dropout", "sgd")
    assert dropout["params"] == 44_426 and dropout["epochs"] == 2
    assert dropout["best_test_acc"] == pytest.approx(98.35)  # (98.1 + 98.6) / 2
    assert dropout["test_loss"] == pytest.approx(0.0175)  # (0.02 + 0.015) / 2
    assert dropout["train_eval_acc"] == pytest.approx(98.75)
    assert dropout["train_acc"] == pytest.approx(97.75)
    assert dropout["train_time_s"] == pytest.approx(10.5)
    assert table.loc["mlp/none/sgd", "params"] == 44_106


def test_failed_runs_stay_out_of_the_table(store):
    selection = select_runs(store["uri"], "grid", "all")

    assert list(selection.unfinished["status"]) == ["FAILED"]
    assert "lenet5/batchnorm/sgd" not in set(variant_table(selection.finished)["variant"])
    assert len(selection.finished) == len(GRID)


def test_variants_differing_beyond_their_name_get_separate_labelled_rows(store):
    client = store["client"]
    experiment = client.create_experiment("epochs")
    for seed, epochs, acc in ((0, 2, 0.90), (0, 5, 0.96)):
        log_run(client, experiment, "mlp", "none", "sgd", seed, acc, acc, epochs=epochs)

    table = variant_table(select_runs(store["uri"], "epochs", "all").finished)

    assert len(table) == 2 and table["variant"].is_unique
    assert all(v.startswith("mlp/none/sgd [") for v in table["variant"])
    assert sorted(table["epochs"]) == [2, 5]
    assert list(table["vs_mlp"]) == [0.0, 0.0]  # each is its own baseline, never the other's


def test_markdown_shows_mean_std_and_signed_deltas(store):
    text = format_table(variant_table(select_runs(store["uri"], "grid", "all").finished), "markdown")

    dropout_line = next(line for line in text.splitlines() if "lenet5/dropout/sgd" in line)
    assert "98.25 ± 0.35" in dropout_line and "+6.25" in dropout_line and "+0.25" in dropout_line
    l2_line = next(line for line in text.splitlines() if "lenet5/l2/sgd" in line)
    assert "97.50 " in l2_line and "±" not in l2_line  # one seed: no spread to show


def test_empty_selection_cannot_make_a_table():
    with pytest.raises(AnalysisError, match="no FINISHED runs"):
        variant_table(pd.DataFrame())


# --- selecting runs ---


def test_latest_sweep_is_selected_by_default(store):
    selection = select_runs(store["uri"], "sweeps")

    assert set(selection.runs["run_id"]) == {store["runs"]["r2"], store["runs"]["r3"]}
    assert selection.description.startswith(f"sweep {store['parents']['keyb'][:8]}")


@pytest.mark.parametrize("how", ["key", "run id prefix"])
def test_a_given_sweep_selects_its_members_including_runs_it_skipped(store, how):
    sweep = "keya" if how == "key" else store["parents"]["keya"][:8]

    selection = select_runs(store["uri"], "sweeps", sweep)

    assert set(selection.runs["run_id"]) == {store["runs"]["r1"], store["runs"]["r2"]}


def test_all_selects_every_training_run_but_no_sweep_parent(store):
    selection = select_runs(store["uri"], "sweeps", "all")

    assert set(selection.runs["run_id"]) == set(store["runs"].values())


def test_unknown_sweep_lists_the_known_ones(store):
    with pytest.raises(AnalysisError, match="--sweep nope matches 0 sweeps; known sweeps: .*sweep: keya.*sweep: keyb|--sweep nope matches 0 sweeps; known sweeps: .*sweep: keyb.*sweep: keya"):
        select_runs(store["uri"], "sweeps", "nope")


def test_reopened_sweep_becomes_the_latest_again(store):
    client = store["client"]
    experiment = client.create_experiment("reopened")
    first = tracking.open_sweep_run(client, experiment, "one", "sweep: one")
    tracking.set_tags(client, first, {tracking.LAST_LAUNCH: "2026-01-01T10:00:00"})
    second = tracking.open_sweep_run(client, experiment, "two", "sweep: two")
    tracking.set_tags(client, second, {tracking.LAST_LAUNCH: "2026-01-01T11:00:00"})
    member = log_run(client, experiment, "mlp", "none", "sgd", 0, 0.9, 0.9, tags={tracking.sweep_tag("one"): "1"})

    assert tracking.open_sweep_run(client, experiment, "one", "sweep: one") == first  # the same command reopens its run

    assert list(select_runs(store["uri"], "reopened").runs["run_id"]) == [member]


def test_without_sweeps_latest_means_all_runs_and_a_named_sweep_is_an_error(store):
    selection = select_runs(store["uri"], "grid")
    assert len(selection.runs) == len(GRID) + 1 and "holds no sweeps" in selection.description

    with pytest.raises(AnalysisError, match="holds no sweeps"):
        select_runs(store["uri"], "grid", "abc123")


# --- clear errors ---


def test_missing_store_is_an_error_and_is_not_created(tmp_path):
    path = tmp_path / "mlflow.db"

    with pytest.raises(AnalysisError, match=f"no MLflow store at {path}"):
        select_runs(f"sqlite:///{path}", "mnist-exp")

    assert not path.exists()


def test_unknown_experiment_lists_the_existing_ones(store):
    with pytest.raises(AnalysisError, match=r"no experiment named 'nope' .*experiments there: .*grid"):
        select_runs(store["uri"], "nope")


def test_experiment_without_runs(store):
    with pytest.raises(AnalysisError, match="'empty' .* has no runs yet"):
        select_runs(store["uri"], "empty")


def test_analyze_exits_1_with_one_line_when_every_run_failed(store):
    result = subprocess.run(
        [sys.executable, str(REPO / "analyze.py"), "--tracking-uri", store["uri"], "--experiment", "failed-only"],
        capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("analyze.py: ") and "no FINISHED runs" in lines[0] and "FAILED" in lines[0]
