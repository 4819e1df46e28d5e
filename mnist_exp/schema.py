"""The config's one description: each node's keys, their types and allowed values (defaults: conf/'s YAML files).
Hydra checks the types while composing, mnist_exp.validation the ranges and each node's `cross_check`."""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import import_module
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from mnist_exp.validation import out_of_range

SCHEMAS: dict[str, type] = {}  # what register() stores, by the name option files give in their defaults


def schema(name: str) -> Callable[[type], type]:
    """@dataclass, and known to Hydra as `<name>_schema` once register() runs."""

    def add(cls: type) -> type:
        if f"{name}_schema" in SCHEMAS:
            raise ValueError(f"@schema({name!r}) is on {SCHEMAS[f'{name}_schema'].__name__} already")
        return SCHEMAS.setdefault(f"{name}_schema", dataclass(cls))

    return add


def ranged(allowed: str, ok: Callable[[Any], bool], **metadata) -> Any:
    """A field whose values must pass `ok`; `allowed` ends the error "<key>=<value> is out of range: must be ..."."""
    return field(default=MISSING, metadata={"ok": ok, "allowed": allowed, **metadata})


def at_least(low, unit: str = "", **metadata) -> Any:
    return ranged(f">= {low}{unit}", lambda v: v >= low, **metadata)


def above(low) -> Any:
    return ranged(f"> {low}", lambda v: v > low)


def within(low, high, brackets: str = "[)") -> Any:
    """low..high, each end in or out as brackets say: "[)" is low <= v < high."""
    above_low = (lambda v: v >= low) if brackets[0] == "[" else (lambda v: v > low)
    below_high = (lambda v: v <= high) if brackets[1] == "]" else (lambda v: v < high)
    return ranged(f"in {brackets[0]}{low}, {high}{brackets[1]}", lambda v: above_low(v) and below_high(v))


def optional_count() -> Any:
    return ranged("null or >= 1", lambda v: v is None or v >= 1)


def one_of(choices: str) -> Any:
    """A name from the collection at the dotted path `choices`, imported when checked (composing needs no torch)."""
    return field(default=MISSING, metadata={"choices": choices})


@dataclass
class ModelConfig:
    name: str = one_of("mnist_exp.models.MODELS")
    activation: str = one_of("mnist_exp.models.ACTIVATIONS")


@schema("lenet5")
class LeNet5Config(ModelConfig):  # its own name in Hydra's errors; LeNet-5 has only the settings every model has
    pass


@schema("lenet5_32")
class LeNet532Config(ModelConfig):
    pooling: str = one_of("mnist_exp.models.POOLING")


@schema("mlp")
class MLPConfig(ModelConfig):
    hidden_layers: int = at_least(1)
    parity_with: str = one_of("mnist_exp.models.LENET5_LAYOUTS")


@dataclass
class OptimizerConfig:
    """A torch.optim class, built by hydra.utils.instantiate (mnist_exp.training.make_optimizer)."""

    _target_: str = MISSING
    _partial_: bool = MISSING  # the parameters and regularizer.l2's weight decay come when it is built
    name: str = MISSING  # how run names and tables call it
    lr: float = above(0)


@schema("sgd")
class SGDConfig(OptimizerConfig):
    momentum: float = within(0, 1)
    nesterov: bool = MISSING


@schema("adam")
class AdamConfig(OptimizerConfig):
    betas: list[float] = ranged("two values in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v))


@schema("l2")
class L2Config:
    weight_decay: float = at_least(0)


@schema("dropout")
class DropoutConfig:
    p: float = within(0, 1)


@schema("batchnorm")
class BatchNormConfig:
    momentum: float = within(0, 1, "(]")


@schema("augment")
class AugmentConfig:
    degrees: float = within(0, 180, "[]")
    translate: float = within(0, 1)
    scale: list[float] = ranged("[min, max] with 0 < min <= max", lambda v: len(v) == 2 and 0 < v[0] <= v[1])
    shear: float = within(0, 90)


@schema("elastic")
class ElasticConfig:
    alpha: float = at_least(0, " (pixels)")
    sigma: float = within(0, 6, "(]")  # its Gaussian spans +-4 sigma, which must fit a 28-pixel side


@schema("ema")
class EMAConfig:
    decay: float = within(0, 1)


@schema("swa")
class SWAConfig:
    start: float = within(0, 1)

    @staticmethod
    def cross_check(node, cfg) -> Iterator[str]:
        if "ema" in cfg.regularizer:
            yield "regularizer=[ema,swa]: the run delivers one average of its weights; choose ema or swa"


@schema("label_smoothing")
class LabelSmoothingConfig:
    epsilon: float = within(0, 1)


@schema("early_stopping")
class EarlyStoppingConfig:
    patience: int = at_least(1)
    min_delta: float = at_least(0)

    @staticmethod
    def cross_check(node, cfg) -> Iterator[str]:
        if cfg.data.validation_size < 1:
            yield (
                "regularizer=early_stopping watches the validation loss: hold out a validation "
                "split with data.validation_size=N (e.g. data.validation_size=1000)"
            )


@dataclass
class SchedulerConfig:
    """A torch.optim.lr_scheduler class or a function making one (mnist_exp.training.make_scheduler)."""

    _target_: str = MISSING
    _partial_: bool = MISSING  # the optimizer comes when it is built
    name: str = MISSING  # how run names and tables call it


@schema("step")
class StepSchedulerConfig(SchedulerConfig):
    step_size: int = at_least(1, " (epochs)", epochs=True)
    gamma: float = within(0, 1, "(]")


@schema("cosine")
class CosineSchedulerConfig(SchedulerConfig):
    warmup_epochs: int = field(default=MISSING, metadata={"epochs": True})
    min_lr: float = MISSING

    @staticmethod
    def cross_check(node, cfg) -> Iterator[str]:
        epochs, lr = cfg.trainer.epochs, cfg.optimizer.lr
        if not 0 <= node.warmup_epochs < epochs:
            yield out_of_range("scheduler.warmup_epochs", node.warmup_epochs, f">= 0 and below trainer.epochs={epochs}")
        if not 0 <= node.min_lr < lr:
            yield out_of_range("scheduler.min_lr", node.min_lr, f">= 0 and below optimizer.lr={lr}")


@schema("onecycle")
class OneCycleSchedulerConfig(SchedulerConfig):
    max_lr: float = above(0)
    pct_start: float = within(0, 1, "()")
    div_factor: float = at_least(1)
    final_div_factor: float = at_least(1)
    cycle_momentum: bool = MISSING

    @staticmethod
    def cross_check(node, cfg) -> Iterator[str]:
        if node.cycle_momentum and cfg.optimizer.get("momentum", 1) == 0:
            yield (
                "scheduler.cycle_momentum=true cycles SGD's momentum, which is 0 here: "
                "set optimizer.momentum > 0 or scheduler.cycle_momentum=false"
            )


@dataclass
class DataConfig:
    root: str = MISSING
    source: str = one_of("mnist_exp.data.SOURCES")
    cache_dir: str = MISSING
    limit_train: int | None = optional_count()
    limit_test: int | None = optional_count()
    validation_size: int = at_least(0)
    mean: float | None = MISSING  # null: the training split's own
    std: float | None = ranged("null or > 0", lambda v: v is None or v > 0)


@dataclass
class TrainerConfig:
    epochs: int = at_least(1)
    batch_size: int = at_least(1)
    eval_batch_size: int = at_least(1)
    seed: int = at_least(0)
    device: str = ranged("auto, cpu, mps, cuda or cuda:N", lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v))
    threads: int | None = optional_count()
    checkpoint_dir: str = MISSING


@dataclass
class MLflowConfig:
    tracking_uri: str = MISSING
    experiment: str = ranged("a non-empty name", lambda v: bool(v.strip()))
    system_metrics: bool = MISSING
    extends: str | None = MISSING


@schema("train")
class TrainConfig:
    model: Any = MISSING  # model, optimizer and scheduler: each option file attaches its own schema
    optimizer: Any = MISSING
    regularizer: Any = MISSING  # they compose: each attaches the schema of its own sub-key (l2, dropout, ...)
    scheduler: Any = MISSING  # empty for the course's constant learning rate
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    force: bool = MISSING

    @staticmethod
    def cross_check(node, cfg) -> Iterator[str]:
        from mnist_exp.regularization import REGULARIZERS

        for key in cfg.regularizer:
            if key not in REGULARIZERS:
                yield f"regularizer.{key} is not a regularizer this project applies: use {', '.join(REGULARIZERS)}"

    # hydra/launcher=parallel's hooks (mnist_exp/launcher.py), in mnist_exp/sweep.py: composing needs no torch.
    @staticmethod
    def launch_plan(cfg, threads: int | None = None) -> tuple[float, int | None]:
        return import_module("mnist_exp.sweep").launch_plan(cfg, threads)

    @staticmethod
    def worker_died(cfg, pid: int, cause: str) -> None:
        return import_module("mnist_exp.sweep").worker_died(cfg, pid, cause)


def register() -> None:
    """Make the schemas known to Hydra before composing; outside any group, they stay out of `train.py --help`."""
    for name, node in SCHEMAS.items():
        ConfigStore.instance().store(name=name, node=node)


def in_epochs(node) -> list[str]:
    """The keys of a scheduler node that its schema gives in epochs (mnist_exp.training.make_scheduler)."""
    schema = OmegaConf.get_type(node)
    return [f.name for f in fields(schema) if f.metadata.get("epochs")] if is_dataclass(schema) else []
