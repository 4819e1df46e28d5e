"""The config: every shipped option composes and validates; typos and wrong types are Hydra's
errors at composition; values out of range are ConfigErrors that name the key."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF_DIR, REPO
from mnist_exp.validation import ConfigError, validate


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


COMBINATIONS = list(itertools.product(options("model"), options("regularizer"), options("optimizer"), options("data")))


def test_the_option_lists_are_read_from_conf():
    # Guards the parametrization below against silently testing nothing.
    assert options("model") == ["lenet5", "mlp"]
    assert options("regularizer") == ["augment", "batchnorm", "dropout", "l2", "none"]
    assert options("optimizer") == ["adam", "sgd"]
    assert options("data") == ["mnist"]


@pytest.mark.parametrize(("model", "regularizer", "optimizer", "data"), COMBINATIONS, ids=["/".join(c) for c in COMBINATIONS])
def test_every_combination_of_options_composes_and_validates(compose, model, regularizer, optimizer, data):
    cfg = compose([f"model={model}", f"regularizer={regularizer}", f"optimizer={optimizer}", f"data={data}"])

    validate(cfg)

    assert cfg.model.name == model and cfg.optimizer.name == optimizer
    assert list(cfg.regularizer) == ([] if regularizer == "none" else [regularizer])


@pytest.mark.parametrize("group", ["experiment", "hparams_search"])
def test_every_study_option_composes_and_validates(compose, group):
    for option in options(group):
        validate(compose([f"{group}={option}"]))


def test_regularizers_compose_into_one_node(compose):
    cfg = compose(["regularizer=[l2,dropout]"])

    validate(cfg)
    assert set(cfg.regularizer) == {"l2", "dropout"}
    assert cfg.regularizer.l2.weight_decay > 0 and 0 < cfg.regularizer.dropout.p < 1


# --- Hydra rejects these while composing ---


def test_misspelled_option_lists_the_real_ones(compose):
    with pytest.raises(MissingConfigException) as error:
        compose(["model=lenet"])
    assert "Could not find 'model/lenet'" in str(error.value)
    assert "lenet5" in str(error.value) and "mlp" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.epochs=abc"], "trainer.epochs=abc"),
        (["optimizer.lr=fast"], "optimizer.lr=fast"),
        (["optimizer.nesterov=maybe"], "optimizer.nesterov=maybe"),
        (["data.limit_train=half"], "data.limit_train=half"),
    ],
)
def test_wrong_type_fails_during_composition(compose, overrides, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.epoch=3"],  # typo of trainer.epochs
        ["model=lenet5", "model.hidden_layers=3"],  # only the MLP has hidden layers
        ["optimizer=sgd", "optimizer.betas=[0.9,0.99]"],  # an Adam key on SGD
        ["regularizer=none", "regularizer.dropout.p=0.3"],  # a regularizer that is not selected
    ],
    ids=["typo", "key of another model", "key of another optimizer", "unselected regularizer"],
)
def test_unknown_key_fails_during_composition(compose, overrides):
    key = overrides[-1].split("=")[0]
    with pytest.raises(ConfigCompositionException, match=f"Could not override '{key}'"):
        compose(overrides)


# --- values out of range ---

OUT_OF_RANGE = [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer=adam", "optimizer.lr=-0.001"], "optimizer.lr"),
    (["optimizer.momentum=1.0"], "optimizer.momentum"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas"),
    (["regularizer=dropout", "regularizer.dropout.p=1.0"], "regularizer.dropout.p"),
    (["regularizer=dropout", "regularizer.dropout.p=-0.1"], "regularizer.dropout.p"),
    (["regularizer=l2", "regularizer.l2.weight_decay=-0.0001"], "regularizer.l2.weight_decay"),
    (["regularizer=batchnorm", "regularizer.batchnorm.momentum=0"], "regularizer.batchnorm.momentum"),
    (["regularizer=augment", "regularizer.augment.scale=[1.2,0.9]"], "regularizer.augment.scale"),
    (["regularizer=augment", "regularizer.augment.scale=[0,1.1]"], "regularizer.augment.scale"),
    (["regularizer=augment", "regularizer.augment.degrees=181"], "regularizer.augment.degrees"),
    (["regularizer=augment", "regularizer.augment.translate=1.0"], "regularizer.augment.translate"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.eval_batch_size=-5"], "trainer.eval_batch_size"),
    (["trainer.seed=-1"], "trainer.seed"),
    (["trainer.threads=0"], "trainer.threads"),
    (["trainer.device=gpu"], "trainer.device"),
    (["data.source=ftp"], "data.source"),
    (["data.limit_train=0"], "data.limit_train"),
    (["data.limit_test=-3"], "data.limit_test"),
    (["data.std=0"], "data.std"),
    (["model.activation=swish"], "model.activation"),
    (["model=mlp", "model.hidden_layers=0"], "model.hidden_layers"),
    (["model.name=resnet"], "model.name"),
    (["mlflow.experiment= "], "mlflow.experiment"),
]


@pytest.mark.parametrize(("overrides", "key"), OUT_OF_RANGE, ids=[" ".join(o) for o, _ in OUT_OF_RANGE])
def test_out_of_range_value_is_a_config_error_naming_the_key(compose, overrides, key):
    cfg = compose(overrides)  # the types are fine: Hydra accepts it

    with pytest.raises(ConfigError) as error:
        validate(cfg)

    value = overrides[-1].split("=", 1)[1]
    assert f"{key}=" in str(error.value) and "out of range" in str(error.value)
    assert value.strip("[]").split(",")[0] in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["regularizer=dropout", "regularizer.dropout.p=0.0"],
        ["optimizer.momentum=0.0"],
        ["regularizer=augment", "regularizer.augment.scale=[1.0,1.0]", "regularizer.augment.degrees=180"],
        ["regularizer=l2", "regularizer.l2.weight_decay=0"],
        ["regularizer=batchnorm", "regularizer.batchnorm.momentum=1.0"],
        ["trainer.device=cuda:1"],
        ["trainer.threads=1", "data.limit_train=1", "data.limit_test=1"],
        ["trainer.seed=0"],
    ],
)
def test_values_on_the_edge_of_their_range_are_accepted(compose, overrides):
    validate(compose(overrides))


def test_every_problem_is_reported_at_once(compose):
    cfg = compose(["optimizer.lr=0", "trainer.epochs=0", "data.source=ftp"])
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert all(key in str(error.value) for key in ("optimizer.lr=0", "trainer.epochs=0", "data.source=ftp"))


def test_an_unknown_regularizer_key_smuggled_in_with_plus_is_refused(compose):
    cfg = compose(["+regularizer.mixup.alpha=0.2"])  # '+' lets Hydra add keys the schema does not know
    with pytest.raises(ConfigError, match="regularizer.mixup is not a regularizer"):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["+trainer.epoch=5"], "trainer.epoch"),  # a typo of trainer.epochs
        (["model=mlp", "+model.hidden_width=64"], "model.hidden_width"),
        (["optimizer=adam", "+optimizer.momentum=0.9"], "optimizer.momentum"),  # an SGD key on Adam
        (["+seed=1"], "seed"),
    ],
)
def test_a_key_no_schema_knows_added_with_plus_is_refused(compose, overrides, key):
    with pytest.raises(ConfigError, match=f"{re.escape(key)} is not a setting"):
        validate(compose(overrides))


def test_train_help_lists_every_group_and_option():
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )

    assert result.returncode == 0, result.stderr
    for group in ("model", "regularizer", "optimizer", "data"):
        assert f"{group}: {', '.join(options(group))}" in result.stdout
