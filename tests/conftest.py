"""Shared fixtures: real Hydra composition, real digits from the shipped sample written in the
course's tar format, and a throwaway sqlite MLflow store."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from PIL import Image

from mnist_exp import schema
from mnist_exp.data import SAMPLE_DIR
from mnist_exp.formats import read_idx_split

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATASET = REPO.parent / "shared" / "datasets" / "mnist-10k"  # the course tars, where present

# Two cores shared by two xdist workers: one torch thread per process, in the tests and in every train.py,
# analyze.py or benchmark they start (torch reads OMP_NUM_THREADS); a worker using every core slows both 10x.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar per downloaded file drowns pytest's output
for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # a user's own store is never a test's
    os.environ.pop(variable, None)


def pytest_addoption(parser):
    parser.addoption(
        "--cluster", action="store_true", help="run the tests marked cluster, only those (make test-cluster)"
    )


def pytest_collection_modifyitems(config, items):
    """The cluster tests install packages and start daemons as root: never part of a plain `pytest`."""
    wanted = config.getoption("--cluster")
    kept = [item for item in items if (item.get_closest_marker("cluster") is not None) == wanted]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    return CONF_DIR


@pytest.fixture(scope="session")
def compose():
    """compose(["model=mlp", ...]) -> the config train.py would get for those overrides."""
    schema.register()

    def _compose(overrides: list[str] | tuple[str, ...] = ()):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides))

    return _compose


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # int64 [N]


@pytest.fixture(scope="session")
def sample_digits() -> dict[str, Digits]:
    """The shipped offline sample (real MNIST digits), both splits."""
    return {
        "train": Digits(
            *read_idx_split(SAMPLE_DIR / "train-images-idx3-ubyte.gz", SAMPLE_DIR / "train-labels-idx1-ubyte.gz")
        ),
        "test": Digits(
            *read_idx_split(SAMPLE_DIR / "t10k-images-idx3-ubyte.gz", SAMPLE_DIR / "t10k-labels-idx1-ubyte.gz")
        ),
    }


def png_bytes(image: np.ndarray, mode: str = "L", format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, format=format)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar holding exactly `members` (name, bytes), in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def write_course_split(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """A course-format tar: one PNG per digit, named {split}/{ID:05d}_{label}.png."""
    return write_tar(
        path,
        [(f"{split}/{i:05d}_{label}.png", png_bytes(image)) for i, (image, label) in enumerate(zip(images, labels))],
    )


@dataclass(frozen=True)
class CourseDataset:
    root: Path  # holds train.tar and test.tar
    train: Digits
    test: Digits


@pytest.fixture(scope="session")
def make_course_dataset(sample_digits):
    """make_course_dataset(root, n_train, n_test, offset=0): real digits as train.tar/test.tar under root."""

    def _make(root: Path, n_train: int = 400, n_test: int = 200, offset: int = 0) -> CourseDataset:
        parts = {}
        for split, n in (("train", n_train), ("test", n_test)):
            source = sample_digits[split]
            images, labels = source.images[offset : offset + n], source.labels[offset : offset + n]
            write_course_split(root / f"{split}.tar", split, images, labels)
            parts[split] = Digits(images, labels)
        return CourseDataset(root, parts["train"], parts["test"])

    return _make


@pytest.fixture(scope="session")
def course_dataset(tmp_path_factory, make_course_dataset) -> CourseDataset:
    """400 train / 200 test real digits in the course format; shared, so never modify it."""
    return make_course_dataset(tmp_path_factory.mktemp("course"))


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store holding just its schema: creating one runs ~6 s of migrations."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def project_dir(tmp_path, empty_store) -> Path:
    """A folder to launch train.py from, its default store (mlflow.db) empty but created."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def unreachable_root(tmp_path) -> Path:
    """A data.root below a regular file: nothing can be found there and creating it (a download) fails."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file, so no folder can be created below it\n")
    return blocker / "mnist"


def analyze_main():
    """analyze.py's main, in this process (where the process itself is not what a test checks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("analyze_script", REPO / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_script(
    script: str, *args: str, cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """train.py or analyze.py as a user runs it: its own process, launched from `cwd` (extra `env` on top)."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Hold:
    """Stops the train.py processes started with `env` at the checkpoint of `epoch` (before or after writing
    it; past the first `skip` of each process) until release(): a test then kills or signals them at a point
    it chose, whatever the machine's speed. The hook is tests/hooks/sitecustomize.py, never shipped."""

    def __init__(self, folder: Path, epoch: int, when: str = "after", skip: int = 0):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        hooks = str(REPO / "tests" / "hooks")
        self.env = {
            "MNIST_EXP_TEST_HOLD": f"{folder}:{epoch}:{when}:{skip}",
            "PYTHONPATH": os.pathsep.join(filter(None, [hooks, os.environ.get("PYTHONPATH")])),
        }

    def wait(self, processes: int = 1, alive: subprocess.Popen | None = None, timeout: float = 600) -> None:
        """Until `processes` processes are held; fails early if `alive` ends first."""
        deadline = time.monotonic() + timeout
        while len(list(self.folder.glob("held-*"))) < processes:
            assert alive is None or alive.poll() is None, f"the process ended before {processes} held"
            assert time.monotonic() < deadline, f"fewer than {processes} processes held after {timeout} s"
            time.sleep(0.05)

    def release(self) -> None:
        (self.folder / "release").touch()


def job_runs(tracking_uri: str, experiment_name: str = "mnist-exp") -> list:
    """Every training run of an experiment, sweep parent runs left out."""
    from mlflow.tracking import MlflowClient

    from mnist_exp import record

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:  # nothing got as far as creating it
        return []
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get(record.ROLE) != "sweep"]


def sweep_runs(tracking_uri: str) -> list:
    """The sweep parent runs of the default experiment."""
    from mlflow.tracking import MlflowClient

    from mnist_exp import record

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mnist-exp")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{record.ROLE}` = 'sweep'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path, *args: str, env: dict[str, str] | None = None):
    """A real `mlflow server` on a free local port storing everything in `folder` (store.db, artifacts/), up
    and answering /health; yields (uri, process) and stops its process group with SIGTERM on the way out."""
    port = free_port()
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", *args, "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{folder}/store.db"]
        + ["--artifacts-destination", str(folder / "artifacts")],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # no GenAI job workers needed
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        from mnist_exp import tracking

        deadline = time.monotonic() + 120
        while True:
            try:
                tracking.check_server(uri)  # /health answers without credentials
                break
            except tracking.TrackingError:
                assert process.poll() is None and time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        yield uri, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and every worker it started
        process.wait(timeout=30)


@contextlib.contextmanager
def model_server(model_uri: str, cwd: Path, env: dict[str, str] | None = None):
    """`mlflow models serve -m MODEL_URI --env-manager local` on a free local port, as a user with the venv
    activated runs it (it starts uvicorn from PATH), up and answering /ping; yields its /invocations URL."""
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    process = subprocess.Popen(
        [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ["PATH"]]), **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except OSError:
                assert process.poll() is None, f"mlflow models serve exited {process.returncode}"
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(0.5)
        yield f"{url}/invocations"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
        process.wait(timeout=30)
