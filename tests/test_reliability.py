"""What happens when things go wrong, end to end: the real train.py in a subprocess, a real
sqlite MLflow store in a temp folder, real digits from the shipped sample."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO as ROOT
from conftest import Hold, analyze_main, job_runs, png_bytes, run_script, sweep_runs, write_tar
from mlflow.tracking import MlflowClient

from mnist_exp import checkpoints, record
from mnist_exp.runs import select_runs

SMALL = ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=1", "trainer.threads=1"]

pytestmark = pytest.mark.slow


def train(cwd: Path, *overrides: str, multirun: bool = True) -> subprocess.CompletedProcess:
    return run_script("train.py", *(["-m"] if multirun else []), *overrides, cwd=cwd, timeout=300)


def start_train(cwd: Path, *overrides: str, hold: Hold | None = None) -> tuple[subprocess.Popen, Path]:
    """train.py in the background, its output in a log; held at `hold`'s epoch until released."""
    log = cwd / f"train-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *overrides],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(hold.env if hold else {})},
        )
    return process, log


def store(cwd: Path) -> MlflowClient:
    return MlflowClient(store_uri(cwd))


def store_uri(cwd: Path) -> str:
    return f"sqlite:///{cwd}/mlflow.db"


def write_course_tar(path: Path, images: np.ndarray, labels, names: list[str] | None = None) -> None:
    names = names or [f"{path.stem}/{i:05d}_{label}.png" for i, label in enumerate(labels)]
    write_tar(path, [(name, png_bytes(image)) for name, image in zip(names, images)])


# --- 1. isolated failures ---


def test_failed_jobs_are_recorded_the_sweep_goes_on_a_refused_one_runs_nothing_added_seeds_join_it(project_dir):
    result = train(project_dir, "optimizer.lr=0.01,1e6", "hydra/launcher=basic", *SMALL)

    assert result.returncode == 1
    assert "sweep summary: 1 finished, 0 skipped, 1 failed" in result.stdout
    client = store(project_dir)
    runs = {r.data.params["optimizer.lr"]: r for r in job_runs(store_uri(project_dir))}
    assert runs["0.01"].info.status == "FINISHED"
    diverged = runs["1000000.0"]
    assert diverged.info.status == "FAILED"
    assert "Diverged: training loss became nan" in diverged.data.tags[record.ERROR]
    assert "traceback.txt" in [a.path for a in client.list_artifacts(diverged.info.run_id)]
    parent = client.get_run(runs["0.01"].data.tags[record.PARENT])
    assert parent.info.status == "FAILED"

    # A value validation refuses, in one job of a sweep: the whole launch is refused before any run exists.
    refused = train(project_dir, "optimizer.lr=-1,0.01", "hydra/launcher=basic", *SMALL)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1] == (
        "train.py: error: optimizer.lr=-1.0 is out of range: must be > 0 (in 1 of 2 jobs, e.g. optimizer.lr=-1); "
        "nothing was launched"
    )
    assert len(job_runs(store_uri(project_dir))) == 2 and len(sweep_runs(store_uri(project_dir))) == 1
    assert select_runs(store_uri(project_dir), "mnist-exp").parent_run_ids == [parent.info.run_id], "still the latest"

    # A seed added to that sweep, as the report's commands add them, is read with it as one sweep.
    key = parent.data.tags[record.SWEEP_KEY]
    unknown = train(project_dir, "optimizer.lr=0.01", "trainer.seed=1", "mlflow.extends=nope", *SMALL)
    assert unknown.stderr.splitlines()[-1].startswith("train.py: error: mlflow.extends=nope: no sweep of this")
    added = train(project_dir, "optimizer.lr=0.01", "trainer.seed=1", f"mlflow.extends={key}", *SMALL)
    assert added.returncode == 0, added.stderr[-2000:]
    selection = select_runs(store_uri(project_dir), "mnist-exp")
    assert selection.sweep_keys == [key] and len(selection.finished) == 2, selection.description


DATA_ERRORS = ["no_label", "label_out_of_range", "duplicate_ids", "wrong_size", "empty_tar", "corrupt_png", "missing"]


@pytest.fixture(scope="module")
def data_errors(tmp_path_factory, empty_store, sample_digits) -> tuple[Path, subprocess.CompletedProcess]:
    """A sweep with one job per kind of bad data folder (DATA_ERRORS): a store holding only FAILED runs."""
    project_dir = tmp_path_factory.mktemp("data-errors")
    shutil.copy(empty_store, project_dir / "mlflow.db")
    images, labels = sample_digits["train"].images[:20], sample_digits["train"].labels[:20]
    cases = {
        "no_label": dict(names=[f"train/{i:05d}.png" for i in range(20)]),
        "label_out_of_range": dict(names=[f"train/{i:05d}_{12 if i == 3 else labels[i]}.png" for i in range(20)]),
        "duplicate_ids": dict(names=[f"train/{min(i, 5):05d}_{labels[i]}.png" for i in range(20)]),
        "wrong_size": dict(images=np.zeros((20, 32, 32), np.uint8)),
    }
    for case, changes in cases.items():
        folder = project_dir / case
        folder.mkdir()
        write_course_tar(folder / "train.tar", changes.get("images", images), labels, changes.get("names"))
        write_course_tar(folder / "test.tar", images, labels)
    (project_dir / "empty_tar").mkdir()
    (project_dir / "empty_tar" / "train.tar").write_bytes(b"")
    (project_dir / "empty_tar" / "test.tar").write_bytes(b"")
    corrupt = project_dir / "corrupt_png"
    write_tar(corrupt / "train.tar", [("train/00000_1.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 32)])
    write_course_tar(corrupt / "test.tar", images, labels)
    result = train(
        project_dir,
        "data.source=course",
        "data.root=" + ",".join(DATA_ERRORS),
        "hydra/launcher=basic",
        "trainer.epochs=1",
        "trainer.threads=1",
    )
    return project_dir, result


def test_each_data_error_fails_its_own_job_with_the_file_named(data_errors):
    project_dir, result = data_errors

    assert result.returncode == 1
    assert f"0 finished, 0 skipped, {len(DATA_ERRORS)} failed" in result.stdout
    errors = {
        Path(r.data.params["data.root"]).name: r.data.tags[record.ERROR] for r in job_runs(store_uri(project_dir))
    }
    assert "member 'train/00000.png' is not a labelled PNG" in errors["no_label"]
    assert "has label 12, outside 0-9" in errors["label_out_of_range"]
    assert "ID '00005' appears twice" in errors["duplicate_ids"]
    assert "is a 32x32 L image; expected 28x28" in errors["wrong_size"]
    assert "train.tar: not a readable tar archive" in errors["empty_tar"]
    assert "member 'train/00000_1.png' does not decode as a PNG" in errors["corrupt_png"]
    assert "missing does not exist" in errors["missing"]
    assert all(r.info.status == "FAILED" for r in job_runs(store_uri(project_dir)))


# --- 2. idempotent re-runs ---


# Two jobs at once on a store that does not exist yet (the case where parallel jobs used to race; section 4),
# then forced to train again by the test below.
PARALLEL = [
    "model=lenet5,mlp",
    "trainer.epochs=2",
    "data.source=sample",
    "data.limit_train=300",
    "data.limit_test=100",
    "trainer.threads=1",
]


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    # No mlflow.db: the two jobs create it at once. Two is the fewest that race; more would race more often, but
    # the store's creation is serialized, not left to chance (tracking.py), so two jobs test the same code.
    folder = tmp_path_factory.mktemp("parallel")
    return folder, train(folder, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *PARALLEL)


# That a repeated sweep skips its finished jobs and adds no run is test_sweep_integration's
# test_repeating_the_sweep_skips_every_job_and_adds_no_runs (and test_mlflow_native's sweeps reuse runs).
def test_force_trains_a_finished_sweep_again_and_the_table_counts_each_config_once(
    parallel_sweep, tmp_path, monkeypatch, capsys
):
    project_dir = tmp_path / "project"  # a copy: the parallel sweep's store keeps its runs (new artifacts land
    # in its folder, where the experiment's artifact location points; nothing reads them)
    shutil.copytree(parallel_sweep[0], project_dir)
    first = {r.info.run_id for r in job_runs(store_uri(project_dir))}
    assert len(first) == 2

    # The same sweep, its jobs in this process (force is the job's decision, whichever launcher runs it; two
    # spawned workers cost more than the tiny runs).
    forced = train(project_dir, *PARALLEL, "hydra/launcher=basic", "force=true")
    assert "sweep summary: 2 finished, 0 skipped" in forced.stdout
    runs = {r.info.run_id for r in job_runs(store_uri(project_dir))}
    assert len(runs) == 4 and first < runs, "two new runs beside the first two"

    monkeypatch.chdir(project_dir)  # in this process: the table is the test, not its process
    assert analyze_main()(["--tracking-uri", store_uri(project_dir), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(row["model"] for row in rows) == ["lenet5", "mlp"]
    assert all(row["n"] == 1 for row in rows), "a config trained twice must count once"


# --- 3. resume ---

RESUMABLE = [
    "trainer.epochs=2",
    "data.source=sample",
    "data.limit_train=500",
    "data.limit_test=100",
    "trainer.threads=1",
    "regularizer=[dropout,augment]",
]


def test_run_killed_before_its_first_checkpoint_is_closed_by_the_next_attempt(project_dir):
    hold = Hold(project_dir / "hold", epoch=1, when="before")  # it trained an epoch, saved nothing yet
    process, _ = start_train(project_dir, *RESUMABLE, hold=hold)
    hold.wait(alive=process)
    process.send_signal(signal.SIGKILL)
    process.wait()

    assert train(project_dir, *RESUMABLE, multirun=False).returncode == 0
    statuses = sorted((r.info.status, r.data.tags.get(record.ERROR, "")) for r in job_runs(store_uri(project_dir)))
    assert statuses[0][0] == "FINISHED"
    assert statuses[1][0] == "KILLED" and statuses[1][1].startswith("abandoned: superseded by run")


def test_sigterm_closes_the_run_as_killed_and_a_rerun_finishes_it(project_dir):
    hold = Hold(project_dir / "hold", epoch=1)
    process, _ = start_train(project_dir, *RESUMABLE, hold=hold)
    hold.wait(alive=process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    (run,) = job_runs(store_uri(project_dir))
    assert run.info.status == "KILLED"

    assert train(project_dir, *RESUMABLE, multirun=False).returncode == 0
    (run,) = job_runs(store_uri(project_dir))
    assert run.info.status == "FINISHED"
    assert record.ERROR not in run.data.tags
    assert "traceback.txt" not in {a.path for a in store(project_dir).list_artifacts(run.info.run_id)}, (
        "a FINISHED run carries no traceback of the attempt it resumed"
    )


# One process imports torch and builds the model once, then forks a writer per line it reads: each writes checkpoints
# in a loop, is killed at a random point once one is complete, and the test reads what it left. (A process per
# writer spent ~5 s importing torch and ~4 s building the optimizer before its first write.)
KILLED_WRITERS = """
import os, signal, sys, time
import numpy as np, torch
from pathlib import Path
from mnist_exp import checkpoints
from mnist_exp.training import EpochMetrics, TrainingState, Training

model = torch.nn.Linear(1000, 1000)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # its first one imports for ~4 s: before any fork
training = Training(model, optimizer, None, None, torch.device("cpu"))

def write_forever(path, one_done):
    epoch = 0
    while True:
        epoch += 1
        with torch.no_grad():
            model.weight.fill_(epoch)
        progress = TrainingState([EpochMetrics(e, 0.0, 0.0, 0.0, 0.0, 0.0) for e in range(1, epoch + 1)], 0.0)
        checkpoints.save(path, "run", training, progress)
        if epoch == 1:
            os.write(one_done, b"1")

path, rng = Path(sys.argv[1]), np.random.default_rng(0)
for _ in sys.stdin:
    ready, one_done = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            write_forever(path, one_done)
        finally:
            os._exit(1)
    os.close(one_done)
    assert os.read(ready, 1) == b"1", "the writer died before its first checkpoint"
    time.sleep(rng.uniform(0.0, 0.3))  # each write takes ~10 ms: kills land mid-write often
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(ready)
    print("killed", flush=True)
"""


def test_checkpoint_survives_kills_in_the_middle_of_writing(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writers = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITERS, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for attempt in range(6):
            writers.stdin.write("write\n")
            writers.stdin.flush()
            assert writers.stdout.readline() == "killed\n", f"attempt {attempt}: the writers' process failed"
            checkpoint = checkpoints.load(path)
            assert checkpoint is not None, f"attempt {attempt}: a kill left an unreadable checkpoint"
            epochs = checkpoint.progress.epochs_done
            assert float(checkpoint.model_state["weight"][0, 0]) == epochs, "weights and history from different writes"
    finally:
        writers.stdin.close()
        try:
            writers.wait(timeout=60)
        finally:
            writers.kill()  # no-op once it has exited; never left running if it hangs


def test_damaged_checkpoint_is_ignored_not_trusted(tmp_path, caplog):
    path = tmp_path / "damaged.pt"
    path.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    assert checkpoints.load(path) is None
    assert "ignoring unreadable checkpoint" in caplog.text


# --- 4. concurrent writers ---


def test_parallel_jobs_on_a_fresh_store_lose_nothing(parallel_sweep):
    folder, result = parallel_sweep
    assert result.returncode == 0, result.stderr[-2000:]
    client = store(folder)
    runs = job_runs(store_uri(folder))
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2]
    with sqlite3.connect(folder / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- 5. bad inputs: one actionable line, no run left RUNNING ---


def unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder / "outputs"
    # root ignores permission bits; sysfs refuses new folders even to root
    candidate = Path("/sys/mnist-exp-test-output")
    try:
        candidate.mkdir()
    except OSError:
        return candidate
    candidate.rmdir()
    pytest.skip("no folder on this machine refuses writes to this user")


# Who answers: "hydra" rejects the override while composing (nothing runs: its report on stderr
# starts with a line naming the override, then lists what would be valid); "train.py" refuses before
# any job (its whole stderr is one `train.py: error: ...` line); "job" opens the run and closes it
# FAILED with the reason (one `FAILED: ...` log line, the same reason on the run).
@pytest.mark.parametrize(
    "overrides, message, answered_by, first_line",
    [
        (["model=lenet"], "Could not find 'model/lenet'", "hydra", "In 'train': Could not find 'model/lenet'"),
        (
            ["trainer.epochs=abc"],
            "Value 'abc' of type 'str' could not be converted to Integer",
            "hydra",
            "Error merging override trainer.epochs=abc",
        ),
        (
            ["regularizer=dropout", "regularizer.dropout.p=1.5"],
            "regularizer.dropout.p=1.5 is out of range: must be in [0, 1)",
            "train.py",
            None,
        ),
        (
            ["data.source=course", "data.root=no/such/folder"],
            "no/such/folder does not exist: expected train.tar and test.tar",
            "job",
            None,
        ),
        (
            ["mlflow.tracking_uri=http://127.0.0.1:9"],
            "cannot reach the MLflow tracking server at mlflow.tracking_uri=http://127.0.0.1:9",
            "train.py",
            None,
        ),
        (["hydra.run.dir=UNWRITABLE"], "cannot write the output folder", "train.py", None),
        (
            ["mlflow.tracking_uri=sqlite:///notes.db"],
            "notes.db holds text (15 bytes: 'not a database')",
            "train.py",
            None,
        ),
        (
            ["mlflow.tracking_uri=mlruns"],
            "mlflow.tracking_uri=mlruns is a path, which MLflow reads as its deprecated file store: "
            "give a sqlite store instead, mlflow.tracking_uri=sqlite:///mlruns/mlflow.db",
            "train.py",
            None,
        ),
    ],
    ids=[
        "unknown-option",
        "wrong-type",
        "out-of-range",
        "missing-data-folder",
        "unreachable-server",
        "read-only-output",
        "text-file-as-store",
        "bare-path-as-store",
    ],
)
def test_bad_input_is_answered_in_one_line(project_dir, overrides, message, answered_by, first_line):
    if any("UNWRITABLE" in o for o in overrides):
        folder = str(unwritable_folder(project_dir))
        overrides = [o.replace("UNWRITABLE", folder) for o in overrides]
    notes = project_dir / "notes.db"
    notes.write_text("not a database\n")
    result = train(project_dir, *SMALL, *overrides, multirun=False)
    assert notes.read_text() == "not a database\n", "nothing is written to a file that is not a store"

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output
    assert all(r.info.status == "FAILED" for r in job_runs(store_uri(project_dir))), "no run may stay RUNNING"

    assert result.returncode == 1, output
    carrying = [line for line in output.splitlines() if message in line]
    assert len(carrying) == 1, f"the message is said once, on one line:\n{output}"
    runs = job_runs(store_uri(project_dir))
    assert sweep_runs(store_uri(project_dir)) == [], "a single run opens no sweep"
    if answered_by == "hydra":
        assert result.stdout == "", "nothing ran"
        assert result.stderr.splitlines()[0] == first_line, result.stderr
        assert runs == [], "a config Hydra rejects creates no run"
    elif answered_by == "train.py":
        assert result.stdout == "", "nothing ran"
        assert result.stderr.splitlines() == carrying and carrying[0].startswith("train.py: error: "), result.stderr
        assert runs == [], "refused before any job: no run in the store"
    else:
        (failed_line,) = [line for line in output.splitlines() if "FAILED:" in line]
        assert failed_line == carrying[0], output
        (run,) = runs
        assert run.info.status == "FAILED" and message in run.data.tags[record.ERROR]


def test_analyze_answers_a_missing_store_and_one_with_only_failed_runs(data_errors, tmp_path, monkeypatch, capsys):
    main = analyze_main()  # in this process: what it answers is the test, not its process
    monkeypatch.chdir(tmp_path)
    assert main([]) == 1  # the default store, sqlite:///mlflow.db here: refused before MLflow opens (or caches) it
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists(), "reading must not create a store"

    monkeypatch.chdir(data_errors[0])
    assert main(["--tracking-uri", store_uri(data_errors[0])]) == 1  # an answer, not an exception
    said = capsys.readouterr().err
    assert "has no FINISHED runs" in said and "FAILED" in said
