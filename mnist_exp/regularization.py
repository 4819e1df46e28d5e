"""What each regularizer changes: the model (dropout, batch norm), the optimizer (L2 weight
decay), the training images (augmentation), the training loss (label smoothing) or how long
training goes and which weights it delivers (early stopping). A regularizer is on when its key
is present in the `regularizer` config node; regularizer=[l2,dropout] composes both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnist_exp.models import LayerSwitches

# Canonical order, so regularizer=[dropout,l2] and [l2,dropout] name the same variant.
REGULARIZERS = ("l2", "dropout", "batchnorm", "augment", "label_smoothing", "early_stopping")


def variant_name(regularizer_cfg) -> str:
    """'none', 'l2', 'l2+dropout', ..."""
    present = [name for name in REGULARIZERS if regularizer_cfg.get(name) is not None]
    return "+".join(present) or "none"


def layer_switches(regularizer_cfg) -> LayerSwitches:
    dropout = regularizer_cfg.get("dropout")
    batchnorm = regularizer_cfg.get("batchnorm")
    return LayerSwitches(
        dropout=dropout.p if dropout is not None else 0.0,
        batchnorm_momentum=batchnorm.momentum if batchnorm is not None else None,
    )


def weight_decay(regularizer_cfg) -> float:
    l2 = regularizer_cfg.get("l2")
    return l2.weight_decay if l2 is not None else 0.0


def label_smoothing(regularizer_cfg) -> float:
    smoothing = regularizer_cfg.get("label_smoothing")
    return smoothing.epsilon if smoothing is not None else 0.0


def early_stopping(regularizer_cfg) -> EarlyStopping | None:
    stopping = regularizer_cfg.get("early_stopping")
    return EarlyStopping(stopping.patience, stopping.min_delta) if stopping is not None else None


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` epochs whose validation loss did not beat the best by more than min_delta."""

    patience: int
    min_delta: float

    def improved(self, val_loss: float, best_val_loss: float | None) -> bool:
        return best_val_loss is None or val_loss < best_val_loss - self.min_delta


def train_augmentation(regularizer_cfg) -> RandomAffine | None:
    augment = regularizer_cfg.get("augment")
    if augment is None:
        return None
    return RandomAffine(augment.degrees, augment.translate, tuple(augment.scale))


class RandomAffine:
    """A random rotation, shift and zoom per image, applied to a whole batch at once.

    One affine_grid + grid_sample call replaces a per-image PIL transform; parameters are
    drawn from torch's global generator, which training reseeds every epoch.
    """

    def __init__(self, degrees: float, translate: float, scale: tuple[float, float]):
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [N, 1, H, W] with a zero background (raw pixels scaled to [0, 1])."""
        n = images.shape[0]
        angle = (torch.rand(n) * 2 - 1) * math.radians(self.degrees)
        zoom = self.scale[0] + torch.rand(n) * (self.scale[1] - self.scale[0])
        # affine_grid works in [-1, 1] coordinates, so a shift of a fraction f of the image is 2f.
        shift = (torch.rand(n, 2) * 2 - 1) * (2 * self.translate)
        # The grid maps output pixels to input positions: sampling at 1/zoom enlarges by zoom.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)],
            dim=1,
        )
        theta = theta.to(images.device, images.dtype)  # drawn on the CPU, so a GPU run draws the same
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
