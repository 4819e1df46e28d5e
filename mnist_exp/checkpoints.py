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
PARTS = ("model", "optimizer", "scheduler", "averaged")  # of a Training, each saved as <part>_state


@dataclass
class Checkpoint:
    run_id: str  # the MLflow run a resume continues
    model_state: dict
    optimizer_state: dict
    scheduler_state: dict | None
    progress: TrainingState
    averaged_state: dict | None = None  # EMA or SWA: the averaged weights so far

    def restore(self, training: Training) -> TrainingState:
        """Put the weights, optimizer, schedule and average back into `training`; returns where the run was."""
        for part in PARTS:
            if getattr(training, part) is not None:
                getattr(training, part).load_state_dict(getattr(self, f"{part}_state"))
        return self.progress


def checkpoint_path(checkpoint_dir: str, config_hash: str, data_params: dict[str, str] | None) -> Path:
    """One file per run identity: the requested config and the data it read."""
    data = hashlib.sha256(json.dumps(data_params, sort_keys=True).encode()).hexdigest()[:8]
    return Path(checkpoint_dir) / f"{config_hash}-{data}.pt"


def save(path: Path, run_id: str, training: Training, progress: TrainingState) -> None:
    states = {f"{part}_state": getattr(training, part) for part in PARTS}
    states = {key: state.state_dict() if state is not None else None for key, state in states.items()}
    save_atomically({"run_id": run_id, **states, "progress": asdict(progress)}, path)  # progress: with the best weights


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None when there is none or it cannot be read."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        history = [EpochMetrics(**metrics) for metrics in payload["progress"]["history"]]
        return Checkpoint(**{**payload, "progress": TrainingState(**{**payload["progress"], "history": history})})
    except Exception as error:  # a damaged checkpoint costs a restart, never a crash
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, error)
        return None
