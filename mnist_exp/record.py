"""What a run records in MLflow (docs/mlflow.md), for its writers and every reader: each name not of its flattened
config (conf/, schema.py), so params it derives, tags, metrics and artifacts; its identity, hash and variant label."""

from __future__ import annotations

import hashlib
import json
import re

from omegaconf import OmegaConf

PREFIX = "mnist_exp."

# --- tags of a training run ---
CONFIG_HASH = PREFIX + "config_hash"  # the identity: with the same data, the same run
VARIANT_HASH = PREFIX + "variant_hash"  # the identity without the seed: groups the seeds of a variant
VARIANT = PREFIX + "variant"  # variant(): model/regularizer/optimizer[+scheduler]
CODE_VERSION = PREFIX + "code_version"
PYTHON_VERSION, TORCH_VERSION, MLFLOW_VERSION = (PREFIX + f"{name}_version" for name in ("python", "torch", "mlflow"))
HOST, DEVICE, THREADS = PREFIX + "host", PREFIX + "device", PREFIX + "threads"  # the machine it ran on
ERROR = PREFIX + "error"
FALLBACK = PREFIX + "data_fallback"  # the offline sample stood in for the data asked for
TRIAL = PREFIX + "trial"  # the Optuna trial number, on a search trial's run
PRUNED = PREFIX + "pruned"  # why a search stopped the run early, on a pruned trial's (FINISHED) run
SUPERSEDED_BY = PREFIX + "superseded_by"  # on a pruned run: the full run of its config trained later
# MLflow's own: what nests a run under its sweep in `mlflow ui`, a run's description, where it came from
PARENT, NOTE = "mlflow.parentRunId", "mlflow.note.content"
SOURCE_NAME, SOURCE_TYPE, USER, GIT_COMMIT = (
    f"mlflow.{n}" for n in ("source.name", "source.type", "user", "source.git.commit")
)

# --- tags and metrics of a sweep's parent run ---
ROLE = PREFIX + "role"  # "sweep"
SWEEP_KEY = PREFIX + "sweep_key"  # every launch of one command shares it
LAST_LAUNCH = PREFIX + "last_launch"
EXTENDS = PREFIX + "extends"  # the key of the sweep it adds runs to (mlflow.extends)
LAUNCHER = PREFIX + "launcher"  # "host pid" of the process running it
BEST_TRIAL, BEST_PARAMS, STUDY = PREFIX + "best_trial", PREFIX + "best_params", PREFIX + "optuna_study"  # a search's
BEST_VALUE = "best_value"  # a search's best trial's value (a metric)
CONFIRMATION = PREFIX + "confirmation"  # a search's confirmation: {"recipe": [run IDs], "plain": [run IDs]}

# --- tags of an experiment ---
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # else MLflow 3's UI shows its GenAI view
RECORD_VERSION = (PREFIX + "record_version", "2")  # the identity rule its runs' hashes follow: migrate()

# --- params a run derives from its config ---
SOURCE, LOCATION = "data.resolved_source", "data.location"
TRAIN_SIZE, TEST_SIZE, VALIDATION_SIZE = "data.train_size", "data.test_size", "data.validation_size_used"
SPLIT_DIGEST = {"train": "data.train_sha256", "test": "data.test_sha256", "validation": "data.validation_sha256"}
DATA_PARAMS = (SOURCE, LOCATION, TRAIN_SIZE, TEST_SIZE, VALIDATION_SIZE, *SPLIT_DIGEST.values())
DATA_IDENTITY = (SOURCE, *SPLIT_DIGEST.values())  # the same request may read other digits later
PARAMETERS, LENET5_PARAMETERS, DESCRIPTION = "model.parameters", "model.lenet5_parameters", "model.description"
REGULARIZERS = "regularizer.name"  # 'none', 'l2+dropout'
MEAN_USED, STD_USED = "data.mean_used", "data.std_used"  # the normalization (data.mean/std null: computed)
RESULT_PARAMS = (PARAMETERS, LENET5_PARAMETERS, DESCRIPTION, REGULARIZERS, MEAN_USED, STD_USED)

# --- metrics: per epoch (training.EpochMetrics' fields, fractions), then of the delivered model ---
TRAIN_LOSS, TRAIN_ACC = "train_loss", "train_acc"  # running averages over the epoch, in training mode
TEST_LOSS, TEST_ACC = "test_loss", "test_acc"
VAL_LOSS, VAL_ACC = "val_loss", "val_acc"  # with a validation split
LR, EPOCH_TIME = "lr", "epoch_time_s"  # the learning rate of the epoch's first batch; the epoch's seconds
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, EPOCH_TIME, VAL_LOSS, VAL_ACC, LR)
FINAL_TEST_LOSS, FINAL_TEST_ACC = "final_test_loss", "final_test_acc"
FINAL_VAL_LOSS, FINAL_VAL_ACC = "final_val_loss", "final_val_acc"
BEST_TEST_ACC = "best_test_acc"  # the best epoch's: chosen on the test split
TRAIN_EVAL_LOSS, TRAIN_EVAL_ACC = "train_eval_loss", "train_eval_acc"  # on the training images, in eval mode
TRAIN_TIME, PEAK_RSS = "train_time_s", "peak_rss_mib"
BEST_EPOCH, STOPPED_EPOCH = "best_epoch", "stopped_epoch"  # with early stopping

# --- artifacts ---
CONFIG_FILE, HISTORY_FILE, TRACEBACK_FILE = "config.yaml", "history.csv", "traceback.txt"
CURVES_FIGURE, CONFUSION = "learning_curves.png", "confusion_matrix"  # .csv and .png
PREDICTIONS = {"test": "predictions/test.npz", "validation": "predictions/validation.npz"}  # mnist_exp.predictions
HYDRA_FOLDER = "hydra"  # the job's files as Hydra wrote them: overrides.yaml, hydra.yaml, config.yaml, its log
SWEEP_SUMMARY, MEMBERS_FILE = "sweep_summary.txt", "sweep_members.json"  # a sweep's: every run it used
CONFIRMATION_FILE = "confirmation.md"  # a search's confirmation table
OPTUNA_RESULTS = "optimization_results.yaml"  # a search's best trial, in the sweep folder and on the sweep run
REPORT_FOLDER, REPORT_FILE, CLAIMS_FILE = "report", "report.md", "claims.json"  # analyze.py --report's
FIGURES = {"models": "lenet5_vs_mlp.png", "regularizers": "regularizers.png", "differences": "differences.png"}


def flat_params(cfg) -> dict[str, str]:
    """The resolved config as MLflow params, {"optimizer.lr": "0.01", ...}, without `_target_` and `_partial_`."""
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


def variant(model: str, regularizers: str, optimizer: str, scheduler: str | None) -> str:
    """How runs, bars and tables name a variant: lenet5/l2+dropout/sgd, mlp/augment/sgd+onecycle."""
    return f"{model}/{regularizers}/{optimizer}" + (f"+{scheduler}" if scheduler not in (None, "none") else "")


def model_name(variant: str) -> str:
    """A logged model's name: its variant, without the characters MLflow's model names refuse."""
    return re.sub(r"[/:.%\"']", "-", variant)


def data_params(data) -> dict[str, str]:
    """What a run read (mnist_exp.data.MnistData): its identity (source and content hashes) and its size."""
    return {
        SOURCE: data.source,
        LOCATION: data.location,
        TRAIN_SIZE: str(len(data.train)),
        TEST_SIZE: str(len(data.test)),
        VALIDATION_SIZE: str(len(data.validation) if data.validation is not None else 0),
        **{key: getattr(data, name).sha256 for name, key in SPLIT_DIGEST.items() if getattr(data, name) is not None},
    }


# --- identity ---

# Keys that change where or how fast a run goes, not what it computes.
NOT_IDENTITY = ("mlflow.", "force", "trainer.threads", "trainer.checkpoint_dir", "data.cache_dir")
# A setting added to a node after runs were recorded with it hashes as absent at the value those runs had:
# augment runs recorded before shear existed (issue 28) keep their identity.
NEUTRAL = {"regularizer.augment.shear": "0.0"}


def identity(params: dict[str, str], ignore: tuple[str, ...] = (), neutral: dict = NEUTRAL) -> dict[str, str]:
    """The params that say what a run computes: not NOT_IDENTITY, derived ones, `ignore`'s or NEUTRAL's values."""
    derived = {*DATA_PARAMS, *RESULT_PARAMS}
    return {
        key: value
        for key, value in params.items()
        if not key.startswith(NOT_IDENTITY + ignore) and key not in derived and neutral.get(key) != value
    }


def config_hash(params: dict[str, str], ignore: tuple[str, ...] = (), neutral: dict = NEUTRAL) -> str:
    return hashlib.sha256(json.dumps(identity(params, ignore, neutral), sort_keys=True).encode()).hexdigest()[:16]


def hashes(params: dict[str, str]) -> dict[str, str]:
    """A run's CONFIG_HASH and VARIANT_HASH tags."""
    return {CONFIG_HASH: config_hash(params), VARIANT_HASH: config_hash(params, ("trainer.seed",))}


def data_identity(params: dict[str, str]) -> dict[str, str]:
    return {key: params.get(key, "") for key in DATA_IDENTITY}


class RecordError(RuntimeError):
    """A store whose runs this code cannot read; the message says what to do."""


def migrate(client, experiment) -> None:
    """Bring an experiment's runs to RECORD_VERSION once, idempotently (version 1 hashed the MLP's model.parity_with
    as absent at lenet5); runs of the project's first days (before 1edc110) follow neither rule: RecordError."""
    if experiment.tags.get(RECORD_VERSION[0]) == RECORD_VERSION[1]:
        return
    before = {**NEUTRAL, "model.parity_with": "lenet5"}
    older = []
    for run in client.search_runs([experiment.experiment_id], max_results=50_000):
        tags, params = run.data.tags, run.data.params
        if CONFIG_HASH not in tags or not params:  # a sweep's run, or a run that died before its params
            continue
        if tags[CONFIG_HASH] not in (config_hash(params), config_hash(params, neutral=before)):
            older.append(run)
            continue
        for tag, value in hashes(params).items():
            if tags.get(tag) != value:
                client.set_tag(run.info.run_id, tag, value)
    if older:
        run = older[0]
        commit = run.data.tags.get(GIT_COMMIT, "its commit, in its mlflow.source.git.commit tag")
        raise RecordError(
            f"experiment {experiment.name!r} holds {len(older)} run(s) recorded by mnist-exp's first code "
            f"(e.g. {run.info.run_id}, {run.info.run_name}), whose identity this code cannot read: train them again "
            f"into a new store (mlflow.tracking_uri=sqlite:///new.db), or read this one with the code that wrote "
            f"them (git checkout {commit})"
        )
    client.set_experiment_tag(experiment.experiment_id, *RECORD_VERSION)
