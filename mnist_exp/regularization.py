"""What each regularizer changes: the model (dropout, batch norm), the optimizer (L2 weight
decay), the training images (augmentation, elastic distortion), the training loss (label smoothing)
or how long training goes and which weights it delivers (early stopping, EMA and SWA of the weights).
A regularizer is on when its key is present in the `regularizer` config node; regularizer=[l2,dropout]
composes both.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from mnist_exp.models import LayerSwitches

# Canonical order, so regularizer=[dropout,l2] and [l2,dropout] name the same variant.
REGULARIZERS = ("l2", "dropout", "batchnorm", "augment", "label_smoothing", "early_stopping", "elastic", "ema", "swa")


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


def weight_averaging(regularizer_cfg, epochs: int) -> WeightAveraging | None:
    ema, swa = regularizer_cfg.get("ema"), regularizer_cfg.get("swa")
    if ema is not None:
        return WeightAveraging(decay=ema.decay)
    if swa is not None:
        return WeightAveraging(start_epoch=math.floor(swa.start * epochs) + 1)
    return None


@dataclass(frozen=True)
class WeightAveraging:
    """The run delivers an average of its weights, one model's worth (torch.optim.swa_utils.AveragedModel):
    EMA after every optimizer step, buffers (batch norm's statistics) averaged alike; or SWA's equal
    average at the end of each epoch from start_epoch on, batch norm's statistics then recomputed for the
    averaged weights (update_bn), as torch's SWA recipe does."""

    decay: float | None = None  # EMA: the average keeps this share of itself per step
    start_epoch: int | None = None  # SWA: the first epoch whose weights are averaged

    def wrap(self, model: nn.Module) -> AveragedModel:
        if self.decay is not None:
            return AveragedModel(model, multi_avg_fn=self._ema, use_buffers=True)
        return AveragedModel(model)

    def _ema(self, averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        """get_ema_multi_avg_fn's update with tf.train.ExponentialMovingAverage's warm-up: the n-th update keeps
        at most (1 + n) / (10 + n) of the average, so the first weights do not linger in it for long runs'
        decays (0.999 still holds 37% of its start after 1,000 steps), and early epochs evaluate a fair model."""
        n = int(updates)
        get_ema_multi_avg_fn(min(self.decay, (1 + n) / (10 + n)))(averaged, current, updates)

    def after_step(self, averaged: AveragedModel, model: nn.Module) -> None:
        if self.decay is not None:
            averaged.update_parameters(model)

    def after_epoch(self, averaged: AveragedModel, model: nn.Module, epoch: int, batches) -> None:
        """SWA: average this epoch's weights in; `batches` (an iterable of input batches) re-estimates batch norm."""
        if self.start_epoch is not None and epoch >= self.start_epoch:
            averaged.update_parameters(model)
            update_bn(batches, averaged)  # returns at once when the model has no batch norm


def train_augmentation(regularizer_cfg) -> Distortion | None:
    augment, elastic = regularizer_cfg.get("augment"), regularizer_cfg.get("elastic")
    if augment is None and elastic is None:
        return None
    return Distortion(
        RandomAffine(augment.degrees, augment.translate, tuple(augment.scale), augment.shear)
        if augment is not None
        else None,
        Elastic(elastic.alpha, elastic.sigma) if elastic is not None else None,
    )


@dataclass(frozen=True)
class Distortion:
    """Each training image's own random affine transform and elastic distortion, a whole batch in one
    grid_sample. torchvision.transforms.v2's RandomAffine and ElasticTransform draw one set of parameters
    per call, shared by every image of a batch; per image, they cost far more (benchmarks/augmentation.py).
    Parameters come from torch's global generator, which training reseeds every epoch."""

    affine: RandomAffine | None
    elastic: Elastic | None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [N, 1, H, W] with a zero background (raw pixels scaled to [0, 1])."""
        n, _, height, width = images.shape
        theta = self.affine.draw(n) if self.affine is not None else IDENTITY.expand(n, 2, 3)
        displacement = self.elastic.draw(n, height, width) if self.elastic is not None else None
        return warp(images, theta, displacement)


IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def warp(images: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Sample each image at its affine map of every output pixel (theta [N, 2, 3], affine_grid's [-1, 1]
    coordinates, y down), moved on by `displacement` [N, H, W, 2] (the same coordinates; as
    torchvision's elastic takes it); outside the frame is black."""
    theta = theta.to(images.device, images.dtype)  # drawn on the CPU, so a GPU run draws the same
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(grid.device, grid.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_matrices(angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, shear: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3]: output position p samples the input at Shear(shear) @ Rotation(angle) @ p / zoom + shift.

    Angles in radians; shift in [-1, 1] coordinates (a shift of 2/side moves the image one pixel the other
    way). With translation 0 this is torchvision.transforms.v2.functional.affine(angle=-degrees(angle),
    scale=zoom, shear=[degrees(shear), 0]), to the rounding (tests/test_regularization.py).
    """
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    return torch.stack(
        [
            torch.stack([(cos + tan * sin) / zoom, (tan * cos - sin) / zoom, shift[:, 0]], dim=1),
            torch.stack([sin / zoom, cos / zoom, shift[:, 1]], dim=1),
        ],
        dim=1,
    )


@dataclass(frozen=True)
class RandomAffine:
    """A random rotation, shift, zoom and shear (parallel to the x axis) per image."""

    degrees: float
    translate: float
    scale: tuple[float, float]
    shear: float = 0.0  # degrees

    def draw(self, n: int) -> torch.Tensor:
        angle = (torch.rand(n) * 2 - 1) * math.radians(self.degrees)
        zoom = self.scale[0] + torch.rand(n) * (self.scale[1] - self.scale[0])
        # affine_grid works in [-1, 1] coordinates, so a shift of a fraction f of the image is 2f.
        shift = (torch.rand(n, 2) * 2 - 1) * (2 * self.translate)
        # Drawn only when asked for, so runs without shear draw exactly what they drew before it existed.
        shear = (torch.rand(n) * 2 - 1) * math.radians(self.shear) if self.shear else torch.zeros(n)
        return affine_matrices(angle, zoom, shift, shear)


@dataclass(frozen=True)
class Elastic:
    """Elastic distortion (Simard et al. 2003): every pixel moved by its own random displacement, uniform in
    [-1, 1] per axis, smoothed by a Gaussian of sigma pixels, scaled by alpha pixels (theirs: 34 and 4)."""

    alpha: float
    sigma: float

    def draw(self, n: int, height: int, width: int) -> torch.Tensor:
        """[n, height, width, 2] displacements in affine_grid's [-1, 1] coordinates, where a pixel is 2/side."""
        noise = torch.rand(n, 2, height, width) * 2 - 1
        smooth = gaussian_blur(noise, self.sigma)
        return smooth.permute(0, 2, 3, 1) * torch.tensor([2 * self.alpha / width, 2 * self.alpha / height])


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision.transforms.v2.functional.gaussian_blur with the kernel ElasticTransform uses (+-4 sigma,
    edges reflected), as two small matrix products: 0.7 ms a batch of 64 where its 2-D convolution
    (33 x 33 at sigma 4) took 11 ms, in one run on 1 thread."""
    height, width = images.shape[-2:]
    return blur_matrix(height, sigma).T.to(images.dtype) @ images @ blur_matrix(width, sigma).to(images.dtype)


@functools.cache
def blur_matrix(side: int, sigma: float) -> torch.Tensor:
    """[side, side]: row i is the blur of the i-th unit vector, so a row vector x blurs to x @ matrix."""
    size = int(8 * sigma + 1) | 1  # odd: torchvision's ElasticTransform's kernel size
    x = torch.linspace(-(size // 2), size // 2, size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    units = F.pad(torch.eye(side, dtype=torch.float64).unsqueeze(1), (size // 2, size // 2), mode="reflect")
    return F.conv1d(units, (kernel / kernel.sum()).view(1, 1, size)).squeeze(1).float()
