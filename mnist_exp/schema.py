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
    """Make the schemas visible to Hydra; call before composing (train.py, analyze.py, tests)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="schema/model", name="lenet5", node=LeNet5Config)
    store.store(group="schema/model", name="mlp", node=MLPConfig)
    store.store(group="schema/optimizer", name="sgd", node=SGDConfig)
    store.store(group="schema/optimizer", name="adam", node=AdamConfig)
    store.store(group="schema/regularizer", name="l2", node=L2Config)
    store.store(group="schema/regularizer", name="dropout", node=DropoutConfig)
    store.store(group="schema/regularizer", name="batchnorm", node=BatchNormConfig)
    store.store(group="schema/regularizer", name="augment", node=AugmentConfig)
