"""MLflow: the store, a run's context and failures, the Model Registry, one trained run per identity (Claim)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import logging
import os
import platform
import shlex
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mnist_exp import credentials, record

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "train.py"
ARTIFACTS_FOLDER = "mlartifacts"  # a sqlite store's artifacts beside its file, as `mlflow server` keeps them
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}  # any of them: a store, or one being created

# Our commands print our lines: not MLflow's notes on creating tables, nor a progress bar per downloaded file.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names mlflow.tracking_uri and what to do."""


def connect(tracking_uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's ID, creating the store and the experiment if needed."""
    uri = credentials.redact(tracking_uri)
    if credentials.has_password(tracking_uri):  # train.py moves those of the command line; this one is from a file
        raise TrackingError(
            f"mlflow.tracking_uri={uri} holds a password, which every run would log: export "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead (for a database, its own "
            "password file, e.g. PostgreSQL's ~/.pgpass)"
        )
    check_store(tracking_uri)
    try:
        with _sqlite_creation_lock(tracking_uri) as path:
            client = MlflowClient(tracking_uri)
            found = client.get_experiment_by_name(experiment)
            if path:  # the registry's store checks the schema on first use too (claims live there)
                client.search_registered_models(max_results=1)
            if found is None:
                location = (path.parent / ARTIFACTS_FOLDER / record.model_name(experiment)).as_uri() if path else None
                tags = dict([record.EXPERIMENT_KIND, record.RECORD_VERSION])  # a new experiment: nothing to migrate
                with contextlib.suppress(MlflowException):  # another process created it first
                    client.create_experiment(experiment, location, tags=tags)
                found = client.get_experiment_by_name(experiment)
    except TrackingError:
        raise
    except Exception as error:  # MLflow surfaces store problems as many unrelated types (the lock: OSError)
        raise store_error(tracking_uri, error) from None
    if found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"mlflow.experiment={experiment} was deleted from {uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {found.experiment_id}` or pick another name"
        )
    if record.EXPERIMENT_KIND[0] not in found.tags:  # created by another tool, or before this tag existed
        client.set_experiment_tag(found.experiment_id, *record.EXPERIMENT_KIND)
    try:
        record.migrate(client, found)
    except record.RecordError as error:
        raise TrackingError(f"mlflow.tracking_uri={uri}: {error}") from None
    return client, found.experiment_id


def store_error(tracking_uri: str, error: Exception) -> TrackingError:
    """connect()'s one line for a store MLflow cannot use (analyze.py's too); never a password."""
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"MLFLOW_TRACKING_USERNAME={user}" if user else "no MLFLOW_TRACKING_USERNAME"
    server = f"the MLflow server at mlflow.tracking_uri={credentials.redact(tracking_uri)}"
    if "error code 403" in detail:
        return TrackingError(f"{server} refuses {who} (HTTP 403): ask its admin for permission on the experiment")
    if "error code 401" in detail:
        return TrackingError(
            f"{server} refused the credentials (HTTP 401, {who}): "
            "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an account on that server"
        )
    return TrackingError(
        credentials.redact(f"cannot use the MLflow store mlflow.tracking_uri={tracking_uri}: {detail}")
    )


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite store, absolute; None for any other store."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.startswith("sqlite:///:memory:"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]).absolute()


def check_store(tracking_uri: str, option: str = "mlflow.tracking_uri=") -> None:
    """Refuse in one line a bare path (MLflow's deprecated file store), a file not a store, a server not up."""
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive
        path = Path(tracking_uri.removeprefix("file://"))
        database = path if path.suffix in (".db", ".sqlite", ".sqlite3") else path / "mlflow.db"
        migrate = " (`mlflow migrate-filestore` copies its runs into one)" if (path / "0").is_dir() else ""
        raise TrackingError(
            f"{option}{tracking_uri} is a path, which MLflow reads as its deprecated file store: "
            f"give a sqlite store instead, {option}sqlite:///{database}{migrate}"
        )
    path = sqlite_path(tracking_uri)
    if path is not None and path.is_dir():
        raise TrackingError(
            f"{option}{tracking_uri}: {path} is a folder; give a file in it, {option}sqlite:///{path / 'mlflow.db'}"
        )
    if path is not None and (held := _not_a_store(path)):
        raise TrackingError(f"{option}{tracking_uri}: {path} {held}, not an MLflow store; give another file")


def _not_a_store(path: Path) -> str | None:
    """What the file `path` holds when it is not a sqlite MLflow store (None: a store, an empty file, nothing)."""
    head = b""  # missing, or unreadable: sqlite cannot open it either, and connect() says why
    with contextlib.suppress(OSError), open(path, "rb") as file:
        head = file.read(4096)
    if head and not head.startswith(b"SQLite format 3\x00"):  # an empty file is an empty database: MLflow fills it
        size = path.stat().st_size
        if b"\0" in head:
            return f"holds {size} bytes of binary data"
        first = (head.decode(errors="replace").strip().splitlines() or [""])[0]
        return f"holds text ({size} bytes: {first[:40]!r}{'...' * (len(first) > 40)})"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as database:
            tables = {row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:  # MLflow's own message says more
        return None
    if tables and not tables & MLFLOW_TABLES:
        return f"is a sqlite database of another program (tables: {', '.join(sorted(tables)[:5])})"
    return None


@contextlib.contextmanager
def _sqlite_creation_lock(tracking_uri: str):
    """A sqlite store's path, refused at once if unwritable (SQLAlchemy retries for minutes), locked (MLflow's schema
    creation races: 'table ... already exists'); None for another store."""
    path = sqlite_path(tracking_uri)
    if path is None:
        yield None
        return
    try:  # sqlite writes its journal beside the file, so the folder must take a file too
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
        probe = path.parent / f".{path.name}.write-test-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
        if path.exists():
            open(path, "r+b").close()
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError as error:
        raise TrackingError(
            f"cannot write the MLflow store mlflow.tracking_uri={tracking_uri}: {error.strerror} "
            f"({error.filename}); point it to a writable folder with free space"
        ) from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # a lock on the folder: nothing extra is left beside mlflow.db
        yield path
    finally:
        os.close(folder)


def check_server(tracking_uri: str) -> None:
    """Fail in seconds: MLflow's own client retries an unreachable server for minutes."""
    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5).close()
    except OSError as error:  # urllib's URLError too
        reason = getattr(error, "reason", error)
        where = f"the MLflow tracking server at mlflow.tracking_uri={tracking_uri} ({reason})"
        advice = "start it (see README, 'Scaling out') or leave mlflow.tracking_uri at its default"
        raise TrackingError(credentials.redact(f"cannot reach {where}; {advice}")) from None


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI, and for a store no server serves yet the `mlflow ui` to serve it."""
    uri = credentials.redact(tracking_uri)
    page = f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + page
    path = sqlite_path(tracking_uri)
    store = shlex.quote(f"sqlite:///{path}" if path else uri)
    return f"http://127.0.0.1:5000{page}  (serve it first: mlflow ui --backend-store-uri {store})"


# --- run identity ---


def runs_with_config(client: MlflowClient, experiment_id: str, hash_: str, data_params: dict[str, str]) -> list:
    """Runs of the same requested config that read the same data, or died before recording what they read."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{record.CONFIG_HASH}` = '{hash_}'")
    wanted = record.data_identity(data_params)
    return [r for r in runs if record.data_identity(r.data.params) == wanted or not r.data.params.get(record.SOURCE)]


@functools.cache
def code_version() -> tuple[str | None, str]:
    """(git commit or None, a readable version): the commit, '-dirty' when files differ from it."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(TRAIN_SCRIPT.parent), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit, commit[:12] + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an installed package), or no git
        return None, f"mnist-exp {metadata.version('mnist-exp')}"


def source_tags() -> dict[str, str]:
    """What MLflow's own start_run records about where a run came from."""
    commit, _ = code_version()
    tags = {record.SOURCE_NAME: str(TRAIN_SCRIPT), record.SOURCE_TYPE: "LOCAL", record.USER: getpass.getuser()}
    return {**tags, record.GIT_COMMIT: commit} if commit else tags


def context_tags(device, threads: int) -> dict[str, str]:
    """source_tags, the code version, and the machine the run ran on."""
    import torch

    return {
        **source_tags(),
        record.CODE_VERSION: code_version()[1],
        record.PYTHON_VERSION: platform.python_version(),
        record.TORCH_VERSION: torch.__version__,
        record.MLFLOW_VERSION: mlflow.__version__,
        record.HOST: socket.gethostname(),
        record.DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        record.THREADS: str(threads),
    }


def _cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo states it (platform.processor() is often empty)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    return f"cpu: {platform.processor() or platform.machine()}"


# --- what a job logs beyond params and metrics ---


def forget_failure(client: MlflowClient, run) -> None:
    """A resumed run must not keep the error and traceback of the attempt it continues, nor a pruner's stop."""
    for tag in (record.ERROR, record.PRUNED, record.SUPERSEDED_BY):
        if tag in run.data.tags:
            client.delete_tag(run.info.run_id, tag)
    if any(a.path == record.TRACEBACK_FILE for a in client.list_artifacts(run.info.run_id)):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(run.info.artifact_uri).delete_artifacts(record.TRACEBACK_FILE)


def register_model(tracking_uri: str, run_id: str, experiment_id: str, name: str, tags: dict) -> tuple[str, bool]:
    """Register the model a run logged as NAME: its models:/NAME/<version> URI, and whether that version is new."""
    mlflow.set_tracking_uri(tracking_uri)  # for mlflow.register_model
    try:
        client = MlflowClient(tracking_uri)
        (model,) = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
        for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            if version.source == model.model_uri:  # registered before
                return f"models:/{name}/{version.version}", False
        version = mlflow.register_model(model.model_uri, name, tags=tags)
    except (MlflowException, ValueError) as error:  # ValueError: the run logged no model (or several)
        raise TrackingError(
            f"--register {name}: cannot register the model of run {run_id} ({tags['variant']}): "
            f"{str(error).splitlines()[0]}"
        ) from None
    return f"models:/{name}/{version.version}", True


# --- one trained run per identity, whoever launches it (the protocol: docs/failures.md) ---

CLAIM_PREFIX = "mnist-exp.claim."
HEARTBEAT_S = 20  # how often a claim's holder says it is alive
LEASE_S = 180  # a holder on another host silent this long (by the waiter's own clock) is dead
POLL_S = 2
CLAIM_DESCRIPTION = "mnist-exp: this process is training this run identity (deleted when it finishes)"


class Claim:
    """The right to train one identity: a registered model (a unique name: taking it is atomic) with a heartbeat."""

    def __init__(self, client: MlflowClient, name: str):
        self.client, self.name = client, name
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    @classmethod
    def take(cls, client: MlflowClient, experiment_id: str, identity_key: str, on_wait) -> Claim:
        """Wait until this process holds the identity's claim; on_wait(holder tags) when it starts to wait."""
        prefix = f"{CLAIM_PREFIX}{experiment_id}.{identity_key}."
        seen: dict[int, tuple[str | None, float]] = {}  # generation -> (heartbeat, when we first saw it)
        while True:
            claims = _claims(client, prefix)
            newest = max(claims, default=None)
            new = newest not in seen  # _alive() notes a generation the first time it finds it alive
            if newest is not None and _alive(claims[newest], seen, newest):
                if new:
                    on_wait(claims[newest].tags)
                time.sleep(POLL_S)
                continue
            mine = 0 if newest is None else newest + 1
            name = f"{prefix}{mine}"
            holder = {"host": socket.gethostname(), "pid": str(os.getpid()), "heartbeat": str(time.time())}
            try:
                client.create_registered_model(name, tags=holder, description=CLAIM_DESCRIPTION)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                continue  # another launch took it first
            claims = _claims(client, prefix)
            if max(claims) > mine:  # we listed before a newer claim: it is not ours
                client.delete_registered_model(name)
                continue
            for older in (generation for generation in claims if generation < mine):
                with contextlib.suppress(MlflowException):  # another user's, on a shared server: harmless, just older
                    client.delete_registered_model(f"{prefix}{older}")
            return cls(client, name)

    def note_run(self, run_id: str, run_name: str) -> None:
        """Name the run being trained, so waiters can say which one they wait for."""
        self.client.set_registered_model_tag(self.name, "run", f"{run_id} ({run_name})")

    def release(self, finished: bool) -> None:
        self._stop.set()
        try:
            if finished:
                self.client.delete_registered_model(self.name)
            else:
                self.client.set_registered_model_tag(self.name, "released", "true")
        except Exception as error:  # the store may be what failed: the claim dies with this process anyway
            logging.getLogger(__name__).warning("could not release claim %s: %s", self.name, error)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a store hiccup: the next beat tries again, the lease allows several
                self.client.set_registered_model_tag(self.name, "heartbeat", str(time.time()))


def _claims(client: MlflowClient, prefix: str) -> dict[int, object]:
    found = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'")
    return {int(m.name[len(prefix) :]): m for m in found if m.name[len(prefix) :].isdigit()}


def _alive(model, seen: dict, generation: int) -> bool:
    """Whether a claim's holder may still be training: released and dead holders are not."""
    tags = model.tags
    gone = tags.get("host") == socket.gethostname() and not pid_alive(int(tags.get("pid", 0)))  # its pid, here
    if tags.get("released") == "true" or gone:  # a live pid (a reused worker) still needs a recent heartbeat
        return False
    beat = tags.get("heartbeat")  # None where the claim was deleted between listing it and reading its tags
    if generation not in seen or seen[generation][0] != beat:  # new, or it beat since: silence by our own clock
        seen[generation] = (beat, time.monotonic())
        return True
    return time.monotonic() - seen[generation][1] < LEASE_S


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs: a killed one its parent has not reaped yet (a zombie) does not."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:  # another user's process
        return True
    except (psutil.NoSuchProcess, ValueError):  # ValueError: a negative pid
        return False


def fail_orphaned_run(client: MlflowClient, pid: int, reason: str) -> tuple[str, str] | None:
    """Release a dead process's claim (this host) and close its run FAILED with `reason`: (run ID, name), or None."""
    for model in client.search_registered_models(filter_string=f"name LIKE '{CLAIM_PREFIX}%' AND tags.pid = '{pid}'"):
        tags = model.tags
        if tags.get("host") != socket.gethostname() or tags.get("pid") != str(pid) or tags.get("released") == "true":
            continue
        client.set_registered_model_tag(model.name, "released", "true")
        if "run" not in tags:
            return None
        run_id, _, name = tags["run"].partition(" ")
        client.set_tag(run_id, record.ERROR, reason)
        client.set_terminated(run_id, "FAILED")
        return run_id, name.strip("()")
    return None
