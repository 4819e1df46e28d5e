"""What a logged model ships besides its weights: the network's wrapper and its pyfunc loader.

Logged models carry this file and models.py (MLflow's code_paths), so they load as nn.Modules
where this repository is not installed. Keep both importable with torch and numpy alone.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

SIDE = 28
EXPECTED = (
    f"expected digits as uint8 pixels 0-255 or floats in [0, 1], shaped ({SIDE}, {SIDE}), "
    f"(N, {SIDE}, {SIDE}) or (N, {SIDE * SIDE})"
)


class PixelClassifier(nn.Module):
    """The trained network as it is shipped: pixels [N, 28, 28] in (raw uint8, or floats in [0, 1]),
    ten logits out. It scales and normalizes exactly as training's InputPipeline does."""

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.unsqueeze(1).float()
        if not pixels.is_floating_point():
            x = x.div(255)
        return self.model(x.sub(self.mean).div(self.std))


def as_pixels(data) -> torch.Tensor:
    """One image, a batch, or a batch flattened to 784 columns (array, DataFrame or nested lists from
    JSON) as a [N, 28, 28] tensor; anything else is refused in one line."""
    array = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data)
    if array.shape == (SIDE, SIDE):
        array = array[None]
    elif array.ndim == 2 and array.shape[1] == SIDE * SIDE:
        array = array.reshape(-1, SIDE, SIDE)
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE) or array.shape[0] == 0:
        raise ValueError(f"{EXPECTED}; got shape {np.shape(data)}")
    if array.dtype == np.uint8:
        return torch.tensor(array)  # a copy: the input may be read-only
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:  # JSON's integers
        return torch.from_numpy(array.astype(np.uint8))
    if np.issubdtype(array.dtype, np.floating) and array.min() >= 0 and array.max() <= 1:  # NaN fails both
        return torch.from_numpy(array.astype(np.float32))
    span = f" from {array.min()} to {array.max()}" if np.issubdtype(array.dtype, np.number) else ""
    raise ValueError(f"{EXPECTED}; got {array.dtype} values{span}")


class Predictor:
    """The pyfunc flavour: logits [N, 10] for whatever as_pixels accepts."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()

    def predict(self, data, params=None) -> np.ndarray:
        with torch.no_grad():
            return self.model(as_pixels(data)).numpy()


def _load_pyfunc(data_path: str, model_config=None) -> Predictor:
    """MLflow's pyfunc loader hook; data_path is the model's data/ folder."""
    import mlflow.pytorch

    return Predictor(mlflow.pytorch.load_model(os.path.dirname(os.path.abspath(data_path))))
