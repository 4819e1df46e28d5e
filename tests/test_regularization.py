"""Each regularizer, selected through the real `regularizer` config group, changes what it
claims to change (model, optimizer or training images) and nothing else."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tv

from mnist_exp.data import Split
from mnist_exp.models import LayerSwitches, LeNet5, build_model
from mnist_exp.record import config_hash, flat_params
from mnist_exp.regularization import (
    IDENTITY,
    Elastic,
    affine_matrices,
    gaussian_blur,
    layer_switches,
    train_augmentation,
    variant_name,
    warp,
    weight_decay,
)
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


def one_pixel(side: int, row: int, column: int) -> torch.Tensor:
    image = torch.zeros(1, 1, side, side)
    image[0, 0, row, column] = 1.0
    return image


def moved_to(image: torch.Tensor) -> tuple[int, int]:
    """Where the single lit pixel of `image` is, checking that it is lit fully and alone."""
    assert image.max().item() == pytest.approx(1.0, abs=1e-5) and image.sum().item() == pytest.approx(1.0, abs=1e-5)
    row, column = divmod(int(image.flatten().argmax()), image.shape[-1])
    return row, column


def one(value: float) -> torch.Tensor:
    return torch.tensor([value])


def test_a_shift_moves_a_known_pixel_by_the_shift_in_pixels():
    # A shift of s in [-1, 1] coordinates samples the input s further on: the image moves s * side / 2
    # pixels the other way, here 3 columns right and 2 rows up.
    theta = affine_matrices(one(0.0), one(1.0), torch.tensor([[-6 / 28, 4 / 28]]), one(0.0))

    assert moved_to(warp(one_pixel(28, 10, 7), theta)) == (8, 10)


def test_a_shear_maps_a_known_point_along_the_x_axis_by_its_height():
    # 45 degrees parallel to the x axis: a point dy rows below the centre moves dy columns left (y down).
    # 29 pixels, so the centre is a pixel and every mapped point lands on one.
    theta = affine_matrices(one(0.0), one(1.0), torch.zeros(1, 2), one(math.radians(45)))

    assert moved_to(warp(one_pixel(29, 14 + 3, 14), theta)) == (17, 11)
    assert moved_to(warp(one_pixel(29, 14 - 5, 14 + 2), theta)) == (9, 21)  # above it: right
    assert moved_to(warp(one_pixel(29, 14, 4), theta)) == (14, 4)  # on the centre row: stays


def test_rotation_zoom_and_shear_equal_torchvisions_affine(raw_digits):
    images = raw_digits[:8].unsqueeze(1).float() / 255
    angle, zoom, shear = 0.3, 1.15, -0.25
    theta = affine_matrices(one(angle).expand(8), one(zoom).expand(8), torch.zeros(8, 2), one(shear).expand(8))

    expected = tv.affine(
        images,
        angle=-math.degrees(angle),  # torchvision turns counter-clockwise as shown (y down)
        translate=[0.0, 0.0],
        scale=zoom,
        shear=[math.degrees(shear), 0.0],
        interpolation=InterpolationMode.BILINEAR,
    )
    assert torch.allclose(warp(images, theta), expected, atol=1e-5)


def test_elastic_distortion_equals_torchvisions_elastic_for_the_same_displacements(raw_digits):
    images = raw_digits[:8].unsqueeze(1).float() / 255
    torch.manual_seed(0)
    displacement = Elastic(34.0, 4.0).draw(8, 28, 28)

    expected = torch.cat([tv.elastic(images[i : i + 1], displacement[i : i + 1]) for i in range(8)])
    assert torch.allclose(warp(images, IDENTITY.expand(8, 2, 3), displacement), expected, atol=1e-5)
    # Simard et al.'s field: smoothed uniform noise scaled by alpha, here 34 pixels: a pixel or two on average.
    pixels = displacement * 14
    assert 0.5 < pixels.abs().mean() < 3 and pixels.abs().max() < 10


@pytest.mark.parametrize("sigma", [1.0, 4.0, 6.0])
def test_the_displacements_are_smoothed_as_torchvisions_gaussian_blur_smooths(sigma):
    noise = torch.rand(4, 2, 28, 28) * 2 - 1
    size = int(8 * sigma + 1) | 1

    assert torch.allclose(gaussian_blur(noise, sigma), tv.gaussian_blur(noise, [size, size], [sigma, sigma]), atol=1e-5)


def test_elastic_and_affine_distort_each_image_in_one_resampling(compose, raw_digits):
    cfg = compose(["regularizer=[augment,elastic]", "regularizer.augment.shear=15"])
    distortion = train_augmentation(cfg.regularizer)
    same = raw_digits[:1].expand(16, -1, -1).unsqueeze(1).float() / 255

    torch.manual_seed(0)
    distorted = distortion(same)

    assert distortion.affine.shear == 15 and distortion.elastic.alpha == cfg.regularizer.elastic.alpha
    # Sixteen copies of one digit, sixteen distortions: parameters are drawn per image, not per batch.
    assert len({tuple(image.flatten().tolist()) for image in distorted}) == 16
    torch.manual_seed(0)
    assert torch.equal(distortion(same), distorted)
    calm = compose(["regularizer=elastic", "regularizer.elastic.alpha=0"])
    assert torch.allclose(train_augmentation(calm.regularizer)(same), same, atol=1e-5)


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
