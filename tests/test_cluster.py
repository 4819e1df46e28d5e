"""Scale-out on real engines (`make test-cluster`, as root): a one-node SLURM cluster that runs
sweeps as array jobs through hydra-submitit-launcher, and an authenticated MLflow server on
PostgreSQL. Both are started by deploy/ scripts and stopped afterwards, and the tests check that
nothing of them is left running."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import REPO, Hold, job_runs, run_script
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cluster

SLURM = REPO / "deploy" / "local-slurm.sh"
SERVER = REPO / "deploy" / "tracking-server.sh"
SERVER_STATE = Path(os.environ.get("MNIST_EXP_TRACKING_STATE", "/var/lib/mnist-exp-tracking"))
PARTITION = os.environ.get("MNIST_EXP_SLURM_PARTITION", "local")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmstepd", "postgres")
SMALL = ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=2"]
# A job to stop half way (held there: conftest.Hold), with augmentation's random draws to restore on resume.
LONG = [
    "model=lenet5",
    "regularizer=augment",
    "data.source=sample",
    "data.limit_train=500",
    "data.limit_test=100",
    "trainer.epochs=4",
]
ON_SLURM = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}"]


def script(path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(path), *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{path.name} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def ours_running() -> list[str]:
    """Processes of either engine still alive: daemons, and mlflow servers started from this repository."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if name in DAEMONS or ("mlflow" in command and "server" in command and "basic-auth" in command):
            found.append(f"{entry.name} {command[:120]}")
    return found


@pytest.fixture(scope="module", autouse=True)
def engines():
    if os.geteuid() != 0:
        pytest.fail("make test-cluster needs root: it installs Debian packages and runs slurmd and PostgreSQL")
    script(SLURM, "start", timeout=900)
    script(SERVER, "start", timeout=900)
    yield
    script(SERVER, "stop")
    script(SLURM, "stop")
    deadline = time.monotonic() + 90
    while ours_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ours_running() == [], "the engines must leave nothing running"


@pytest.fixture(scope="module")
def server() -> dict[str, str]:
    """The authenticated server's address and the admin's credentials (read from its 0600 file)."""
    port = os.environ.get("MNIST_EXP_MLFLOW_PORT", "5055")
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": (SERVER_STATE / "admin-password").read_text().strip(),
    }


def experiment_name() -> str:
    """A fresh experiment per test: the server's database outlives the tests."""
    return f"cluster-{uuid.uuid4().hex[:10]}"


def client_of(server: dict[str, str]) -> MlflowClient:
    for key, value in server.items():
        os.environ[key] = value  # MLflow's client reads the credentials from the environment
    return MlflowClient(server["MLFLOW_TRACKING_URI"])


def train(cwd: Path, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_script("train.py", *args, cwd=cwd, env=env, timeout=timeout)


def metric_history(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    }


def slurm_job_ids(sweep_dir: Path) -> list[str]:
    """The SLURM job ids of a sweep's jobs (12 alone, 12_3 in an array), from submitit's <job>_<task>_log.out."""
    return sorted({p.name.rsplit("_", 2)[0] for p in sweep_dir.rglob("*_log.out")})


def launch(project_dir: Path, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *command],
        cwd=project_dir,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def signalled_at_epoch_2(project_dir: Path, command: list[str], signal: str) -> tuple[int, str]:
    """train.py `command` (a one-job SLURM sweep into project_dir/sweep), its job held after the checkpoint
    of epoch 2 and sent `signal` by scancel there: (train.py's exit code, its output)."""
    sweep_dir = project_dir / "sweep"
    hold = Hold(project_dir / "hold", epoch=2)  # the signal's handler ends the hold; a requeued job resumes at 3
    process = launch(project_dir, command, hold.env)
    hold.wait(alive=process)
    (job,) = slurm_job_ids(sweep_dir / ".submitit")
    subprocess.run(["scancel", f"--signal={signal}", job], check=True)
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


# --- SLURM ---


def test_a_sweep_runs_as_a_slurm_array_and_every_run_lands_in_mlflow(project_dir):
    sweep_dir = project_dir / "sweep"
    result = train(
        project_dir,
        "-m",
        *ON_SLURM,
        "model=lenet5,mlp",
        "regularizer=none,l2,dropout",
        *SMALL,
        f"hydra.sweep.dir={sweep_dir}",
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep summary: 6 finished, 0 skipped, 0 failed, 0 killed" in result.stdout
    runs = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    (array,) = {job_id.split("_")[0] for job_id in slurm_job_ids(sweep_dir / ".submitit")}
    deadline = time.monotonic() + 180  # a task writes its result just before it ends
    while True:  # they ran under slurmd, as one array job of 6 tasks
        states = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"], capture_output=True, text=True
        ).stdout.split()
        if len(states) == 6 and all(s.endswith("|COMPLETED") for s in states) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(states) == 6 and all(s.endswith("|COMPLETED") for s in states), states
    table = run_script("analyze.py", "--format", "csv", cwd=project_dir)
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 1 + 6, table.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, empty_store) -> dict[str, list]:
    """LONG trained without interruption, one thread as a one-CPU SLURM task has: the metrics to match."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "mlflow.db").write_bytes(empty_store.read_bytes())
    result = train(folder, *LONG, "trainer.threads=1")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = job_runs(f"sqlite:///{folder}/mlflow.db")
    return metric_history(MlflowClient(f"sqlite:///{folder}/mlflow.db"), run)


def test_a_preempted_job_is_requeued_and_resumes_to_the_same_metrics(project_dir, reference):
    # USR2 is submitit's preemption signal: it requeues the job (timeout_min above 10 minutes makes
    # the signal a preemption, not a time-out) and the requeued job resumes from its checkpoint.
    sweep_dir = project_dir / "sweep"
    returncode, output = signalled_at_epoch_2(
        project_dir, ["-m", *ON_SLURM, *LONG, "hydra.launcher.timeout_min=30", f"hydra.sweep.dir={sweep_dir}"], "USR2"
    )

    assert returncode == 0, output[-3000:]
    assert "sweep summary: 1 finished" in output
    (run,) = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert run.info.status == "FINISHED"
    logs = "".join(p.read_text(errors="replace") for p in sweep_dir.rglob("*.log"))
    assert f"resuming run {run.info.run_id} after epoch" in logs
    assert metric_history(MlflowClient(f"sqlite:///{project_dir}/mlflow.db"), run) == reference


def test_scancel_term_closes_the_run_killed_and_the_same_command_resumes_it(project_dir, reference):
    command = ["-m", *ON_SLURM, *LONG, f"hydra.sweep.dir={project_dir / 'sweep'}"]
    returncode, output = signalled_at_epoch_2(project_dir, command, "TERM")

    assert returncode == 1, output[-3000:]
    assert "sweep summary: 0 finished, 0 skipped, 0 failed, 1 killed" in output
    (run,) = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert run.info.status == "KILLED"

    again = train(project_dir, *command)
    assert again.returncode == 0, again.stdout[-3000:]
    (resumed,) = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert (resumed.info.run_id, resumed.info.status) == (run.info.run_id, "FINISHED")
    assert metric_history(MlflowClient(f"sqlite:///{project_dir}/mlflow.db"), resumed) == reference


def test_a_job_over_its_time_limit_is_recorded_and_resumable(project_dir):
    # SLURM sends the time-out signal (USR2) signal_delay_s before the limit, or up to 60 s earlier
    # (its event resolution): with a 3-minute limit and 60 s, 60-120 s in. The job is held after its first
    # checkpoint from seconds in until then: it cannot finish first on any machine, nor be caught without one.
    sweep_dir = project_dir / "sweep"
    hold = Hold(project_dir / "hold", epoch=1)
    result = train(
        project_dir,
        "-m",
        *ON_SLURM,
        *SMALL,
        "hydra.launcher.timeout_min=3",
        "hydra.launcher.signal_delay_s=60",
        f"hydra.sweep.dir={sweep_dir}",
        env=hold.env,
    )

    assert result.returncode == 1, result.stdout[-3000:]
    assert "sweep summary: 0 finished, 0 skipped, 0 failed, 1 killed" in result.stdout
    (run,) = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert run.info.status == "KILLED"
    assert "hydra.launcher.timeout_min" in run.data.tags["mnist_exp.error"]
    assert list((project_dir / "checkpoints").glob("*.pt")), "its progress is kept for the next attempt"


# --- the tracking server: PostgreSQL, basic auth ---


def request(url: str, user: str | None = None, password: str | None = None, body: dict | None = None) -> int:
    """The HTTP status of a request to the server, optionally with HTTP basic auth."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_unauthenticated_and_wrong_password_requests_are_refused_and_create_nothing(server):
    base = server["MLFLOW_TRACKING_URI"]
    name = experiment_name()
    create = f"{base}/api/2.0/mlflow/experiments/create"

    assert request(create, body={"name": name}) == 401
    assert request(create, "admin", "not-the-password", body={"name": name}) == 401
    assert request(f"{base}/api/2.0/mlflow/experiments/search?max_results=10") == 401
    assert client_of(server).get_experiment_by_name(name) is None, "a refused request created nothing"


def test_train_and_analyze_authenticate_and_a_wrong_password_fails_before_any_job(project_dir, server):
    name = experiment_name()
    good = {**server, "MLFLOW_EXPERIMENT_NAME": name}
    result = train(project_dir, "-m", "model=lenet5,mlp", *SMALL, env=good)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = run_script("analyze.py", "--format", "csv", cwd=project_dir, env=good)
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 1 + 2, table.stderr

    wrong = {**good, "MLFLOW_TRACKING_PASSWORD": "wrong-password-123"}
    refused = train(project_dir, "-m", "model=lenet5,mlp", *SMALL, env=wrong)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("train.py: error: ") and "MLFLOW_TRACKING_PASSWORD" in line and "401" in line
    assert "wrong-password-123" not in refused.stdout + refused.stderr
    client = client_of(server)
    experiment = client.get_experiment_by_name(name)
    assert len(client.search_runs([experiment.experiment_id])) == 1 + 2, "the refused sweep added no run"

    # The secret is nowhere a user or a later reader could see it.
    password = server["MLFLOW_TRACKING_PASSWORD"]
    for run in client.search_runs([experiment.experiment_id]):
        assert password not in json.dumps({**run.data.params, **run.data.tags})
    for log in project_dir.rglob("*.log"):
        assert password not in log.read_text(errors="replace"), log
    assert password not in (SERVER_STATE / "mlflow.log").read_text(errors="replace")


def test_eight_concurrent_jobs_lose_and_duplicate_nothing(tmp_path, server):
    name = experiment_name()
    env = {**server, "MLFLOW_EXPERIMENT_NAME": name}
    folders = {kind: tmp_path / kind for kind in ("joblib", "slurm")}
    commands = {
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "trainer.threads=1"],
        "slurm": ON_SLURM,
    }
    processes = {}
    for kind, folder in folders.items():
        folder.mkdir()
        processes[kind] = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "train.py"),
                "-m",
                *commands[kind],
                "model=lenet5,mlp",
                "regularizer=none,l2",
                f"trainer.seed={0 if kind == 'joblib' else 1}",
                *SMALL,
            ],
            cwd=folder,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for kind, process in processes.items():
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"{kind}:\n{output[-3000:]}"
        assert "sweep summary: 4 finished" in output

    client = client_of(server)
    experiment = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mnist_exp.role") != "sweep"]
    assert len(runs) == 8 and len({r.info.run_name for r in runs}) == 8, "no run lost, none twice"
    for run in runs:
        assert run.info.status == "FINISHED"
        for key, history in metric_history(client, run).items():
            assert [step for step, _ in history] == [1, 2], (run.info.run_name, key)
        assert {"config.yaml", "history.csv", "learning_curves.png"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)
        }
    assert len(client.search_logged_models([experiment.experiment_id])) == 8
    table = run_script("analyze.py", "--sweep", "all", "--format", "json", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    assert sorted(row["n"] for row in json.loads(table.stdout)) == [2, 2, 2, 2], "4 variants, the seeds of both sweeps"


def test_a_server_restart_mid_sweep_loses_and_duplicates_nothing(project_dir, server):
    name = experiment_name()
    env = {**server, "MLFLOW_EXPERIMENT_NAME": name}
    command = ["-m", "model=lenet5,mlp", "trainer.seed=0,1", *LONG[1:], f"hydra.sweep.dir={project_dir}/sweep"]
    hold = Hold(project_dir / "hold", epoch=1)  # the server restarts while two jobs are half done
    process = launch(project_dir, command, {**env, **hold.env})
    hold.wait(processes=2, alive=process)
    script(SERVER, "restart-mlflow")
    hold.release()
    output, _ = process.communicate(timeout=900)
    if process.returncode != 0:  # a job that gave up closed its run FAILED: the same command resumes it
        again = train(project_dir, *command, env=env)
        assert again.returncode == 0, again.stdout[-3000:]

    client = client_of(server)
    experiment = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mnist_exp.role") != "sweep"]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 4 and len({r.info.run_name for r in finished}) == 4, [r.info.run_name for r in runs]
    for run in finished:
        for key, history in metric_history(client, run).items():
            assert [step for step, _ in history] == list(range(1, 5)), (run.info.run_name, key)


def test_two_sweeps_sharing_a_variant_train_it_once_on_the_server(tmp_path, server):
    from mnist_exp.sweep import sweep_members

    env = {**server, "MLFLOW_EXPERIMENT_NAME": experiment_name()}
    command = [sys.executable, str(REPO / "train.py"), "-m", "model=mlp", "hydra.launcher.workers=1", *SMALL]
    processes = [
        subprocess.Popen(
            [*command, regularizers],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for regularizers in ("regularizer=l2,none", "regularizer=l2,dropout")
    ]
    for process in processes:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-3000:]

    client = client_of(server)
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mnist_exp.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("mnist_exp.role") != "sweep"]
    assert sorted(r.data.tags["mnist_exp.variant"] for r in jobs) == ["mlp/dropout/sgd", "mlp/l2/sgd", "mlp/none/sgd"]
    assert {r.info.status for r in jobs} == {"FINISHED"} and not any("mnist_exp.error" in r.data.tags for r in jobs)
    (l2,) = [r.info.run_id for r in jobs if r.data.tags["mnist_exp.variant"] == "mlp/l2/sgd"]
    assert len(parents) == 2
    for parent in parents:
        assert l2 in sweep_members(client, parent.info.run_id) and len(sweep_members(client, parent.info.run_id)) == 2


def test_two_identical_searches_on_two_machines_share_one_study_in_postgresql(tmp_path, server):
    import optuna

    name = experiment_name()
    env = {**server, "MLFLOW_EXPERIMENT_NAME": name, "PGPASSFILE": str(SERVER_STATE / "pgpass")}
    storage = f"postgresql+psycopg2://mlflow@127.0.0.1:{os.environ.get('MNIST_EXP_PG_PORT', '5433')}/optuna"
    command = [
        "-m",
        "hparams_search=lenet5_optuna",
        "hydra/launcher=basic",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/pruner=none",
        "data.validation_size=100",
        "trainer.threads=1",
        *SMALL,
    ]
    hold = Hold(tmp_path / "hold", epoch=1)  # both held in a trial of their own: the launches overlap for sure
    processes = []
    for machine in ("a", "b"):  # two launch folders: no checkpoint, output or sqlite file in common
        (tmp_path / machine).mkdir()
        processes.append(launch(tmp_path / machine, command, {**env, **hold.env}))
    try:
        hold.wait(processes=2)
    finally:
        hold.release()
    for process in processes:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0 and "Traceback" not in output, output[-3000:]

    os.environ["PGPASSFILE"] = env["PGPASSFILE"]
    (summary,) = [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(f"{name}/")]
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, "no live trial failed by the other launch, none extra"
    client = client_of(server)
    experiment = client.get_experiment_by_name(name)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mnist_exp.role") != "sweep"]
    assert sorted(r.data.tags["mnist_exp.trial"] for r in runs) == ["0", "1", "2", "3"], "one run per trial"
    assert {r.info.status for r in runs} == {"FINISHED"}
