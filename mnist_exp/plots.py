"""Every figure: a run's own (curves, confusion matrix), the report's (one question each) and a diff's."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_exp import record  # noqa: E402

if TYPE_CHECKING:
    from mnist_exp.training import EpochMetrics


RUN_CURVES = (("loss", "loss", "cross-entropy loss", 1), ("accuracy", "acc", "accuracy (%)", 100))


def learning_curves(history: list[EpochMetrics], title: str, path: Path) -> None:
    epochs = [m.epoch for m in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, metric, ylabel, scale) in zip(axes, RUN_CURVES):
        for split in ("train", "test"):
            ax.plot(epochs, [scale * getattr(m, f"{split}_{metric}") for m in history], "o-", label=split)
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
        ax.legend()
        _epochs(ax)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86, wspace=0.22)  # tight_layout costs a draw
    save(fig, path, tight=False)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """counts[true, predicted]"""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_figure(counts: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(counts, cmap="Blues")
    threshold = counts.max() / 2
    for (true, predicted), count in np.ndenumerate(counts):
        color = "white" if count > threshold else "black"
        ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(10), yticks=range(10))
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.subplots_adjust(left=0.1, right=0.9, bottom=0.1, top=0.93)
    save(fig, path, tight=False)


# --- the report's figures: one question each ---

MAX_SERIES = 7  # a panel with more lines than this cannot be read
GREY = "0.6"


def _palette(n: int):
    import seaborn as sns

    return sns.color_palette("colorblind", n)  # distinguishable with the common colour-vision deficiencies


def _line(data, y: str, ax, bounds, **style) -> None:
    """seaborn's mean over seeds per epoch, its band the 95% Student-t interval of the mean, as the table's."""
    import seaborn as sns

    from mnist_exp.significance import estimate

    def band(values):
        e = estimate(values, bounds)
        return (e.mean, e.mean) if e.n < 2 else (e.ci_low, e.ci_high)

    sns.lineplot(data, x="epoch", y=y, marker="o", ax=ax, errorbar=band, **style)
    _epochs(ax)


def _percent(history):
    return history.assign(**{key: 100 * history[key] for key in (record.TRAIN_ACC, record.TEST_ACC)})


def _legend_and_title(fig, colours: dict, title: str) -> None:
    """A legend under the panels (label -> colour) and the title, saying what the lines and bands are."""
    handles = [plt.Line2D([], [], color=colour, marker="o", label=label) for label, colour in colours.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"{title}\nmean over seeds, band: 95% CI of the mean")


def model_curves(history, title: str):
    """LeNet-5 vs the MLP: train/test loss and accuracy per epoch (rows: loss, accuracy), mean and 95% band."""
    frame = _percent(history)
    models = sorted(frame["model"].unique())
    palette = dict(zip(models, _palette(len(models))))
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True, layout="constrained")
    panels = ((record.TRAIN_LOSS, "train loss"), (record.TEST_LOSS, "test loss"))
    panels += ((record.TRAIN_ACC, "train accuracy"), (record.TEST_ACC, "test accuracy"))
    for ax, (key, name) in zip(axes.flat, panels):
        accuracy = name.endswith("accuracy")
        _line(frame, key, ax, (0, 100) if accuracy else (0, np.inf), hue="model", palette=palette, legend=False)
        ax.set(title=name, xlabel="epoch", ylabel="accuracy (%)" if accuracy else "cross-entropy")
    _legend_and_title(fig, palette, title)
    return fig


def regularizer_panels(history, baseline: str, title: str):
    """A panel of test accuracy per epoch for each regularized `label`, the `baseline` label's runs in grey behind."""
    frame = _percent(history)
    variants = [v for v in dict.fromkeys(frame["label"]) if v != baseline]
    cols = min(3, len(variants))
    rows = -(-len(variants) // cols)
    size = (3.3 * cols, 2.6 * rows + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=size, sharex=True, sharey=True, squeeze=False, layout="constrained")
    colour = _palette(1)[0]
    plain = frame[frame["label"] == baseline]
    for ax, variant in zip(axes.flat, variants):
        for data, color in ((plain, GREY), (frame[frame["label"] == variant], colour)):
            _line(data, record.TEST_ACC, ax, (0, 100), color=color)
        ax.set(title=variant, xlabel="epoch", ylabel="test accuracy (%)")
    for ax in axes.flat[len(variants) :]:
        ax.set_visible(False)
    # The later epochs decide the question: the first ones, far lower, run off the bottom instead of squeezing them.
    late = frame[frame["epoch"] > frame["epoch"].max() / 2].groupby(["label", "epoch"])[record.TEST_ACC].mean()
    axes[0, 0].set_ylim(max(0.0, np.floor(late.min()) - 2), 100)
    legend = {"plain LeNet-5 (no regularizer)": GREY, "with the panel's regularizer": colour}
    _legend_and_title(fig, legend, title)
    return fig


def forest(compared, title: str, smallest: float):
    """Each variant's difference from its baseline (rows with a `label`), its interval, and the ±`smallest` band."""
    rows = compared.sort_values("vs_baseline_pp").reset_index(drop=True)
    diff, low, high = rows["vs_baseline_pp"], rows["vs_baseline_pp_ci_low"], rows["vs_baseline_pp_ci_high"]
    labels = [textwrap.fill(label, 50) for label in rows["label"]]  # a variant named by its settings is long
    lines = max(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.3 * len(rows) * lines), layout="constrained")
    colour = _palette(1)[0]
    ax.axvspan(-smallest, smallest, color=GREY, alpha=0.2, lw=0, zorder=0, label=f"±{smallest:g} pp: not worth having")
    ax.axvline(0, color=GREY, lw=1, zorder=0)
    ax.errorbar(diff, rows.index, xerr=np.nan_to_num([diff - low, high - diff]), fmt="none", ecolor=colour, capsize=3)
    significant = rows["verdict"].str.startswith(("better", "worse"))
    for shown, face in ((True, colour), (False, "white")):
        at = rows.index[significant == shown]
        label = "different (Holm-adjusted p < 0.05)" if shown else "not shown different"
        ax.scatter(diff[at], at, s=36, facecolor=face, edgecolor=colour, zorder=3, label=label)
    ax.set_yticks(rows.index, labels)
    xlabel = "difference in test accuracy (pp); interval at 1 - 0.05/m within each family of m"
    ax.set(xlabel=xlabel, title=title, ylim=(-0.7, len(rows) - 0.3))
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, frameon=False)
    return fig


def _epochs(ax) -> None:
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)


# --- a diff's: both sides' per-epoch curves ---

SIDE_CURVES = (
    ("accuracy (%)", (record.TEST_ACC, record.VAL_ACC), 100),
    ("cross-entropy loss", (record.TRAIN_LOSS, record.TEST_LOSS), 1),
)
SIDE_KEYS = [key for _, keys, _ in SIDE_CURVES for key in keys]


def side_curves(sides: list, title: str):
    """Accuracy and loss per epoch of sides A and B (runs.histories frames): a colour per side, a line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (ylabel, keys, scale), ax in zip(SIDE_CURVES, axes):
        for history, name, color in zip(sides, ("A", "B"), ("tab:blue", "tab:orange")):
            for key, style in zip(keys, ("o-", "s--")):
                for i, (_, run) in enumerate(history.dropna(subset=[key]).groupby("run_id", sort=False)):
                    label = f"{name} {key}" if i == 0 else None
                    ax.plot(run["epoch"], scale * run[key], style, color=color, alpha=0.8, markersize=4, label=label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=ylabel.split(" (")[0])
        _epochs(ax)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.84, wspace=0.2)
    return fig


def save(fig, path: Path, tight: bool = True) -> Path:
    fig.savefig(path, dpi=100, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
    return path
