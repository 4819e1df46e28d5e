"""The logged model's wrapper that takes pixels as people hand them; ships with models.py (torch and MLflow only)."""

from __future__ import annotations

import json

import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from torch import nn

SIDE = 28
EXPECTED = (
    f"expected digits as integer pixels 0-255 or floats in [0, 1], shaped ({SIDE}, {SIDE}), "
    f"(N, {SIDE}, {SIDE}) or (N, {SIDE * SIDE})"
)


class BadPixels(MlflowException, ValueError):
    """An input the model refuses, and why, in one line: MLflow's scoring server answers with serialize_as_json(),
    which would otherwise put the whole input before the reason."""

    def __init__(self, reason: str):
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)
        self.reason = reason

    def serialize_as_json(self) -> str:
        return json.dumps({"error_code": self.error_code, "message": self.reason})


class PixelClassifier(nn.Module):
    """The trained network as shipped: pixels in (as_pixels), scaled and normalized as training's InputPipeline does."""

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(as_pixels(pixels).unsqueeze(1).sub(self.mean).div(self.std))


def as_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """One image or a batch (EXPECTED) as floats [N, 28, 28] in [0, 1]; anything else raises BadPixels."""
    shape = tuple(pixels.shape)
    if shape == (SIDE, SIDE) or (len(shape) == 2 and shape[1] == SIDE * SIDE):
        pixels = pixels.reshape(-1, SIDE, SIDE)
    if pixels.dim() != 3 or pixels.shape[1:] != (SIDE, SIDE) or pixels.shape[0] == 0:
        raise BadPixels(f"{EXPECTED}; got shape {shape}")
    dtype = str(pixels.dtype).removeprefix("torch.")
    if pixels.dtype == torch.bool or pixels.is_complex():
        raise BadPixels(f"{EXPECTED}; got {dtype} values")
    low, high, floating = pixels.min().item(), pixels.max().item(), pixels.is_floating_point()
    if low >= 0 and high <= (1 if floating else 255):  # integers: uint8, or JSON's as int64; NaN fails
        return pixels.float() if floating else pixels.float().div(255)
    # MLflow's pytorch flavour hands a DataFrame's columns over as float32, raw pixels too
    hint = " (raw pixels as floats: divide them by 255)" if floating and low >= 0 and high <= 255 else ""
    raise BadPixels(f"{EXPECTED}; got {dtype} values from {low} to {high}{hint}")
