"""Value ranges Hydra's types cannot express (lr > 0, 0 <= p < 1, ...), checked before any work."""

from __future__ import annotations

import re
from dataclasses import fields

from mnist_exp import schema
from mnist_exp.data import SOURCES
from mnist_exp.models import ACTIVATIONS
from mnist_exp.regularization import REGULARIZERS


class ConfigError(ValueError):
    """A config value out of range; the message names the key and the allowed values."""


def validate(cfg) -> None:
    problems: list[str] = []

    def check(ok: bool, key: str, value, allowed: str) -> None:
        if not ok:
            problems.append(f"{key}={value} is out of range: must be {allowed}")

    def check_optional_count(key: str, value) -> None:
        check(value is None or value >= 1, key, value, "null or >= 1")

    trainer, data, model, optimizer, regularizer = cfg.trainer, cfg.data, cfg.model, cfg.optimizer, cfg.regularizer
    _check_known_keys(cfg, problems)
    check(trainer.epochs >= 1, "trainer.epochs", trainer.epochs, ">= 1")
    check(trainer.batch_size >= 1, "trainer.batch_size", trainer.batch_size, ">= 1")
    check(trainer.eval_batch_size >= 1, "trainer.eval_batch_size", trainer.eval_batch_size, ">= 1")
    check(trainer.seed >= 0, "trainer.seed", trainer.seed, ">= 0")
    check_optional_count("trainer.threads", trainer.threads)
    check(
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", trainer.device) is not None,
        "trainer.device", trainer.device, "auto, cpu, mps, cuda or cuda:N",
    )

    check(data.source in SOURCES, "data.source", data.source, f"one of {', '.join(SOURCES)}")
    check_optional_count("data.limit_train", data.limit_train)
    check_optional_count("data.limit_test", data.limit_test)
    check(data.validation_size >= 0, "data.validation_size", data.validation_size, ">= 0")
    check(data.std > 0, "data.std", data.std, "> 0")

    check(model.name in ("lenet5", "mlp"), "model.name", model.name, "lenet5 or mlp")
    check(model.activation in ACTIVATIONS, "model.activation", model.activation, f"one of {', '.join(ACTIVATIONS)}")
    if "hidden_layers" in model:
        check(model.hidden_layers >= 1, "model.hidden_layers", model.hidden_layers, ">= 1")

    check(optimizer.name in ("sgd", "adam"), "optimizer.name", optimizer.name, "sgd or adam")
    check(optimizer.lr > 0, "optimizer.lr", optimizer.lr, "> 0")
    if "momentum" in optimizer:
        check(0 <= optimizer.momentum < 1, "optimizer.momentum", optimizer.momentum, "in [0, 1)")
    if "betas" in optimizer:
        betas = list(optimizer.betas)
        check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", betas, "two values in [0, 1)")

    for key in regularizer:
        if key not in REGULARIZERS:
            problems.append(f"regularizer.{key} is not a regularizer this project applies: use {', '.join(REGULARIZERS)}")
    if regularizer.get("l2") is not None:
        wd = regularizer.l2.weight_decay
        check(wd >= 0, "regularizer.l2.weight_decay", wd, ">= 0")
    if regularizer.get("dropout") is not None:
        p = regularizer.dropout.p
        check(0 <= p < 1, "regularizer.dropout.p", p, "in [0, 1)")
    if regularizer.get("batchnorm") is not None:
        momentum = regularizer.batchnorm.momentum
        check(0 < momentum <= 1, "regularizer.batchnorm.momentum", momentum, "in (0, 1]")
    if regularizer.get("augment") is not None:
        augment = regularizer.augment
        check(0 <= augment.degrees <= 180, "regularizer.augment.degrees", augment.degrees, "in [0, 180]")
        check(0 <= augment.translate < 1, "regularizer.augment.translate", augment.translate, "in [0, 1)")
        scale = list(augment.scale)
        check(
            len(scale) == 2 and 0 < scale[0] <= scale[1],
            "regularizer.augment.scale", scale, "[min, max] with 0 < min <= max",
        )

    check(bool(cfg.mlflow.experiment.strip()), "mlflow.experiment", repr(cfg.mlflow.experiment), "a non-empty name")
    if problems:
        raise ConfigError("; ".join(problems))


SCHEMAS = {
    "": schema.TrainConfig, "trainer": schema.TrainerConfig, "data": schema.DataConfig, "mlflow": schema.MLflowConfig,
    "model.lenet5": schema.LeNet5Config, "model.mlp": schema.MLPConfig,
    "optimizer.sgd": schema.SGDConfig, "optimizer.adam": schema.AdamConfig,
}


def _check_known_keys(cfg, problems: list[str]) -> None:
    """Hydra's `+key=value` can add keys no schema knows; a typo there must not pass silently."""
    nodes = {"": cfg, "trainer": cfg.trainer, "data": cfg.data, "mlflow": cfg.mlflow,
             f"model.{cfg.model.name}": cfg.model, f"optimizer.{cfg.optimizer.name}": cfg.optimizer}
    for schema_key, node in nodes.items():
        if schema_key not in SCHEMAS:  # an unknown model or optimizer name is reported by validate
            continue
        known = {f.name for f in fields(SCHEMAS[schema_key])}
        prefix = schema_key.split(".")[0] + "." if schema_key else ""
        for key in node:
            if key not in known:
                problems.append(f"{prefix}{key} is not a setting (added with +?); known: {', '.join(sorted(known))}")
