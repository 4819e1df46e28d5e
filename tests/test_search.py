"""Optuna searches through our sweeper (hydra/sweeper=optuna), for real: train.py in a subprocess,
the study in its sqlite file beside a real MLflow store, a real SIGKILL in the middle of a trial, two
identical searches at once, and the commands analyze.py prints for a trial (its main, in this process:
the report and the commands are what is checked, and each command is run for real)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import mlflow
import optuna
import pytest
from conftest import REPO, Hold, analyze_main, job_runs, run_script, sweep_runs
from mlflow.tracking import MlflowClient

from mnist_exp import record

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


def analyze(capsys, project_dir, *args: str) -> tuple[str, str]:
    """analyze.py's (stdout, stderr) on the search's store; it must exit 0."""
    capsys.readouterr()
    code = analyze_main()(["--tracking-uri", f"sqlite:///{project_dir}/mlflow.db", *args])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out, err


def test_identical_searches_launched_together_share_the_study_s_trials(project_dir, course_dataset):
    command = search_command(
        course_dataset, "hydra.sweeper.n_trials=2", "trainer.epochs=1", "hydra/sweeper/pruner=none"
    )
    # Both held in a trial of their own: the launches overlap for sure, and the study's 2 trials are all
    # asked while both run, so neither may ask a third.
    hold = Hold(project_dir / "hold", epoch=1)
    processes = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *command],
            cwd=project_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **hold.env},
        )
        for _ in range(2)
    ]
    try:
        hold.wait(processes=2)
    finally:
        hold.release()
    outputs = [process.communicate(timeout=600)[0] for process in processes]

    for process, output in zip(processes, outputs):
        assert process.returncode == 0 and "Traceback" not in output, output[-3000:]
    trials = study_of(project_dir).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2, "no live trial failed by the other launch, none extra"
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 2, "the launches drew different trials"
    runs = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert sorted(r.data.tags[record.TRIAL] for r in runs) == ["0", "1"], "one run per trial"
    assert {r.info.status for r in runs} == {"FINISHED"}
    trained = [int(output.split("sweep summary: ")[1].split(" finished")[0]) for output in outputs]
    assert trained == [1, 1], trained


def test_a_killed_search_continues_its_study_and_resumes_the_interrupted_trial(project_dir, course_dataset):
    # The next launch fails a trial whose heartbeat stopped 3 s ago (default: 60) and asks it again.
    command = search_command(
        course_dataset,
        "hydra.sweeper.n_trials=4",
        "trainer.epochs=4",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
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
    assert "2 of 4 trials done, 1 running" in result.stdout, "the killed trial, until its heartbeat is stale"
    trials = study_of(project_dir).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    (retry,) = [t for t in trials[3:] if t.params == trials[2].params]  # 3 or 4: whether 3 s passed at start-up
    client = MlflowClient(uri)
    runs = {r.info.run_id: r for r in job_runs(uri)}
    assert len(runs) == 4 and set(before) <= set(runs), "the finished trials were not trained again"
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert epochs_logged(client, runs[interrupted]) == [1, 2, 3, 4], "the interrupted trial's run resumed"
    assert sorted(r.data.tags[record.TRIAL] for r in runs.values()) == ["0", "1", "3", "4"]
    assert runs[interrupted].data.tags[record.TRIAL] == str(retry.number)
    (sweep,) = sweep_runs(uri)
    assert {r.data.tags[record.PARENT] for r in runs.values()} == {sweep.info.run_id}


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
    runs = {r.data.tags[record.TRIAL]: r for r in job_runs(uri)}
    assert {n: r.data.params["optimizer.lr"] for n, r in runs.items()} == {"0": "0.05", "1": "1e-05"}, (
        "the seeded draws this test is built on"
    )
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert epochs_logged(client, runs["1"]) == [1], "pruned after its first of 3 epochs"
    assert runs["1"].data.tags[record.PRUNED].startswith("pruned by MedianPruner after epoch 1 of 3")
    assert epochs_logged(client, runs["0"]) == [1, 2, 3] and record.PRUNED not in runs["0"].data.tags
    assert [t.state.name for t in study_of(project_dir).trials] == ["COMPLETE", "PRUNED"]
    assert "sweep summary: 1 finished, 0 skipped, 0 failed, 0 killed, 1 pruned" in result.stdout

    (sweep,) = sweep_runs(uri)
    assert {r.data.tags[record.PARENT] for r in runs.values()} == {sweep.info.run_id}
    best = "0"
    assert sweep.data.metrics[record.BEST_VALUE] == pytest.approx(runs[best].data.metrics["final_val_acc"])
    assert sweep.data.tags[record.BEST_TRIAL] == best
    assert json.loads(sweep.data.tags[record.BEST_PARAMS])["optimizer.lr"] == 0.05
    assert f"best trial {best}: value {runs[best].data.metrics['final_val_acc']:.4f}" in result.stdout


def test_analyze_reports_a_search_readably_with_its_pruned_trial_apart(pruned_search, capsys):
    project_dir, _ = pruned_search

    _, stderr = analyze(capsys, project_dir, "--report", str(project_dir / "report"))

    assert "1 finished runs" in stderr
    (line,) = [line for line in stderr.splitlines() if "not in the table" in line]
    assert "lr=1e-05" in line and "(pruned) pruned by MedianPruner after epoch 1 of 3" in line
    text = (project_dir / "report" / "report.md").read_text()
    runs = {r.data.tags[record.TRIAL]: r for r in job_runs(f"sqlite:///{project_dir}/mlflow.db")}
    assert f"The best trial (chosen on the validation split) is trial 0, run `{runs['0'].info.run_id}`" in text
    assert "- `optimizer.lr=0.05`" in text, "the settings the search varied"
    assert f"`python {REPO / 'train.py'} hparams_search=lenet5_optuna" in text and "hydra.mode=RUN`" in text
    sections = text.split("\n## ")[1:]
    assert "Figures" not in [section.split("\n")[0] for section in sections], "no figure applies to a search"
    assert all(section.split("\n", 1)[1].strip() for section in sections), "no empty section"
    (sweep,) = sweep_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert sweep.info.run_name.endswith(("…", ")")) and " " not in sweep.info.run_name.split("=", 1)[1].split(" ")[0]


# The two tests below train the trials again, so they come last: the tests above read the search as it ended.


def test_the_printed_command_of_a_trial_trains_it_alone_to_the_same_numbers(pruned_search, capsys):
    project_dir, _ = pruned_search
    uri = f"sqlite:///{project_dir}/mlflow.db"
    trial = {r.data.tags[record.TRIAL]: r for r in job_runs(uri)}["0"]

    printed, _ = analyze(capsys, project_dir, "--command", trial.info.run_id)

    words = shlex.split(printed.strip())
    assert words[:2] == ["python", str(REPO / "train.py")] and "hydra.mode=RUN" in words
    assert "optimizer.lr=0.05" in words and not any(w.startswith("hydra.sweeper") for w in words)
    again = run_script("train.py", *words[2:], "force=true", cwd=project_dir, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    (rerun,) = [r for r in job_runs(uri) if record.TRIAL not in r.data.tags]
    assert rerun.data.tags[record.CONFIG_HASH] == trial.data.tags[record.CONFIG_HASH], "the same config"
    for key in ("final_val_acc", "final_test_acc", "final_test_loss", "train_eval_loss"):
        assert rerun.data.metrics[key] == trial.data.metrics[key], key


def test_the_printed_command_of_a_pruned_trial_trains_it_in_full_in_its_own_run(pruned_search, capsys):
    project_dir, _ = pruned_search
    uri = f"sqlite:///{project_dir}/mlflow.db"
    pruned = {r.data.tags.get(record.TRIAL): r for r in job_runs(uri)}["1"]

    printed, stderr = analyze(capsys, project_dir, "--command", pruned.info.run_id)

    assert "No command re-creates this run as it stopped (pruned by MedianPruner after epoch 1" in stderr
    again = run_script("train.py", *shlex.split(printed.strip())[2:], cwd=project_dir, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"resuming run {pruned.info.run_id} after epoch 1" in again.stdout + again.stderr
    twins = [r for r in job_runs(uri) if r.data.tags[record.CONFIG_HASH] == pruned.data.tags[record.CONFIG_HASH]]
    (run,) = twins  # one run of that config: the pruned one, trained on to its last epoch
    assert run.info.run_id == pruned.info.run_id and run.info.status == "FINISHED"
    assert record.PRUNED not in run.data.tags and epochs_logged(MlflowClient(uri), run) == [1, 2, 3]


def test_a_pruned_run_without_its_checkpoint_is_superseded_by_the_full_run_of_its_config(compose, project_dir):
    from mnist_exp import diff, job
    from mnist_exp.runs import select_runs
    from mnist_exp.stopping import JobSignals

    uri = f"sqlite:///{project_dir}/mlflow.db"
    cfg = compose(
        ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=1"]
        + [f"mlflow.tracking_uri={uri}", f"trainer.checkpoint_dir={project_dir}/checkpoints", "trainer.threads=1"]
    )
    client = MlflowClient(uri)
    runs = []
    try:
        for attempt in ("pruned", "full"):
            (project_dir / attempt).mkdir()
            runs.append(job.run_job(cfg, None, project_dir / attempt, [], JobSignals()).run_id)
            if attempt == "pruned":  # as a search leaves a pruned trial's run, its checkpoint gone elsewhere
                client.set_tag(runs[0], record.PRUNED, "pruned by MedianPruner after epoch 1 of 2")
    finally:
        mlflow.set_tracking_uri(None)

    pruned, full = (client.get_run(run_id) for run_id in runs)
    assert full.info.status == "FINISHED" and pruned.data.tags[record.SUPERSEDED_BY] == full.info.run_id
    assert list(select_runs(uri, "mnist-exp", "all").finished["run_id"]) == [full.info.run_id]
    variant = full.data.tags[record.VARIANT]
    assert list(diff.find(select_runs(uri, "mnist-exp", "all"), variant).runs["run_id"]) == [full.info.run_id]
