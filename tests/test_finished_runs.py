"""What a finished run offers, end to end with the real train.py and analyze.py: its model as an
nn.Module that loads without this repository, a pyfunc and a model server that take what people hand them, a diff with
another run, the command that re-creates it, and the machine's use while it trained."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, analyze_main, job_runs, model_server, run_script
from mlflow.tracking import MlflowClient

from mnist_exp import diff, shipped
from mnist_exp.runs import AnalysisError, select_runs

pytestmark = pytest.mark.slow
SMALL = ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=2", "trainer.threads=1"]

# Run with python -I (no PYTHON* variables, no script folder on sys.path) from outside the repository;
# the venv's editable install of mnist_exp (the checkout on sys.path, make setup's compat mode, or a meta
# path finder) is removed before anything is imported.
LOAD_ALONE = """
import os, sys
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p, "mnist_exp"))]
sys.meta_path[:] = [f for f in sys.meta_path if "mnist_exp" not in getattr(f, "__module__", "")]
import importlib.util
assert importlib.util.find_spec("mnist_exp") is None, "mnist_exp is importable before loading"
import json, mlflow.pytorch, numpy as np, torch
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pytorch.load_model(sys.argv[2])
import mnist_exp
digits = np.load(sys.argv[3])
model.eval()
model = model.to(torch.device("cpu"))
with torch.no_grad():
    predicted = model(torch.from_numpy(digits["images"])).argmax(1).numpy()
print(json.dumps({
    "class": type(model).__name__, "is_module": isinstance(model, torch.nn.Module), "code": mnist_exp.__file__,
    "parameters": sum(p.numel() for p in model.parameters()), "state_dict": len(model.state_dict()),
    "accuracy": float((predicted == digits["labels"]).mean()),
}))
"""


def uri(folder) -> str:
    return f"sqlite:///{folder}/mlflow.db"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, empty_store):
    """Two MLPs that differ in their learning rate only: (project folder, {lr: run})."""
    folder = tmp_path_factory.mktemp("finished-runs")
    shutil.copy(empty_store, folder / "mlflow.db")
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=basic",
        "model=mlp",
        "optimizer.lr=0.01,0.05",
        *SMALL,
        cwd=folder,
        timeout=300,
        env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"},
    )  # MLflow's own: these runs last ~2 s
    assert result.returncode == 0, result.stderr[-2000:]
    return folder, {run.data.params["optimizer.lr"]: run for run in job_runs(uri(folder))}


def test_the_model_loads_as_an_nn_module_without_this_repository(two_runs, sample_digits, tmp_path):
    folder, runs = two_runs
    run = runs["0.05"]
    test = sample_digits["test"]
    np.savez(tmp_path / "digits.npz", images=test.images[:100], labels=test.labels[:100])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    model_uri = f"runs:/{run.info.run_id}/mlp-none-sgd"
    digits = str(tmp_path / "digits.npz")
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_ALONE, uri(folder), model_uri, digits],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "PixelClassifier" and loaded["is_module"]
    assert not loaded["code"].startswith(str(REPO)) and "/code/mnist_exp/" in loaded["code"], "the model's own code"
    assert loaded["parameters"] == int(run.data.params["model.parameters"])
    assert loaded["state_dict"] == 6  # three Linear layers, weight and bias each
    assert loaded["accuracy"] == run.data.metrics["final_test_acc"]


def test_the_pyfunc_takes_one_image_flat_columns_and_floats_and_refuses_the_rest_in_one_line(two_runs):
    folder, runs = two_runs
    mlflow.set_tracking_uri(uri(folder))
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{runs['0.05'].info.run_id}/mlp-none-sgd")
    finally:
        mlflow.set_tracking_uri(None)
    pyfunc = model.metadata.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pytorch" and model.metadata.signature is None, "the flavour's own"
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    logits = model.predict(images)
    assert logits.shape == (3, 10) and logits.dtype == np.float32

    def same(other):  # float sums may group differently in another layout or batch: equal to ~1e-7
        np.testing.assert_allclose(np.asarray(other), logits, rtol=1e-5, atol=1e-6)

    same(np.concatenate([model.predict(image) for image in images]))  # one image at a time
    same(model.predict(images.reshape(3, 784)))
    same(model.predict(images.astype(np.int64)))  # JSON's integers
    same(model.predict(images / 255.0))
    same(model.predict(pd.DataFrame(images.reshape(3, 784) / 255.0)))  # a DataFrame reaches the model as float32

    for bad, got in (
        (images[:, :14], "got shape (3, 14, 28)"),
        (images * 1.0, "got float64 values from 0.0 to 255.0 (raw pixels as floats: divide them by 255)"),
        (pd.DataFrame(images.reshape(3, 784)), "got float32 values from 0.0 to 255.0 (raw pixels as floats: "),
        (images.astype(np.int64) - 1, "got int64 values from -1 to 254"),
        (np.array([[True] * 784]), "got bool values"),
    ):
        with pytest.raises(shipped.BadPixels) as refused:
            model.predict(bad)
        assert str(refused.value).startswith(f"{shipped.EXPECTED}; {got}")
        assert isinstance(refused.value, ValueError) and "\n" not in str(refused.value)
    assert "(N, 784)" in shipped.EXPECTED and "0-255" in shipped.EXPECTED


def test_the_served_model_answers_every_payload_mlflow_documents_and_refuses_in_one_line(two_runs):
    """The four JSON payloads of MLflow's scoring server, as docs/mlflow.md describes them, through a real
    `mlflow models serve`: each answers the pyfunc's logits for the same data; a wrong shape, our one line."""
    folder, runs = two_runs
    (logged,) = MlflowClient(uri(folder)).search_logged_models(
        [runs["0.05"].info.experiment_id], filter_string=f"source_run_id = '{runs['0.05'].info.run_id}'"
    )
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    columns = pd.DataFrame(images.reshape(3, 784) / 255)  # floats in [0, 1]: MLflow reads DataFrames as float32
    payloads = {
        "inputs": {"inputs": images.tolist()},
        "instances": {"instances": images.tolist()},
        "dataframe_split": {"dataframe_split": columns.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": columns.to_dict(orient="records")},
    }
    mlflow.set_tracking_uri(uri(folder))
    try:
        expected = mlflow.pyfunc.load_model(logged.model_uri).predict(images)
    finally:
        mlflow.set_tracking_uri(None)

    def post(url, payload):
        request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with model_server(logged.model_uri, folder, env={"MLFLOW_TRACKING_URI": uri(folder)}) as url:
        answers = {name: post(url, payload) for name, payload in payloads.items()}
        refused = post(url, {"inputs": images[:, :14].tolist()})

    for name, (status, body) in answers.items():
        assert status == 200, (name, body)
        predictions = pd.DataFrame(body["predictions"]).to_numpy()  # a DataFrame's rows come back as records
        np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    message = f"{shipped.EXPECTED}; got shape (3, 14, 28)"
    assert refused == (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": message})


def test_a_run_logs_the_machines_use_as_system_metrics(two_runs):
    _, runs = two_runs
    for run in runs.values():
        system = {key for key in run.data.metrics if key.startswith("system/")}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system


def test_diff_of_two_runs_prints_exactly_the_setting_that_differs(two_runs, tmp_path, monkeypatch, capsys):
    folder, runs = two_runs
    a, b = runs["0.01"], runs["0.05"]
    monkeypatch.chdir(folder)  # analyze.py in-process, from the folder the runs were trained in

    plots = str(tmp_path / "plots")
    assert (
        analyze_main()(["--tracking-uri", uri(folder), "--diff", a.info.run_id, b.info.run_name, "--plots", plots]) == 0
    )

    settings, metrics = capsys.readouterr().out.split("| final metric")
    rows = [line for line in settings.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert rows == ["| optimizer.lr | 0.01 | 0.05 |"]
    for key in ("final_test_acc", "final_test_loss", "train_time_s"):
        assert f"| {key} " in metrics
    assert f"{b.data.metrics['final_test_loss']:.6g}" in metrics
    assert (tmp_path / "plots" / "diff_curves.png").stat().st_size > 10_000

    selection = select_runs(uri(folder), "mnist-exp", "all")
    assert list(diff.find(selection, b.info.run_id[:8]).runs["run_id"]) == [b.info.run_id]
    with pytest.raises(AnalysisError, match="'mlp/none/sgd' names 2 variants that differ in other settings"):
        diff.find(selection, "mlp/none/sgd")  # a label is all seeds of one variant


def test_command_re_creates_the_run_to_the_last_digit(two_runs, monkeypatch, capsys):
    folder, runs = two_runs
    run = runs["0.01"]
    monkeypatch.chdir(folder)  # analyze.py in-process; the command it prints is run as a user runs it

    assert analyze_main()(["--tracking-uri", uri(folder), "--command", run.info.run_name]) == 0

    words = shlex.split(capsys.readouterr().out.strip())
    assert words[:2] == ["python", str(REPO / "train.py")]
    assert sorted(words[2:]) == sorted(["model=mlp", "optimizer.lr=0.01", *SMALL])
    again = run_script("train.py", *words[2:], "force=true", cwd=folder, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    (rerun,) = [r for r in job_runs(uri(folder)) if r.info.run_id not in {r.info.run_id for r in runs.values()}]
    client = MlflowClient(uri(folder))
    for key in ("final_test_acc", "final_test_loss", "train_loss", "train_eval_loss"):
        assert rerun.data.metrics[key] == run.data.metrics[key], key
    assert [m.value for m in client.get_metric_history(rerun.info.run_id, "test_loss")] == [
        m.value for m in client.get_metric_history(run.info.run_id, "test_loss")
    ]
