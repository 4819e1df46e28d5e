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
        ax.text(
            predicted,
            true,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(10), yticks=range(10))
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.1, top=0.93)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the report's figures: one question each; every function returns its Figure (save_all writes them) ---

MAX_SERIES = 7  # a panel with more lines than this cannot be read
GREY = "0.6"


def _palette(n: int):
    import seaborn as sns

    return sns.color_palette("colorblind", n)  # distinguishable with the common colour-vision deficiencies


def _ci95(values, bounds=(-np.inf, np.inf)):
    """seaborn errorbar: the 95% Student-t interval of the mean over seeds, as the table's, clipped to bounds."""
    from mnist_exp.significance import estimate

    e = estimate(values, bounds)
    return (e.mean, e.mean) if e.n < 2 else (e.ci_low, e.ci_high)


def _percent(history):
    """History with accuracies in percent and one row per run and epoch."""
    frame = history.copy()
    for key in ("train_acc", "test_acc"):
        frame[key] = 100 * frame[key]
    return frame


def model_curves(history, title: str):
    """LeNet-5 vs the MLP: train/test loss and accuracy per epoch (rows: loss, accuracy), mean and 95% band."""
    import seaborn as sns

    frame = _percent(history)
    models = sorted(frame["model"].unique())
    palette = dict(zip(models, _palette(len(models))))
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True, layout="constrained")
    panels = ((r, c) for r in enumerate(("loss", "acc")) for c in enumerate(("train", "test")))
    for (row, quantity), (col, split) in panels:
        ax, key = axes[row, col], f"{split}_{quantity}"
        bounds = (0, 100) if quantity == "acc" else (0, np.inf)
        sns.lineplot(
            frame,
            x="epoch",
            y=key,
            hue="model",
            palette=palette,
            marker="o",
            ax=ax,
            legend=False,
            errorbar=lambda v, b=bounds: _ci95(v, b),
        )
        ax.set(
            title=f"{split} {'accuracy' if quantity == 'acc' else 'loss'}",
            xlabel="epoch",
            ylabel="accuracy (%)" if quantity == "acc" else "cross-entropy",
        )
        _epochs(ax)
    handles = [plt.Line2D([], [], color=palette[m], marker="o", label=m) for m in models]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(models), frameon=False)
    fig.suptitle(f"{title}\nmean over seeds, band: 95% CI of the mean")
    return fig


def regularizer_panels(history, baseline: str, title: str):
    """One panel per regularized variant (titled by its `label`): its test accuracy per epoch, with the
    `baseline` label's runs (plain LeNet-5) in grey behind it."""
    import seaborn as sns

    frame = _percent(history)
    variants = [v for v in dict.fromkeys(frame["label"]) if v != baseline]
    cols = min(3, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.3 * cols, 2.6 * rows + 1.2),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    colour = _palette(1)[0]
    plain = frame[frame["label"] == baseline]
    for ax, variant in zip(axes.flat, variants):
        for data, color in ((plain, GREY), (frame[frame["label"] == variant], colour)):
            sns.lineplot(
                data, x="epoch", y="test_acc", color=color, marker="o", ax=ax, errorbar=lambda v: _ci95(v, (0, 100))
            )
        ax.set(title=variant, xlabel="epoch", ylabel="test accuracy (%)")
        _epochs(ax)
    for ax in axes.flat[len(variants) :]:
        ax.set_visible(False)
    handles = [
        plt.Line2D([], [], color=GREY, marker="o", label="plain LeNet-5 (no regularizer)"),
        plt.Line2D([], [], color=colour, marker="o", label="with the panel's regularizer"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(f"{title}\nmean over seeds, band: 95% CI of the mean")
    return fig


def forest(comparisons, title: str, smallest: float):
    """Each variant's difference from its baseline: a dot with its interval (Bonferroni within its family),
    a zero line and the band of differences smaller than `smallest` (pp), sorted by effect; filled where
    Holm's adjustment finds a difference. `comparisons`: label, diff, low, high, significant."""
    rows = comparisons.sort_values("diff").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.3 * len(rows)), layout="constrained")
    colour = _palette(1)[0]
    ax.axvspan(-smallest, smallest, color=GREY, alpha=0.2, lw=0, zorder=0, label=f"±{smallest:g} pp: not worth having")
    ax.axvline(0, color=GREY, lw=1, zorder=0)
    errors = np.vstack([rows["diff"] - rows["low"], rows["high"] - rows["diff"]])
    ax.errorbar(rows["diff"], rows.index, xerr=np.nan_to_num(errors), fmt="none", ecolor=colour, capsize=3)
    for significant, face in ((True, colour), (False, "white")):
        chosen = rows[rows["significant"] == significant]
        ax.scatter(
            chosen["diff"],
            chosen.index,
            s=36,
            facecolor=face,
            edgecolor=colour,
            zorder=3,
            label="different (Holm-adjusted p < 0.05)" if significant else "not shown different",
        )
    ax.set_yticks(rows.index, rows["label"])
    ax.set(
        xlabel="difference in test accuracy (pp); interval at 1 - 0.05/m within each family of m",
        title=title,
        ylim=(-0.7, len(rows) - 0.3),
    )
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    return fig


def _epochs(ax) -> None:
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
