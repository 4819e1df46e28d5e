"""Credentials in a tracking URI: they authenticate against a real basic-auth MLflow server, and the
password appears in no output, file, param, tag or artifact."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import job_runs, mlflow_server, run_script
from mlflow.tracking import MlflowClient

from mnist_exp import credentials, tracking

USER, PASSWORD = "alice", "s3cret-Pa55word"  # the auth app wants 12 characters or more


# --- the helpers, on their own ---


def test_redact_hides_every_password_in_a_text_and_keeps_the_user():
    text = (
        "cannot reach http://alice:s3cret@127.0.0.1:5077 (refused); store "
        "postgresql+psycopg2://mlflow:p@ss@db:5432/mlflow, 'https://bob@host/x', sqlite:///mlflow.db"
    )

    assert credentials.redact(text) == (
        "cannot reach http://alice:***@127.0.0.1:5077 (refused); store "
        "postgresql+psycopg2://mlflow:***@db:5432/mlflow, 'https://bob@host/x', sqlite:///mlflow.db"
    )


def test_overrides_and_the_environment_lose_their_credentials_to_mlflows_variables(monkeypatch):
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://carol:pw1@mlflow.example:443/")

    args = credentials.move_out_of_overrides(
        ["-m", "model=mlp", "mlflow.tracking_uri='http://alice:p%40ss:w@127.0.0.1:5077'", "+x=http://a:b@c"]
    )

    assert args == ["-m", "model=mlp", "mlflow.tracking_uri='http://127.0.0.1:5077'", "+x=http://a:b@c"]
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:443/"
    # The command line's URI was moved last, so its credentials win; percent-escapes are undone.
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "p@ss:w")


def test_a_password_that_reaches_connect_from_a_config_file_is_refused_without_printing_it():
    with pytest.raises(tracking.TrackingError) as error:
        tracking.connect("postgresql+psycopg2://mlflow:pg-secret@127.0.0.1:9/mlflow", "mnist-exp")

    message = str(error.value)
    assert "pg-secret" not in message and "\n" not in message
    assert "mlflow:***@127.0.0.1" in message and "MLFLOW_TRACKING_PASSWORD" in message


# --- against a real server with HTTP basic auth, as deploy/tracking-server.sh runs it ---


@pytest.fixture(scope="module")
def server(tmp_path_factory, empty_store):
    """`mlflow server --app-name basic-auth` on 127.0.0.1 whose admin is alice; its folder holds its whole store."""
    folder = tmp_path_factory.mktemp("auth-server")
    shutil.copy(empty_store, folder / "store.db")  # its tracking store migrated already: ~6 s less to come up
    (folder / "auth.ini").write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder}/auth.db\n"
        f"admin_username = {USER}\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow's own cache of good credentials: without it every request re-hashes the password (scrypt,
        # ~0.1 s here) and the sweep took 79 s instead of 20; a wrong password is never cached
        "auth_cache_ttl_seconds = 600\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"}
    with mlflow_server(folder, "--app-name", "basic-auth", env=env) as (uri, process):
        yield {"port": int(uri.rsplit(":", 1)[1]), "folder": folder}
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # a worker that outlived SIGTERM
        os.killpg(process.pid, signal.SIGKILL)


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


def test_a_sweep_and_analyze_authenticate_with_the_uris_credentials_and_the_password_leaks_nowhere(
    server, project_dir, course_dataset, monkeypatch
):
    plain = f"http://127.0.0.1:{server['port']}"
    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:{server['port']}"

    # A one-job sweep (run in the launching process): Hydra writes multirun.yaml, a sweep run and its summary too.
    result = run_script(
        "train.py",
        "-m",
        "model=mlp",
        "trainer.epochs=1",
        f"data.root={course_dataset.root}",
        f"mlflow.tracking_uri={uri}",
        cwd=project_dir,
    )
    table = run_script("analyze.py", "--sweep", "all", "--tracking-uri", uri, "--format", "csv", cwd=project_dir)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 1 + 1, table.stderr[-2000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    runs = job_runs(plain)
    assert [r.info.status for r in runs] == ["FINISHED"], output[-3000:]
    assert {r.data.params["mlflow.tracking_uri"] for r in runs} == {plain}
    assert MlflowClient(plain).list_artifacts(runs[0].info.run_id, "hydra"), "Hydra's files were logged as artifacts"

    assert PASSWORD not in output + table.stdout + table.stderr
    assert files_holding(project_dir, PASSWORD) == []  # Hydra's config files, job logs, multirun.yaml
    # The server's store holds every param, tag, run name and description; its folder every artifact.
    assert files_holding(server["folder"] / "artifacts", PASSWORD) == []
    assert PASSWORD.encode() not in (server["folder"] / "store.db").read_bytes()


def test_a_wrong_password_in_the_uri_is_refused_in_one_line_without_it(server, monkeypatch):
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(variable, "")  # restored after the test: move_out_of_uri sets them
    uri = credentials.move_out_of_uri(f"http://{USER}:wrong-Pa55word-1@127.0.0.1:{server['port']}")

    with pytest.raises(tracking.TrackingError) as error:
        tracking.connect(uri, "mnist-exp")

    message = str(error.value)
    assert "wrong-Pa55word-1" not in message and "\n" not in message
    assert "refused the credentials (HTTP 401, MLFLOW_TRACKING_USERNAME=alice)" in message
