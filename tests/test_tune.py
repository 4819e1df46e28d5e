"""experiment=tune end to end, for real, on 400 digits: the search on a validation split, then the best
trial's recipe and the plain model on fresh seeds and every training image, compared in analyze.py's
table; the same command again trains nothing and reports the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import analyze_main, job_runs, run_script, sweep_runs
from mlflow.tracking import MlflowClient

from mnist_exp import record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, empty_store, course_dataset):
    project_dir = tmp_path_factory.mktemp("tune")
    shutil.copy(empty_store, project_dir / "mlflow.db")
    command = [
        "experiment=tune",
        "model=mlp",
        "data.source=course",
        f"data.root={course_dataset.root}",
        "data.validation_size=100",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "trainer.epochs=1",
        "hydra/launcher=basic",  # the launcher is not under test
        "trainer.threads=1",
    ]
    result = run_script("train.py", *command, cwd=project_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project_dir, command, result


def confirmation_table(stdout: str) -> str:
    return stdout[stdout.index("Confirmation on the test split") : stdout.index("sweep summary")]


def without_derived(params: dict) -> dict:
    """A run's own settings: what follows from them (sizes, hashes, the model's size) left out."""
    return {key: value for key, value in params.items() if not key.startswith(("data.", "model.parameters"))}


def differing(a, b) -> set[str]:
    a, b = without_derived(a.data.params), without_derived(b.data.params)
    return {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}


def test_tune_searches_then_trains_the_best_recipe_and_the_plain_model_on_fresh_seeds(tuned, course_dataset):
    project_dir, _, result = tuned
    uri = f"sqlite:///{project_dir}/mlflow.db"
    runs = {run.info.run_id: run for run in job_runs(uri)}
    (sweep,) = sweep_runs(uri)
    trials = {run.data.tags[record.TRIAL]: run for run in runs.values() if record.TRIAL in run.data.tags}
    confirmation = json.loads(sweep.data.tags[record.CONFIRMATION])
    recipe, plain = ([runs[run_id] for run_id in confirmation[role]] for role in ("recipe", "plain"))

    assert sorted(trials) == ["0", "1"] and len(runs) == 2 + 6
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    assert {run.data.tags[record.PARENT] for run in runs.values()} == {sweep.info.run_id}
    assert all(run.data.params["data.validation_size_used"] == "100" for run in trials.values())
    # The recipe is the best trial's config on every training image and a seed the search never used;
    # the plain model is the recipe without its regularizers, trained alike (same schedule, batch size).
    best = trials[sweep.data.tags[record.BEST_TRIAL]]
    for role in (recipe, plain):
        assert sorted(run.data.params["trainer.seed"] for run in role) == ["1", "2", "3"]
        assert {run.data.params["data.train_size"] for run in role} == {"400"}
        assert {run.data.params["data.validation_size"] for run in role} == {"0"}
    for run in recipe:
        assert differing(run, best) == {"trainer.seed"}
    by_seed = {run.data.params["trainer.seed"]: run for run in recipe}
    for run in plain:
        assert run.data.params["regularizer.name"] == "none"
        changed = differing(run, by_seed[run.data.params["trainer.seed"]])
        assert changed and all(key.startswith("regularizer.") for key in changed), changed
    # Inputs normalized with the statistics of the images each run trained on, not MNIST's constants.
    everything, searched = course_dataset.train.images / 255, course_dataset.train.images[:300] / 255
    for run, pixels in ((recipe[0], everything), (plain[0], everything), (best, searched)):
        assert float(run.data.params[record.MEAN_USED]) == pytest.approx(np.mean(pixels), rel=1e-9)
        assert float(run.data.params[record.STD_USED]) == pytest.approx(np.std(pixels), rel=1e-9)

    table = confirmation_table(result.stdout)
    assert f"trial {best.data.tags[record.TRIAL]}'s recipe (chosen on the validation split)" in table
    rows = [line for line in table.splitlines() if line.startswith("| mlp/")]
    assert len(rows) == 2 and any(row.startswith("| mlp/none/sgd+1cyc ") for row in rows), table
    (compared,) = [row for row in rows if not row.startswith("| mlp/none/")]
    verdict = compared.strip(" |").rsplit("|", 1)[1].strip()  # the recipe against the plain model, tested
    assert verdict and "no per-image answers" not in verdict, table
    assert "sweep summary: 8 finished, 0 skipped, 0 failed, 0 killed" in result.stdout
    recorded = MlflowClient(uri).download_artifacts(sweep.info.run_id, "confirmation.md", str(project_dir))
    assert Path(recorded).read_text().strip() in table.strip()


def test_the_same_tune_command_again_trains_nothing_and_reports_the_same(tuned):
    project_dir, command, first = tuned

    again = run_script("train.py", *command, cwd=project_dir)

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 of 2 trials done" in again.stdout
    assert "sweep summary: 0 finished, 6 skipped, 0 failed, 0 killed" in again.stdout
    assert confirmation_table(again.stdout) == confirmation_table(first.stdout)
    assert len(job_runs(f"sqlite:///{project_dir}/mlflow.db")) == 8


def test_the_report_on_a_tune_sweep_judges_the_recipe_as_the_search_chose_it(tuned, tmp_path):
    main = analyze_main()
    project_dir, _, _ = tuned
    uri = f"sqlite:///{project_dir}/mlflow.db"

    assert main(["--tracking-uri", uri, "--report", str(tmp_path)]) == 0

    # Its confirmation's fresh seeds are the recipe's first look at the test split: tested, not "chosen on test".
    claims = json.loads((tmp_path / record.CLAIMS_FILE).read_text())
    (recipe,) = [claim for claim in claims["claims"] if claim["question"].startswith("best recipe for mlp")]
    assert recipe["chosen_on"] == "search" and recipe["p_holm"] is not None and recipe["seeds"] == 3
    report = (tmp_path / record.REPORT_FILE).read_text()
    assert "the recipe a search chose on its validation split" in report
    assert "chosen on the test split" not in report
    # The best trial and its confirmation share every setting: their labels name their data, not 17 digits.
    assert f"{recipe['variant'].split(' [')[0]} [" in recipe["variant"]
    assert main(["--check", str(tmp_path / record.CLAIMS_FILE)]) == 0
