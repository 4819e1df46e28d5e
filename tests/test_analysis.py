"""Selecting runs, the variant table and the commands the analysis prints (runs.py, table.py, commands.py)
on a synthetic MLflow store written with the real client: runs carry the params,
tags and metrics mnist_exp.job logs, with accuracies chosen so every expected number
below can be checked by hand."""

from __future__ import annotations

import io
import math
import os
import shlex
import subprocess
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, analyze_main
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mnist_exp import predictions, record
from mnist_exp.commands import with_overrides
from mnist_exp.runs import AnalysisError, select_runs
from mnist_exp.sweep import open_sweep_run, sweep_identity
from mnist_exp.table import format_table, named_variants, short, variant_table

PARAMETERS = {"lenet5": 44_426, "mlp": 44_106}
IMAGES = 1000  # test images of a synthetic run: every accuracy below is a whole number of them
DIFFICULTY = np.random.default_rng(0).random(IMAGES)  # shared by every run: the hard digits are hard for all


def log_answers(client, run_id: str, name: str, test_acc: float) -> None:
    """What mnist_exp.job logs: the answer per test image, right on round(test_acc * IMAGES) of them, mostly
    the easy ones (each run its own mix)."""
    noise = np.random.default_rng(zlib.crc32(name.encode())).random(IMAGES)
    right = np.argsort(DIFFICULTY + 0.5 * noise)[: round(test_acc * IMAGES)]
    labels = np.arange(IMAGES) % 10
    predicted = (labels + 1) % 10
    predicted[right] = labels[right]
    with tempfile.TemporaryDirectory() as folder:
        path = predictions.write_split(Path(folder), "test", predicted, labels, "b" * 64)
        client.log_artifact(run_id, str(path), "predictions")


def table_of(uri: str, experiment: str, **options) -> pd.DataFrame:
    """variant_table of every finished run of `experiment`, with their per-image answers, as analyze.py builds it."""
    finished = select_runs(uri, experiment, "all").finished
    return variant_table(finished, answers=predictions.correct_answers(uri, finished, "test")[0], **options)


def log_run(
    client,
    experiment_id,
    model,
    regularizer,
    optimizer,
    seed,
    test_acc,
    train_eval_acc,
    status="FINISHED",
    epochs=2,
    tags=None,
    data="a",
    extra=None,
    val_acc=None,
    logs_overrides=True,
    sweeper="basic",
    answers=False,
):
    params = {
        "model.name": model,
        "regularizer.name": regularizer,
        "optimizer.name": optimizer,
        "model.parameters": str(PARAMETERS[model]),
        "trainer.epochs": str(epochs),
        "trainer.seed": str(seed),
        "data.resolved_source": "course",
        "data.train_size": "8000",
        "data.test_size": "2000",
        "data.train_sha256": data * 64,
        "data.test_sha256": "b" * 64,
        # a setting of each regularizer, as a real run's config holds (regularizer.l2.weight_decay, ...)
        **{f"regularizer.{name}.on": "true" for name in regularizer.split("+") if name != "none"},
        **(extra or {}),
    }
    scheduler = params.get("scheduler.name")
    run_tags = {
        **record.hashes(params),
        record.VARIANT: record.variant(model, regularizer, optimizer, scheduler),
        **(tags or {}),
    }
    run_id = client.create_run(
        experiment_id, run_name=f"{model}/{regularizer}/{optimizer} seed={seed}", tags=run_tags
    ).info.run_id
    client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
    if status == "FINISHED":
        metrics = {
            "test_acc": test_acc,
            "final_test_acc": test_acc,
            "best_test_acc": test_acc + 0.001,
            "final_test_loss": 1 - test_acc,
            "train_acc": train_eval_acc - 0.01,
            "train_eval_acc": train_eval_acc,
            "train_time_s": 10.0 + seed,
            **({"final_val_acc": val_acc} if val_acc is not None else {}),
        }
        client.log_batch(run_id, metrics=[Metric(key, value, 0, epochs) for key, value in metrics.items()])
        if answers:
            log_answers(client, run_id, f"{model}/{regularizer}/{optimizer} seed={seed}", test_acc)
    if logs_overrides:  # what Hydra writes for a job of `train.py -m model=... regularizer=... trainer.epochs=...`
        groups = "[" + regularizer.replace("+", ",") + "]" if "+" in regularizer else regularizer
        overrides = [f"model={model}", f"regularizer={groups}", f"optimizer={optimizer}", f"trainer.epochs={epochs}"]
        client.log_text(run_id, yaml.safe_dump([*overrides, f"trainer.seed={seed}"]), "hydra/overrides.yaml")
        client.log_dict(run_id, {"hydra": {"runtime": {"choices": {"hydra/sweeper": sweeper}}}}, "hydra/hydra.yaml")
    client.set_terminated(run_id, status)
    return run_id


def list_members(client, parent: str, run_ids: list[str]) -> None:
    """What a sweep's launching process records at its end: every run it used."""
    client.log_dict(parent, [{"run_id": run_id} for run_id in run_ids], record.MEMBERS_FILE)


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
        ("mlp/none/adam", 1, 80.0, math.nan, 1.0, 0.0, -5.0),
        ("lenet5/none/adam", 1, 85.0, math.nan, 1.0, 5.0, 0.0),
        ("mlp/none/sgd", 3, 92.0, 2.0, 4.0, 0.0, -6.0),
        ("lenet5/none/sgd", 2, 98.0, math.sqrt(2), 1.5, 6.0, 0.0),
        ("lenet5/dropout/sgd", 2, 98.25, 0.5 / math.sqrt(2), 0.5, 6.25, 0.25),
        ("lenet5/l2/sgd", 1, 97.5, math.nan, 0.5, 5.5, -0.5),
    ],
    columns=["variant", "n", "acc_pct", "acc_pct_std", "gap_pp", "vs_mlp_pp", "vs_lenet5_pp"],
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store, several experiments: creating a store costs seconds, an experiment does not."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)

    grid = client.create_experiment("grid", artifact_location=str(folder / "grid"))
    for row in GRID:
        log_run(client, grid, *row, answers=True)
    log_run(client, grid, "lenet5", "batchnorm", "sgd", 0, 0.0, 0.0, status="FAILED")

    client.create_experiment("empty")
    failed = client.create_experiment("failed-only")
    for seed in (0, 1):
        log_run(client, failed, "lenet5", "none", "sgd", seed, 0.0, 0.0, status="FAILED")

    sweeps = client.create_experiment("sweeps")
    runs = {}
    parents = {}
    for key in ("keya", "keyb"):
        parents[key] = open_sweep_run(client, sweeps, key, f"sweep: {key}")
        # The launch stamp has one-second resolution; give the two sweeps distinct launch times.
        client.set_tag(
            parents[key], record.LAST_LAUNCH, {"keya": "2026-01-01T10:00:00", "keyb": "2026-01-01T11:00:00"}[key]
        )
    membership = {
        "r1": ["keya"],
        "r2": ["keya", "keyb"],
        "r3": ["keyb"],
        "r4": [],
    }  # r2: skipped by sweep B, still a member
    for seed, (name, keys) in enumerate(membership.items()):
        tags = {record.PARENT: parents[keys[0]]} if keys else {}
        runs[name] = log_run(client, sweeps, "lenet5", "none", "sgd", seed, 0.9, 0.95, tags=tags)
    for key in parents:
        list_members(client, parents[key], [runs[name] for name, keys in membership.items() if key in keys])
    return {"uri": uri, "folder": folder, "client": client, "runs": runs, "parents": parents}


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
    assert dropout["best_test_acc_pct"] == pytest.approx(98.35)  # (98.1 + 98.6) / 2
    assert dropout["test_loss"] == pytest.approx(0.0175)  # (0.02 + 0.015) / 2
    assert dropout["train_eval_acc_pct"] == pytest.approx(98.75)
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

    assert sorted(table["variant"]) == ["mlp/none/sgd epochs=2", "mlp/none/sgd epochs=5"]
    assert sorted(table["epochs"]) == [2, 5]
    assert list(table["vs_mlp_pp"]) == [0.0, 0.0]  # each is its own baseline, never the other's


def test_trials_are_labelled_to_3_significant_figures_more_where_needed_and_never_cut_mid_number(store):
    client = store["client"]
    experiment = client.create_experiment("trials")
    for lr in ("0.022881136684755242", "0.022893136684755242", "0.012132675491046142"):  # two alike to 3 figures
        extra = {"optimizer.lr": lr, "regularizer.dropout.p": "0.3616580256429863"}
        log_run(client, experiment, "lenet5", "l2+dropout", "sgd", 0, 0.9, 0.95, extra=extra)
    table = variant_table(select_runs(store["uri"], "trials", "all").finished)

    assert sorted(table["variant"]) == [
        "lenet5/l2+dropout/sgd lr=0.01213",
        "lenet5/l2+dropout/sgd lr=0.02288",
        "lenet5/l2+dropout/sgd lr=0.02289",
    ]
    long = " l2.weight_decay=0.000726 dropout.p=0.362 and a label long enough to be cut x=0.0123456 y=7"
    for labels in (table["variant"], table["variant"] + long):
        lines = format_table(table.assign(variant=labels), "markdown").splitlines()
        assert max(map(len, lines)) <= 120
        for line, label in zip(lines[2:5], labels):
            shown = line.split("|")[1].strip().removesuffix("…")
            words = [" ".join(full.split()[:n]) for full in (label, short(label)) for n in range(1, 40)]
            assert shown in words, "cut between words only"


def test_markdown_shows_mean_std_and_signed_deltas(store):
    text = format_table(variant_table(select_runs(store["uri"], "grid", "all").finished), "markdown", wide=True)

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
    with pytest.raises(
        AnalysisError,
        match=r"--sweep nope matches no sweep; known sweeps: keyb \(RUNNING, 2026-01-01 11:00:00\): sweep: keyb; keya ",
    ):
        select_runs(store["uri"], "sweeps", "nope")


def test_reopened_sweep_becomes_the_latest_again(store):
    client = store["client"]
    experiment = client.create_experiment("reopened")
    first = open_sweep_run(client, experiment, "one", "sweep: one")
    client.set_tag(first, record.LAST_LAUNCH, "2026-01-01T10:00:00")
    second = open_sweep_run(client, experiment, "two", "sweep: two")
    client.set_tag(second, record.LAST_LAUNCH, "2026-01-01T11:00:00")
    member = log_run(client, experiment, "mlp", "none", "sgd", 0, 0.9, 0.9)
    list_members(client, first, [member])
    client.set_terminated(first)  # its launch ended: a sweep still running would not be reopened

    assert open_sweep_run(client, experiment, "one", "sweep: one") == first  # the same command reopens its run

    assert list(select_runs(store["uri"], "reopened").runs["run_id"]) == [member]


def test_latest_passes_over_launches_that_finished_no_run(store):
    client = store["client"]
    experiment = client.create_experiment("passed-over")
    parents = {
        name: open_sweep_run(client, experiment, name, f"sweep: {name}") for name in ("good", "failed", "aborted")
    }
    member = log_run(client, experiment, "mlp", "none", "sgd", 0, 0.9, 0.9, tags={record.PARENT: parents["good"]})
    log_run(client, experiment, "mlp", "l2", "sgd", 0, 0, 0, status="FAILED", tags={record.PARENT: parents["failed"]})
    for hour, (name, status) in enumerate((("good", "FINISHED"), ("failed", "FAILED"), ("aborted", "KILLED"))):
        client.set_tag(parents[name], record.LAST_LAUNCH, f"2026-01-01T1{hour}:00:00")
        client.set_terminated(parents[name], status)

    selection = select_runs(store["uri"], "passed-over")

    assert list(selection.runs["run_id"]) == [member]
    assert selection.description == (
        f"sweep {parents['good'][:8]} (sweep: good); later launches with no FINISHED run, not read: "
        f"{parents['aborted'][:8]} (KILLED, sweep: aborted); {parents['failed'][:8]} (FAILED, sweep: failed)"
    )


def test_launches_of_one_sweep_and_the_seeds_added_to_it_are_read_as_one_sweep(store):
    client = store["client"]
    experiment = client.create_experiment("one-sweep")
    first = open_sweep_run(client, experiment, "grid", "sweep: experiment=course_grid")
    second = open_sweep_run(client, experiment, "grid", "sweep: experiment=course_grid")  # while the first runs
    added = open_sweep_run(client, experiment, "more", "sweep: trainer.seed=3,4 (experiment=course_grid)", "grid")
    runs = {
        log_run(client, experiment, "mlp", "none", "sgd", seed, 0.9, 0.9, tags={record.PARENT: parent})
        for seed, parent in enumerate((first, second, added))
    }
    assert first != second

    for sweep in ("latest", "grid", "more", second[:8], "sweep: experiment=course_grid", "experiment=course_grid"):
        selection = select_runs(store["uri"], "one-sweep", sweep)
        assert set(selection.runs["run_id"]) == runs, sweep
        assert (selection.sweep_keys, selection.parent_run_ids) == (["grid"], [first]), sweep
    assert selection.description.startswith(f"sweep {first[:8]} (sweep: experiment=course_grid) and 2 more launch")

    other = open_sweep_run(client, experiment, "other", "sweep: experiment=course_grid trainer.epochs=1")
    client.set_tag(other, record.LAST_LAUNCH, "2099-01-01T10:00:00.000001")
    listed = r"other \(RUNNING, 2099-01-01 10:00:00\): sweep: .*; grid \(3 launches, latest RUNNING, 20"
    with pytest.raises(AnalysisError, match=f"--sweep course_grid matches 2 sweeps; give one's key: {listed}"):
        select_runs(store["uri"], "one-sweep", "course_grid")
    assert len(select_runs(store["uri"], "one-sweep", "sweep: experiment=course_grid").runs) == 3, "a full name"


def test_a_registered_models_name_selects_the_variants_it_names(store):
    table = variant_table(select_runs(store["uri"], "grid", "all").finished)

    assert set(named_variants(table, "mnist-lenet5")["model"]) == {"lenet5"}
    assert list(named_variants(table, "lenet5-dropout")["variant"]) == ["lenet5/dropout/sgd"]
    assert named_variants(table, "mnist-best").equals(table)
    with pytest.raises(AnalysisError, match="--register mnist-lenet5_32: the name says lenet5_32, which no variant"):
        named_variants(table, "mnist-lenet5_32")


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


def one_line_refusal(capfd, args: list[str]) -> str:
    """analyze.py's main, in this process: exit 1, nothing on stdout, one line on stderr (file descriptor 2, so
    whatever a library writes there counts) and no warning; that line."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert analyze_main()(args) == 1
    out, err = capfd.readouterr()
    assert not warned, [str(w.message) for w in warned]
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze.py: "), err[-2000:]
    return lines[0]


@pytest.mark.parametrize("case", ["every run failed", "--metric val without a validation split"])
def test_analyze_exits_1_with_one_line_when_it_cannot_answer(store, capfd, case):
    args, expected = {
        "every run failed": (
            ["--tracking-uri", store["uri"], "--experiment", "failed-only"],
            ["no FINISHED runs", "FAILED"],
        ),
        "--metric val without a validation split": (
            ["--tracking-uri", store["uri"], "--experiment", "grid", "--sweep", "all", "--metric", "val"],
            ["--metric val: 10 of 10 runs held out no validation split", "lenet5/dropout/sgd", "data.validation_size"],
        ),
    }[case]

    line = one_line_refusal(capfd, args)

    assert all(part in line for part in expected), line


def test_a_tracking_uri_mlflow_cannot_open_is_refused_in_one_line_with_nothing_from_mlflow(tmp_path):
    # Its own process, the URI from the environment: all a user sees, MLflow's own logging included.
    result = subprocess.run(
        [sys.executable, str(REPO / "analyze.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": "foo://x"},
    )

    assert result.returncode == 1 and result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze.py: "), result.stderr[-2000:]
    assert "cannot use the MLflow store mlflow.tracking_uri=foo://x: " in lines[0], lines[0]


# --- statistics: the table's comparisons are significance's, on each run's logged answers ---


def test_the_table_compares_image_by_image_over_seeds_as_significance_does(store):
    from mnist_exp.significance import CROSSED, NESTED, accuracy, difference, judge

    finished = select_runs(store["uri"], "grid", "all").finished
    answers = predictions.correct_answers(store["uri"], finished, "test")[0]
    table = variant_table(finished, answers=answers).set_index("variant")

    def runs(variant):
        row = table.loc[variant]
        return {seed: answers[run_id] for seed, run_id in zip(row.seeds, row.run_ids)}

    mlp = table.loc["mlp/none/sgd"]
    e = accuracy(np.stack(list(runs("mlp/none/sgd").values())))
    assert (mlp.acc_pct, mlp.acc_pct_ci_low, mlp.acc_pct_ci_high) == pytest.approx((92.0, e.ci_low, e.ci_high))
    # Seeds 0-2 against 0-1: not matched, so nested in their variants; a family of one: 95%, Holm = raw p.
    d = difference(runs("mlp/none/sgd"), runs("lenet5/none/sgd"))
    assert mlp.baseline == "lenet5/none/sgd" and mlp.test == NESTED and d.test == NESTED
    assert mlp.vs_baseline_pp == pytest.approx(-6.0) and mlp.p_value == pytest.approx(d.p_value)
    assert mlp.p_adj == mlp.p_value and mlp.confidence == 0.95
    assert (mlp.vs_baseline_pp_ci_low, mlp.vs_baseline_pp_ci_high) == pytest.approx(d.interval(0.95))
    assert mlp.verdict == judge([d])[0].verdict == "worse"

    # dropout and plain LeNet-5 share seeds 0, 1: crossed. l2 has one seed against two: no test, and its
    # family therefore holds one test (m = 1).
    dropout = table.loc["lenet5/dropout/sgd"]
    d = difference(runs("lenet5/dropout/sgd"), runs("lenet5/none/sgd"))
    assert dropout.test == CROSSED and dropout.n_compared == 2 and dropout.images == IMAGES
    assert dropout.vs_baseline_pp == pytest.approx(0.25) and dropout.p_value == pytest.approx(d.p_value)
    assert (dropout.vs_baseline_pp_ci_low, dropout.vs_baseline_pp_ci_high) == pytest.approx(d.interval(0.95))
    one_seed = table.loc["lenet5/l2/sgd"]
    assert one_seed.test is None and one_seed.why_untested == "one seed on a side" and one_seed.verdict == "untested"
    assert math.isnan(one_seed.acc_pct_ci_low)  # one seed: seed noise unknown, no interval
    assert pd.isna(table.loc["lenet5/none/sgd"].baseline), "plain LeNet-5 is the reference, not compared"


def test_runs_without_answers_get_no_test_and_say_why(store):
    table = variant_table(select_runs(store["uri"], "grid", "all").finished).set_index("variant")

    assert table.loc["lenet5/dropout/sgd", "why_untested"] == "no per-image answers"
    assert math.isnan(table.loc["lenet5/dropout/sgd", "p_value"])
    assert table.loc["lenet5/dropout/sgd", "vs_baseline_pp"] == pytest.approx(0.25)
    without = select_runs(store["uri"], "sweeps", "all").finished  # runs logged with no answers and no model
    found, missing, _ = predictions.correct_answers(store["uri"], without, "test")
    assert not found and all("has no predictions/test.npz and no model to re-score" in why for why in missing.values())


def test_claims_recheck_on_their_store_and_fail_naming_the_claim_a_new_seed_reverses(store, tmp_path, capsys):
    client = store["client"]
    experiment = client.create_experiment("claims", artifact_location=str(store["folder"] / "claims"))
    for seed in range(3):
        for regularizer, acc in (("none", 0.950), ("batchnorm", 0.970)):
            log_run(client, experiment, "lenet5", regularizer, "sgd", seed, acc + seed / 1000, acc, answers=True)
    main = analyze_main()
    assert main(["--tracking-uri", store["uri"], "--experiment", "claims", "--report", str(tmp_path)]) == 0
    claims_file = tmp_path / "claims.json"
    claim = "regularizers: lenet5/batchnorm/sgd vs lenet5/none/sgd"
    capsys.readouterr()

    assert main(["--check", str(claims_file)]) == 0  # the store it came from: every claim holds
    assert f"{claim}: holds (better)" in capsys.readouterr().out

    for regularizer, acc in (("none", 0.975), ("batchnorm", 0.900)):  # seed 3 reverses it
        log_run(client, experiment, "lenet5", regularizer, "sgd", 3, acc, acc, answers=True)
    assert main(["--check", str(claims_file)]) == 1
    out = capsys.readouterr().out
    assert f"{claim}: no longer holds: verdict better -> " in out and "now 4 seeds, was 3" in out

    (tmp_path / "other.json").write_text("{}")
    assert main(["--check", str(tmp_path / "other.json")]) == 1
    assert "not a claims file" in capsys.readouterr().err


# Four regularizers against one plain LeNet-5 on seeds 0-2 (crossed): one family, Holm and Bonferroni.
FAMILY = {
    "none": [0.970, 0.972, 0.968],
    "batchnorm": [0.979, 0.978, 0.978],
    "l2": [0.971, 0.970, 0.969],
    "dropout": [0.975, 0.973, 0.969],
    "augment": [0.980, 0.976, 0.977],
}


@pytest.fixture(scope="module")
def family(store):
    client = store["client"]
    experiment = client.create_experiment("family", artifact_location=str(store["folder"] / "family"))
    for regularizer, accuracies in FAMILY.items():
        for seed, acc in enumerate(accuracies):
            log_run(client, experiment, "lenet5", regularizer, "sgd", seed, acc, acc, logs_overrides=True, answers=True)
    table = table_of(store["uri"], "family", smallest_effect=1.0)
    return with_overrides(table, store["uri"]).set_index("regularizer")


def test_a_family_of_comparisons_is_holm_adjusted_with_bonferroni_intervals(family):
    from statsmodels.stats.multitest import multipletests

    regularized = [r for r in FAMILY if r != "none"]
    adjusted = multipletests(list(family.loc[regularized, "p_value"]), method="holm")[1]

    assert list(family.loc[regularized, "p_adj"]) == pytest.approx(adjusted)
    assert list(family.loc[regularized, "confidence"]) == pytest.approx([1 - 0.05 / 4] * 4)
    assert (family.loc[regularized, "test"] == "seeds x images").all()
    for regularizer, p_adj in zip(regularized, adjusted):
        row = family.loc[regularizer]
        inside = max(abs(row.vs_baseline_pp_ci_low), abs(row.vs_baseline_pp_ci_high)) < 1.0
        if p_adj < 0.05:
            assert row.verdict.startswith("better" if row.vs_baseline_pp > 0 else "worse")
        else:
            assert row.verdict == ("equivalent" if inside else "undecided")


def test_metric_best_uses_each_runs_best_epoch(store):
    finished = select_runs(store["uri"], "grid", "all").finished
    final = variant_table(finished).set_index("variant")
    best = variant_table(finished, metric="best").set_index("variant")

    assert (best.acc_pct - final.acc_pct).to_numpy() == pytest.approx(0.1)  # best_test_acc = test_acc + 0.001


def test_filters_keep_matching_runs_and_unknown_keys_are_refused(store):
    from mnist_exp.runs import apply_filters

    finished = select_runs(store["uri"], "grid", "all").finished
    lenet_sgd = variant_table(apply_filters(finished, ["model=lenet5", "optimizer.name=sgd"]))

    assert sorted(lenet_sgd.variant) == ["lenet5/dropout/sgd", "lenet5/l2/sgd", "lenet5/none/sgd"]
    with pytest.raises(AnalysisError, match="no run has a setting 'modle'"):
        apply_filters(finished, ["modle=lenet5"])
    with pytest.raises(AnalysisError, match="expected key=value"):
        apply_filters(finished, ["lenet5"])


def test_sort_orders_best_first(store):
    finished = select_runs(store["uri"], "grid", "all").finished

    by_accuracy = variant_table(finished, sort="test_acc")
    assert list(by_accuracy.acc_pct) == sorted(by_accuracy.acc_pct, reverse=True)
    by_gap = variant_table(finished, sort="gap")
    assert list(by_gap.gap_pp) == sorted(by_gap.gap_pp)
    with pytest.raises(AnalysisError, match="--sort nonsense"):
        variant_table(finished, sort="nonsense")


def test_several_sweeps_pool_their_members(store):
    pooled = select_runs(store["uri"], "sweeps", ["keya", "keyb"])

    assert set(pooled.runs.run_id) == {store["runs"][name] for name in ("r1", "r2", "r3")}
    assert set(pooled.parent_run_ids) == set(store["parents"].values())


# --- winners chosen on validation, collapsed seeds, seeds needed ---


def test_a_collapsed_seed_is_named_with_its_run_and_kept_in_the_statistics(store):
    client = store["client"]
    experiment = client.create_experiment("collapsed")
    ids = [
        log_run(client, experiment, "lenet5", "dropout", "sgd", seed, acc, acc)
        for seed, acc in enumerate((0.97, 0.975, 0.1135))
    ]
    log_run(client, experiment, "lenet5", "none", "sgd", 0, 0.96, 0.96)
    table = variant_table(select_runs(store["uri"], "collapsed", "all").finished).set_index("variant")

    assert table.loc["lenet5/dropout/sgd", "collapsed"] == [f"seed 2 (run {ids[2][:8]}, 11.35%)"]
    assert table.loc["lenet5/dropout/sgd", "acc_pct"] == pytest.approx((97 + 97.5 + 11.35) / 3)  # still counted
    assert table.loc["lenet5/none/sgd", "collapsed"] == []
    text = format_table(table.reset_index(), "markdown")
    assert f"* lenet5/dropout/sgd: collapsed seed 2 (run {ids[2][:8]}, 11.35%)" in text
    assert "| lenet5/dropout/sgd * " in text


def test_collapse_rule_chance_or_far_below_the_others():
    from mnist_exp.table import collapsed_seeds

    runs = ["a" * 9, "b" * 9, "c" * 9]
    assert collapsed_seeds([97.0, 86.9, 97.2], [0, 1, 2], runs) == ["seed 1 (run bbbbbbbb, 86.90%)"]
    assert collapsed_seeds([97.0, 87.2, 97.2], [0, 1, 2], ["a", "b", "c"]) == []  # 9.9 points below: kept quiet
    assert collapsed_seeds([15.0], [0], ["a"]) == ["seed 0 (run a, 15.00%)"]  # near chance, even alone


def test_best_is_chosen_on_validation_where_runs_have_it_else_on_test_with_a_retest_command(store):
    from mnist_exp import report

    client = store["client"]
    experiment = client.create_experiment("validation", artifact_location=str(store["folder"] / "validation"))
    # dropout wins on test, l2 on validation: validation decides.
    for regularizer, test_accs, val_accs in (
        ("l2", (0.970, 0.972), (0.99, 0.99)),
        ("dropout", (0.980, 0.982), (0.95, 0.95)),
        ("l2+dropout", (0.975, 0.976), (0.96, 0.96)),
    ):
        for seed, (acc, val) in enumerate(zip(test_accs, val_accs)):
            log_run(client, experiment, "lenet5", regularizer, "sgd", seed, acc, acc, val_acc=val, logs_overrides=True)
    table = with_overrides(variant_table(select_runs(store["uri"], "validation", "all").finished), store["uri"])

    (answer,) = report.combinations(table)
    # Chosen on validation: the winner's comparison keeps its p (adjusted within the pairs it was chosen from),
    # and the re-test trains the winner and its baseline on fresh seeds, analyzed from that sweep alone.
    assert answer["single"].regularizer == "l2" and answer["basis"] == "validation"
    train = (
        "python train.py -m model=lenet5 'regularizer=[l2,dropout],l2' optimizer=sgd trainer.epochs=2 "
        "trainer.seed=2,3,4"
    )
    key = sweep_identity(shlex.split(train)[3:])[0]  # the sweep key train.py gives that command
    assert answer["retest"] == {"train": train, "analyze": f"python analyze.py --sweep {key}", "basis": "validation"}
    without = table.assign(val_acc_pct=np.nan)  # runs without a validation split
    (answer,) = report.combinations(without)
    # Chosen on the test split: no p-value at all, and the command that chooses on a validation split instead.
    assert answer["single"].regularizer == "dropout" and answer["basis"] == "test"
    assert math.isnan(answer["best"]["c"]["p_adj"]) and answer["best"]["c"]["verdict"] == "selected on test"
    assert answer["retest"]["train"] == (
        "python train.py -m model=lenet5 'regularizer=dropout,l2,[l2,dropout]' optimizer=sgd trainer.epochs=2 "
        "data.validation_size=1000 trainer.seed=0,1"
    )


def test_a_plan_comes_with_the_command_adding_its_seeds_and_never_an_empty_one(family):
    from mnist_exp import report
    from mnist_exp.commands import more_seeds, train_command

    (answer,) = report.regularizers(family.reset_index())
    planned = [e for e in answer["entries"] if e["c"]["seeds_needed"]]
    assert planned, "the family must hold an undecided comparison with a plan"
    for entry in planned:
        c, have = entry["c"], 3
        added = max(c["seeds_needed"] - have, 1)
        assert c["command"] == (
            f"python train.py -m model=lenet5 regularizer={entry['row'].regularizer},none optimizer=sgd "
            f"trainer.epochs=2 trainer.seed={','.join(str(s) for s in range(3, 3 + added))}"
            if added <= 3
            else f"python train.py -m model=lenet5 regularizer={entry['row'].regularizer},none optimizer=sgd "
            f"trainer.epochs=2 'trainer.seed=range(3,{3 + added})'"
        )
    rows = list(family.reset_index().itertuples())
    assert more_seeds(rows, 2) == [3]  # the plan is met: one more seed still, never none
    with pytest.raises(ValueError, match="at least one seed"):
        train_command(rows, [])


def test_a_store_of_the_first_days_code_is_refused_in_one_line_naming_what_to_do(store):
    client = store["client"]
    experiment = client.create_experiment("before-1edc110")
    run_id = log_run(client, experiment, "lenet5", "none", "sgd", 0, 0.97, 0.99)
    # logged beside the config, outside its hash, by the code before 1edc110 (2026-11-26)
    client.log_batch(run_id, params=[Param("trainer.resolved_device", "cpu"), Param("trainer.resolved_threads", "2")])

    with pytest.raises(AnalysisError, match=f"holds 1 run.s. recorded by mnist-exp's first code .e.g. {run_id}.*"):
        select_runs(store["uri"], "before-1edc110")


def test_runs_of_a_search_get_no_command_that_would_launch_the_search_again(store):
    from mnist_exp.commands import train_command

    client = store["client"]
    experiment = client.create_experiment("searched", artifact_location=str(store["folder"] / "searched"))
    for sweeper, regularizer in (("optuna", "l2"), ("grid", "none")):
        log_run(client, experiment, "lenet5", regularizer, "sgd", 0, 0.97, 0.98, logs_overrides=True, sweeper=sweeper)
    table = with_overrides(variant_table(select_runs(store["uri"], "searched", "all").finished), store["uri"])
    searched, plain = (table[table["regularizer"] == name].iloc[0] for name in ("l2", "none"))

    assert train_command([searched], [1]) is None and train_command([searched, plain], [1]) is None
    assert train_command([plain], [1, 2]) == (
        "python train.py -m model=lenet5 regularizer=none optimizer=sgd trainer.epochs=2 trainer.seed=1,2"
    )
    selected = with_overrides(table, store["uri"], "a1b2c3").set_index("regularizer").loc["none"]
    assert train_command([selected], [1], pooled=True).endswith(" mlflow.extends=a1b2c3 trainer.seed=1")
    assert "mlflow.extends" not in train_command([selected], [1]), "a re-test on fresh seeds stays apart"


def test_the_default_table_fits_120_columns_and_wide_keeps_every_column(store):
    client = store["client"]
    experiment = client.create_experiment("long-names")
    extra = {"scheduler.name": "onecycle"}
    for regularizer in ("none", "batchnorm+augment+label_smoothing"):
        for seed in (0, 1):
            log_run(client, experiment, "lenet5", regularizer, "sgd", seed, 0.98 + seed / 1000, 0.99, extra=extra)
    table = variant_table(select_runs(store["uri"], "long-names", "all").finished)

    narrow = format_table(table, "markdown")
    assert max(map(len, narrow.splitlines())) <= 120
    assert "lenet5/bn+aug+ls/sgd+1cyc" in narrow and "bn = batchnorm" in narrow and "no per-image answers" in narrow
    wide = format_table(table, "markdown", wide=True)
    assert "lenet5/batchnorm+augment+label_smoothing/sgd+onecycle" in wide and "test loss" in wide
    assert {"p_value", "p_adj", "test", "verdict", "seeds_needed", "larger_test_set", "collapsed"} <= set(
        pd.read_csv(io.StringIO(format_table(table, "csv"))).columns
    )


def test_report_is_written_and_logged_to_the_sweep_run(store, tmp_path, capsys):
    client = store["client"]
    parent = store["parents"]["keyb"]
    capsys.readouterr()
    main = analyze_main()
    code = main(
        ["--tracking-uri", store["uri"], "--experiment", "sweeps", "--sweep", "keyb"]
        + ["--report", str(tmp_path / "report")]
    )
    stderr = capsys.readouterr().err

    assert code == 0, stderr
    report_text = (tmp_path / "report" / "report.md").read_text()
    assert "This selection lacks a plain LeNet-5 and a plain MLP trained alike." in report_text
    assert (  # runs logged without answers or a model: named, with what to do, in one line
        "2 runs have no per-image answers, so their comparisons have no test: lenet5/none/sgd seed=1, "
        "lenet5/none/sgd seed=2 (run "
    ) in stderr and "to re-score them from their logged models" in stderr
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged


def test_a_sweep_is_also_found_by_words_of_its_name(store):
    selection = select_runs(store["uri"], "sweeps", "sweep: keya")

    assert set(selection.runs["run_id"]) == {store["runs"]["r1"], store["runs"]["r2"]}
    with pytest.raises(AnalysisError, match="--sweep experiment=nothing matches no sweep"):
        select_runs(store["uri"], "sweeps", "experiment=nothing")
