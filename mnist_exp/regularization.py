"""What each regularizer changes (docs/configuration.md); one is on when its key is in the `regularizer` node."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from mnist_exp.models import LayerSwitches

# Canonical order, so regularizer=[dropout,l2] and [l2,dropout] name the same variant.
REGULARIZERS = ("l2", "dropout", "batchnorm", "augment", "label_smoothing", "early_stopping", "elastic", "ema", "swa")


def variant_name(regularizer_cfg) -> str:
    """'none', 'l2', 'l2+dropout', ..."""
    return "+".join(name for name in REGULARIZERS if regularizer_cfg.get(name) is not None) or "none"


def layer_switches(regularizer_cfg) -> LayerSwitches:
    dropout = OmegaConf.select(regularizer_cfg, "dropout.p", default=0.0)
    return LayerSwitches(dropout, OmegaConf.select(regularizer_cfg, "batchnorm.momentum", default=None))


def weight_decay(regularizer_cfg) -> float:
    return OmegaConf.select(regularizer_cfg, "l2.weight_decay", default=0.0)


def label_smoothing(regularizer_cfg) -> float:
    return OmegaConf.select(regularizer_cfg, "label_smoothing.epsilon", default=0.0)


def weight_averaging(regularizer_cfg, epochs: int, model: nn.Module) -> WeightAverage | None:
    ema, swa = regularizer_cfg.get("ema"), regularizer_cfg.get("swa")
    if ema is not None:
        return WeightAverage(model, decay=ema.decay)
    return None if swa is None else WeightAverage(model, start_epoch=math.floor(swa.start * epochs) + 1)


class WeightAverage(AveragedModel):
    """The average of the weights a run delivers: EMA's after every step or SWA's per epoch (docs/configuration.md)."""

    def __init__(self, model: nn.Module, decay: float | None = None, start_epoch: int | None = None):
        super().__init__(model, multi_avg_fn=self._ema if decay is not None else None, use_buffers=decay is not None)
        self.decay = decay  # EMA: the average keeps this share of itself per step
        self.start_epoch = start_epoch  # SWA: the first epoch whose weights are averaged

    def _ema(self, averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        """get_ema_multi_avg_fn with TensorFlow's warm-up: 0.999 alone holds 37% of the first weights at step 1,000."""
        n = int(updates)
        get_ema_multi_avg_fn(min(self.decay, (1 + n) / (10 + n)))(averaged, current, updates)

    def after_step(self, model: nn.Module) -> None:
        if self.decay is not None:
            self.update_parameters(model)

    def after_epoch(self, model: nn.Module, epoch: int, batches) -> None:
        """SWA: average this epoch's weights in; `batches` (input batches) re-estimate batch norm."""
        if self.start_epoch is not None and epoch >= self.start_epoch:
            self.update_parameters(model)
            update_bn(batches, self)  # returns at once when the model has no batch norm


def train_augmentation(regularizer_cfg) -> Distortion | None:
    aug, elastic = regularizer_cfg.get("augment"), regularizer_cfg.get("elastic")
    if aug is None and elastic is None:
        return None
    affine = None if aug is None else RandomAffine(aug.degrees, aug.translate, tuple(aug.scale), aug.shear)
    return Distortion(affine, None if elastic is None else Elastic(elastic.alpha, elastic.sigma))


@dataclass(frozen=True)
class Distortion:
    """Each training image's own random affine transform and elastic distortion, a batch in one grid_sample."""

    affine: RandomAffine | None
    elastic: Elastic | None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        theta = self.affine.draw(n) if self.affine is not None else IDENTITY.expand(n, 2, 3)
        displacement = self.elastic.draw(n, height, width) if self.elastic is not None else None
        return warp(images, theta, displacement)


IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def warp(images: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Sample each image at theta's affine map (affine_grid's) of every output pixel, moved on by `displacement`
    [N, H, W, 2] (as torchvision's elastic takes it); outside the frame is black."""
    theta = theta.to(images.device, images.dtype)  # drawn on the CPU, so a GPU run draws the same
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement.to(grid.device, grid.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_matrices(angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, shear: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3]: output position p samples the input at Shear(shear) @ Rotation(angle) @ p / zoom + shift, in
    radians and [-1, 1] coordinates: torchvision's affine(-degrees(angle), zoom, [degrees(shear), 0]) at shift 0."""
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    top = [(cos + tan * sin) / zoom, (tan * cos - sin) / zoom, shift[:, 0]]
    return torch.stack([*top, sin / zoom, cos / zoom, shift[:, 1]], dim=1).view(-1, 2, 3)


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
        shift = (torch.rand(n, 2) * 2 - 1) * (2 * self.translate)  # a fraction f of the image is 2f in [-1, 1]
        # Drawn only when asked for, so runs without shear draw exactly what they drew before it existed.
        shear = (torch.rand(n) * 2 - 1) * math.radians(self.shear) if self.shear else torch.zeros(n)
        return affine_matrices(angle, zoom, shift, shear)


@dataclass(frozen=True)
class Elastic:
    """Simard et al. 2003: uniform noise in [-1, 1] per pixel and axis, blurred by sigma, scaled by alpha (pixels)."""

    alpha: float
    sigma: float

    def draw(self, n: int, height: int, width: int) -> torch.Tensor:
        """[n, height, width, 2] in affine_grid's [-1, 1] coordinates, where a pixel is 2/side."""
        smooth = gaussian_blur(torch.rand(n, 2, height, width) * 2 - 1, self.sigma)
        return smooth.permute(0, 2, 3, 1) * torch.tensor([2 * self.alpha / width, 2 * self.alpha / height])


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """torchvision's gaussian_blur with ElasticTransform's kernel (+-4 sigma, edges reflected) as two matrix
    products: 0.7 ms a batch of 64 where its 2-D convolution (33 x 33 at sigma 4) took 11 ms, on 1 thread."""
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
