"""LeNet-5 and an MLP of the same size, built from the `model` config group."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
NUM_CLASSES = 10
INPUT_PIXELS = 28 * 28
PARITY_TOLERANCE = 0.02  # the MLP's parameter count stays within 2% of LeNet-5's


@dataclass(frozen=True)
class Features:
    """Architecture switches that regularizers turn on (mnist_exp.regularization)."""

    dropout: float = 0.0  # probability; 0 = no dropout layers at all
    batchnorm_momentum: float | None = None  # None = no batch norm layers


def activation_class(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _hidden_block(layer: nn.Module, width: int, activation: str, features: Features, dims: int) -> list[nn.Module]:
    """layer -> [batch norm] -> activation -> [dropout]; dropout only on fully connected blocks."""
    block = [layer]
    if features.batchnorm_momentum is not None:
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        block.append(norm(width, momentum=features.batchnorm_momentum))
    block.append(activation_class(activation)())
    if dims == 1 and features.dropout > 0:
        block.append(nn.Dropout(features.dropout))
    return block


class LeNet5(nn.Module):
    def __init__(self, activation: str, features: Features):
        super().__init__()
        self.features = nn.Sequential(
            *_hidden_block(nn.Conv2d(1, 6, kernel_size=5), 6, activation, features, dims=2),  # 28 -> 24
            nn.MaxPool2d(2),  # -> 12
            *_hidden_block(nn.Conv2d(6, 16, kernel_size=5), 16, activation, features, dims=2),  # -> 8
            nn.MaxPool2d(2),  # -> 4
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            *_hidden_block(nn.Linear(16 * 4 * 4, 120), 120, activation, features, dims=1),
            *_hidden_block(nn.Linear(120, 84), 84, activation, features, dims=1),
            nn.Linear(84, NUM_CLASSES),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    def __init__(self, hidden_widths: list[int], activation: str, features: Features):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = INPUT_PIXELS
        for width in hidden_widths:
            layers += _hidden_block(nn.Linear(fan_in, width), width, activation, features, dims=1)
            fan_in = width
        layers.append(nn.Linear(fan_in, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parity_width(target: int, hidden_layers: int, activation: str, features: Features) -> int:
    """The shared hidden width whose MLP comes closest to `target` parameters."""

    def size(width: int) -> int:
        return count_parameters(MLP([width] * hidden_layers, activation, features))

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


def build_model(model_cfg, features: Features) -> BuiltModel:
    lenet5 = LeNet5(model_cfg.activation, features)
    lenet5_parameters = count_parameters(lenet5)
    if model_cfg.name == "lenet5":
        return BuiltModel(lenet5, lenet5_parameters, lenet5_parameters, "LeNet-5")
    if model_cfg.name == "mlp":
        width = parity_width(lenet5_parameters, model_cfg.hidden_layers, model_cfg.activation, features)
        mlp = MLP([width] * model_cfg.hidden_layers, model_cfg.activation, features)
        parameters = count_parameters(mlp)
        if abs(parameters - lenet5_parameters) > PARITY_TOLERANCE * lenet5_parameters:
            raise ValueError(
                f"no MLP with model.hidden_layers={model_cfg.hidden_layers} comes within "
                f"{PARITY_TOLERANCE:.0%} of LeNet-5's {lenet5_parameters} parameters (best: {parameters})"
            )
        widths = " -> ".join(str(w) for w in [INPUT_PIXELS, *[width] * model_cfg.hidden_layers, NUM_CLASSES])
        return BuiltModel(mlp, parameters, lenet5_parameters, f"MLP {widths}")
    raise ValueError(f"model.name={model_cfg.name} is not lenet5 or mlp")
