"""The training loop on real digits: reproducible per seed, resumable mid-way, loud when it
diverges; and evaluation that matches a computation by hand."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from mnist_exp import checkpoints
from mnist_exp.data import Split, load_mnist
from mnist_exp.models import build_model
from mnist_exp.regularization import layer_switches, train_augmentation
from mnist_exp.training import Diverged, InputPipeline, Training, TrainingState, evaluate, fit, train_epoch

CPU = torch.device("cpu")


@pytest.fixture
def setup(compose, course_dataset, tmp_path):
    """setup(*overrides) -> (cfg, data, inputs) for a short run on 300 train / 100 test real digits."""

    def _setup(*overrides):
        cfg = compose(
            [
                f"data.root={course_dataset.root}",
                f"data.cache_dir={tmp_path / 'cache'}",
                "data.limit_train=300",
                "data.limit_test=100",
                "trainer.epochs=2",
                "trainer.batch_size=16",
                *overrides,
            ]
        )
        inputs = InputPipeline(cfg.data.mean, cfg.data.std, train_augmentation(cfg.regularizer))
        return cfg, load_mnist(cfg.data), inputs

    return _setup


def build(cfg, data) -> Training:
    """What job.py builds for a run of this config."""
    torch.manual_seed(cfg.trainer.seed)
    return Training.from_config(build_model(cfg.model, layer_switches(cfg.regularizer)).model, cfg, CPU, data.train)


def train(cfg, data, inputs, checkpoint_file=None, stop_after=None):
    """Fit a run built from cfg; with a checkpoint file, resumed from it when it exists and saved to it after
    each epoch (checkpoints.save/load, as job.py does); with stop_after, as if killed after that epoch's save.
    Returns (progress, training)."""
    training = build(cfg, data)
    saved = checkpoints.load(checkpoint_file) if checkpoint_file else None
    progress = saved.restore(training) if saved else TrainingState()

    class Killed(Exception):
        pass

    def on_epoch_end(progress):
        if checkpoint_file:
            checkpoints.save(checkpoint_file, "run", training, progress)
        if progress.epochs_done == stop_after:
            raise Killed

    with contextlib.suppress(Killed):
        fit(training, data, cfg.trainer, progress, on_epoch_end)
    return progress, training


def metrics(progress):
    """Per-epoch results without the wall-clock time, which legitimately differs."""
    return [
        (m.epoch, m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.val_loss, m.val_acc, m.lr)
        for m in progress.history
    ]


# Dropout and augmentation draw random numbers every batch: the strictest reproducibility case.
@pytest.mark.parametrize(
    "overrides",
    [[], ["model=mlp", "regularizer=[dropout,augment]", "optimizer=adam"]],
    ids=["lenet5", "mlp+dropout+augment"],
)
def test_same_seed_gives_identical_per_epoch_metrics(setup, overrides):
    cfg, data, inputs = setup(*overrides)

    first, _ = train(cfg, data, inputs)
    second, _ = train(cfg, data, inputs)
    other_seed, _ = train(setup("trainer.seed=1", *overrides)[0], data, inputs)

    assert len(first.history) == 2
    assert metrics(first) == metrics(second)
    assert metrics(first) != metrics(other_seed)  # the seed matters, so the equality above means something
    assert first.history[0].train_loss != first.history[1].train_loss  # the epochs really trained


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle"])
def test_resuming_mid_schedule_reproduces_an_uninterrupted_run(setup, scheduler, tmp_path):
    cfg, data, inputs = setup(
        "regularizer=dropout",
        f"scheduler={scheduler}",
        "trainer.epochs=4",
        *(["scheduler.step_size=1"] if scheduler == "step" else []),
        *(["scheduler.warmup_epochs=1"] if scheduler == "cosine" else []),
    )

    straight, _ = train(cfg, data, inputs)
    train(cfg, data, inputs, tmp_path / "checkpoint.pt", stop_after=2)
    resumed, _ = train(cfg, data, inputs, tmp_path / "checkpoint.pt")

    assert len(straight.history) == 4
    assert metrics(resumed) == metrics(straight)
    lrs = [m.lr for m in straight.history]
    assert lrs == [0.01] * 4 if scheduler == "none" else len(set(lrs)) == 4, "only a schedule moves the lr"


def parameters(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().double().numpy().copy() for p in model.parameters()]


def test_ema_delivers_the_exponential_average_of_the_weights_after_every_step(setup):
    cfg, data, _ = setup("model=mlp", "regularizer=ema", "regularizer.ema.decay=0.9")
    training = build(cfg, data)
    steps = []  # the trained weights after every optimizer step

    def after_step(_):
        steps.append(parameters(training.model))

    fit(training, data, cfg.trainer, TrainingState(), lambda _: None, after_step)

    average = steps[0]  # AveragedModel copies the first weights it sees
    for n, weights in enumerate(steps[1:], start=1):  # then the n-th update keeps min(decay, (1 + n) / (10 + n))
        keep = min(0.9, (1 + n) / (10 + n))
        average = [keep * a + (1 - keep) * w for a, w in zip(average, weights)]
    assert len(steps) == 2 * math.ceil(300 / 16)
    assert training.delivered is training.averaged.module and training.delivered is not training.model
    for got, expected in zip(parameters(training.delivered), average):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_swa_delivers_the_mean_of_the_last_epochs_weights_with_batch_norm_estimated_for_them(setup):
    cfg, data, _ = setup("model=mlp", "regularizer=[batchnorm,swa]", "regularizer.swa.start=0.5", "trainer.epochs=4")
    training = build(cfg, data)
    epochs = []  # the trained weights at the end of every epoch

    fit(training, data, cfg.trainer, TrainingState(), lambda _: epochs.append(parameters(training.model)))

    for got, *averaged in zip(parameters(training.delivered), *epochs[2:]):  # epochs 3 and 4 of 4
        np.testing.assert_allclose(got, np.mean(averaged, axis=0), rtol=1e-5, atol=1e-7)
    # Batch norm's statistics are those of the averaged weights' own activations on the training images.
    delivered = training.delivered
    norm = delivered.layers[2]
    with torch.no_grad():
        first = delivered.layers[1](training.inputs(data.train.images, train=False).flatten(1))
    assert isinstance(norm, nn.BatchNorm1d)
    assert torch.allclose(norm.running_mean, first.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, first.var(0), rtol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        ["regularizer=[batchnorm,augment,elastic,ema]", "regularizer.augment.shear=10"],
        ["regularizer=[batchnorm,swa]", "regularizer.swa.start=0.25"],
    ],
    ids=["ema", "swa"],
)
def test_a_run_resumed_mid_way_continues_its_weight_average_exactly(setup, overrides, tmp_path):
    cfg, data, inputs = setup("trainer.epochs=4", *overrides)

    straight, finished = train(cfg, data, inputs)
    train(cfg, data, inputs, tmp_path / "checkpoint.pt", stop_after=2)  # SWA has averaged epoch 2 of 4 by then
    resumed, continued = train(cfg, data, inputs, tmp_path / "checkpoint.pt")

    assert metrics(resumed) == metrics(straight)
    for key, value in finished.averaged.state_dict().items():
        assert torch.equal(continued.averaged.state_dict()[key], value), key


def test_huge_learning_rate_raises_diverged(setup):
    cfg, data, inputs = setup("optimizer=sgd", "optimizer.lr=1e6")

    with pytest.raises(Diverged, match=r"training loss became (nan|inf) at batch \d+; lower optimizer.lr"):
        train(cfg, data, inputs)


def test_evaluate_matches_a_hand_computation(sample_digits):
    digits = sample_digits["test"]
    raw, labels = digits.images[:5], digits.labels[:5]
    split = Split(torch.from_numpy(raw.copy()), torch.from_numpy(labels.copy()), "")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    weight = model[1].weight.detach().double().numpy()
    bias = model[1].bias.detach().double().numpy()
    mean, std = 0.1307, 0.3081

    # batch_size 2 splits the 5 images 2 + 2 + 1: a mean of batch means would weigh the last image double.
    loss, accuracy, predicted = evaluate(model, split, 2, InputPipeline(mean, std), CPU)

    x = (raw.reshape(5, -1).astype(np.float64) / 255 - mean) / std
    logits = x @ weight.T + bias
    log_sum_exp = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    per_image = log_sum_exp - logits[np.arange(5), labels]
    assert loss == pytest.approx(per_image.mean(), rel=1e-5)
    np.testing.assert_array_equal(predicted.numpy(), logits.argmax(1))
    assert accuracy == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert not math.isclose(
        loss, np.mean([per_image[0:2].mean(), per_image[2:4].mean(), per_image[4:].mean()]), rel_tol=1e-6
    )


def test_evaluate_runs_in_evaluation_mode(setup):
    cfg, data, inputs = setup("model=mlp", "regularizer=[dropout,batchnorm]")
    torch.manual_seed(0)
    model = build_model(cfg.model, layer_switches(cfg.regularizer)).model
    model.train()

    results = [evaluate(model, data.test, 32, inputs, CPU) for _ in range(2)]

    assert not model.training
    assert results[0][:2] == results[1][:2]  # dropout off, batch norm on running statistics
    # ... and batch composition no longer matters, as it would with batch statistics
    assert evaluate(model, data.test, 7, inputs, CPU)[1] == results[0][1]


# --- learning-rate schedules: each follows torch's formula, epoch by epoch ---


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs(setup):
    cfg, data, inputs = setup("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5", "trainer.epochs=5")
    progress, _ = train(cfg, data, inputs)
    assert [m.lr for m in progress.history] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])


def test_cosine_schedule_warms_up_linearly_then_anneals_to_min_lr(setup):
    cfg, data, inputs = setup(
        "scheduler=cosine", "scheduler.warmup_epochs=1", "scheduler.min_lr=0.001", "trainer.epochs=3"
    )  # 300 images in batches of 16: 19 steps per epoch
    progress, training = train(cfg, data, inputs)

    steps, warmup = 19 * 3, 19
    assert progress.history[0].lr == pytest.approx(0.01 / warmup)  # the first step of the ramp
    cosine_step = 19  # epoch 3 starts 19 steps into the 38-step cosine
    expected = 0.001 + (0.01 - 0.001) * (1 + math.cos(math.pi * cosine_step / (steps - warmup))) / 2
    assert progress.history[2].lr == pytest.approx(expected)
    assert training.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)  # at the end: min_lr


def test_onecycle_peaks_at_max_lr_and_ignores_the_optimizers_lr(setup):
    cfg, data, inputs = setup(
        "scheduler=onecycle",
        "scheduler.max_lr=0.2",
        "scheduler.pct_start=0.5",
        "scheduler.cycle_momentum=false",
        "trainer.epochs=2",
        "optimizer.lr=0.5",
    )
    progress, _ = train(cfg, data, inputs)

    assert progress.history[0].lr == pytest.approx(0.2 / 25)  # max_lr / div_factor
    assert progress.history[1].lr == pytest.approx(0.2, rel=0.01)  # half way: the peak


# --- label smoothing and early stopping ---


def test_label_smoothing_changes_the_training_loss_only(setup):
    cfg, data, inputs = setup("trainer.epochs=1")
    smooth_cfg, _, _ = setup(
        "trainer.epochs=1", "regularizer=label_smoothing", "regularizer.label_smoothing.epsilon=0.2"
    )
    plain = build(cfg, data)
    smooth = build(smooth_cfg, data)
    assert smooth.label_smoothing == 0.2

    torch.manual_seed(0)
    plain_loss, _ = train_epoch(plain, data.train, 300)  # one batch from the same initial weights
    torch.manual_seed(0)
    smooth_loss, _ = train_epoch(smooth, data.train, 300)

    assert smooth_loss > plain_loss  # the smoothed target can never be matched exactly
    assert evaluate(smooth.model, data.test, 100, inputs, CPU)[0] != smooth_loss  # test loss stays plain


def test_early_stopping_stops_on_patience_and_delivers_the_best_epochs_weights(setup):
    # A step schedule that kills the learning rate after epoch 2: the validation loss stalls at once.
    cfg, data, inputs = setup(
        "regularizer=early_stopping",
        "regularizer.early_stopping.patience=2",
        "regularizer.early_stopping.min_delta=0.05",
        "data.validation_size=60",
        "scheduler=step",
        "scheduler.step_size=2",
        "scheduler.gamma=0.0001",
        "trainer.epochs=10",
        "optimizer.lr=0.05",
    )
    progress, training = train(cfg, data, inputs)

    val_losses = [m.val_loss for m in progress.history]
    best = 1
    for epoch, loss in enumerate(val_losses[1:], start=2):  # an improvement counts when it beats min_delta
        best = epoch if loss < val_losses[best - 1] - 0.05 else best
    assert progress.stopped_early and len(progress.history) < 10
    assert progress.best_epoch == best
    assert len(progress.history) == best + 2  # patience 2 after the last real improvement
    delivered_loss = evaluate(training.model, data.validation, 1000, inputs, CPU)[0]
    assert delivered_loss == pytest.approx(val_losses[progress.best_epoch - 1], rel=1e-6)


def test_a_run_resumed_after_early_stopping_ends_where_it_stopped(setup, tmp_path):
    cfg, data, inputs = setup(
        "regularizer=early_stopping",
        "regularizer.early_stopping.patience=1",
        "regularizer.early_stopping.min_delta=0.5",
        "data.validation_size=60",
        "trainer.epochs=6",
    )
    straight, straight_training = train(cfg, data, inputs)
    assert straight.stopped_early and len(straight.history) == 2  # nothing improves by 0.5 after epoch 1

    train(cfg, data, inputs, tmp_path / "checkpoint.pt", stop_after=2)  # killed right after deciding to stop
    resumed, resumed_training = train(cfg, data, inputs, tmp_path / "checkpoint.pt")

    assert metrics(resumed) == metrics(straight)
    for key, value in straight_training.model.state_dict().items():
        assert torch.equal(value, resumed_training.model.state_dict()[key]), key


def test_the_metrics_an_epoch_logs_are_the_ones_the_record_names():
    from dataclasses import fields

    from mnist_exp import record
    from mnist_exp.training import EpochMetrics

    assert [f.name for f in fields(EpochMetrics) if f.name != "epoch"] == list(record.EPOCH_METRICS)
