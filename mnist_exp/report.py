"""The sweep as a report: figures, the table, and one computed sentence per course question."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mnist_exp.significance import Difference, welch  # noqa: E402

LECUN_1998_TEST_ACC = 99.05  # LeNet-5 on full MNIST: 0.95% test error (LeCun et al. 1998)
STUDENTS_TEST_ACC = 98.8  # what the course's own solutions report for LeNet-5 on full MNIST
FULL_MNIST_TRAIN = 60_000
FIGURES = {
    "curves": "test_curves.png",
    "gap": "generalization_gap.png",
    "accuracy": "final_accuracy.png",
    "recipes": "recipe_curves.png",
}
MODELS = ("lenet5", "lenet5_32", "mlp")


def plot_all(table: pd.DataFrame, history: pd.DataFrame, folder: Path, course: str | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / file for name, file in FIGURES.items()}
    plot_test_curves(history, table["variant"].tolist(), paths["curves"])
    plot_recipe_curves(history, [row.variant for row in _recipe_rows(table, course)], paths["recipes"])
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
    _save_curves(fig, (acc_ax, loss_ax), path)


def plot_recipe_curves(history: pd.DataFrame, variants: list[str], path: Path) -> None:
    """Learning rate and test accuracy per epoch of each model's best recipe and the course's plain runs."""
    fig, (lr_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in variants:
        by_epoch = history[history["variant"] == variant].groupby("epoch")
        if "lr" in history:
            lr_ax.plot(by_epoch["lr"].mean(), label=variant)
        acc = by_epoch["test_acc"].mean() * 100
        acc_ax.plot(acc.index, acc.values, marker=".", label=variant)
    lr_ax.set(xlabel="epoch", ylabel="learning rate (first batch of the epoch)", title="Learning rate")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (mean over seeds)")
    low = min((line.get_ydata().min() for line in acc_ax.get_lines()), default=90)
    acc_ax.set_ylim(max(low, 90), 100)
    _save_curves(fig, (lr_ax, acc_ax), path)


def _save_curves(fig, axes, path: Path) -> None:
    """Per-epoch panels alike: a light grid, whole epochs, the legend on the last panel."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1].legend(fontsize=8)
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


def answers(table: pd.DataFrame, course: str | None = None) -> list[tuple[str, str]]:
    """The course's questions, each answered from the table. `course` is the settings (JSON, as in the
    table's `settings` column) of the course's own run: its plain LeNet-5; rows trained like it but for
    model and regularizer answer the course's questions, the others show how far a recipe goes."""
    course_rows = _course_rows(table, course)
    return [
        ("Does LeNet-5 beat the MLP at equal parameter count? By how much?", lenet5_vs_mlp(course_rows)),
        ("Which regularizers help LeNet-5, and is the help larger than seed noise?", regularizers(course_rows)),
        ("Does combining two regularizers help LeNet-5 beyond the best single one?", combinations(table)),
        ("How far does the best recipe take each model?", recipes(table, course)),
        (f"How does our LeNet-5 compare with the {LECUN_1998_TEST_ACC}% LeCun et al. reported and the "
         f"{STUDENTS_TEST_ACC}% of the course's own solutions, both on full MNIST?", versus_lecun(table)),
    ]


def _without(settings: str, prefixes: tuple[str, ...]) -> dict:
    return {k: v for k, v in json.loads(settings).items() if not k.startswith(prefixes)}


def _course_rows(table: pd.DataFrame, course: str | None) -> pd.DataFrame:
    """Rows trained the course's way: its settings but for model and regularizer."""
    if course is None:
        return table
    wanted = _without(course, ("model.", "regularizer."))
    return table[[_without(s, ("model.", "regularizer.")) == wanted for s in table["settings"]]]


def _course_plain(table: pd.DataFrame, course: str | None, model: str, data: str) -> pd.Series | None:
    rows = _course_rows(table, course)
    rows = rows[(rows["model"] == model) & (rows["regularizer"] == "none") & (rows["data"] == data)]
    return rows.iloc[0] if len(rows) else None


def _recipe_rows(table: pd.DataFrame, course: str | None) -> list[pd.Series]:
    """The course's plain LeNet-5, then the best variant of each model (by mean accuracy, seeded ones first)."""
    chosen = []
    for model in MODELS:
        rows = table[table["model"] == model]
        if rows.empty:
            continue
        seeded = rows[rows["n"] >= 2]
        chosen.append((seeded if len(seeded) else rows).sort_values("acc_pct", ascending=False).iloc[0])
    plain = _course_plain(table, course, "lenet5", chosen[0].data) if chosen else None
    return ([plain] if plain is not None and all(plain.variant != r.variant for r in chosen) else []) + chosen


def _recipe(row, course: str | None) -> str:
    """What a recipe changes from the course's settings: 'onecycle schedule (max_lr=0.1, ...), trainer.epochs=50'."""
    base = json.loads(course) if course else {}
    changed = {k: v for k, v in json.loads(row.settings).items()
               if base.get(k) != v and not k.startswith(("model.", "regularizer."))}
    schedule = {k.split(".", 1)[1]: v for k, v in changed.items() if k.startswith("scheduler.") and k != "scheduler.name"}
    settings = f" ({', '.join(f'{k}={v}' for k, v in sorted(schedule.items()))})" if schedule else ""
    parts = [f"{changed['scheduler.name']} schedule{settings}"] if "scheduler.name" in changed else []
    parts += [f"{k}={v}" for k, v in sorted(changed.items()) if not k.startswith("scheduler.")]
    return ", ".join(parts) or "the course's settings"


def _versus(a, b, name: str) -> str:
    d = welch(a.acc_pct_samples, b.acc_pct_samples)
    return f"{d.diff:+.2f} points over {name} ({_evidence(d)})"


def _interval(row) -> str:
    return "" if pd.isna(row.acc_pct_ci_low) else f", 95% CI {row.acc_pct_ci_low:.2f}–{row.acc_pct_ci_high:.2f}"


def _acc(row) -> str:
    spread = "" if pd.isna(row.acc_pct_std) else f" ± {row.acc_pct_std:.2f}"
    return f"{row.acc_pct:.2f}{spread}% (n = {row.n})"


def _count(n: int, noun: str) -> str:
    """'1 epoch', '20 epochs', '8,000 images': the noun agrees with the number."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def _evidence(d: Difference) -> str:
    if d.within_noise is None or pd.isna(d.within_noise):
        return "one seed on a side, so seed noise cannot be estimated"
    return f"95% CI {d.ci_low:+.2f} to {d.ci_high:+.2f}, Welch p = {d.p_value:.3g}"


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
            f"({_evidence(d)})."
        )
    return " ".join(sentences) or "This selection lacks a plain LeNet-5 or a plain MLP trained the same way."


def regularizers(table: pd.DataFrame) -> str:
    regularized = table[(table["model"] == "lenet5") & (table["regularizer"] != "none") & table["baseline"].notna()]
    if regularized.empty:
        return "This selection has no regularized LeNet-5 runs with a plain LeNet-5 to compare against."
    # Each verdict as (its verb for one regularizer, for several): "batchnorm helps", "l2, dropout help".
    verbs = {"help": ("helps", "help"), "hurt": ("hurts", "hurt"), "noise": ("stays", "stay"),
             "one seed": ("was", "were")}
    groups = {verdict: [] for verdict in verbs}
    for row in regularized.itertuples():
        entry = f"{row.regularizer} ({row.vs_baseline_pp:+.2f} pp" + (
            "" if pd.isna(row.within_noise) else f", p = {row.p_value:.3g}") + ")"
        if pd.isna(row.within_noise):
            groups["one seed"].append(entry)
        elif row.within_noise:
            groups["noise"].append(entry)
        elif row.vs_baseline_pp > 0:
            groups["help"].append(entry)
        else:
            groups["hurt"].append(entry)
    first = regularized.iloc[0]  # the plain LeNet-5 it was compared with, not any plain LeNet-5 in the table
    base = table[(table["variant"] == first.baseline) & (table["context"] == first.context)]
    reference = f" (plain LeNet-5: {_acc(base.iloc[0])})" if len(base) else ""
    tails = {"help": "beyond seed noise", "hurt": "beyond seed noise", "noise": "within seed noise",
             "one seed": "run with one seed only, so noise is unknown"}
    parts = [f"{', '.join(items)} {verbs[verdict][len(items) != 1]} {tails[verdict]}"
             for verdict, items in groups.items() if items]
    return f"Against LeNet-5 without regularization{reference}: " + "; ".join(parts) + "."


def combinations(table: pd.DataFrame) -> str:
    """Within the runs trained alike (one `context`), the best pair of regularizers against the best single one."""
    lenet = table[table["model"] == "lenet5"]
    singles = lenet[(lenet["regularizer"] != "none") & ~lenet["regularizer"].str.contains(r"\+")]
    pairs = lenet[lenet["regularizer"].str.count(r"\+") == 1]
    shared = [c for c in pairs["context"].unique() if c in set(singles["context"])]
    if not shared:
        return "This selection has no LeNet-5 runs with pairs of regularizers and single ones trained alike " \
               "(experiment=regularizer_combos runs them)."
    context = max(shared, key=lambda c: (pairs["context"] == c).sum())
    best_single = singles[singles["context"] == context].sort_values("acc_pct", ascending=False).iloc[0]
    pairs = pairs[pairs["context"] == context].sort_values("acc_pct", ascending=False)
    best_pair = pairs.iloc[0]
    d = welch(best_pair.acc_pct_samples, best_single.acc_pct_samples)
    if d.within_noise is None:
        verdict = "Cannot tell: one seed on a side"
    elif d.within_noise:
        verdict = "Not beyond seed noise"
    else:
        verdict = "Yes" if d.diff > 0 else "No, it hurts"
    better = [row.regularizer for row in pairs.itertuples()
              if (w := welch(row.acc_pct_samples, best_single.acc_pct_samples)).within_noise is not None
              and not w.within_noise and w.diff > 0]
    if len(pairs) == 1:
        rest = f" The only pair {'beats' if better else 'does not beat'} it beyond seed noise" + (
            f" ({better[0]})." if better else ".")
    elif better:
        rest = (f" {len(better)} of {len(pairs)} pairs {'beats' if len(better) == 1 else 'beat'} it beyond seed "
                f"noise ({', '.join(better)}).")
    else:
        rest = f" None of the {len(pairs)} pairs beats it beyond seed noise."
    return (
        f"{verdict}: trained alike ({_count(best_single.epochs, 'epoch')}, {_schedule(best_single)}), the best pair, "
        f"{best_pair.regularizer}, reaches {_acc(best_pair)} and the best single regularizer, {best_single.regularizer}, "
        f"{_acc(best_single)}: {d.diff:+.2f} points ({_evidence(d)})."
        + rest
    )


def _schedule(row) -> str:
    return "a constant learning rate" if row.scheduler == "none" else f"the {row.scheduler} schedule"


def recipes(table: pd.DataFrame, course: str | None) -> str:
    sentences = []
    best_single = _course_rows(table, course)
    best_single = best_single[(best_single["model"] == "lenet5") & (best_single["regularizer"] != "none")
                              & ~best_single["regularizer"].str.contains(r"\+")]
    for row in _recipe_rows(table, course):
        plain = _course_plain(table, course, row.model, row.data)
        if plain is not None and plain.variant == row.variant:
            continue  # the course's plain LeNet-5 itself: the reference, not a recipe
        sentence = (f"{_label(row.model)}: {row.variant} ({_recipe(row, course)}) reaches {_acc(row)}{_interval(row)}, "
                    f"{_count(row.epochs, 'epoch')} in {row.train_time_s:.0f} s per seed")
        gains = []
        if plain is not None:
            gains.append(_versus(row, plain, f"the course's plain {_label(row.model)} ({plain.acc_pct:.2f}%)"))
        singles = best_single[best_single["data"] == row.data]
        if row.model != "mlp" and len(singles):
            single = singles.sort_values("acc_pct", ascending=False).iloc[0]
            gains.append(_versus(row, single, f"the course's best single regularizer, {single.regularizer} "
                                              f"({single.acc_pct:.2f}%)"))
        sentences.append(sentence + (": " + "; ".join(gains) if gains else "") + ".")
    return " ".join(sentences) or "This selection has no runs."


def _label(model: str) -> str:
    return {"lenet5": "LeNet-5", "lenet5_32": "LeNet-5 (32x32)", "mlp": "MLP"}.get(model, model)


def versus_lecun(table: pd.DataFrame) -> str:
    lenet = table[table["model"].isin(["lenet5", "lenet5_32"])]
    if lenet.empty:
        return "This selection has no LeNet-5 runs."
    best = lenet.sort_values("acc_pct", ascending=False).iloc[0]
    size = best.train_size
    if not pd.isna(size) and int(size) >= FULL_MNIST_TRAIN:
        context = f"It trained on full MNIST ({_count(int(size), 'image')}), so the figures compare like with like."
    else:
        images = "an unknown number of images" if pd.isna(size) else _count(int(size), "image")
        context = (
            f"It trained on {images}, not full MNIST's {FULL_MNIST_TRAIN:,}: both figures come from "
            f"{'many' if pd.isna(size) else f'{FULL_MNIST_TRAIN / int(size):.1f}'} times as much training data, "
            "so a gap here mixes the amount of data with the model and its training; only a run on full MNIST "
            "compares like with like."
        )
    return (
        f"Our best LeNet-5 variant, {best.variant}, reaches {_acc(best)}: {best.acc_pct - LECUN_1998_TEST_ACC:+.2f} "
        f"points against LeCun et al.'s {LECUN_1998_TEST_ACC}% (0.95% error) and "
        f"{best.acc_pct - STUDENTS_TEST_ACC:+.2f} against the course solutions' {STUDENTS_TEST_ACC}%. {context}"
    )


def write_report(table: pd.DataFrame, table_markdown: str, figures: dict[str, Path], description: str,
                 folder: Path, course: str | None = None) -> Path:
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
    for question, answer in answers(table, course):
        lines += [f"**{question}**", "", answer, ""]
    lines += ["## All variants", "", table_markdown, ""]
    lines += ["## Figures", ""]
    for name, path in figures.items():
        lines += [f"![{name}]({Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()})", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
