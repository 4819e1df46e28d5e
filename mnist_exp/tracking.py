"""MLflow bookkeeping: the store, run identity (config hashes), params, metrics, artifacts, status.

Uses MlflowClient with explicit run IDs rather than mlflow's global "active run", so a run
can be resumed, skipped or failed from anywhere without hidden state.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

PREFIX = "mnist_exp."
CONFIG_HASH = PREFIX + "config_hash"  # same hash = same experiment: finished ones are skipped
VARIANT_HASH = PREFIX + "variant_hash"  # config hash without the seed: groups the seeds of a variant
VARIANT = PREFIX + "variant"  # readable model/regularizer/optimizer
ERROR = PREFIX + "error"
FALLBACK = PREFIX + "data_fallback"
ROLE = PREFIX + "role"  # "sweep" on a sweep's parent run
SWEEP_KEY = PREFIX + "sweep_key"
LAST_LAUNCH = PREFIX + "last_launch"
PARENT = "mlflow.parentRunId"  # what nests child runs under their sweep in `mlflow ui`

# Keys that change where or how fast a run goes, not what it computes.
NOT_IDENTITY = ("mlflow.", "force", "trainer.threads", "trainer.checkpoint_dir", "data.cache_dir")
MAX_PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
SERVER_TIMEOUT_S = 5


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names mlflow.tracking_uri and what to do."""


def sweep_tag(sweep_key: str) -> str:
    """A run belongs to every sweep whose tag it carries, including sweeps that skipped it."""
    return f"{PREFIX}sweep.{sweep_key}"


def connect(tracking_uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client and the experiment's ID, creating the store and the experiment if needed."""
    if tracking_uri.startswith(("http://", "https://")):
        _check_server(tracking_uri)
    try:
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                return client, client.create_experiment(experiment)
            except MlflowException:  # another process created it first
                found = client.get_experiment_by_name(experiment)
    except Exception as error:  # MLflow surfaces store problems as many unrelated types
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TrackingError(f"cannot use the MLflow store mlflow.tracking_uri={tracking_uri}: {detail}") from None
    if found.lifecycle_stage == "deleted":
        raise TrackingError(
            f"mlflow.experiment={experiment} was deleted from {tracking_uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {found.experiment_id}` or pick another name"
        )
    return client, found.experiment_id


def _check_server(tracking_uri: str) -> None:
    """Fail in seconds: MLflow's own client retries an unreachable server for minutes."""
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at mlflow.tracking_uri={tracking_uri} ({reason}); "
            "start it (see README, 'Scaling out') or leave mlflow.tracking_uri at its default"
        ) from None


# --- run identity ---


def flat_params(cfg) -> dict[str, str]:
    """The resolved config as MLflow params: {"optimizer.lr": "0.01", ...}."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = json.dumps(node) if isinstance(node, list) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def config_hash(params: dict[str, str], ignore: tuple[str, ...] = ()) -> str:
    identity = {
        key: value for key, value in params.items() if not key.startswith(NOT_IDENTITY) and key not in ignore
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def runs_with_config(client: MlflowClient, experiment_id: str, hash_: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.`{CONFIG_HASH}` = '{hash_}'")


# --- logging ---


def create_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_CALL])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """All of one epoch's metrics in a single round trip."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def logged_steps(client: MlflowClient, run_id: str, metric: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, metric)}


def log_artifacts(client: MlflowClient, run_id: str, folder: Path) -> None:
    client.log_artifacts(run_id, str(folder))


def finish(client: MlflowClient, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)


def record_failure(client: MlflowClient, run_id: str, error: BaseException, traceback_file: Path, status: str) -> None:
    """Tag the error, attach the traceback and close the run as FAILED or KILLED."""
    message = " ".join(f"{type(error).__name__}: {error}".split())[:5000]
    set_tags(client, run_id, {ERROR: message})
    client.log_artifact(run_id, str(traceback_file))
    finish(client, run_id, status)


# --- sweeps ---


def open_sweep_run(client: MlflowClient, experiment_id: str, sweep_key: str, name: str) -> str:
    """The parent run of a sweep: reopened when the same sweep command runs again."""
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_KEY}` = '{sweep_key}' and tags.`{ROLE}` = 'sweep'"
    )
    # Microseconds: two sweeps launched in the same second must still order for `--sweep latest`.
    launched = {LAST_LAUNCH: datetime.now().isoformat(timespec="microseconds")}
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        set_tags(client, run_id, launched)
        return run_id
    tags = {ROLE: "sweep", SWEEP_KEY: sweep_key, **launched}
    return create_run(client, experiment_id, name, tags)
