"""Sweep bookkeeping that needs no training: its identity, its runs' names and the statuses its summary reads."""

from __future__ import annotations

import socket
import subprocess

from mnist_exp import record
from mnist_exp.sweep import (
    NOTE_LIMIT,
    JobOutcome,
    SweepInfo,
    clip,
    members_description,
    read_job_statuses,
    run_name,
    summarize,
    sweep_identity,
    swept_keys,
    write_job_status,
)


def test_a_sweep_is_identified_by_its_overrides_not_their_order_nor_force_nor_the_store():
    key, _ = sweep_identity(["model=lenet5,mlp", "trainer.epochs=3"])

    assert sweep_identity(["trainer.epochs=3", "model=lenet5,mlp"])[0] == key
    assert sweep_identity(["model=lenet5,mlp", "trainer.epochs=3", "force=true"])[0] == key
    assert sweep_identity(["model=lenet5,mlp", "trainer.epochs=3", "mlflow.tracking_uri=http://x:5000"])[0] == key
    assert sweep_identity(["model=lenet5,mlp", "trainer.epochs=4"])[0] != key


def test_a_sweeps_name_leads_with_its_own_choices_and_shortens_paths():
    _, name = sweep_identity(
        ["data.root=/home/student/datasets/mnist-10k", "trainer.epochs=3", "model=lenet5,mlp", "regularizer=none,l2"]
    )

    assert name == "model=lenet5,mlp regularizer=none,l2 (data.root=…/mnist-10k trainer.epochs=3)"


def test_an_experiment_files_sweep_params_name_the_sweep():
    _, name = sweep_identity(["experiment=course_grid"], {"model": "lenet5,mlp", "trainer.seed": "0,1,2"})

    assert name == "model=lenet5,mlp trainer.seed=0,1,2 (experiment=course_grid)"
    assert swept_keys(["experiment=course_grid"], {"model": "lenet5,mlp", "trainer.seed": "0,1,2"}) == [
        "model",
        "trainer.seed",
    ]


def test_a_sweeper_param_pinned_on_the_command_line_is_not_swept():
    params = {"model": "lenet5,mlp", "trainer.seed": "0,1,2", "optimizer.lr": "0.1,0.01"}

    _, name = sweep_identity(["experiment=x", "trainer.seed=0", "optimizer.lr=0.5,0.05"], params)

    assert swept_keys(["experiment=x", "trainer.seed=0", "optimizer.lr=0.5,0.05"], params) == ["optimizer.lr", "model"]
    assert name == "optimizer.lr=0.5,0.05 model=lenet5,mlp (experiment=x trainer.seed=0)"


def test_a_searchs_name_splits_between_overrides_and_its_trials_are_named_to_3_significant_figures():
    params = {"optimizer.lr": "tag(log, interval(0.001, 0.3))", "regularizer.dropout.p": "interval(0.0, 0.6)"}
    _, name = sweep_identity(["hparams_search=lenet5_optuna", "trainer.epochs=2"], params)

    assert name == (
        "optimizer.lr=tag(log,interval(0.001,0.3)) regularizer.dropout.p=interval(0.0,0.6) "
        "(hparams_search=lenet5_optuna trainer.epochs=2)"
    )
    assert clip(f"sweep: {name}", 60) == "sweep: optimizer.lr=tag(log,interval(0.001,0.3))…"
    trial = ["optimizer.lr=0.022881136684755242", "regularizer.dropout.p=6.862489040693198e-05", "trainer.epochs=2"]
    assert (
        run_name("lenet5/dropout/sgd", 0, trial, list(params), drawn=True)
        == "lenet5/dropout/sgd lr=0.0229 dropout.p=6.86e-05 seed=0"
    )
    lr = ["optimizer.lr"]
    assert run_name("mlp/none/sgd", 0, ["optimizer.lr=1e-5"], lr, drawn=True) == "mlp/none/sgd lr=1e-5 seed=0"
    assert run_name("mlp/none/sgd", 0, ["optimizer.lr=0.12345"], lr) == "mlp/none/sgd lr=0.12345 seed=0", "typed: kept"


def test_run_names_say_what_the_sweep_varies_beyond_the_variant():
    swept = swept_keys(
        [
            "model=lenet5,mlp",
            "optimizer=sgd,adam",
            "optimizer.lr=0.01,0.003",
            "regularizer.dropout.p=0.3,0.5",
            "data.root=/a/x,/b/y",
            "trainer.epochs=3",
        ],
        {},
    )
    overrides = [
        "model=mlp",
        "optimizer=adam",
        "optimizer.lr=0.003",
        "regularizer.dropout.p=0.3",
        "data.root=/b/y",
        "trainer.epochs=3",
    ]

    assert swept == ["model", "optimizer", "optimizer.lr", "regularizer.dropout.p", "data.root"]
    assert run_name("mlp/dropout/adam", 0, overrides, swept) == "mlp/dropout/adam lr=0.003 dropout.p=0.3 root=y seed=0"
    assert run_name("mlp/none/sgd", 2, ["model=mlp"], []) == "mlp/none/sgd seed=2"


def test_the_summary_counts_only_jobs_of_this_launch_in_a_reused_sweep_folder(tmp_path):
    for job, status, launch in ((0, "failed", "earlier"), (1, "finished", "earlier"), (0, "skipped", "now")):
        folder = tmp_path / launch / str(job)  # two launches that wrote to the same sweep folder
        folder.mkdir(parents=True)
        write_job_status(folder, JobOutcome(status, [f"model=m{job}"], "run", "boom", launch))

    statuses = read_job_statuses(str(tmp_path), "now")

    assert [s.status for s in statuses] == ["skipped"]
    assert summarize(statuses).startswith("sweep summary: 0 finished, 1 skipped, 0 failed, 0 killed")


def test_the_summary_names_each_failed_job_and_its_error():
    statuses = [
        JobOutcome("finished", ["model=mlp"], "a", None, "x"),
        JobOutcome(
            "failed", ["model=lenet5", "optimizer.lr=-1"], "b", "ConfigError: optimizer.lr=-1.0 is out of range", "x"
        ),
    ]

    lines = summarize(statuses).splitlines()

    assert lines[0] == "sweep summary: 1 finished, 0 skipped, 1 failed, 0 killed"
    assert lines[1] == "  FAILED: model=lenet5 optimizer.lr=-1: ConfigError: optimizer.lr=-1.0 is out of range"


def test_the_sweep_runs_description_links_every_member_reused_ones_too():
    info = SweepInfo("k", "model=lenet5,mlp", "parent", "7", "launch")
    statuses = [
        JobOutcome("finished", [], "r1", None, "launch", "lenet5/none/sgd seed=0"),
        JobOutcome("skipped", [], "r2", None, "launch", "mlp/none/sgd seed=0"),
        JobOutcome("failed", [], None, "no store", "launch"),
    ]

    text = members_description(info, statuses, stopped=None)

    assert "- [lenet5/none/sgd seed=0](#/experiments/7/runs/r1?workflowType=machine_learning): finished" in text
    assert (
        "- [mlp/none/sgd seed=0](#/experiments/7/runs/r2?workflowType=machine_learning): reused (already FINISHED)"
        in text
    )
    assert text.count("- [") == 2  # a job that never got a run has nothing to link
    # A search's trial names carry every setting: the description stays under MLflow's limit for a tag.
    long = [
        JobOutcome("finished", [], f"r{i}", None, "launch", "lenet5/l2+dropout/sgd " + "x" * 300) for i in range(40)
    ]
    text = members_description(info, long, stopped=None)
    assert len(text) <= NOTE_LIMIT and text.endswith(f"more, listed in {record.MEMBERS_FILE}")


def test_a_sweep_still_running_is_not_reopened_by_a_second_launch_but_a_dead_ones_is(project_dir):
    from mlflow.tracking import MlflowClient

    from mnist_exp import record
    from mnist_exp.sweep import open_sweep_run

    client = MlflowClient(f"sqlite:///{project_dir}/mlflow.db")
    experiment = client.create_experiment("concurrent")
    first = open_sweep_run(client, experiment, "key", "sweep: a")
    second = open_sweep_run(client, experiment, "key", "sweep: a")
    assert second != first, "a launch of the same sweep in progress keeps its own parent run"

    gone = subprocess.Popen(["true"])
    gone.wait()
    client.set_tag(first, record.LAUNCHER, f"{socket.gethostname()} {gone.pid}")  # its launcher was SIGKILLed
    assert open_sweep_run(client, experiment, "key", "sweep: a") == first
