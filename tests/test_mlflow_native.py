"""MLflow the way its users expect it, end to end with the real train.py and analyze.py on real
digits and temporary sqlite stores: run identity that follows the data and code actually used,
MLflow's environment variables and context tags, datasets and loadable models, the sweep as the
UI shows it, and numbers that mean one thing."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import REPO, Hold, analyze_main, job_runs, run_script, sweep_runs
from mlflow.tracking import MlflowClient

from mnist_exp import job, record, tracking
from mnist_exp.stopping import JobSignals

pytestmark = pytest.mark.slow
SMALL = ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=1", "trainer.threads=1"]


def train(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_script("train.py", *args, cwd=cwd, timeout=300, env=env)


@pytest.fixture
def analyze(monkeypatch, capsys):
    """analyze(cwd, *args) -> (exit code, stdout, stderr): analyze.py in this process, as if run from `cwd`. No
    test here checks its process, and starting one costs ~7 s of imports. Give the store by its absolute URI: MLflow
    keeps a store per URI in the process, so sqlite:///mlflow.db would read the first folder's."""
    main = analyze_main()

    def _analyze(cwd: Path, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with monkeypatch.context() as scope:
            scope.chdir(cwd)
            try:
                code = main(list(args))
            finally:
                mlflow.set_tracking_uri(None)  # --register sets it for mlflow.register_model
        out, err = capsys.readouterr()
        return code, out, err

    return _analyze


def uri(folder: Path) -> str:
    return f"sqlite:///{folder}/mlflow.db"


# --- run identity follows the data and the code actually used ---


def test_a_run_on_the_offline_fallback_never_stands_in_for_one_on_real_data(project_dir, make_course_dataset, analyze):
    # data.root is a link: first to where nothing can be found or downloaded, later to the real digits.
    (project_dir / "blocker").write_text("a regular file: nothing can be created below it\n")
    link = project_dir / "mnist"
    link.symlink_to(project_dir / "blocker" / "mnist")
    command = [
        "-m",
        "data.root=mnist",
        "data.limit_train=300",
        "data.limit_test=100",
        "trainer.epochs=1",
        "trainer.threads=1",
    ]  # data.source=auto, the default

    offline = train(project_dir, *command)
    assert offline.returncode == 0, offline.stderr[-2000:]
    (sample_run,) = job_runs(uri(project_dir))
    assert sample_run.data.params["data.resolved_source"] == "sample" and record.FALLBACK in sample_run.data.tags

    link.unlink()
    make_course_dataset(project_dir / "course")
    link.symlink_to(project_dir / "course")
    with_data = train(project_dir, *command)
    assert "sweep summary: 1 finished, 0 skipped" in with_data.stdout, "the fallback run must not count as done"
    again = train(project_dir, *command)
    assert "sweep summary: 0 finished, 1 skipped" in again.stdout
    assert "already FINISHED on the same data" in again.stdout + again.stderr

    code, table, said = analyze(project_dir, "--tracking-uri", uri(project_dir), "--sweep", "all", "--format", "json")
    assert code == 0, said
    rows = {row["data"]: row for row in json.loads(table)}
    assert set(rows) == {"sample 300/100 (offline fallback)", "course 300/100"}, "never pooled across data"
    assert all(row["n"] == 1 for row in rows.values())
    assert "offline fallback sample" in said


# One small run read by the tests below: its code, context tags, dataset inputs and exact accuracies.
ONE_RUN = [*SMALL, "data.validation_size=50", "data.limit_test=250", "trainer.epochs=2", "mlflow.system_metrics=false"]


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, empty_store):
    folder = tmp_path_factory.mktemp("one-run")
    shutil.copy(empty_store, folder / "mlflow.db")
    result = train(folder, "-m", *ONE_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = job_runs(uri(folder))
    return folder, run


def test_every_run_records_its_code_and_a_skip_names_other_code(one_run, tmp_path):
    folder, run = one_run
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags[record.CODE_VERSION].startswith(commit[:12])

    project_dir = tmp_path / "project"  # a copy of the store, so the shared run keeps its tags
    shutil.copytree(folder, project_dir)
    MlflowClient(uri(project_dir)).set_tag(run.info.run_id, record.CODE_VERSION, "0123456789ab")
    skipped = train(project_dir, "-m", *ONE_RUN)
    assert "sweep summary: 0 finished, 1 skipped" in skipped.stdout
    assert f"trained by other code (0123456789ab; this is {commit[:12]}" in skipped.stdout + skipped.stderr


def test_a_store_written_since_per_image_answers_is_migrated_once_and_its_runs_keep_their_identity(
    project_dir, compose
):
    """Until issue 29 an MLP's hash left model.parity_with out at lenet5: the first connect re-tags such runs
    (record.migrate), so the same command finds its run again; a store older than that is refused in one line."""
    cfg = compose(["model=mlp"])
    data = {record.SOURCE: "sample", record.SPLIT_DIGEST["train"]: "a" * 64, record.SPLIT_DIGEST["test"]: "b" * 64}
    client = MlflowClient(uri(project_dir))
    experiment = client.create_experiment("mnist-exp", artifact_location=str(project_dir / "mlruns"))
    tags = {record.CONFIG_HASH: "221809fdeed03ffc"}  # what the code before issue 29 gave `model=mlp`
    run_id = client.create_run(experiment, tags=tags).info.run_id
    params = {**record.flat_params(cfg), **data}
    client.log_batch(run_id, params=[mlflow.entities.Param(key, value) for key, value in params.items()])
    client.set_terminated(run_id, "FINISHED")

    for _ in range(2):  # the second connect finds the experiment migrated
        client, experiment_id = tracking.connect(uri(project_dir), "mnist-exp")
        twins = tracking.runs_with_config(client, experiment_id, record.config_hash(record.flat_params(cfg)), data)
        assert [run.info.run_id for run in twins] == [run_id]
    assert client.get_experiment(experiment_id).tags[record.RECORD_VERSION[0]] == record.RECORD_VERSION[1]

    older = client.create_experiment("older", artifact_location=str(project_dir / "older"))
    run_id = client.create_run(older, tags={record.CONFIG_HASH: "221809fdeed03ffc"}).info.run_id
    client.log_batch(run_id, params=[mlflow.entities.Param("trainer.resolved_device", "cpu")])  # before 1edc110
    with pytest.raises(tracking.TrackingError, match="'older' holds 1 run.s. recorded by mnist-exp's first code"):
        tracking.connect(uri(project_dir), "older")


# --- MLflow's environment and context ---


def test_mlflow_environment_variables_choose_the_store_and_experiment(project_dir, empty_store, analyze, monkeypatch):
    other = project_dir / "elsewhere"
    other.mkdir()
    shutil.copy(empty_store, other / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": uri(other), "MLFLOW_EXPERIMENT_NAME": "from-env"}

    assert train(project_dir, "-m", *SMALL, env=env).returncode == 0
    assert train(project_dir, "-m", *SMALL, "mlflow.experiment=explicit", env=env).returncode == 0

    assert len(job_runs(uri(other), "from-env")) == 1
    assert len(job_runs(uri(other), "explicit")) == 1, "an explicit override still wins"
    assert job_runs(uri(project_dir)) == [], "nothing went to ./mlflow.db"
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    code, table, said = analyze(project_dir, "--format", "csv")
    assert code == 0 and len(table.strip().splitlines()) == 2, said


def test_runs_carry_mlflows_context_tags_and_where_they_ran(one_run):
    _, run = one_run
    tags = run.data.tags
    assert not [key for key in run.data.metrics if key.startswith("system/")], "system metrics turned off"

    assert tags["mlflow.source.name"] == str(REPO / "train.py") and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] == getpass.getuser()
    for key in ("python_version", "torch_version", "mlflow_version", "host", "device"):
        assert tags[record.PREFIX + key], key
    assert tags[record.PREFIX + "threads"] == "1"
    assert tags[record.PREFIX + "device"].startswith("cpu")


def test_mlflow_calls_in_user_code_land_in_the_jobs_run(compose, tmp_path, empty_store, monkeypatch):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    cfg = compose(
        [
            *SMALL,
            f"mlflow.tracking_uri={uri(tmp_path)}",
            f"trainer.checkpoint_dir={tmp_path}/checkpoints",
            f"data.cache_dir={tmp_path}/cache",
        ]
    )
    build_model = job.build_model

    def users_model(*args):  # what a user's own code might do while a job builds its model
        mlflow.log_param("user.note", "logged from user code")
        mlflow.log_metric("user.metric", 1.5)
        return build_model(*args)

    monkeypatch.setattr(job, "build_model", users_model)
    (tmp_path / "job").mkdir()
    try:
        outcome = job.run_job(cfg, None, tmp_path / "job", [], JobSignals())
    finally:
        mlflow.set_tracking_uri(None)

    client = MlflowClient(uri(tmp_path))
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in every_run] == [outcome.run_id], "no stray run"
    assert every_run[0].data.params["user.note"] == "logged from user code"
    assert every_run[0].data.metrics["user.metric"] == 1.5


# --- datasets and models, the MLflow way ---


def test_each_split_is_a_logged_dataset_input(one_run):
    _, run = one_run

    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    params = run.data.params
    for context, size in (("train", 250), ("validation", 50), ("test", 250)):
        dataset = inputs[context]
        assert dataset.name == f"mnist-10k-{context}"
        assert dataset.digest == params[f"data.{context}_sha256"][:16]
        assert json.loads(dataset.source)["uri"] == str(REPO / "data" / "mnist-10k")
        assert json.loads(dataset.profile)["features_shape"] == [size, 28, 28]


# A sweep of both models: the test below registers its models; the sweep-run test further on widens a copy.
SEQUENTIAL = ["hydra/launcher=basic", *SMALL]  # the sweep run is the callback's, whichever launcher runs the jobs


@pytest.fixture(scope="module")
def both_models(tmp_path_factory, empty_store) -> Path:
    folder = tmp_path_factory.mktemp("both-models")
    shutil.copy(empty_store, folder / "mlflow.db")
    result = train(folder, "-m", "model=lenet5,mlp", *SEQUENTIAL)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def test_the_model_is_a_logged_model_with_its_final_metrics_and_registers(both_models, analyze):
    project_dir = both_models
    runs = {r.data.params["model.name"]: r for r in job_runs(uri(project_dir))}

    client = MlflowClient(uri(project_dir))
    models = client.search_logged_models([runs["mlp"].info.experiment_id])
    assert {m.source_run_id for m in models} == {r.info.run_id for r in runs.values()}
    for model in models:
        run = client.get_run(model.source_run_id)
        linked = {m.key: m.value for m in model.metrics}
        assert linked["final_test_acc"] == run.data.metrics["final_test_acc"]
        assert linked["final_test_loss"] == run.data.metrics["final_test_loss"]
    mlflow.set_tracking_uri(uri(project_dir))
    try:
        info = mlflow.models.get_model_info(models[0].model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert set(info.flavors) == {"pytorch", "python_function"}, "MLflow's pytorch flavour"
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pytorch", "and its own pyfunc"
    assert info.signature is None and info.saved_input_example_info["type"] == "ndarray"  # see logged_model.log_model

    assert {m.name for m in models} == {"lenet5-none-sgd", "mlp-none-sgd"}, "named after the variant"

    code, registered, said = analyze(project_dir, "--tracking-uri", uri(project_dir), "--register", "mnist-best")
    assert code == 0, said
    best = max(runs.values(), key=lambda r: r.data.metrics["final_test_acc"])
    assert "models:/mnist-best/1" in registered
    version = client.get_model_version("mnist-best", "1")
    assert version.run_id == best.info.run_id
    assert version.tags["variant"] == best.data.tags[record.VARIANT]
    code, again, said = analyze(project_dir, "--tracking-uri", uri(project_dir), "--register", "mnist-best")
    assert code == 0, said
    assert f"already registered: the model of {best.data.tags[record.VARIANT]}" in again
    assert "models:/mnist-best/1" in again
    assert [str(v.version) for v in client.search_model_versions("name = 'mnist-best'")] == ["1"]
    code, _, said = analyze(
        project_dir, "--tracking-uri", uri(project_dir), "--register", "mnist-lenet5"
    )  # whichever is best: the name says LeNet-5
    assert code == 0, said
    assert client.get_model_version("mnist-lenet5", "1").run_id == runs["lenet5"].info.run_id


# --- the sweep as the UI shows it ---


def test_a_sweep_hydra_rejects_opens_no_sweep_run(project_dir):
    result = train(project_dir, "-m", "model=lenet,mlp", *SMALL)

    assert result.returncode != 0
    assert "Could not find 'model/lenet'" in result.stdout + result.stderr
    assert sweep_runs(uri(project_dir)) == [] and job_runs(uri(project_dir)) == []


def test_ctrl_c_closes_the_sweep_and_its_runs_killed_and_the_same_command_resumes(project_dir):
    command = [
        "-m",
        "model=lenet5",
        "data.source=sample",
        "data.limit_train=500",
        "data.limit_test=100",
        "trainer.epochs=2",
        "trainer.threads=1",
        f"hydra.sweep.dir={project_dir}/sweep",
    ]
    log = project_dir / "sweep.log"
    hold = Hold(project_dir / "hold", epoch=1)
    with open(log, "w") as out:  # its own process group, as a terminal's Ctrl-C reaches the whole group
        process = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *command],
            cwd=project_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **hold.env},
        )
    hold.wait(alive=process)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130, log.read_text()[-3000:]

    (parent,) = sweep_runs(uri(project_dir))
    (run,) = job_runs(uri(project_dir))
    assert (parent.info.status, run.info.status) == ("KILLED", "KILLED")
    (status_file,) = (project_dir / "sweep").rglob("job_status.json")
    status = json.loads(status_file.read_text())
    assert (status["status"], status["run_id"]) == ("killed", run.info.run_id)
    assert "Traceback" not in log.read_text()

    resumed = train(project_dir, *command)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {run.info.run_id} after epoch 1" in resumed.stdout + resumed.stderr
    (parent,) = sweep_runs(uri(project_dir))
    (run,) = job_runs(uri(project_dir))
    assert (parent.info.status, run.info.status) == ("FINISHED", "FINISHED")
    assert "traceback.txt" not in {a.path for a in MlflowClient(uri(project_dir)).list_artifacts(run.info.run_id)}
    assert record.ERROR not in run.data.tags


def test_the_sweep_run_lists_every_member_and_names_say_what_differs(both_models, tmp_path, analyze):
    project_dir = tmp_path / "project"  # a copy: the first sweep's store keeps its runs, both models at lr=0.01
    # (the new runs' artifacts land in its folder, where the experiment's artifact location points)
    shutil.copytree(both_models, project_dir)
    wider = train(project_dir, "-m", "optimizer.lr=0.01,0.02", "model=lenet5,mlp", *SEQUENTIAL)
    assert "sweep summary: 2 finished, 2 skipped" in wider.stdout
    assert "runs: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning" in wider.stdout

    runs = job_runs(uri(project_dir))
    assert sorted(r.info.run_name for r in runs) == [  # what differs in the sweep that trained each run
        "lenet5/none/sgd lr=0.02 seed=0",
        "lenet5/none/sgd seed=0",
        "mlp/none/sgd lr=0.02 seed=0",
        "mlp/none/sgd seed=0",
    ]
    assert not any(key.startswith(record.PREFIX + "sweep.") for r in runs for key in r.data.tags), (
        "membership must not add a tag column per sweep"
    )
    parent = next(p for p in sweep_runs(uri(project_dir)) if "optimizer.lr=0.01,0.02" in p.info.run_name)
    assert parent.info.run_name.startswith("sweep: model=lenet5,mlp optimizer.lr=0.01,0.02 (data.limit_test=100 ")
    description = parent.data.tags[record.NOTE]
    for run in runs:  # the two reused runs were trained by the first sweep, nested there, and listed here
        assert (
            f"[{run.info.run_name}](#/experiments/1/runs/{run.info.run_id}?workflowType=machine_learning)"
            in description
        )
    assert description.count("reused (already FINISHED)") == 2

    code, table, said = analyze(project_dir, "--tracking-uri", uri(project_dir), "--format", "csv")
    assert code == 0 and len(table.strip().splitlines()) == 1 + 4, "the latest sweep is all four runs"


# --- numbers that mean one thing ---


def test_accuracies_are_exact_fractions_everywhere_and_percent_columns_say_so(one_run, analyze):
    folder, run = one_run
    client = MlflowClient(uri(folder))
    sizes = {"test": 250, "train": 250}
    for key in ("test_acc", "train_acc"):
        for metric in client.get_metric_history(run.info.run_id, key):
            n = sizes[key.split("_")[0]]
            assert metric.value == round(metric.value * n) / n, (key, metric.value)  # correct / total, not float32
    for key, n in (("final_test_acc", 250), ("best_test_acc", 250), ("train_eval_acc", 250)):
        assert run.data.metrics[key] == round(run.data.metrics[key] * n) / n, key

    header = analyze(folder, "--tracking-uri", uri(folder), "--format", "csv")[1].splitlines()[0].split(",")
    assert {"acc_pct", "final_test_acc_pct", "best_test_acc_pct", "train_eval_acc_pct", "gap_pp"} <= set(header)
    assert not {"test_acc", "train_acc", "gap"} & set(header), "a bare metric name holds a fraction in MLflow"


def test_plus_experiment_gets_a_one_line_hint(project_dir):
    result = train(project_dir, "+experiment=course_grid")

    assert result.returncode != 0
    assert result.stderr.strip() == (
        "train.py: error: +experiment=course_grid: write experiment=course_grid without "
        "'+': the experiment group is already in conf/train.yaml's defaults, so it is "
        "chosen, not added"
    )


def test_a_search_without_a_validation_split_is_refused_before_any_run(project_dir):
    result = train(project_dir, "hparams_search=lenet5_optuna", "data.validation_size=0", *SMALL)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("train.py: error: ") and "data.validation_size" in lines[-1]
    assert job_runs(uri(project_dir)) == [] and sweep_runs(uri(project_dir)) == []
