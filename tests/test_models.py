"""LeNet-5 and the parameter-matched MLP, built from the real `model` configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mnist_exp.models import ACTIVATIONS, MLP, LayerSwitches, LeNet5, ScaledTanh, build_model, count_parameters
from mnist_exp.validation import ConfigError, validate

# conv1 6*(5*5*1)+6 = 156, conv2 16*(5*5*6)+16 = 2,416, fc1 256*120+120 = 30,840,
# fc2 120*84+84 = 10,164, fc3 84*10+10 = 850: the paper's architecture on unpadded 28x28 input.
LENET5_PARAMETERS = 44_426

FEATURE_SETS = {
    "plain": LayerSwitches(),
    "dropout": LayerSwitches(dropout=0.5),
    "batchnorm": LayerSwitches(batchnorm_momentum=0.1),
    "dropout+batchnorm": LayerSwitches(dropout=0.5, batchnorm_momentum=0.1),
}


def test_lenet5_has_the_papers_parameter_count(compose):
    built = build_model(compose(["model=lenet5"]).model, LayerSwitches())
    layers = [m for m in built.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    # The built layers are the paper's: two 5x5 convolutions, then fully connected 16*4*4 -> 120 -> 84 -> 10.
    assert [
        (m.in_channels, m.out_channels, m.kernel_size) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        for m in layers
    ] == [(1, 6, (5, 5)), (6, 16, (5, 5)), (256, 120), (120, 84), (84, 10)]
    assert all(m.bias is not None for m in layers)
    others = [m for m in built.model.modules() if m not in layers and list(m.parameters(recurse=False))]
    assert others == [], "no parameters outside the convolutions and linear layers"
    assert [sum(p.numel() for p in m.parameters()) for m in layers] == [156, 2_416, 30_840, 10_164, 850]
    assert built.parameters == built.lenet5_parameters == count_parameters(built.model) == LENET5_PARAMETERS


@pytest.mark.parametrize("model", ["lenet5", "mlp"])
def test_model_maps_a_batch_of_digits_to_ten_logits(compose, model):
    built = build_model(compose([f"model={model}"]).model, LayerSwitches())

    logits = built.model(torch.randn(5, 1, 28, 28))

    assert logits.shape == (5, 10)


@pytest.mark.parametrize("features", FEATURE_SETS.values(), ids=list(FEATURE_SETS))
@pytest.mark.parametrize("hidden_layers", [1, 2, 3, 4])
def test_mlp_is_within_two_percent_of_lenet5_and_the_closest_width(compose, hidden_layers, features):
    built = build_model(compose(["model=mlp", f"model.hidden_layers={hidden_layers}"]).model, features)
    lenet5 = count_parameters(LeNet5("relu", features))  # the yardstick carries the same regularizer layers

    assert built.lenet5_parameters == lenet5
    assert abs(built.parameters - lenet5) <= 0.02 * lenet5
    # No neighbouring width would have matched LeNet-5 more closely.
    linears = [m for m in built.model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == hidden_layers + 1
    width = linears[0].out_features
    assert all(m.out_features == width for m in linears[:-1])
    for neighbour in (width - 1, width + 1):
        other = count_parameters(MLP([neighbour] * hidden_layers, "relu", features))
        assert abs(other - lenet5) >= abs(built.parameters - lenet5)


def test_default_mlp_is_the_documented_784_52_52_10(compose):
    built = build_model(compose(["model=mlp"]).model, LayerSwitches())
    assert built.description == "MLP 784 -> 52 -> 52 -> 10"
    assert built.parameters == 784 * 52 + 52 + 52 * 52 + 52 + 52 * 10 + 10


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("model", ["lenet5", "mlp"])
def test_every_activation_builds_and_is_used(compose, model, activation):
    built = build_model(compose([f"model={model}", f"model.activation={activation}"]).model, LayerSwitches())

    used = {type(m) for m in built.model.modules()}
    assert ACTIVATIONS[activation] in used
    assert not (set(ACTIVATIONS.values()) - {ACTIVATIONS[activation]}) & used
    assert built.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("model", ["lenet5", "mlp"])
def test_unknown_activation_is_an_error_naming_the_key(compose, model):
    cfg = compose([f"model={model}", "model.activation=swish"])  # the schema types it only as a string
    with pytest.raises(
        ConfigError,
        match="model.activation=swish is out of range: must be one of relu, tanh, sigmoid, gelu, scaled_tanh",
    ):
        validate(cfg)  # names are checked there, once, before anything is built


def test_lenet5_32_is_the_papers_32x32_layout(compose):
    built = build_model(compose(["model=lenet5_32"]).model, LayerSwitches())
    model = built.model

    assert built.parameters == count_parameters(model) == 61_706
    assert model.features[0].padding == (2, 2)  # the 28x28 digit padded to 32x32
    assert model.features(torch.zeros(3, 1, 28, 28)).shape == (3, 16 * 5 * 5)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert built.description == "LeNet-5 (32x32 input)"


def test_the_papers_average_pooling_and_scaled_tanh_are_settings(compose):
    model = build_model(
        compose(["model=lenet5_32", "model.pooling=avg", "model.activation=scaled_tanh"]).model, LayerSwitches()
    ).model

    assert len([m for m in model.modules() if isinstance(m, nn.AvgPool2d)]) == 2
    assert not [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len([m for m in model.modules() if isinstance(m, ScaledTanh)]) == 4
    assert ScaledTanh()(torch.tensor([1.0, -3.0])).tolist() == pytest.approx(
        [1.7159 * math.tanh(2 / 3), -1.7159 * math.tanh(2.0)]
    )


def test_the_mlp_is_sized_to_the_lenet5_it_names(compose):
    built = build_model(compose(["model=mlp", "model.parity_with=lenet5_32"]).model, LayerSwitches())

    assert built.lenet5_parameters == 61_706
    assert abs(built.parameters - 61_706) <= 0.02 * 61_706
    assert built.description == "MLP 784 -> 71 -> 71 -> 10"
