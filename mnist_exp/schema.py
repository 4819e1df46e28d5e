"""Types of every config key, so Hydra rejects `trainer.epochs=abc` or `model.foo=1` itself.

Only types live here: every field is MISSING and gets its value from the YAML files in
conf/, the single source of defaults. Value ranges are checked in mnist_exp.validation.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LeNet5Config:
    name: str = MISSING
    activation: str = MISSING


@dataclass
class MLPConfig:
    name: str = MISSING
    activation: str = MISSING
    hidden_layers: int = MISSING


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
    betas: List[float] = MISSING


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
    scale: List[float] = MISSING


@dataclass
class DataConfig:
    root: str = MISSING
    source: str = MISSING
    cache_dir: str = MISSING
    limit_train: Optional[int] = MISSING
    limit_test: Optional[int] = MISSING
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
    threads: Optional[int] = MISSING
    checkpoint_dir: str = MISSING


@dataclass
class MLflowConfig:
    tracking_uri: str = MISSING
    experiment: str = MISSING


@dataclass
class TrainConfig:
    # model and optimizer differ per option: each option file attaches its own schema.
    model: Any = MISSING
    optimizer: Any = MISSING
    # Regularizers compose; each attaches the schema of its own sub-key (l2, dropout, ...).
    regularizer: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    force: bool = MISSING


def register() -> None:
    """Make the schemas visible to Hydra; call before composing (train.py, analyze.py, tests).

    Option files attach theirs by absolute name (`/sgd_schema@_here_`); stored outside any
    group, schemas stay out of `train.py --help`'s list of options.
    """
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="lenet5_schema", node=LeNet5Config)
    store.store(name="mlp_schema", node=MLPConfig)
    store.store(name="sgd_schema", node=SGDConfig)
    store.store(name="adam_schema", node=AdamConfig)
    store.store(name="l2_schema", node=L2Config)
    store.store(name="dropout_schema", node=DropoutConfig)
    store.store(name="batchnorm_schema", node=BatchNormConfig)
    store.store(name="augment_schema", node=AugmentConfig)
