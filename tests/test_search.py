"""Optuna searches through our sweeper (hydra/sweeper=optuna), for real: train.py in a subprocess,
the study in its sqlite file beside a real MLflow store, a real SIGKILL in the middle of a trial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import optuna
import pytest
from conftest import REPO, Hold, job_runs, run_script, sweep_runs
from mlflow.tracking import MlflowClient

from mnist_exp import search, tracking

pytestmark = pytest.mark.slow


def search_command(course_dataset, *overrides: str) -> list[str]:
    return [
        "-m",
        "hparams_search=lenet5_optuna",
        "hydra/launcher=basic",  # trials one at a time in this process (test_scaling runs them side by side)
        "model=mlp",
        "data.source=course",
        f"data.root={course_dataset.root}",
        "data.validation_size=100",
        "trainer.threads=1",
        *overrides,
    ]


def study_of(project_dir) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=f"sqlite:///{project_dir}/mlflow.optuna.db")


def epochs_logged(client: MlflowClient, run) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]


def test_a_killed_search_continues_its_study_and_resumes_the_interrupted_trial(project_dir, course_dataset):
    command = search_command(
        course_dataset, "hydra.sweeper.n_trials=4", "trainer.epochs=4", "hydra/sweeper/pruner=none"
    )
    # Held once the third trial has checkpointed its first epoch: two trials are done, one is half done.
    hold = Hold(project_dir / "hold", epoch=1, skip=2)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *command],
        cwd=project_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **hold.env},
    )
    try:
        hold.wait(alive=process)
    finally:
        process.kill()
        process.wait()
    uri = f"sqlite:///{project_dir}/mlflow.db"
    before = {r.info.run_id: r.info.status for r in job_runs(uri)}
    assert sorted(before.values()) == ["FINISHED", "FINISHED", "RUNNING"], "killed during the third trial"
    (interrupted,) = [run_id for run_id, status in before.items() if status == "RUNNING"]

    result = run_script("train.py", *command, cwd=project_dir)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 of 4 trials done, 1 interrupted trial(s) asked again" in result.stdout
    states = [t.state for t in study_of(project_dir).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and len(states) == 5, states
    client = MlflowClient(uri)
    runs = {r.info.run_id: r for r in job_runs(uri)}
    assert len(runs) == 4 and set(before) <= set(runs), "the finished trials were not trained again"
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert epochs_logged(client, runs[interrupted]) == [1, 2, 3, 4], "the interrupted trial's run resumed"
    assert sorted(r.data.tags[search.TRIAL_TAG] for r in runs.values()) == ["0", "1", "3", "4"]
    (sweep,) = sweep_runs(uri)
    assert {r.data.tags[tracking.PARENT] for r in runs.values()} == {sweep.info.run_id}


@pytest.fixture(scope="module")
def pruned_search(tmp_path_factory, empty_store, course_dataset):
    """2 trials, lr 0.05 or a hopeless 1e-5, drawn (seeded) good, then hopeless: the pruner compares
    the second with the first after every epoch. (tests/test_scaling.py runs trials side by side.)"""
    project_dir = tmp_path_factory.mktemp("search")
    shutil.copy(empty_store, project_dir / "mlflow.db")
    result = run_script(
        "train.py",
        *search_command(
            course_dataset,
            "hydra.sweeper.n_trials=2",
            "trainer.epochs=3",
            "hydra/sweeper/sampler=random",
            "hydra.sweeper.pruner.n_startup_trials=1",
            "optimizer.lr=choice(0.05,1e-5)",
        ),
        cwd=project_dir,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project_dir, result


def test_a_hopeless_trial_is_pruned_and_every_trial_is_a_tagged_nested_run(pruned_search):
    project_dir, result = pruned_search
    uri = f"sqlite:///{project_dir}/mlflow.db"
    client = MlflowClient(uri)
    runs = {r.data.tags[search.TRIAL_TAG]: r for r in job_runs(uri)}
    assert {n: r.data.params["optimizer.lr"] for n, r in runs.items()} == {"0": "0.05", "1": "1e-05"}, (
        "the seeded draws this test is built on"
    )
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert epochs_logged(client, runs["1"]) == [1], "pruned after its first of 3 epochs"
    assert runs["1"].data.tags[search.PRUNED_TAG].startswith("pruned by MedianPruner after epoch 1 of 3")
    assert epochs_logged(client, runs["0"]) == [1, 2, 3] and search.PRUNED_TAG not in runs["0"].data.tags
    assert [t.state.name for t in study_of(project_dir).trials] == ["COMPLETE", "PRUNED"]
    assert "sweep summary: 1 finished, 0 skipped, 0 failed, 0 killed, 1 pruned" in result.stdout

    (sweep,) = sweep_runs(uri)
    assert {r.data.tags[tracking.PARENT] for r in runs.values()} == {sweep.info.run_id}
    best = "0"
    assert sweep.data.metrics["best_value"] == pytest.approx(runs[best].data.metrics["final_val_acc"])
    assert sweep.data.tags["mnist_exp.best_trial"] == best
    assert json.loads(sweep.data.tags["mnist_exp.best_params"])["optimizer.lr"] == 0.05
    assert f"best trial {best}: value {runs[best].data.metrics['final_val_acc']:.4f}" in result.stdout


def test_analyze_lists_a_pruned_trial_apart_from_the_compared_runs(pruned_search):
    project_dir, _ = pruned_search

    result = run_script("analyze.py", cwd=project_dir)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 finished runs" in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "not in the table" in line]
    assert "lr=1e-05" in line and "(pruned) pruned by MedianPruner after epoch 1 of 3" in line
