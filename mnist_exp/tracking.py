"""MLflow: the store, a run's identity and context, its datasets and model, the sweep's parent run.

A job's run is MLflow's active run while the job trains (mlflow.start_run), so MLflow's fluent
calls, ours and any in user code, land in it; runs are looked up and closed by ID through
MlflowClient, so a run can be resumed, skipped or failed from anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist_exp import credentials

PREFIX = "mnist_exp."
CONFIG_HASH = PREFIX + "config_hash"  # the requested settings: with the same data, the same run
VARIANT_HASH = PREFIX + "variant_hash"  # config hash without the seed: groups the seeds of a variant
VARIANT = PREFIX + "variant"  # readable model/regularizer/optimizer
CODE_VERSION = PREFIX + "code_version"
ERROR = PREFIX + "error"
FALLBACK = PREFIX + "data_fallback"
ROLE = PREFIX + "role"  # "sweep" on a sweep's parent run
SWEEP_KEY = PREFIX + "sweep_key"
LAST_LAUNCH = PREFIX + "last_launch"
EXTENDS = PREFIX + "extends"  # on a sweep's parent run: the key of the sweep it adds runs to (mlflow.extends)
LAUNCHER = PREFIX + "launcher"  # "host pid" of the process running a sweep
TRIAL = PREFIX + "trial"  # the Optuna trial number, on a search trial's run
PRUNED = PREFIX + "pruned"  # why a search stopped the run early, on a pruned trial's (FINISHED) run
SUPERSEDED_BY = PREFIX + "superseded_by"  # on a pruned run: the full run of its config trained later
BEST_TRIAL = PREFIX + "best_trial"  # on a search's sweep run: the best trial's number,
BEST_PARAMS = PREFIX + "best_params"  # its params (JSON)
BEST_VALUE = "best_value"  # and its value (a metric)
STUDY = PREFIX + "optuna_study"  # and the Optuna study's name
PARENT = "mlflow.parentRunId"  # what nests child runs under their sweep in `mlflow ui`
NOTE = "mlflow.note.content"  # a run's description in `mlflow ui`
MEAN_USED, STD_USED = "data.mean_used", "data.std_used"  # params: the normalization (data.mean/std null: computed)
CONFIRMATION = PREFIX + "confirmation"  # on a search's sweep run: {"recipe": [run IDs], "plain": [run IDs]}
# MLflow 3's UI opens experiments of other kinds in its GenAI view, where training runs do not show.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")

# Keys that change where or how fast a run goes, not what it computes.
NOT_IDENTITY = ("mlflow.", "force", "trainer.threads", "trainer.checkpoint_dir", "data.cache_dir")
# Settings added after runs were recorded with this code: at these values they hash as if absent,
# so those runs keep their identity (and are skipped, not trained again). model.parity_with: since b0d2687
# (2026-11-26); every MLP run's hash leaves it out since then, so it stays until identities are migrated
# (a new hash re-tagged on stored runs; tests/test_config.py's golden hashes change with it).
# regularizer.augment.shear: likewise, for every augment run recorded before it.
ADDED_LATER = {"model.parity_with": "lenet5", "regularizer.augment.shear": "0.0"}
# What the resolved data adds to a run's identity: the same request may read other digits later.
SPLIT_DIGEST = {"train": "data.train_sha256", "test": "data.test_sha256", "validation": "data.validation_sha256"}
DATA_IDENTITY = ("data.resolved_source", *SPLIT_DIGEST.values())
# The delivered model's answer per image of each split it scores at its end (mnist_exp/predictions.py).
PREDICTIONS = {"test": "predictions/test.npz", "validation": "predictions/validation.npz"}
TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "train.py"
SERVER_TIMEOUT_S = 5
# A sqlite store's artifacts live beside its file, in a folder named as `mlflow server` names its own
# (./mlartifacts, beside its ./mlflow.db), one subfolder per experiment: one store, one folder. MLflow's
# default, ./mlruns of whichever folder a process runs in, mixes the files of every store launched there.
ARTIFACTS_FOLDER = "mlartifacts"
SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs"}  # any of them: a store, or one being created

# Our commands print our lines: not MLflow's notes on creating a store's tables, nor a progress bar per
# downloaded file (MLflow reads the variable at each download).
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names mlflow.tracking_uri and what to do."""


def connect(tracking_uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's ID, creating the store and the experiment if needed."""
    if credentials.has_password(tracking_uri):  # train.py moves those of the command line; this one is from a file
        raise TrackingError(
            f"mlflow.tracking_uri={credentials.redact(tracking_uri)} holds a password, which every run would log: "
            "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead (for a database, its own "
            "password file, e.g. PostgreSQL's ~/.pgpass)"
        )
    check_store(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
    try:
        with _sqlite_creation_lock(tracking_uri) as sqlite:
            client = MlflowClient(tracking_uri)
            found = client.get_experiment_by_name(experiment)
            if sqlite:  # the registry's store checks the schema on first use too (claims live there)
                client.search_registered_models(max_results=1)
        if found is None:
            try:
                location = artifact_location(tracking_uri, experiment)
                experiment_id = client.create_experiment(experiment, location, tags=dict([EXPERIMENT_KIND]))
                return client, experiment_id
            except MlflowException:  # another process created it first
                found = client.get_experiment_by_name(experiment)
    except TrackingError:
        raise
    except Exception as error:  # MLflow surfaces store problems as many unrelated types
        raise store_error(tracking_uri, error) from None
    if found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"mlflow.experiment={experiment} was deleted from {credentials.redact(tracking_uri)}; restore it with "
            f"`mlflow experiments restore --experiment-id {found.experiment_id}` or pick another name"
        )
    if EXPERIMENT_KIND[0] not in found.tags:  # created by another tool, or before this tag existed
        client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
    return client, found.experiment_id


def store_error(tracking_uri: str, error: Exception) -> TrackingError:
    """connect()'s one line for a store MLflow cannot use (analyze.py's too); never a password."""
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "error code 401" in detail or "error code 403" in detail:
        return TrackingError(_refused(tracking_uri, detail))
    return TrackingError(
        credentials.redact(f"cannot use the MLflow store mlflow.tracking_uri={tracking_uri}: {detail}")
    )


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a sqlite store, absolute; None for any other store."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.startswith("sqlite:///:memory:"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]).absolute()


def check_store(tracking_uri: str, option: str = "mlflow.tracking_uri=") -> None:
    """Refuse in one line what MLflow would misuse: a bare path (its deprecated file store) and a file that
    is not a sqlite store (MLflow would write its tables into another program's database, or fail at length).
    `option` is how the user gave the URI: 'mlflow.tracking_uri=' or '--tracking-uri '."""
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
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except FileNotFoundError:
        return None
    except OSError:  # unreadable: connect() says so, naming the cause
        return None
    if not head:
        return None  # an empty file is an empty database: MLflow creates its tables there
    if not head.startswith(SQLITE_HEADER):
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


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its runs' files: <database folder>/mlartifacts/<experiment> for a sqlite
    store (ARTIFACTS_FOLDER); None elsewhere (a server has its own artifact root)."""
    path = sqlite_path(tracking_uri)
    return (path.parent / ARTIFACTS_FOLDER / model_name(experiment)).as_uri() if path else None


@contextlib.contextmanager
def _sqlite_creation_lock(tracking_uri: str):
    """For a sqlite store: refuse an unwritable one at once (SQLAlchemy would retry it for minutes), and
    let one process at a time create its schema (MLflow's creation races: 'table ... already exists')."""
    path = sqlite_path(tracking_uri)
    if path is None:
        yield False
        return
    try:  # sqlite writes its journal beside the file, so the folder must take a file too
        path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow would
        probe = path.parent / f".{path.name}.write-test-{os.getpid()}"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
        if path.exists():
            with open(path, "r+b"):
                pass
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError as error:
        raise TrackingError(
            f"cannot write the MLflow store mlflow.tracking_uri={tracking_uri}: {error.strerror} "
            f"({error.filename}); point it to a writable folder with free space"
        ) from None
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # a lock on the folder: nothing extra is left beside mlflow.db
        yield True
    finally:
        os.close(folder)


def check_server(tracking_uri: str) -> None:
    """Fail in seconds: MLflow's own client retries an unreachable server for minutes."""
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            credentials.redact(
                f"cannot reach the MLflow tracking server at mlflow.tracking_uri={tracking_uri} ({reason}); "
                "start it (see README, 'Scaling out') or leave mlflow.tracking_uri at its default"
            )
        ) from None


def _refused(tracking_uri: str, detail: str) -> str:
    """The server's answer to bad credentials, in one line that names the user, never the password."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"MLFLOW_TRACKING_USERNAME={user}" if user else "no MLFLOW_TRACKING_USERNAME"
    tracking_uri = credentials.redact(tracking_uri)
    if "error code 403" in detail:
        return (
            f"the MLflow server at mlflow.tracking_uri={tracking_uri} refuses {who} (HTTP 403): "
            "ask its admin for permission on the experiment"
        )
    return (
        f"the MLflow server at mlflow.tracking_uri={tracking_uri} refused the credentials (HTTP 401, {who}): "
        "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an account on that server"
    )


def ui_url(tracking_uri: str, experiment_id: str) -> str:
    """The runs table of the experiment in MLflow's 'Model training' view."""
    tracking_uri = credentials.redact(tracking_uri)
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """ui_url, and for a store no server serves yet the `mlflow ui` command that serves exactly it."""
    url = ui_url(tracking_uri, experiment_id)
    if tracking_uri.startswith(("http://", "https://")):
        return url
    path = sqlite_path(tracking_uri)
    store = f"sqlite:///{path}" if path else credentials.redact(tracking_uri)
    return f"{url}  (serve it first: mlflow ui --backend-store-uri {shlex.quote(store)})"


# --- run identity ---


def flat_params(cfg) -> dict[str, str]:
    """The resolved config as MLflow params: {"optimizer.lr": "0.01", ...}; without Hydra's `_target_`,
    `_partial_` (how the option is built: its `name` says which), so they leave runs' identity as it was."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not (key.startswith("_") and key.endswith("_")):
                    walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def identity(params: dict[str, str], ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """The params that say what a run computes: without NOT_IDENTITY and the key prefixes in `ignore`,
    and without a setting added later while it holds the value runs recorded before it had."""
    return {
        key: value
        for key, value in params.items()
        if not key.startswith(NOT_IDENTITY + ignore) and ADDED_LATER.get(key) != value
    }


def config_hash(params: dict[str, str], ignore: tuple[str, ...] = ()) -> str:
    return hashlib.sha256(json.dumps(identity(params, ignore), sort_keys=True).encode()).hexdigest()[:16]


def data_identity(data_params: dict[str, str]) -> dict[str, str]:
    return {key: data_params.get(key, "") for key in DATA_IDENTITY}


def runs_with_config(client: MlflowClient, experiment_id: str, hash_: str, data_params: dict[str, str]) -> list:
    """Runs of the same requested config that read the same data, or died before recording what they read."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{CONFIG_HASH}` = '{hash_}'")
    wanted = data_identity(data_params)
    return [
        run for run in runs if data_identity(run.data.params) == wanted or not run.data.params.get(DATA_IDENTITY[0])
    ]


@functools.cache
def code_version() -> tuple[str | None, str]:
    """(git commit or None, a readable version): the commit, '-dirty' when files differ from it."""
    repo = TRAIN_SCRIPT.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return commit, commit[:12] + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an installed package), or no git
        return None, f"mnist-exp {metadata.version('mnist-exp')}"


def source_tags() -> dict[str, str]:
    """What MLflow's own start_run records about where a run came from."""
    commit, _ = code_version()
    tags = {"mlflow.source.name": str(TRAIN_SCRIPT), "mlflow.source.type": "LOCAL", "mlflow.user": getpass.getuser()}
    return {**tags, "mlflow.source.git.commit": commit} if commit else tags


def context_tags(device, threads: int) -> dict[str, str]:
    """source_tags, the code version, and the machine the run ran on."""
    import torch

    return {
        **source_tags(),
        CODE_VERSION: code_version()[1],
        PREFIX + "python_version": platform.python_version(),
        PREFIX + "torch_version": torch.__version__,
        PREFIX + "mlflow_version": mlflow.__version__,
        PREFIX + "host": socket.gethostname(),
        PREFIX + "device": _device_name(device),
        PREFIX + "threads": str(threads),
    }


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # the CPU's model name, as /proc/cpuinfo states it (platform.processor() is often empty)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


# --- what a job logs beyond params and metrics ---


def record_failure(client: MlflowClient, run_id: str, message: str, traceback_file: Path) -> None:
    """Tag the error and attach the traceback; the caller closes the run as FAILED or KILLED."""
    client.set_tag(run_id, ERROR, " ".join(message.split())[:5000])
    client.log_artifact(run_id, str(traceback_file))


def forget_failure(client: MlflowClient, run) -> None:
    """A resumed run must not keep the error and traceback of the attempt it continues, nor a pruner's stop."""
    for tag in (ERROR, PRUNED, SUPERSEDED_BY):
        if tag in run.data.tags:
            client.delete_tag(run.info.run_id, tag)
    if any(a.path == "traceback.txt" for a in client.list_artifacts(run.info.run_id)):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(run.info.artifact_uri).delete_artifacts("traceback.txt")


def datasets(data) -> dict:
    """Each split as an MLflow dataset (name, digest, source, size), by context: train, validation, test."""
    import mlflow.data

    datasets = {}
    for context, split in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if split is None:
            continue
        with warnings.catch_warnings():  # MLflow registers two equivalent sources for local paths and says so
            warnings.simplefilter("ignore", UserWarning)
            datasets[context] = mlflow.data.from_numpy(
                split.images.numpy(),
                targets=split.labels.numpy(),
                source=data.url or data.location,
                name=f"{data.name}-{context}",
                digest=split.sha256[:16],  # MLflow stores at most 36 characters
            )
    return datasets


def log_datasets(datasets: dict) -> None:
    """As inputs of the active run, so the runs table's Dataset column and run.inputs show them."""
    for attempt in range(3):
        try:
            mlflow.log_inputs(list(datasets.values()), contexts=list(datasets), tags_list=[None] * len(datasets))
            return
        except Exception as error:  # parallel jobs adding the same new dataset race on its unique row;
            if attempt == 2 or "unique" not in str(error).lower():  # the retry finds the row the other wrote
                raise
            time.sleep(0.1 * (attempt + 1))


def model_name(variant: str) -> str:
    """A logged model's name: its variant, without the characters MLflow's model names refuse."""
    return re.sub(r"[/:.%\"']", "-", variant)


def log_model(classifier, example, variant: str):
    """The trained network as an MLflow model named after its variant, with MLflow's pytorch flavour.

    mlflow.pytorch.load_model gives back the PixelClassifier itself (eval, to, parameters,
    state_dict, fine-tuning), pickled with the two modules it needs (models.py, shipped.py) as
    code_paths, so it loads where this repository is not installed. Its pyfunc is the flavour's
    own: an array or DataFrame goes to PixelClassifier as a tensor, which takes one image, a batch,
    or a batch of 784 columns, integer pixels or floats in [0, 1], and refuses the rest in one line.
    No signature: MLflow would enforce one dtype and shape before the model sees the input,
    refusing DataFrames (dataframe_split, dataframe_records) or raw pixels. Requirements are given,
    not inferred: inference would load the model again in a subprocess.
    """
    import mlflow.pytorch
    import torch

    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning that pickles run code: this model's code ships with it
    try:
        return mlflow.pytorch.log_model(
            classifier,
            name=model_name(variant),
            code_paths=[str(Path(_shipped_code().name) / "mnist_exp")],
            serialization_format="pickle",
            signature=False,
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        quiet.setLevel(level)


@functools.cache
def _shipped_code():
    """A temporary folder (removed at exit) holding mnist_exp/{__init__,models,shipped}.py."""
    import tempfile

    folder = tempfile.TemporaryDirectory(prefix="mnist-exp-shipped-")
    package = Path(folder.name) / "mnist_exp"
    package.mkdir()
    for name in ("__init__.py", "models.py", "shipped.py"):
        (package / name).write_bytes((TRAIN_SCRIPT.parent / "mnist_exp" / name).read_bytes())
    return folder


# --- one trained run per identity, whoever launches it ---

CLAIM_PREFIX = "mnist-exp.claim."
HEARTBEAT_S = 20  # how often a claim's holder says it is alive
LEASE_S = 180  # a holder on another host silent this long (by the waiter's own clock) is dead
POLL_S = 2


class Claim:
    """The right to train one identity. Protocol:

    A claim is an MLflow registered model named mnist-exp.claim.<experiment>.<identity>.<generation>;
    the store's unique constraint on registered-model names makes creating one atomic, on SQLite and
    behind an MLflow server (PostgreSQL) alike: of two creators of one name, exactly one succeeds. A
    launch lists the identity's generations; while the newest is held by a live process (its pid runs,
    when on this host, and its heartbeat tag changed within LEASE_S by our clock) it waits; otherwise it
    creates the next generation, and backs off if a newer one appeared meanwhile. The holder then
    looks for a FINISHED run again (one may have finished before it got the claim) and skips if there
    is one. It refreshes the heartbeat while it trains, deletes its claim once its run is FINISHED (no
    launch trains that identity again), and marks it released when the run failed or was killed, so
    generations never go back while the identity may still be trained. A SIGKILLed holder's claim
    dies with its pid or heartbeat: the next launch takes the next generation and resumes the run.
    """

    def __init__(self, client: MlflowClient, name: str):
        self.client, self.name = client, name
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, daemon=True).start()

    @classmethod
    def take(cls, client: MlflowClient, experiment_id: str, identity_key: str, on_wait) -> Claim:
        """Wait until this process holds the identity's claim; on_wait(holder tags) when it starts to wait."""
        prefix = f"{CLAIM_PREFIX}{experiment_id}.{identity_key}."
        seen: dict[int, tuple[str | None, float]] = {}  # generation -> (heartbeat, when we first saw it)
        told = None
        while True:
            claims = _claims(client, prefix)
            newest = max(claims, default=None)
            if newest is not None and _alive(claims[newest], seen, newest):
                if told != newest:
                    on_wait(claims[newest].tags)
                    told = newest
                time.sleep(POLL_S)
                continue
            mine = 0 if newest is None else newest + 1
            name = f"{prefix}{mine}"
            try:
                client.create_registered_model(
                    name,
                    tags=_holder_tags(),
                    description=("mnist-exp: this process is training this run identity (deleted when it finishes)"),
                )
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                continue  # another launch took it first
            claims = _claims(client, prefix)
            if max(claims) > mine:  # we listed before a newer claim: it is not ours
                client.delete_registered_model(name)
                continue
            for older in claims:
                if older < mine:
                    # Failing to delete another user's claim on a shared server is harmless: it is just older.
                    with contextlib.suppress(MlflowException):
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


def _holder_tags() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "heartbeat": str(time.time())}


def _alive(model, seen: dict, generation: int) -> bool:
    """Whether a claim's holder may still be training: released and dead holders are not."""
    tags = model.tags
    if tags.get("released") == "true":
        return False
    if tags.get("host") == socket.gethostname() and not pid_alive(int(tags.get("pid", 0))):
        return False  # its pid is gone; a live pid (a reused worker) still needs a recent heartbeat
    beat = tags.get("heartbeat")  # None where the claim was deleted between listing it and reading its tags
    if generation not in seen or seen[generation][0] != beat:  # new, or it beat since: silence by our own clock
        seen[generation] = (beat, time.monotonic())
        return True
    return time.monotonic() - seen[generation][1] < LEASE_S


def pid_alive(pid: int) -> bool:
    if Path("/proc/self").is_dir():  # Linux: a killed process its parent has not reaped yet is a zombie
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def fail_orphaned_run(client: MlflowClient, pid: int, reason: str) -> tuple[str, str] | None:
    """Close, FAILED with `reason`, the run a dead process of this host was training (found through its
    claim), and release the claim; (run ID, run name), or None if it had opened none."""
    for model in client.search_registered_models(filter_string=f"name LIKE '{CLAIM_PREFIX}%' AND tags.pid = '{pid}'"):
        tags = model.tags
        if tags.get("host") != socket.gethostname() or tags.get("pid") != str(pid) or tags.get("released") == "true":
            continue
        client.set_registered_model_tag(model.name, "released", "true")
        if "run" not in tags:
            return None
        run_id, _, name = tags["run"].partition(" ")
        client.set_tag(run_id, ERROR, reason)
        client.set_terminated(run_id, "FAILED")
        return run_id, name.strip("()")
    return None
