"""A run SIGKILLed mid-run resumes into the same run with identical results, end to end: the real train.py
in a subprocess, a real sqlite MLflow store, real digits from the shipped sample. (Apart from
test_reliability.py so the two files balance across pytest's workers.)"""

from __future__ import annotations

import functools
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import Hold, job_runs
from mlflow.tracking import MlflowClient
from test_reliability import start_train, store, store_uri, train

from mnist_exp import checkpoints

pytestmark = pytest.mark.slow

# Killed mid-run, then the same command again. onecycle moves the learning rate every batch (and dropout
# and the distortions draw random numbers), so the scheduler's state must come back exactly, and so must
# the weights' moving average (ema); early stopping is killed after its best epoch, so the weights it
# delivers exist only in the checkpoint.
KILLED_MID_RUN = {
    "onecycle+dropout+augment+elastic+ema": [
        "scheduler=onecycle",
        "regularizer=[dropout,augment,elastic,ema]",
        "regularizer.augment.shear=10",
        "trainer.epochs=4",
    ],
    "early_stopping": [  # Adam at 0.003 overfits 800 digits: best epoch 6, stopped at 8 of 10
        "optimizer=adam",
        "optimizer.lr=0.003",
        "regularizer=early_stopping",
        "regularizer.early_stopping.patience=2",
        "data.validation_size=200",
        "trainer.epochs=10",
    ],
}
TINY = ["data.source=sample", "data.limit_train=1000", "data.limit_test=300", "trainer.threads=1"]
# Wall-clock time and memory legitimately differ between two runs of the same command; nothing else may.
NOT_REPRODUCIBLE = ("epoch_time_s", "train_time_s", "peak_rss_mib", "system/")


def results(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's whole history (per-epoch metrics, lr, final_*, best_epoch, stopped_epoch...)."""
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in client.get_run(run_id).data.metrics
        if not key.startswith(NOT_REPRODUCIBLE)
    }


@pytest.fixture(scope="module")
def resume_store(tmp_path_factory, empty_store):
    """One store for the kill tests; reference(name, overrides) trains an uninterrupted run of the same command
    (in an experiment of its own, so the killed command does not skip it) and returns its results."""
    folder = tmp_path_factory.mktemp("resume")
    shutil.copy(empty_store, folder / "mlflow.db")

    @functools.cache
    def reference(name: str, overrides: tuple[str, ...]) -> dict:
        trained = train(folder, *overrides, f"mlflow.experiment=reference-{name}", multirun=False)
        assert trained.returncode == 0, trained.stderr[-2000:]
        (run,) = job_runs(store_uri(folder), f"reference-{name}")
        return results(store(folder), run.info.run_id)

    return folder, reference


def kill_after_checkpoint(cwd: Path, overrides: list[str], epoch: int) -> checkpoints.Checkpoint:
    """Start train.py, SIGKILL it once its checkpoint holds `epoch` epochs; returns the checkpoint it left."""
    hold = Hold(cwd / f"hold-{time.monotonic_ns()}", epoch)
    process, _ = start_train(cwd, *overrides, hold=hold)
    hold.wait(alive=process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (path,) = (cwd / "checkpoints").glob("*.pt")
    return checkpoints.load(path)


@pytest.mark.parametrize("scenario", KILLED_MID_RUN)
def test_run_killed_mid_run_resumes_into_the_same_run_with_identical_results(resume_store, scenario):
    folder, reference = resume_store
    command = [*TINY, *KILLED_MID_RUN[scenario]]
    expected = reference(scenario, tuple(command))
    stopped = int(expected["stopped_epoch"][0][1]) if "stopped_epoch" in expected else None

    checkpoint = kill_after_checkpoint(folder, command, stopped - 1 if stopped else 2)
    killed = store(folder).get_run(checkpoint.run_id)
    assert killed.info.status == "RUNNING"  # nothing could close it: that is what resume is for
    resumed = train(folder, *command, multirun=False)

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = checkpoint.progress.epochs_done
    assert f"resuming run {checkpoint.run_id} after epoch {done}" in resumed.stdout + resumed.stderr
    run = store(folder).get_run(checkpoint.run_id)
    assert run.info.status == "FINISHED"
    assert results(store(folder), run.info.run_id) == expected  # to the last digit, every epoch
    assert not list((folder / "checkpoints").glob("*.pt")), "a finished run keeps no checkpoint"
    epochs = int(run.data.params["trainer.epochs"])
    if stopped:  # stopped before trainer.epochs, after its best epoch; killed in between
        best = int(expected["best_epoch"][0][1])
        assert best < stopped < epochs and best <= done <= stopped
        assert run.data.metrics["best_epoch"] == best
    else:
        assert 1 <= done < epochs, "killed mid-run"
        assert len({value for _, value in expected["lr"]}) == epochs, "the schedule moves the lr every epoch"
