"""The training loop: whole-batch gathers from in-memory uint8 tensors, no DataLoader. Every epoch reseeds
torch's generator from (seed, epoch), so epoch k is the same whether the run started at 1 or resumed at k."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from mnist_exp import regularization
from mnist_exp.data import MNIST, Split, normalization
from mnist_exp.schema import in_epochs


class Diverged(RuntimeError):
    """The loss became NaN or infinite; training further would only produce garbage."""


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float  # averaged over the epoch's batches, in training mode
    train_acc: float
    test_loss: float
    test_acc: float
    epoch_time_s: float
    val_loss: float | None = None  # only with a validation split (data.validation_size)
    val_acc: float | None = None
    lr: float | None = None  # the learning rate of the epoch's first batch

    def as_metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "epoch" and v is not None}


@dataclass
class TrainingState:
    """Everything a checkpoint must restore besides the model, optimizer and scheduler."""

    history: list[EpochMetrics] = field(default_factory=list)
    train_time_s: float = 0.0
    best_epoch: int | None = None  # early stopping: the epoch with the lowest validation loss so far,
    best_state: dict | None = None  # its weights,
    stopped_early: bool = False  # and whether patience ran out

    @property
    def epochs_done(self) -> int:
        return len(self.history)


@dataclass
class Training:
    """What updates one run's weights, built once from its config."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    inputs: InputPipeline
    device: torch.device
    label_smoothing: float = 0.0
    early_stopping: DictConfig | None = None  # regularizer.early_stopping: patience, min_delta
    averaged: regularization.WeightAverage | None = None  # EMA or SWA: its average of the model's weights

    @property
    def delivered(self) -> nn.Module:
        """The weights evaluated and delivered: their average once there is one, else the trained ones."""
        if self.averaged is not None and self.averaged.n_averaged > 0:
            return self.averaged.module
        return self.model

    @classmethod
    def from_config(cls, model: nn.Module, cfg, device: torch.device, train: Split) -> Training:
        """What a run's config asks for around `model`, which trains on `train`."""
        regularizer, epochs = cfg.regularizer, cfg.trainer.epochs
        optimizer = make_optimizer(model, cfg.optimizer, regularization.weight_decay(regularizer))
        scheduler = make_scheduler(optimizer, cfg.scheduler, epochs, math.ceil(len(train) / cfg.trainer.batch_size))
        inputs = InputPipeline(*normalization(cfg.data, train), regularization.train_augmentation(regularizer))
        smoothing = regularization.label_smoothing(regularizer)
        averaged = regularization.weight_averaging(regularizer, epochs, model)
        return cls(model, optimizer, scheduler, inputs, device, smoothing, regularizer.get("early_stopping"), averaged)


@dataclass
class InputPipeline:
    """Raw uint8 pixels -> [0, 1] -> optional augmentation -> normalized float batch."""

    mean: float
    std: float
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, raw: torch.Tensor, train: bool) -> torch.Tensor:
        x = raw.unsqueeze(1).float().div_(255)
        if train and self.augment is not None:
            x = self.augment(x)  # in pixel space, where the background is exactly 0
        return _channels_last(x.sub_(self.mean).div_(self.std))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """A one-channel CPU batch in channels-last strides, nothing copied: oneDNN's faster NHWC (benchmarks/README.md)."""
    if x.device.type != "cpu" or x.dim() != 4 or x.shape[1] != 1 or not x.is_contiguous():
        return x
    return x.as_strided(x.shape, (x.stride(0), 1, x.stride(2), x.stride(3)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name} but no CUDA device is available; use trainer.device=cpu")
    return torch.device(name)


def make_optimizer(model: nn.Module, optimizer_cfg, weight_decay: float) -> torch.optim.Optimizer:
    """The `optimizer` group's `_target_` over the model's parameters, with regularizer.l2's weight decay."""
    # Fused kernels update every parameter in one call: 4-25% more images/s on CPU (benchmarks/README.md).
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in model.parameters()) else {}
    return _build(optimizer_cfg, model.parameters(), weight_decay=weight_decay, optional=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, scheduler_cfg, epochs: int, batches_per_epoch: int):
    """The `scheduler` group's `_target_` in batches (docs/extending.md), stepped after every batch; None for none."""
    if not scheduler_cfg:
        return None
    lengths = {key: scheduler_cfg[key] * batches_per_epoch for key in in_epochs(scheduler_cfg)}
    return _build(scheduler_cfg, optimizer, **lengths, optional={"total_steps": epochs * batches_per_epoch})


def _build(node, *args, optional: dict | None = None, **kwargs):
    """Instantiate a `_partial_` node (its `name` is a label) with the `optional` arguments its target takes."""
    build = instantiate({key: value for key, value in node.items() if key != "name"}, _convert_="all")
    takes = inspect.signature(build.func).parameters
    return build(*args, **kwargs, **{key: value for key, value in (optional or {}).items() if key in takes})


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_epochs: int, min_lr: float, total_steps: int):
    """conf/scheduler/cosine.yaml's: CosineAnnealingLR down to min_lr after a linear warm-up (in batches by now)."""
    schedulers = torch.optim.lr_scheduler
    cosine = schedulers.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_epochs, eta_min=min_lr)
    if not warmup_epochs:
        return cosine
    ramp = schedulers.LinearLR(optimizer, start_factor=1 / warmup_epochs, total_iters=warmup_epochs)
    return schedulers.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup_epochs])


def seed_epoch(seed: int, epoch: int) -> None:
    torch.manual_seed(seed * 100_003 + epoch)


def train_epoch(
    training: Training, split: Split, batch_size: int, on_batch: Callable[[float], None] | None = None
) -> tuple[float, float]:
    """One pass over `split` in random order; returns (mean loss, accuracy)."""
    model, optimizer, device = training.model, training.optimizer, training.device
    model.train()
    images, labels = split.images.to(device), split.labels.to(device)
    order = torch.randperm(len(labels)).to(device)
    loss_sum, correct = 0.0, torch.zeros((), dtype=torch.int64, device=device)
    for number, batch in enumerate(order.split(batch_size), 1):
        x, y = training.inputs(images[batch], train=True), labels[batch]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=training.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if training.averaged is not None:
            training.averaged.after_step(model)
        if training.scheduler is not None:
            training.scheduler.step()
        batch_loss = loss.item()
        if not math.isfinite(batch_loss):
            raise Diverged(
                f"training loss became {batch_loss} at batch {number}; lower optimizer.lr or add regularization"
            )
        loss_sum += batch_loss * len(batch)
        correct += (logits.argmax(1) == y).sum()  # summed on the device: no second sync per batch
        if on_batch is not None:
            on_batch(batch_loss)
    return loss_sum / len(order), int(correct) / len(order)


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, batch_size: int, inputs: InputPipeline, device: torch.device
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predicted labels) of `split`, in evaluation mode."""
    model.eval()
    loss_sum, predictions = 0.0, []
    for images, labels in zip(split.images.split(batch_size), split.labels.split(batch_size)):
        logits = model(inputs(images.to(device), train=False))
        loss_sum += F.cross_entropy(logits, labels.to(device), reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
    predicted = torch.cat(predictions)
    return loss_sum / len(split), int((predicted == split.labels).sum()) / len(split), predicted


def fit(
    training: Training, data: MNIST, trainer_cfg, progress: TrainingState, on_epoch_end, on_batch=None
) -> TrainingState:
    """Train from `progress.epochs_done` to trainer.epochs or the early stop; on_epoch_end(progress) after each."""
    inputs, device, size = training.inputs, training.device, trainer_cfg.eval_batch_size
    for epoch in range(progress.epochs_done + 1, trainer_cfg.epochs + 1):
        if progress.stopped_early:
            break
        seed_epoch(trainer_cfg.seed, epoch)
        lr = training.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss, train_acc = train_epoch(training, data.train, trainer_cfg.batch_size, on_batch)
        if training.averaged is not None:  # SWA re-estimates batch norm on the plain training images
            batches = (inputs(images.to(device), train=False) for images in data.train.images.split(size))
            training.averaged.after_epoch(training.model, epoch, batches)
        test_loss, test_acc, _ = evaluate(training.delivered, data.test, size, inputs, device)
        val_loss = val_acc = None
        if data.validation is not None:
            val_loss, val_acc, _ = evaluate(training.delivered, data.validation, size, inputs, device)
        elapsed = time.perf_counter() - started
        metrics = EpochMetrics(epoch, train_loss, train_acc, test_loss, test_acc, elapsed, val_loss, val_acc, lr)
        progress.history.append(metrics)
        progress.train_time_s += elapsed
        if training.early_stopping is not None:
            _watch(training, progress)
        on_epoch_end(progress)
    if progress.best_state is not None:
        training.delivered.load_state_dict(progress.best_state)
    return progress


def _watch(training: Training, progress: TrainingState) -> None:
    """Early stopping's bookkeeping after an epoch: a new best keeps its weights; no news costs patience."""
    latest, stopping = progress.history[-1], training.early_stopping
    best = progress.history[progress.best_epoch - 1].val_loss if progress.best_epoch else None
    if best is None or latest.val_loss < best - stopping.min_delta:
        progress.best_epoch = latest.epoch
        progress.best_state = {key: value.detach().clone() for key, value in training.delivered.state_dict().items()}
    elif latest.epoch - progress.best_epoch >= stopping.patience:
        progress.stopped_early = True
