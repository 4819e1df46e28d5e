"""The sweep as a report: figures, the table, and one computed sentence per course question."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mnist_exp.statistics import welch  # noqa: E402

LECUN_1998_TEST_ACC = 99.05  # LeNet-5 on full MNIST: 0.95% test error (LeCun et al. 1998)
FULL_MNIST_TRAIN = 60_000
FIGURES = {
    "curves": "test_curves.png",
    "gap": "generalization_gap.png",
    "accuracy": "final_accuracy.png",
}


def plot_all(table: pd.DataFrame, history: pd.DataFrame, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / file for name, file in FIGURES.items()}
    plot_test_curves(history, table["variant"].tolist(), paths["curves"])
    plot_bars(table, "gap_pp", "train − test accuracy (pp), eval mode",
              "Generalization gap after the last epoch (mean ± std over seeds)", paths["gap"],
              error=(table["gap_pp_std"], table["gap_pp_std"]))
    plot_bars(table, "acc_pct", "test accuracy (%)", "Test accuracy (mean, 95% CI over seeds)", paths["accuracy"],
              error=(table["acc_pct"] - table["acc_pct_ci_low"], table["acc_pct_ci_high"] - table["acc_pct"]))
    return paths


def plot_test_curves(history: pd.DataFrame, variants: list[str], path: Path) -> None:
    """Test accuracy and loss per epoch: the mean over seeds as a line, ± one std as a band."""
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in variants:
        runs = history[history["variant"] == variant]
        by_epoch = runs.groupby("epoch")
        for ax, key, scale in ((acc_ax, "test_acc", 100), (loss_ax, "test_loss", 1)):
            mean = by_epoch[key].mean() * scale
            std = by_epoch[key].std(ddof=1).fillna(0) * scale
            (line,) = ax.plot(mean.index, mean.values, marker=".", label=variant)
            ax.fill_between(mean.index, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    loss_ax.set(xlabel="epoch", ylabel="test cross-entropy", title="Test loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(table: pd.DataFrame, column: str, ylabel: str, title: str, path: Path, error) -> None:
    """One bar per variant; `error` = (below, above) each bar, NaN (one seed) drawn as none."""
    values = table[column].to_numpy(dtype=float)
    yerr = np.nan_to_num(np.vstack([np.asarray(side, dtype=float) for side in error]))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table) + 2), 4.5))
    colors = ["tab:orange" if model == "mlp" else "tab:blue" for model in table["model"]]
    ax.bar(range(len(table)), values, yerr=yerr, capsize=4, color=colors)
    ax.set_xticks(range(len(table)), table["variant"], rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    if column == "acc_pct":
        finite = values[np.isfinite(values)]
        ax.set_ylim(max(0, finite.min() - 3), min(100, finite.max() + 1.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the course's questions, answered from the numbers ---


def answers(table: pd.DataFrame) -> list[tuple[str, str]]:
    return [
        ("Does LeNet-5 beat the MLP at equal parameter count? By how much?", lenet5_vs_mlp(table)),
        ("Which regularizers help LeNet-5, and is the help larger than seed noise?", regularizers(table)),
        ("How does our LeNet-5 compare with the 99.05% test accuracy LeCun et al. reported on full MNIST?",
         versus_lecun(table)),
    ]


def _acc(row) -> str:
    spread = "" if pd.isna(row.acc_pct_std) else f" ± {row.acc_pct_std:.2f}"
    return f"{row.acc_pct:.2f}{spread}% (n = {row.n})"


def _evidence(diff, ci_low, ci_high, p_value, within_noise) -> str:
    if within_noise is None or pd.isna(within_noise):
        return "one seed on a side, so seed noise cannot be estimated"
    return f"95% CI {ci_low:+.2f} to {ci_high:+.2f}, Welch p = {p_value:.3g}"


def lenet5_vs_mlp(table: pd.DataFrame) -> str:
    plain = table[table["regularizer"] == "none"]
    sentences = []
    for optimizer, group in plain.groupby("optimizer", sort=False):
        lenet = group[group["model"] == "lenet5"]
        mlp = group[group["model"] == "mlp"]
        if lenet.empty or mlp.empty:
            continue
        lenet, mlp = lenet.iloc[0], mlp.iloc[0]
        d = welch(lenet.acc_pct_samples, mlp.acc_pct_samples)
        if d.within_noise is None:
            verdict = ("Yes" if d.diff > 0 else "No") + ", on one seed"
        elif d.within_noise:
            verdict = "Not measurably"
        else:
            verdict = "Yes" if d.diff > 0 else "No"
        sentences.append(
            f"{verdict}: with {optimizer}, LeNet-5 ({lenet.params:,} parameters) reaches {_acc(lenet)} and the MLP "
            f"({mlp.params:,} parameters) {_acc(mlp)}; LeNet-5 is {d.diff:+.2f} points "
            f"({_evidence(d.diff, d.ci_low, d.ci_high, d.p_value, d.within_noise)})."
        )
    return " ".join(sentences) or "This selection lacks a plain LeNet-5 or a plain MLP trained the same way."


def regularizers(table: pd.DataFrame) -> str:
    regularized = table[(table["model"] == "lenet5") & (table["regularizer"] != "none") & table["baseline"].notna()]
    if regularized.empty:
        return "This selection has no regularized LeNet-5 runs with a plain LeNet-5 to compare against."
    groups = {"help beyond seed noise": [], "hurt beyond seed noise": [], "stay within seed noise": [],
              "were run with one seed only, so noise is unknown": []}
    for row in regularized.itertuples():
        entry = f"{row.regularizer} ({row.vs_baseline_pp:+.2f} pp" + (
            "" if pd.isna(row.within_noise) else f", p = {row.p_value:.3g}") + ")"
        if pd.isna(row.within_noise):
            groups["were run with one seed only, so noise is unknown"].append(entry)
        elif row.within_noise:
            groups["stay within seed noise"].append(entry)
        elif row.vs_baseline_pp > 0:
            groups["help beyond seed noise"].append(entry)
        else:
            groups["hurt beyond seed noise"].append(entry)
    base = table[(table["model"] == "lenet5") & (table["regularizer"] == "none")]
    reference = f" (plain LeNet-5: {_acc(base.iloc[0])})" if len(base) else ""
    parts = [f"{', '.join(items)} {label}" for label, items in groups.items() if items]
    return f"Against LeNet-5 without regularization{reference}: " + "; ".join(parts) + "."


def versus_lecun(table: pd.DataFrame) -> str:
    lenet = table[table["model"] == "lenet5"]
    if lenet.empty:
        return "This selection has no LeNet-5 runs."
    best = lenet.sort_values("acc_pct", ascending=False).iloc[0]
    gap = best.acc_pct - LECUN_1998_TEST_ACC
    size = best.train_size
    if not pd.isna(size) and int(size) >= FULL_MNIST_TRAIN:
        context = f"trained on full MNIST ({int(size):,} images) for {best.epochs} epochs, so the two are comparable"
    else:
        images = "an unknown number of" if pd.isna(size) else f"{int(size):,}"
        context = (
            f"trained on {images} images for {best.epochs} epochs instead of full MNIST's {FULL_MNIST_TRAIN:,}, "
            "so the difference mixes data and training length with the model"
        )
    return (
        f"Our best LeNet-5 variant, {best.variant}, reaches {_acc(best)}: {gap:+.2f} points against "
        f"LeCun et al.'s {LECUN_1998_TEST_ACC}% (0.95% error); it {context}."
    )


def write_report(table: pd.DataFrame, table_markdown: str, figures: dict[str, Path], description: str,
                 folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# LeNet-5 vs. MLP: report",
        "",
        f"Runs: {description}. Accuracy is the mean over seeds ± the sample standard deviation; "
        "95% confidence intervals use Student's t; differences use Welch's t-test, and a difference whose "
        "95% interval contains 0 is called seed noise.",
        "",
        "## The course's questions",
        "",
    ]
    for question, answer in answers(table):
        lines += [f"**{question}**", "", answer, ""]
    lines += ["## All variants", "", table_markdown, ""]
    lines += ["## Figures", ""]
    for name, path in figures.items():
        lines += [f"![{name}]({Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()})", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
