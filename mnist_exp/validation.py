"""Value ranges Hydra's types cannot express (lr > 0, 0 <= p < 1, ...), checked before any work."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields

from mnist_exp import schema
from mnist_exp.data import SOURCES
from mnist_exp.models import ACTIVATIONS, LENET5_LAYOUTS, POOLING
from mnist_exp.regularization import REGULARIZERS
from mnist_exp.training import SCHEDULERS


class ConfigError(ValueError):
    """A config value out of range; the message names the key and the allowed values."""


def validate(cfg, overrides: Sequence[str] = ()) -> None:
    """Every out-of-range value of cfg, in one ConfigError; `overrides` are the job's (Hydra's overrides.task)."""
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
        "trainer.device",
        trainer.device,
        "auto, cpu, mps, cuda or cuda:N",
    )

    check(data.source in SOURCES, "data.source", data.source, f"one of {', '.join(SOURCES)}")
    check_optional_count("data.limit_train", data.limit_train)
    check_optional_count("data.limit_test", data.limit_test)
    check(data.validation_size >= 0, "data.validation_size", data.validation_size, ">= 0")
    check(data.std > 0, "data.std", data.std, "> 0")

    models = [*LENET5_LAYOUTS, "mlp"]
    check(model.name in models, "model.name", model.name, f"one of {', '.join(models)}")
    check(model.activation in ACTIVATIONS, "model.activation", model.activation, f"one of {', '.join(ACTIVATIONS)}")
    if "hidden_layers" in model:
        check(model.hidden_layers >= 1, "model.hidden_layers", model.hidden_layers, ">= 1")
    if "parity_with" in model:
        check(
            model.parity_with in LENET5_LAYOUTS,
            "model.parity_with",
            model.parity_with,
            f"one of {', '.join(LENET5_LAYOUTS)}",
        )
    if "pooling" in model:
        check(model.pooling in POOLING, "model.pooling", model.pooling, f"one of {', '.join(POOLING)}")

    check(optimizer.name in ("sgd", "adam"), "optimizer.name", optimizer.name, "sgd or adam")
    check(optimizer.lr > 0, "optimizer.lr", optimizer.lr, "> 0")
    if "momentum" in optimizer:
        check(0 <= optimizer.momentum < 1, "optimizer.momentum", optimizer.momentum, "in [0, 1)")
    if "betas" in optimizer:
        betas = list(optimizer.betas)
        check(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", betas, "two values in [0, 1)")

    problems += _repeated_regularizers(overrides)
    for key in regularizer:
        if key not in REGULARIZERS:
            problems.append(
                f"regularizer.{key} is not a regularizer this project applies: use {', '.join(REGULARIZERS)}"
            )
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
            "regularizer.augment.scale",
            scale,
            "[min, max] with 0 < min <= max",
        )

    if regularizer.get("label_smoothing") is not None:
        epsilon = regularizer.label_smoothing.epsilon
        check(0 <= epsilon < 1, "regularizer.label_smoothing.epsilon", epsilon, "in [0, 1)")
    if regularizer.get("early_stopping") is not None:
        stopping = regularizer.early_stopping
        check(stopping.patience >= 1, "regularizer.early_stopping.patience", stopping.patience, ">= 1")
        check(stopping.min_delta >= 0, "regularizer.early_stopping.min_delta", stopping.min_delta, ">= 0")
        if data.validation_size < 1:
            problems.append(
                "regularizer=early_stopping watches the validation loss: hold out a validation "
                "split with data.validation_size=N (e.g. data.validation_size=1000)"
            )

    scheduler = cfg.scheduler
    if scheduler:
        check(scheduler.name in SCHEDULERS, "scheduler.name", scheduler.name, f"one of {', '.join(SCHEDULERS)}")
    if scheduler.get("name") == "step":
        check(scheduler.step_size >= 1, "scheduler.step_size", scheduler.step_size, ">= 1 (epochs)")
        check(0 < scheduler.gamma <= 1, "scheduler.gamma", scheduler.gamma, "in (0, 1]")
    if scheduler.get("name") == "cosine":
        check(
            0 <= scheduler.warmup_epochs < trainer.epochs,
            "scheduler.warmup_epochs",
            scheduler.warmup_epochs,
            f">= 0 and below trainer.epochs={trainer.epochs}",
        )
        check(
            0 <= scheduler.min_lr < optimizer.lr,
            "scheduler.min_lr",
            scheduler.min_lr,
            f">= 0 and below optimizer.lr={optimizer.lr}",
        )
    if scheduler.get("name") == "onecycle":
        check(scheduler.max_lr > 0, "scheduler.max_lr", scheduler.max_lr, "> 0")
        check(0 < scheduler.pct_start < 1, "scheduler.pct_start", scheduler.pct_start, "in (0, 1)")
        check(scheduler.div_factor >= 1, "scheduler.div_factor", scheduler.div_factor, ">= 1")
        check(scheduler.final_div_factor >= 1, "scheduler.final_div_factor", scheduler.final_div_factor, ">= 1")
        if scheduler.cycle_momentum and optimizer.get("momentum", 1) == 0:
            problems.append(
                "scheduler.cycle_momentum=true cycles SGD's momentum, which is 0 here: "
                "set optimizer.momentum > 0 or scheduler.cycle_momentum=false"
            )

    check(bool(cfg.mlflow.experiment.strip()), "mlflow.experiment", repr(cfg.mlflow.experiment), "a non-empty name")
    if problems:
        raise ConfigError("; ".join(problems))


def _repeated_regularizers(overrides: Sequence[str]) -> list[str]:
    """regularizer=[l2,l2]: Hydra merges the two l2 into one, so only the override itself shows the repeat."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen = [o for o in overrides if o.lstrip("+~").startswith("regularizer=")]
    problems = []
    for override in OverridesParser.create().parse_overrides(chosen):
        names = override.value()
        repeated = sorted({name for name in names if names.count(name) > 1}) if isinstance(names, list) else []
        if repeated:
            problems.append(
                f"regularizer={override.get_value_element_as_str()} names {', '.join(repeated)} more than "
                "once: list each regularizer once, e.g. regularizer=[l2,dropout]"
            )
    return problems


SCHEMAS = {
    "": schema.TrainConfig,
    "trainer": schema.TrainerConfig,
    "data": schema.DataConfig,
    "mlflow": schema.MLflowConfig,
    "model.lenet5": schema.LeNet5Config,
    "model.lenet5_32": schema.LeNet532Config,
    "model.mlp": schema.MLPConfig,
    "optimizer.sgd": schema.SGDConfig,
    "optimizer.adam": schema.AdamConfig,
    "scheduler.step": schema.StepSchedulerConfig,
    "scheduler.cosine": schema.CosineSchedulerConfig,
    "scheduler.onecycle": schema.OneCycleSchedulerConfig,
}


def _check_known_keys(cfg, problems: list[str]) -> None:
    """Hydra's `+key=value` can add keys no schema knows; a typo there must not pass silently."""
    nodes = {
        "": cfg,
        "trainer": cfg.trainer,
        "data": cfg.data,
        "mlflow": cfg.mlflow,
        f"model.{cfg.model.name}": cfg.model,
        f"optimizer.{cfg.optimizer.name}": cfg.optimizer,
        f"scheduler.{cfg.scheduler.get('name')}": cfg.scheduler,
    }
    for schema_key, node in nodes.items():
        if schema_key not in SCHEMAS:  # an unknown model or optimizer name is reported by validate
            continue
        known = {f.name for f in fields(SCHEMAS[schema_key])}
        prefix = schema_key.split(".")[0] + "." if schema_key else ""
        for key in node:
            if key not in known:
                problems.append(f"{prefix}{key} is not a setting (added with +?); known: {', '.join(sorted(known))}")
