"""Types of every config key, so Hydra rejects `trainer.epochs=abc` or `model.foo=1` itself.

Only types live here: every field is MISSING and gets its value from the YAML files in
conf/, the single source of defaults. Value ranges are checked in mnist_exp.validation.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LeNet5Config:
    name: str = MISSING
    activation: str = MISSING


@dataclass
class LeNet532Config:
    name: str = MISSING
    activation: str = MISSING
    pooling: str = MISSING


@dataclass
class MLPConfig:
    name: str = MISSING
    activation: str = MISSING
    hidden_layers: int = MISSING
    parity_with: str = MISSING


@dataclass
class SGDConfig:
    name: str = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamConfig:
    name: str = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING


@dataclass
class L2Config:
    weight_decay: float = MISSING


@dataclass
class DropoutConfig:
    p: float = MISSING


@dataclass
class BatchNormConfig:
    momentum: float = MISSING


@dataclass
class AugmentConfig:
    degrees: float = MISSING
    translate: float = MISSING
    scale: list[float] = MISSING


@dataclass
class LabelSmoothingConfig:
    epsilon: float = MISSING


@dataclass
class EarlyStoppingConfig:
    patience: int = MISSING
    min_delta: float = MISSING


@dataclass
class StepSchedulerConfig:
    name: str = MISSING
    step_size: int = MISSING
    gamma: float = MISSING


@dataclass
class CosineSchedulerConfig:
    name: str = MISSING
    warmup_epochs: int = MISSING
    min_lr: float = MISSING


@dataclass
class OneCycleSchedulerConfig:
    name: str = MISSING
    max_lr: float = MISSING
    pct_start: float = MISSING
    div_factor: float = MISSING
    final_div_factor: float = MISSING
    cycle_momentum: bool = MISSING


@dataclass
class DataConfig:
    root: str = MISSING
    source: str = MISSING
    cache_dir: str = MISSING
    limit_train: int | None = MISSING
    limit_test: int | None = MISSING
    validation_size: int = MISSING
    mean: float = MISSING
    std: float = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    seed: int = MISSING
    device: str = MISSING
    threads: int | None = MISSING
    checkpoint_dir: str = MISSING


@dataclass
class MLflowConfig:
    tracking_uri: str = MISSING
    experiment: str = MISSING
    system_metrics: bool = MISSING


@dataclass
class TrainConfig:
    # model and optimizer differ per option: each option file attaches its own schema.
    model: Any = MISSING
    optimizer: Any = MISSING
    # Regularizers compose; each attaches the schema of its own sub-key (l2, dropout, ...).
    regularizer: Any = MISSING
    scheduler: Any = MISSING  # empty for the course's constant learning rate
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    force: bool = MISSING


@dataclass
class OptunaSweeperConfig:
    """hydra.sweeper under hydra/sweeper=optuna (mnist_exp/search.py)."""

    _target_: str = MISSING
    _recursive_: bool = MISSING
    direction: str = MISSING
    study_name: str | None = MISSING
    storage: str | None = MISSING
    n_trials: int = MISSING
    n_jobs: int = MISSING
    sampler: Any = MISSING  # an optuna.samplers class and its arguments
    pruner: Any = MISSING  # an optuna.pruners class and its arguments
    params: dict[str, Any] | None = MISSING


def register() -> None:
    """Make the schemas visible to Hydra; call before composing (train.py, analyze.py, tests).

    Option files attach theirs by absolute name (`/sgd_schema@_here_`); stored outside any
    group, schemas stay out of `train.py --help`'s list of options.
    """
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="lenet5_schema", node=LeNet5Config)
    store.store(name="lenet5_32_schema", node=LeNet532Config)
    store.store(name="mlp_schema", node=MLPConfig)
    store.store(name="sgd_schema", node=SGDConfig)
    store.store(name="adam_schema", node=AdamConfig)
    store.store(name="l2_schema", node=L2Config)
    store.store(name="dropout_schema", node=DropoutConfig)
    store.store(name="batchnorm_schema", node=BatchNormConfig)
    store.store(name="augment_schema", node=AugmentConfig)
    store.store(name="label_smoothing_schema", node=LabelSmoothingConfig)
    store.store(name="early_stopping_schema", node=EarlyStoppingConfig)
    store.store(name="step_schema", node=StepSchedulerConfig)
    store.store(name="cosine_schema", node=CosineSchedulerConfig)
    store.store(name="onecycle_schema", node=OneCycleSchedulerConfig)
    store.store(name="optuna_sweeper_schema", node=OptunaSweeperConfig)
