"""LeNet-5 (on 28x28 input, or the paper's 32x32 layout) and an MLP of the same size, built from the `model` group."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn


class ScaledTanh(nn.Module):
    """The paper's squashing function, f(a) = 1.7159 tanh(2a/3) (LeCun et al. 1998, appendix A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2 / 3))


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "scaled_tanh": ScaledTanh}
POOLING = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
LENET5_LAYOUTS = {"lenet5": 0, "lenet5_32": 2}  # model.name -> padding of the 28x28 input
MODELS = (*LENET5_LAYOUTS, "mlp")  # the model.name values build_model builds
NUM_CLASSES = 10
INPUT_PIXELS = 28 * 28
PARITY_TOLERANCE = 0.02  # the MLP's parameter count stays within 2% of LeNet-5's


@dataclass(frozen=True)
class LayerSwitches:
    """Architecture switches that regularizers turn on (mnist_exp.regularization)."""

    dropout: float = 0.0  # probability; 0 = no dropout layers at all
    batchnorm_momentum: float | None = None  # None = no batch norm layers


def _hidden_block(layer: nn.Module, width: int, activation: str, switches: LayerSwitches, dims: int) -> list[nn.Module]:
    """layer -> [batch norm] -> activation -> [dropout]; dropout only on fully connected blocks."""
    block = [layer]
    if switches.batchnorm_momentum is not None:
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        block.append(norm(width, momentum=switches.batchnorm_momentum))
    block.append(ACTIVATIONS[activation]())  # names are checked once, before anything is built (schema.one_of)
    if dims == 1 and switches.dropout > 0:
        block.append(nn.Dropout(switches.dropout))
    return block


class LeNet5(nn.Module):
    """conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120 -> fc 84 -> fc 10; padding=2: the paper's 32x32 layout."""

    def __init__(self, activation: str, switches: LayerSwitches, padding: int = 0, pooling: str = "max"):
        super().__init__()
        side = ((28 + 2 * padding - 4) // 2 - 4) // 2  # after both convolutions and pools
        self.features = nn.Sequential(
            *_hidden_block(nn.Conv2d(1, 6, kernel_size=5, padding=padding), 6, activation, switches, dims=2),
            POOLING[pooling](2),
            *_hidden_block(nn.Conv2d(6, 16, kernel_size=5), 16, activation, switches, dims=2),
            POOLING[pooling](2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            *_hidden_block(nn.Linear(16 * side * side, 120), 120, activation, switches, dims=1),
            *_hidden_block(nn.Linear(120, 84), 84, activation, switches, dims=1),
            nn.Linear(84, NUM_CLASSES),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    def __init__(self, hidden_widths: list[int], activation: str, switches: LayerSwitches):
        super().__init__()
        widths = [INPUT_PIXELS, *hidden_widths]
        hidden = [_hidden_block(nn.Linear(i, o), o, activation, switches, dims=1) for i, o in zip(widths, widths[1:])]
        self.layers = nn.Sequential(nn.Flatten(), *itertools.chain(*hidden), nn.Linear(widths[-1], NUM_CLASSES))

    def forward(self, x):
        return self.layers(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parity_width(target: int, hidden_layers: int, activation: str, switches: LayerSwitches) -> int:
    """The shared hidden width whose MLP comes closest to `target` parameters."""

    def size(width: int) -> int:
        return count_parameters(MLP([width] * hidden_layers, activation, switches))

    # Each MLP built here draws from torch's generator before the delivered one: another search changes its weights.
    low, high = 1, 1
    while size(high) < target:  # parameter count grows with width: bracket, then bisect
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if size(middle) < target else (low, middle)
    return min((low, high), key=lambda width: abs(size(width) - target))


@dataclass(frozen=True)
class BuiltModel:
    model: nn.Module
    parameters: int
    lenet5_parameters: int  # the yardstick for the MLP's size; equals `parameters` for LeNet-5
    description: str


def build_model(model_cfg, switches: LayerSwitches) -> BuiltModel:
    """The configured network; the MLP's width is matched to the LeNet-5 layout it names (model.parity_with)."""
    if model_cfg.name in LENET5_LAYOUTS:
        # Not a default: the 28x28 layout has no pooling setting (its runs' identities have none); it max-pools.
        padding = LENET5_LAYOUTS[model_cfg.name]
        model = LeNet5(model_cfg.activation, switches, padding, model_cfg.get("pooling", "max"))
        parameters = count_parameters(model)
        side = 28 + 2 * padding
        return BuiltModel(model, parameters, parameters, f"LeNet-5 ({side}x{side} input)")
    yardstick = model_cfg.parity_with
    target = count_parameters(LeNet5(model_cfg.activation, switches, LENET5_LAYOUTS[yardstick]))  # pooling: no weights
    width = parity_width(target, model_cfg.hidden_layers, model_cfg.activation, switches)
    mlp = MLP([width] * model_cfg.hidden_layers, model_cfg.activation, switches)
    parameters = count_parameters(mlp)
    if abs(parameters - target) > PARITY_TOLERANCE * target:
        raise ValueError(
            f"no MLP with model.hidden_layers={model_cfg.hidden_layers} comes within "
            f"{PARITY_TOLERANCE:.0%} of {yardstick}'s {target} parameters (best: {parameters})"
        )
    widths = " -> ".join(str(w) for w in [INPUT_PIXELS, *[width] * model_cfg.hidden_layers, NUM_CLASSES])
    return BuiltModel(mlp, parameters, target, f"MLP {widths}")
