"""Each regularizer, selected through the real `regularizer` config group, changes what it
claims to change (model, optimizer or training images) and nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_exp.data import Split
from mnist_exp.models import LayerSwitches, LeNet5, build_model
from mnist_exp.regularization import layer_switches, train_augmentation, variant_name, weight_decay
from mnist_exp.tracking import config_hash, flat_params
from mnist_exp.training import InputPipeline, evaluate, make_optimizer


def build(compose, *overrides):
    cfg = compose(list(overrides))
    return cfg, build_model(cfg.model, layer_switches(cfg.regularizer)).model


def layers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.fixture(scope="module")
def raw_digits(sample_digits):
    return torch.from_numpy(sample_digits["train"].images[:64].copy())


# --- dropout ---


def test_dropout_goes_after_each_fully_connected_hidden_layer_of_lenet5_only(compose):
    _, model = build(compose, "model=lenet5", "regularizer=dropout", "regularizer.dropout.p=0.3")

    dropouts = layers(model, nn.Dropout)
    assert [d.p for d in dropouts] == [0.3, 0.3]
    assert not layers(model.features, nn.Dropout)  # never on the convolutional blocks
    # Each one directly follows the activation of fc 120 and fc 84.
    classifier = list(model.classifier)
    positions = [classifier.index(d) for d in dropouts]
    assert [classifier[p - 2].out_features for p in positions] == [120, 84]


def test_dropout_goes_after_every_hidden_layer_of_the_mlp(compose):
    _, model = build(compose, "model=mlp", "model.hidden_layers=3", "regularizer=dropout")
    assert [d.p for d in layers(model, nn.Dropout)] == [0.5, 0.5, 0.5]


# --- batch norm ---


def test_batchnorm_normalizes_every_hidden_conv_and_fc_layer_of_lenet5(compose):
    _, model = build(compose, "model=lenet5", "regularizer=batchnorm", "regularizer.batchnorm.momentum=0.2")

    assert [bn.num_features for bn in layers(model, nn.BatchNorm2d)] == [6, 16]
    assert [bn.num_features for bn in layers(model, nn.BatchNorm1d)] == [120, 84]
    assert {bn.momentum for bn in layers(model, nn.modules.batchnorm._BatchNorm)} == {0.2}


def test_batchnorm_normalizes_every_hidden_layer_of_the_mlp(compose):
    _, model = build(compose, "model=mlp", "model.hidden_layers=2", "regularizer=batchnorm")
    assert len(layers(model, nn.BatchNorm1d)) == 2 and not layers(model, nn.BatchNorm2d)


# --- L2 ---


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_l2_becomes_the_optimizers_weight_decay(compose, optimizer):
    cfg, model = build(compose, f"optimizer={optimizer}", "regularizer=l2", "regularizer.l2.weight_decay=0.003")

    built = make_optimizer(model, cfg.optimizer, weight_decay(cfg.regularizer))

    assert [group["weight_decay"] for group in built.param_groups] == [0.003]
    # and the model itself is untouched
    assert not layers(model, nn.Dropout) and not layers(model, nn.modules.batchnorm._BatchNorm)


# --- augmentation ---


def augmenting_pipeline(compose, *overrides):
    cfg = compose(["regularizer=augment", *overrides])
    return cfg, InputPipeline(cfg.data.mean, cfg.data.std, train_augmentation(cfg.regularizer))


def to_pixels(x, cfg):
    return x * cfg.data.std + cfg.data.mean


def test_augmentation_moves_the_training_digits_but_keeps_their_shape(compose, raw_digits):
    cfg, augmenting = augmenting_pipeline(compose)
    plain = InputPipeline(cfg.data.mean, cfg.data.std)

    torch.manual_seed(0)
    augmented = augmenting(raw_digits, train=True)
    original = plain(raw_digits, train=True)

    assert augmented.shape == original.shape == (64, 1, 28, 28)
    per_image_change = (augmented - original).abs().flatten(1).amax(1)
    assert (per_image_change > 0.5).all()  # every image moved, not just a few pixels' rounding
    # Ink is moved, not created or wiped out: total brightness stays within the zoom's range.
    ink_ratio = to_pixels(augmented, cfg).sum((1, 2, 3)) / to_pixels(original, cfg).sum((1, 2, 3))
    assert ((ink_ratio > 0.7) & (ink_ratio < 1.4)).all()


def test_augmentation_keeps_the_zero_background(compose, raw_digits):
    cfg, augmenting = augmenting_pipeline(compose)

    torch.manual_seed(0)
    pixels = to_pixels(augmenting(raw_digits, train=True), cfg)
    blank = to_pixels(augmenting(torch.zeros(8, 28, 28, dtype=torch.uint8), train=True), cfg)

    assert blank.abs().max() < 1e-5
    # What enters from outside the frame is black, not a smeared copy of the edge.
    white = to_pixels(augmenting(torch.full((16, 28, 28), 255, dtype=torch.uint8), train=True), cfg)
    assert (white.amin((1, 2, 3)) < 0.5).float().mean() > 0.5
    corners = pixels[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.abs().max() < 1e-5
    assert pixels.min() > -1e-5  # bilinear interpolation of [0, 1] pixels stays in [0, 1]


def test_augmentation_is_reproducible_under_the_same_seed_only(compose, raw_digits):
    _, augmenting = augmenting_pipeline(compose)

    draws = {}
    for name, seed in (("first", 7), ("again", 7), ("other", 8)):
        torch.manual_seed(seed)
        draws[name] = augmenting(raw_digits, train=True)

    assert torch.equal(draws["first"], draws["again"])
    assert not torch.allclose(draws["first"], draws["other"])


def test_augmentation_strength_follows_the_config(compose, raw_digits):
    cfg, gentle = augmenting_pipeline(
        compose,
        "regularizer.augment.degrees=0",
        "regularizer.augment.translate=0",
        "regularizer.augment.scale=[1.0,1.0]",
    )
    plain = InputPipeline(cfg.data.mean, cfg.data.std)

    torch.manual_seed(0)
    assert torch.allclose(gentle(raw_digits, train=True), plain(raw_digits, train=True), atol=1e-4)


def test_augmentation_is_never_applied_at_evaluation(compose, raw_digits, sample_digits):
    cfg, augmenting = augmenting_pipeline(compose)
    plain = InputPipeline(cfg.data.mean, cfg.data.std)

    assert torch.equal(augmenting(raw_digits, train=False), plain(raw_digits, train=False))

    test = sample_digits["test"]
    split = Split(torch.from_numpy(test.images[:50].copy()), torch.from_numpy(test.labels[:50].copy()), "")
    torch.manual_seed(0)
    model = LeNet5("relu", LayerSwitches())
    with_augmenting = evaluate(model, split, 16, augmenting, torch.device("cpu"))
    with_plain = evaluate(model, split, 16, plain, torch.device("cpu"))
    assert with_augmenting[:2] == with_plain[:2]
    assert torch.equal(with_augmenting[2], with_plain[2])


# --- none and naming ---


def test_none_changes_nothing(compose):
    cfg, model = build(compose, "regularizer=none")

    assert layer_switches(cfg.regularizer) == LayerSwitches()
    assert weight_decay(cfg.regularizer) == 0.0
    assert train_augmentation(cfg.regularizer) is None
    assert variant_name(cfg.regularizer) == "none"
    plain = LeNet5(cfg.model.activation, LayerSwitches())
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    assert make_optimizer(model, cfg.optimizer, weight_decay(cfg.regularizer)).param_groups[0]["weight_decay"] == 0.0


def test_variant_name_is_the_same_for_either_order(compose):
    forward = compose(["regularizer=[l2,dropout]"])
    backward = compose(["regularizer=[dropout,l2]"])

    assert variant_name(forward.regularizer) == variant_name(backward.regularizer) == "l2+dropout"
    # Same run identity too, so a rerun in the other order is skipped, not trained again.
    assert config_hash(flat_params(forward)) == config_hash(flat_params(backward))


def test_variant_name_lists_all_regularizers_in_canonical_order(compose):
    cfg = compose(["regularizer=[augment,batchnorm,dropout,l2]"])
    assert variant_name(cfg.regularizer) == "l2+dropout+batchnorm+augment"
