"""Sweep bookkeeping that needs no training: its identity and the statuses its summary reads."""

from __future__ import annotations

from mnist_exp.sweep import JobStatus, read_job_statuses, summarize, sweep_identity, write_job_status


def test_a_sweep_is_identified_by_its_overrides_not_their_order_nor_force_nor_the_store():
    key, name = sweep_identity(["model=lenet5,mlp", "trainer.epochs=3"])

    assert sweep_identity(["trainer.epochs=3", "model=lenet5,mlp"])[0] == key
    assert sweep_identity(["model=lenet5,mlp", "trainer.epochs=3", "force=true"])[0] == key
    assert sweep_identity(["model=lenet5,mlp", "trainer.epochs=3", "mlflow.tracking_uri=http://x:5000"])[0] == key
    assert sweep_identity(["model=lenet5,mlp", "trainer.epochs=4"])[0] != key
    assert name == "model=lenet5,mlp trainer.epochs=3"


def test_the_summary_counts_only_jobs_of_this_launch_in_a_reused_sweep_folder(tmp_path):
    for job, status, launch in ((0, "failed", "earlier"), (1, "finished", "earlier"), (0, "skipped", "now")):
        folder = tmp_path / launch / str(job)  # two launches that wrote to the same sweep folder
        folder.mkdir(parents=True)
        write_job_status(str(folder), JobStatus(status, [f"model=m{job}"], "run", "boom", launch))

    statuses = read_job_statuses(str(tmp_path), "now")

    assert [s.status for s in statuses] == ["skipped"]
    assert summarize(statuses).startswith("sweep summary: 0 finished, 1 skipped, 0 failed, 0 killed")


def test_the_summary_names_each_failed_job_and_its_error():
    statuses = [
        JobStatus("finished", ["model=mlp"], "a", None, "x"),
        JobStatus("failed", ["model=lenet5", "optimizer.lr=-1"], "b", "ConfigError: optimizer.lr=-1.0 is out of range", "x"),
    ]

    lines = summarize(statuses).splitlines()

    assert lines[0] == "sweep summary: 1 finished, 0 skipped, 1 failed, 0 killed"
    assert lines[1] == "  FAILED: model=lenet5 optimizer.lr=-1: ConfigError: optimizer.lr=-1.0 is out of range"
