"""End to end: the real train.py sweep in a subprocess on course-format tars of real digits,
a real sqlite MLflow store, then analyze.py on what it recorded, then the same sweep again."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_script
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist_exp import record
from mnist_exp.data import content_hash

pytestmark = pytest.mark.slow

VARIANTS = {f"{m}/{r}/sgd" for m in ("lenet5", "mlp") for r in ("none", "l2", "dropout")}
EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
ARTIFACTS = {"config.yaml", "learning_curves.png", "confusion_matrix.png", "history.csv", "hydra"}
# Loads each run's MLflow model in a process that cannot import this repository, and scores it.
SCORE_MODELS = """
import json, sys
# the model loads its own shipped code (test_finished_runs proves it without this repository)
import mlflow, numpy as np, torch
mlflow.set_tracking_uri(sys.argv[1])
test = np.load(sys.argv[2])
scores = {}
for run_id, name in zip(sys.argv[3::2], sys.argv[4::2]):
    logits = mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}").predict(test["images"])
    torch_logits = mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")(torch.from_numpy(test["images"]))
    assert np.array_equal(logits, torch_logits.detach().numpy())
    scores[run_id] = int((logits.argmax(1) == test["labels"]).sum()) / len(test["labels"])
print(json.dumps(scores))
"""


def run(cwd, script, *args, timeout=600):
    return run_script(script, *args, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, make_course_dataset):
    """The 2 x 3 sweep, run once for the whole module from a fresh folder (outputs/, checkpoints/,
    data/cache/ and mlruns/ all land there)."""
    cwd = tmp_path_factory.mktemp("sweep")
    dataset = make_course_dataset(cwd / "course")
    uri = f"sqlite:///{cwd}/mlflow.db"
    command = [
        "-m",
        "model=lenet5,mlp",
        "regularizer=none,l2,dropout",
        "trainer.epochs=2",
        "trainer.threads=1",
        f"data.root={dataset.root}",
        f"mlflow.tracking_uri={uri}",
    ]
    result = run(cwd, "train.py", *command)
    return {"cwd": cwd, "uri": uri, "command": command, "result": result, "dataset": dataset}


def runs_by_role(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-exp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(record.ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(record.ROLE) != "sweep"]
    return client, parents, children


def analyze(sweep, *args):
    return run(
        sweep["cwd"], "analyze.py", "--tracking-uri", sweep["uri"], "--experiment", "mnist-exp", *args, timeout=120
    )


def test_sweep_exits_0_and_reports_six_finished_jobs(sweep):
    result = sweep["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep summary: 6 finished, 0 skipped, 0 failed, 0 killed" in result.stdout
    # Relative paths resolved against the launch folder, not the repository.
    assert (sweep["cwd"] / "outputs" / "sweeps").is_dir() and (sweep["cwd"] / "data" / "cache").is_dir()


def test_six_finished_child_runs_under_one_finished_sweep_run(sweep):
    _, parents, children = runs_by_role(sweep["uri"])

    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags[record.VARIANT] for r in children} == VARIANTS
    assert {r.data.tags[record.PARENT] for r in children} == {parents[0].info.run_id}


def test_every_run_logged_exactly_two_epochs(sweep):
    client, _, children = runs_by_role(sweep["uri"])
    for child in children:
        for metric in EPOCH_METRICS:
            history = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == [1, 2], (child.info.run_name, metric)


def test_every_run_records_model_size_and_data_identity(sweep):
    _, _, children = runs_by_role(sweep["uri"])
    dataset = sweep["dataset"]
    train_hash = content_hash(dataset.train.images, dataset.train.labels)
    test_hash = content_hash(dataset.test.images, dataset.test.labels)

    for child in children:
        params = child.data.params
        assert params["model.lenet5_parameters"] == "44426"
        parameters = int(params["model.parameters"])
        if params["model.name"] == "lenet5":
            assert parameters == 44426
        else:
            assert abs(parameters - 44426) <= 0.02 * 44426
        assert (params["data.train_sha256"], params["data.test_sha256"]) == (train_hash, test_hash)
        assert (params["data.train_size"], params["data.test_size"]) == ("400", "200")
        assert params["data.resolved_source"] == "course"


def test_every_run_has_its_artifacts_and_its_mlflow_model_reproduces_its_accuracy(sweep):
    client, _, children = runs_by_role(sweep["uri"])
    for child in children:
        run_id = child.info.run_id
        assert {a.path for a in client.list_artifacts(run_id)} >= ARTIFACTS, child.info.run_name
        folder = client.download_artifacts(run_id, "", str(sweep["cwd"] / "downloads" / run_id))
        for figure in ("learning_curves.png", "confusion_matrix.png"):
            with Image.open(f"{folder}/{figure}") as image:
                assert image.format == "PNG" and image.size[0] > 100
        hydra_files = {a.path for a in client.list_artifacts(run_id, "hydra")}
        assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml", "hydra/train.log"} <= hydra_files
        assert run_id in Path(folder, "hydra", "train.log").read_text(), "the job's log names its run"

    test = sweep["dataset"].test
    np.savez(sweep["cwd"] / "test.npz", images=test.images, labels=test.labels)
    scored = subprocess.run(
        [
            sys.executable,
            "-c",
            SCORE_MODELS,
            sweep["uri"],
            str(sweep["cwd"] / "test.npz"),
            *(part for c in children for part in (c.info.run_id, record.model_name(c.data.tags[record.VARIANT]))),
        ],
        capture_output=True,
        text=True,
        cwd=sweep["cwd"],
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    scores = json.loads(scored.stdout.strip().splitlines()[-1])
    for child in children:  # exactly: both are correct / total over the same 200 digits
        assert scores[child.info.run_id] == child.data.metrics["final_test_acc"], child.info.run_name


def test_analyze_prints_one_row_per_variant_in_every_format(sweep):
    markdown = analyze(sweep)
    assert markdown.returncode == 0, markdown.stderr
    rows = [line for line in markdown.stdout.splitlines() if line.startswith("| ") and "/sgd" in line]
    # " *" marks a variant with a collapsed seed: these 1-epoch runs on 400 digits are near chance
    assert len(rows) == 6 and {row.split("|")[1].strip().removesuffix(" *") for row in rows} == VARIANTS

    csv = analyze(sweep, "--format", "csv")
    assert csv.returncode == 0, csv.stderr
    table = pd.read_csv(io.StringIO(csv.stdout))
    assert len(table) == 6 and set(table["variant"]) == VARIANTS and set(table["n"]) == {1}

    as_json = analyze(sweep, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert len(records) == 6 and {r["variant"] for r in records} == VARIANTS
    # The plain models are their own baselines.
    plain = {r["variant"]: r for r in records if r["regularizer"] == "none"}
    assert plain["mlp/none/sgd"]["vs_mlp_pp"] == 0 and plain["lenet5/none/sgd"]["vs_lenet5_pp"] == 0


# Runs last in this module: it adds to the store the other tests read.
def test_repeating_the_sweep_skips_every_job_and_adds_no_runs(sweep):
    _, parents_before, children_before = runs_by_role(sweep["uri"])

    again = run(sweep["cwd"], "train.py", *sweep["command"])

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "sweep summary: 0 finished, 6 skipped, 0 failed, 0 killed" in again.stdout
    _, parents_after, children_after = runs_by_role(sweep["uri"])
    assert [p.info.run_id for p in parents_after] == [p.info.run_id for p in parents_before]
    assert {c.info.run_id for c in children_after} == {c.info.run_id for c in children_before}

    table = pd.read_csv(io.StringIO(analyze(sweep, "--format", "csv").stdout))
    assert len(table) == 6 and set(table["n"]) == {1}
