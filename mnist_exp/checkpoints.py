"""Per-epoch checkpoints of unfinished runs, written atomically so a kill never leaves half a file."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mnist_exp.data import save_atomically
from mnist_exp.training import EpochMetrics, Training, TrainingState

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    run_id: str  # the MLflow run a resume continues
    model_state: dict
    optimizer_state: dict
    scheduler_state: dict | None
    progress: TrainingState
    averaged_state: dict | None = None  # EMA or SWA: the averaged weights so far

    def restore(self, training: Training) -> TrainingState:
        """Put the weights, their average, optimizer and schedule back into `training`; returns where the run was."""
        training.model.load_state_dict(self.model_state)
        training.optimizer.load_state_dict(self.optimizer_state)
        if training.scheduler is not None:
            training.scheduler.load_state_dict(self.scheduler_state)
        if training.averaged is not None:
            training.averaged.load_state_dict(self.averaged_state)
        return self.progress


def checkpoint_path(checkpoint_dir: str, config_hash: str, data_params: dict[str, str] | None) -> Path:
    """One file per run identity: the requested config and the data it read."""
    data = hashlib.sha256(json.dumps(data_params, sort_keys=True).encode()).hexdigest()[:8]
    return Path(checkpoint_dir) / f"{config_hash}-{data}.pt"


def save(path: Path, run_id: str, training: Training, progress: TrainingState) -> None:
    save_atomically(
        {
            "run_id": run_id,
            "model_state": training.model.state_dict(),
            "optimizer_state": training.optimizer.state_dict(),
            "scheduler_state": training.scheduler.state_dict() if training.scheduler is not None else None,
            "progress": asdict(progress),  # with the best epoch's weights, for early stopping
            "averaged_state": training.averaged.state_dict() if training.averaged is not None else None,
        },
        path,
    )


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None when there is none or it cannot be read."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        progress = payload["progress"]
        history = [EpochMetrics(**metrics) for metrics in progress["history"]]
        return Checkpoint(**{**payload, "progress": TrainingState(**{**progress, "history": history})})
    except Exception as error:  # a damaged checkpoint costs a restart, never a crash
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, error)
        return None


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
