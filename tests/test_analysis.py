"""analysis.py on a synthetic MLflow store written with the real client: runs carry the params,
tags and metrics mnist_exp.job logs, with accuracies chosen so every expected number
below can be checked by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from conftest import REPO
from mnist_exp import tracking
from mnist_exp.analysis import AnalysisError, format_table, select_runs, settings, variant_table
from mnist_exp.sweep import MEMBERS_FILE, open_sweep_run

PARAMETERS = {"lenet5": 44_426, "mlp": 44_106}


def log_run(client, experiment_id, model, regularizer, optimizer, seed, test_acc, train_eval_acc,
            status="FINISHED", epochs=2, tags=None, data="a", extra=None):
    params = {
        "model.name": model, "regularizer.name": regularizer, "optimizer.name": optimizer,
        "model.parameters": str(PARAMETERS[model]), "trainer.epochs": str(epochs), "trainer.seed": str(seed),
        "data.resolved_source": "course", "data.train_size": "8000", "data.test_size": "2000",
        "data.train_sha256": data * 64, "data.test_sha256": "b" * 64, **(extra or {}),
    }
    run_tags = {
        tracking.CONFIG_HASH: tracking.config_hash(params),
        tracking.VARIANT_HASH: tracking.config_hash(params, ignore=("trainer.seed",)),
        tracking.VARIANT: f"{model}/{regularizer}/{optimizer}",
        **(tags or {}),
    }
    run_id = client.create_run(experiment_id, run_name=f"{model}/{regularizer}/{optimizer} seed={seed}",
                               tags=run_tags).info.run_id
    client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
    if status == "FINISHED":
        metrics = {
            "test_acc": test_acc, "final_test_acc": test_acc, "best_test_acc": test_acc + 0.001,
            "final_test_loss": 1 - test_acc, "train_acc": train_eval_acc - 0.01, "train_eval_acc": train_eval_acc,
            "train_time_s": 10.0 + seed,
        }
        client.log_batch(run_id, metrics=[Metric(key, value, 0, epochs) for key, value in metrics.items()])
    client.set_terminated(run_id, status)
    return run_id


def list_members(client, parent: str, run_ids: list[str]) -> None:
    """What a sweep's launching process records at its end: every run it used."""
    client.log_dict(parent, [{"run_id": run_id} for run_id in run_ids], MEMBERS_FILE)


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
    columns=["variant", "n", "acc_pct", "acc_pct_std", "gap_pp", "vs_mlp_pp", "vs_lenet5_pp"],
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
        parents[key] = open_sweep_run(client, sweeps, key, f"sweep: {key}")
        # The launch stamp has one-second resolution; give the two sweeps distinct launch times.
        client.set_tag(parents[key], tracking.LAST_LAUNCH, {"keya": "2026-01-01T10:00:00", "keyb": "2026-01-01T11:00:00"}[key])
    membership = {"r1": ["keya"], "r2": ["keya", "keyb"], "r3": ["keyb"], "r4": []}  # r2: skipped by sweep B, still a member
    for seed, (name, keys) in enumerate(membership.items()):
        tags = {tracking.PARENT: parents[keys[0]]} if keys else {}
        runs[name] = log_run(client, sweeps, "lenet5", "none", "sgd", seed, 0.9, 0.95, tags=tags)
    for key in parents:
        list_members(client, parents[key], [runs[name] for name, keys in membership.items() if key in keys])
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
    first = open_sweep_run(client, experiment, "one", "sweep: one")
    client.set_tag(first, tracking.LAST_LAUNCH, "2026-01-01T10:00:00")
    second = open_sweep_run(client, experiment, "two", "sweep: two")
    client.set_tag(second, tracking.LAST_LAUNCH, "2026-01-01T11:00:00")
    member = log_run(client, experiment, "mlp", "none", "sgd", 0, 0.9, 0.9)
    list_members(client, first, [member])
    client.set_terminated(first)  # its launch ended: a sweep still running would not be reopened

    assert open_sweep_run(client, experiment, "one", "sweep: one") == first  # the same command reopens its run

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


# --- statistics: intervals, Welch's test, noise ---
# By hand (scipy only for Student's t quantiles and tails):
#   mlp/none/sgd = 90, 92, 94 %: mean 92, s = 2, 95% CI 92 ± t(0.975, 2) * 2 / sqrt(3) = 92 ± 4.96828
#   vs lenet5/none/sgd = 97, 99 %: diff -6; se^2 = 4/3 + 2/2 = 7/3; Welch df = (7/3)^2 / ((4/3)^2/2 + 1^2/1)
#   = 2.88235; t = -6 / sqrt(7/3) = -3.92792; p = 2 * P(T_df > 3.92792) = 0.0315776;
#   95% CI -6 ± t(0.975, df) * sqrt(7/3) = -6 ± 4.97547: excludes 0, so not noise.
#   lenet5/dropout/sgd = 98.0, 98.5 vs lenet5/none/sgd: diff +0.25, se^2 = 0.125/2 + 2/2 = 1.0625,
#   df = 1.0625^2 / (0.0625^2 + 1) = 1.12451; the interval is wide and contains 0: noise.
#   lenet5/none/sgd = 97, 99 %: 95% CI 98 ± t(0.975, 1) * sqrt(2) / sqrt(2) = 98 ± 12.7062, clipped to 100 %.


def test_confidence_intervals_and_welch_tests_match_hand_computation(store):
    table = variant_table(select_runs(store["uri"], "grid", "all").finished).set_index("variant")

    mlp = table.loc["mlp/none/sgd"]
    assert (mlp.acc_pct_ci_low, mlp.acc_pct_ci_high) == pytest.approx((92 - 4.96828, 92 + 4.96828), abs=1e-4)
    assert mlp.baseline == "lenet5/none/sgd"
    assert mlp.vs_baseline_pp == pytest.approx(-6.0)
    assert mlp.p_value == pytest.approx(0.0315776, abs=1e-6)
    assert (mlp.vs_baseline_pp_ci_low, mlp.vs_baseline_pp_ci_high) == pytest.approx((-6 - 4.97547, -6 + 4.97547), abs=1e-4)
    assert not mlp.within_noise

    lenet = table.loc["lenet5/none/sgd"]
    assert (lenet.acc_pct_ci_low, lenet.acc_pct_ci_high) == pytest.approx((98 - 12.7062, 100), abs=1e-4)

    dropout = table.loc["lenet5/dropout/sgd"]
    assert dropout.baseline == "lenet5/none/sgd" and dropout.vs_baseline_pp == pytest.approx(0.25)
    assert dropout.within_noise
    assert dropout.vs_baseline_pp_ci_low < 0 < dropout.vs_baseline_pp_ci_high

    one_seed = table.loc["lenet5/l2/sgd"]
    assert math.isnan(one_seed.p_value) and pd.isna(one_seed.within_noise)
    assert pd.isna(table.loc["lenet5/none/sgd"].baseline), "plain LeNet-5 is the reference, not compared"


def test_metric_best_uses_each_runs_best_epoch(store):
    finished = select_runs(store["uri"], "grid", "all").finished
    final = variant_table(finished).set_index("variant")
    best = variant_table(finished, metric="best").set_index("variant")

    assert (best.acc_pct - final.acc_pct).to_numpy() == pytest.approx(0.1)  # best_test_acc = test_acc + 0.001


def test_filters_keep_matching_runs_and_unknown_keys_are_refused(store):
    from mnist_exp.analysis import apply_filters

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


# --- the report: every sentence computed from the table ---


def test_report_answers_follow_the_numbers(store):
    from mnist_exp import report

    table = variant_table(select_runs(store["uri"], "grid", "all").finished)
    answers = dict(report.answers(table))
    lenet_vs_mlp, regularizers, _, _, lecun = answers.values()

    assert "Yes: with sgd, LeNet-5 (44,426 parameters) reaches 98.00 ± 1.41% (n = 2)" in lenet_vs_mlp
    assert "+6.00 points (95% CI +1.02 to +10.98, Welch p = 0.0316)" in lenet_vs_mlp
    assert "Yes, on one seed: with adam" in lenet_vs_mlp  # one seed each: no claim about noise
    noisy = table.copy()
    noisy.loc[noisy.variant == "lenet5/none/sgd", "acc_pct_samples"] = pd.Series([[91.0, 95.0]], index=noisy.index[
        noisy.variant == "lenet5/none/sgd"])  # mean 93 against the MLP's 92 +- 2: inside the noise
    assert "Not measurably: with sgd" in report.lenet5_vs_mlp(noisy)
    assert "dropout (+0.25 pp, p = 0.845) stays within seed noise" in regularizers  # one regularizer: "stays"
    assert "l2 (-0.50 pp) was run with one seed only" in regularizers  # one regularizer: "was", not "were"
    # The reference is the plain LeNet-5 they were compared with (sgd), not the first plain one (adam, 85%).
    assert regularizers.startswith("Against LeNet-5 without regularization (plain LeNet-5: 98.00 ± 1.41%")
    assert "lenet5/dropout/sgd, reaches 98.25 ± 0.35% (n = 2): -0.80 points against LeCun et al.'s 99.05%" in lecun
    assert "-0.55 against the course solutions' 98.8%" in lecun
    assert "It trained on 8,000 images, not full MNIST's 60,000: both figures come from 7.5 times" in lecun


def test_report_is_written_with_its_figures_and_logged_to_the_sweep_run(store, tmp_path):
    client = store["client"]
    parent = store["parents"]["keyb"]
    result = subprocess.run(
        [sys.executable, str(REPO / "analyze.py"), "--tracking-uri", store["uri"], "--experiment", "sweeps",
         "--sweep", "keyb", "--report", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr
    report_text = (tmp_path / "report" / "report.md").read_text()
    for figure in ("test_curves.png", "generalization_gap.png", "final_accuracy.png", "recipe_curves.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 10_000
        assert f"]({figure})" in report_text
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/{name}" for name in
                      ("report.md", "test_curves.png", "generalization_gap.png", "final_accuracy.png",
                       "recipe_curves.png")}


# --- how far a recipe goes: combinations of regularizers and the best recipe per model ---
# (model, regularizer, scheduler, epochs, test accuracies of the seeds)
RECIPES = [
    ("lenet5", "none", None, 2, [0.97, 0.98]),  # the course's plain LeNet-5 (the default config's settings)
    ("lenet5", "l2", None, 2, [0.975, 0.985]),  # the course's best single regularizer
    ("mlp", "none", None, 2, [0.92, 0.93]),
    ("lenet5", "l2", "cosine", 20, [0.980, 0.982]),  # the combos grid: trained alike, 20 epochs, cosine
    ("lenet5", "dropout", "cosine", 20, [0.981, 0.983]),
    ("lenet5", "l2+dropout", "cosine", 20, [0.989, 0.991]),
    ("lenet5", "augment+batchnorm", "onecycle", 40, [0.990, 0.992, 0.991]),  # the recipes
    ("mlp", "augment", "onecycle", 40, [0.965, 0.967]),
]


@pytest.fixture(scope="module")
def recipes(store):
    client = store["client"]
    experiment = client.create_experiment("recipes")
    for model, regularizer, scheduler, epochs, accuracies in RECIPES:
        extra = {"scheduler.name": scheduler} if scheduler else {}
        for seed, acc in enumerate(accuracies):
            log_run(client, experiment, model, regularizer, "sgd", seed, acc, acc, epochs=epochs, extra=extra)
    table = variant_table(select_runs(store["uri"], "recipes", "all").finished)
    course = settings({"model.name": "lenet5", "optimizer.name": "sgd", "trainer.epochs": "2"})
    return table, course


def test_combining_regularizers_is_answered_within_runs_trained_alike(recipes):
    from mnist_exp import report

    table, _ = recipes
    answer = report.combinations(table)

    # By hand: 99.0 vs 98.2 (each s = 0.1414, n = 2): diff +0.80, se = 0.1414, df = 2, t = 5.657,
    # 95% CI 0.80 +- 4.3027 * 0.1414 = +0.19 to +1.41, p = 0.0299.
    assert answer.startswith("Yes: trained alike (20 epochs, the cosine schedule), the best pair, l2+dropout, reaches "
                             "99.00 ± 0.14% (n = 2) and the best single regularizer, dropout, 98.20 ± 0.14% (n = 2): "
                             "+0.80 points (95% CI +0.19 to +1.41, Welch p = 0.0299).")
    assert answer.endswith("The only pair beats it beyond seed noise (l2+dropout).")  # not "1 of 1 pairs beat it"


def test_the_best_recipe_per_model_is_compared_with_the_course_runs(recipes):
    from mnist_exp import report

    table, course = recipes
    answer = report.recipes(table, course)

    assert "LeNet-5: lenet5/augment+batchnorm/sgd+onecycle (onecycle schedule, trainer.epochs=40) reaches " \
           "99.10 ± 0.10% (n = 3), 95% CI 98.85–99.35" in answer
    assert "+1.60 points over the course's plain LeNet-5 (97.50%)" in answer
    assert "+1.10 points over the course's best single regularizer, l2 (98.00%)" in answer
    assert "MLP: mlp/augment/sgd+onecycle (onecycle schedule, trainer.epochs=40) reaches 96.60 ± 0.14%" in answer
    assert "+4.10 points over the course's plain MLP (92.50%)" in answer
    # The course's own questions stay within the course's runs: the recipes do not leak into them.
    lenet_vs_mlp = dict(report.answers(table, course))["Does LeNet-5 beat the MLP at equal parameter count? By how much?"]
    assert "LeNet-5 (44,426 parameters) reaches 97.50 ± 0.71% (n = 2) and the MLP (44,106 parameters) 92.50" in lenet_vs_mlp


# --- the report's prose: numbers and verbs agree ---
# One-epoch runs; (model, regularizer, test accuracies of the seeds). Singles: batchnorm alone helps
# beyond seed noise, augment alone hurts, l2 and dropout have one seed each.
PROSE_SINGLES = [
    ("lenet5", "none", [0.970, 0.972]), ("mlp", "none", [0.920, 0.930]), ("lenet5", "batchnorm", [0.980, 0.982]),
    ("lenet5", "augment", [0.960, 0.962]), ("lenet5", "l2", [0.975]), ("lenet5", "dropout", [0.973]),
]
# Pairs: two of the three beat the best single one (batchnorm); several regularizers share each verdict.
PROSE_PAIRS = [
    ("lenet5", "none", [0.970, 0.972]), ("lenet5", "batchnorm", [0.980, 0.982]), ("lenet5", "l2", [0.974, 0.976]),
    ("lenet5", "batchnorm+l2", [0.990, 0.992]), ("lenet5", "batchnorm+dropout", [0.989, 0.991]),
    ("lenet5", "l2+dropout", [0.970, 0.972]),
]


@pytest.fixture(scope="module")
def prose_tables(store):
    client = store["client"]
    tables = {}
    for name, grid in (("prose-singles", PROSE_SINGLES), ("prose-pairs", PROSE_PAIRS)):
        experiment = client.create_experiment(name)
        for model, regularizer, accuracies in grid:
            for seed, acc in enumerate(accuracies):
                log_run(client, experiment, model, regularizer, "sgd", seed, acc, acc, epochs=1)
        tables[name] = variant_table(select_runs(store["uri"], name, "all").finished)
    return tables


def test_report_prose_uses_the_singular_for_one(prose_tables):
    from mnist_exp import report

    table = prose_tables["prose-singles"]
    answers = dict(report.answers(table))
    regularizers = answers["Which regularizers help LeNet-5, and is the help larger than seed noise?"]

    # By hand: 98.1 vs 97.1, each s = 0.1414, n = 2: t = 7.07 on 2 df, p = 0.0194.
    assert "batchnorm (+1.00 pp, p = 0.0194) helps beyond seed noise" in regularizers
    assert "augment (-1.00 pp, p = 0.0194) hurts beyond seed noise" in regularizers
    assert "dropout (+0.20 pp), l2 (+0.40 pp) were run with one seed only, so noise is unknown" in regularizers
    recipe = report.recipes(table, None)
    assert "LeNet-5: lenet5/batchnorm/sgd (optimizer.name=sgd, trainer.epochs=1) reaches 98.10 ± 0.14% (n = 2), " \
           "95% CI 96.83–99.37, 1 epoch in 10 s per seed" in recipe
    assert "It trained on 1 image, not full MNIST's 60,000" in report.versus_lecun(table.assign(train_size=1))
    for answer in answers.values():
        assert "1 epochs" not in answer and " 1 images" not in answer


def test_report_prose_uses_the_plural_for_several(prose_tables):
    from mnist_exp import report

    table = prose_tables["prose-pairs"]
    regularizers = report.regularizers(table)
    combinations = report.combinations(table)

    assert "batchnorm (+1.00 pp, p = 0.0194), batchnorm+dropout (+1.90 pp, p = 0.00549), batchnorm+l2 " \
           "(+2.00 pp, p = 0.00496) help beyond seed noise" in regularizers
    assert "l2 (+0.40 pp, p = 0.106), l2+dropout (+0.00 pp, p = 1) stay within seed noise" in regularizers
    assert combinations.startswith("Yes: trained alike (1 epoch, a constant learning rate), the best pair, batchnorm+l2,")
    assert combinations.endswith(" 2 of 3 pairs beat it beyond seed noise (batchnorm+l2, batchnorm+dropout).")
    one_better = table[table["regularizer"] != "batchnorm+dropout"]
    assert report.combinations(one_better).endswith(" 1 of 2 pairs beats it beyond seed noise (batchnorm+l2).")
    none_better = table[~table["regularizer"].isin(["batchnorm+l2", "batchnorm+dropout"])]
    assert report.combinations(none_better).endswith(" The only pair does not beat it beyond seed noise.")


def test_a_sweep_is_also_found_by_words_of_its_name(store):
    selection = select_runs(store["uri"], "sweeps", "sweep: keya")

    assert set(selection.runs["run_id"]) == {store["runs"]["r1"], store["runs"]["r2"]}
    with pytest.raises(AnalysisError, match="--sweep experiment=nothing matches 0 sweeps"):
        select_runs(store["uri"], "sweeps", "experiment=nothing")
