"""Figures logged with every run: learning curves and the test confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_exp.training import EpochMetrics  # noqa: E402


def learning_curves(history: list[EpochMetrics], title: str, path: Path) -> None:
    epochs = [m.epoch for m in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [m.train_loss for m in history], "o-", label="train")
    loss_ax.plot(epochs, [m.test_loss for m in history], "o-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.plot(epochs, [100 * m.train_acc for m in history], "o-", label="train")
    acc_ax.plot(epochs, [100 * m.test_acc for m in history], "o-", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86, wspace=0.22)  # tight_layout costs a draw
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """counts[true, predicted]"""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_figure(counts: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(counts, cmap="Blues")
    threshold = counts.max() / 2
    for (true, predicted), count in np.ndenumerate(counts):
        ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7,
                color="white" if count > threshold else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(10), yticks=range(10))
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.1, top=0.93)
    fig.savefig(path, dpi=100)
    plt.close(fig)
