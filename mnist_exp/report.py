"""The sweep as a report: figures, the table, and the course's questions answered from the numbers.

The functions here compute each answer's numbers and verdicts; report.md.j2 holds the wording."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import jinja2
import pandas as pd

from mnist_exp import plots, tracking
from mnist_exp.analysis import (
    SHORT,
    adjust,
    choose_best,
    comparison,
    fresh_seeds,
    more_seeds,
    short,
    train_command,
)

LECUN_1998_TEST_ACC = 99.05  # LeNet-5 on full MNIST: 0.95% test error (LeCun et al. 1998)
STUDENTS_TEST_ACC = 98.8  # what the course's own solutions report for LeNet-5 on full MNIST
FULL_MNIST_TRAIN = 60_000
FIGURES = {"models": "lenet5_vs_mlp.png", "regularizers": "regularizers.png", "differences": "differences.png"}
MODELS = ("lenet5", "lenet5_32", "mlp")
TEMPLATE = Path(__file__).with_name("report.md.j2")


def groups(table: pd.DataFrame, wanted) -> list[pd.DataFrame]:
    """The sets of runs trained alike (one `context` each) that hold what `wanted(rows)` asks for,
    the largest first."""
    found = [rows for _, rows in table.groupby("context", sort=False) if wanted(rows)]
    return sorted(found, key=lambda rows: -rows["n"].sum())


def _plain(rows: pd.DataFrame, model: str) -> pd.Series | None:
    plain = rows[(rows["model"] == model) & (rows["regularizer"] == "none")]
    return plain.iloc[0] if len(plain) else None


def _with_commands(c: dict, rows: list) -> dict:
    """A comparison plus, where undecided, the command adding the seeds it needs."""
    if c["verdict"] == "undecided" and c["seeds_needed"]:
        c["command"] = train_command(rows, more_seeds(rows, c["seeds_needed"]))
    return c


def lenet5_vs_mlp(table: pd.DataFrame) -> list[dict]:
    """Per group trained alike with a plain LeNet-5 and a plain MLP: LeNet-5 minus the MLP."""
    answers = []
    for rows in groups(table, lambda r: _plain(r, "lenet5") is not None and _plain(r, "mlp") is not None):
        lenet, mlp = _plain(rows, "lenet5"), _plain(rows, "mlp")
        c = _with_commands(adjust([comparison(lenet, mlp)])[0], [lenet, mlp])
        answers.append({"lenet": lenet, "mlp": mlp, "c": c, "trained": _trained(lenet)})
    return answers


def regularizers(table: pd.DataFrame) -> list[dict]:
    """Per group trained alike: every regularized LeNet-5 against plain LeNet-5 (one Holm family)."""
    answers = []
    for rows in groups(
        table,
        lambda r: _plain(r, "lenet5") is not None and ((r["model"] == "lenet5") & (r["regularizer"] != "none")).any(),
    ):
        plain = _plain(rows, "lenet5")
        regularized = rows[(rows["model"] == "lenet5") & (rows["regularizer"] != "none")]
        family = adjust([comparison(row, plain) for row in regularized.itertuples()])
        answers.append(
            {
                "plain": plain,
                "trained": _trained(plain),
                "entries": [
                    {"row": row, "c": _with_commands(c, [row, plain])}
                    for row, c in zip(regularized.itertuples(), family)
                ],
            }
        )
    return answers


def combinations(table: pd.DataFrame) -> list[dict]:
    """Per group trained alike with pairs and single regularizers of LeNet-5: every pair against the best
    single one (chosen on validation where there is one), one Holm family."""

    def parts(rows):
        lenet = rows[rows["model"] == "lenet5"]
        count = lenet["regularizer"].str.count(r"\+")
        return lenet[(lenet["regularizer"] != "none") & (count == 0)], lenet[count == 1]

    answers = []
    for rows in groups(table, lambda r: all(len(p) for p in parts(r))):
        singles, pairs = parts(rows)
        single, basis = choose_best(singles)
        best_pair, _ = choose_best(pairs)
        family = adjust([comparison(row, single) for row in pairs.itertuples()])
        entries = [{"row": row, "c": _with_commands(c, [row, single])} for row, c in zip(pairs.itertuples(), family)]
        best = next(item for item in entries if item["row"].variant == best_pair.variant)
        answers.append(
            {
                "single": single,
                "best": best,
                "entries": entries,
                "basis": basis,
                "trained": _trained(single),
                "better": [i["row"].regularizer for i in entries if i["c"]["verdict"] == "better"],
                "retest": _retest(basis, [best_pair, single]),
            }
        )
    return answers


def recipes(table: pd.DataFrame, course: str | None) -> list[dict]:
    """Each model's best variant (on validation where every one has it) against the same model unregularized,
    trained the course's way where the selection has it, else trained alike."""
    answers = []
    for model in MODELS:
        rows = table[table["model"] == model]
        if rows.empty:
            continue
        best, basis = choose_best(rows)
        overrides = best.get("overrides")
        course_rows = table[table["settings"].map(lambda s: _same_but_groups(s, course))] if course else table.iloc[:0]
        reference = _plain(course_rows[course_rows["data"] == best.data], model)
        if reference is None:
            reference = _plain(table[table["context"] == best.context], model)
        c = None
        if reference is not None and reference.variant != best.variant:
            c = _with_commands(adjust([comparison(best, reference)])[0], [best, reference])
        answers.append(
            {
                "model": model,
                "best": best,
                "basis": basis,
                "reference": reference,
                "c": c,
                "changes": " ".join(map(shlex.quote, overrides)) if isinstance(overrides, list) else None,
                "retest": _retest(basis, [best]),
            }
        )
    return answers


def search(table: pd.DataFrame, runs: pd.DataFrame) -> dict | None:
    """The trials of an Optuna search among `runs` (the selection, every status): how many ended how, and
    the best trial trained in full, chosen on the validation split, with the settings the search varied."""
    column = f"tags.{tracking.TRIAL}"
    trials = runs[runs[column].notna()] if column in runs else runs.iloc[:0]
    if trials.empty:
        return None
    numbers = dict(zip(trials["run_id"], trials[column]))
    rows = table[table["run_ids"].map(lambda ids: any(run_id in numbers for run_id in ids))]
    pruned = trials[f"tags.{tracking.PRUNED}"].notna() if f"tags.{tracking.PRUNED}" in trials else False
    counts = {
        "finished": len(rows),
        "pruned": int(((trials["status"] == "FINISHED") & pruned).sum()),
        "failed": int((trials["status"] != "FINISHED").sum()),
    }
    if rows.empty:
        return {"best": None, "command": None, **counts}
    best, basis = choose_best(rows)
    run_id = best.run_ids[-1]
    varied = [c for c in trials if c.startswith("params.") and trials[c].nunique() > 1]  # pruned trials too
    chosen = trials.set_index("run_id").loc[run_id]
    return {
        "best": best,
        "basis": basis,
        "trial": numbers[run_id],
        "run_id": run_id,
        "settings": {column.removeprefix("params."): chosen[column] for column in varied},
        "command": None,  # analyze.py adds it: it needs the run's logged files
        **counts,
    }


def versus_lecun(table: pd.DataFrame) -> dict | None:
    lenet = table[table["model"].isin(["lenet5", "lenet5_32"])]
    if lenet.empty:
        return None
    best, basis = choose_best(lenet)
    size = None if pd.isna(best.train_size) else int(best.train_size)
    return {"best": best, "basis": basis, "size": size}


def _same_but_groups(settings: str, course: str) -> bool:
    def strip(s):
        return {k: v for k, v in json.loads(s).items() if not k.startswith(("model.", "regularizer."))}

    return strip(settings) == strip(course)


def _retest(basis: str, rows: list) -> str | None:
    """Chosen on the test split: the command that trains the winner (and what it beat) on 3 fresh seeds."""
    return None if basis == "validation" else train_command(rows, fresh_seeds(rows, 3))


def _trained(row) -> str:
    """'2 epochs, sgd, constant learning rate, on sample 2000/2000'."""
    schedule = "a constant learning rate" if row.scheduler == "none" else f"the {row.scheduler} schedule"
    return f"{row.epochs:,} epoch{'s' if row.epochs != 1 else ''}, {row.optimizer}, {schedule}, on {row.data}"


# --- figures ---


def plot_all(table: pd.DataFrame, history: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The figures that have runs to show, saved in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: plots.save(fig, folder / FIGURES[name]) for name, fig in figures(table, history).items()}


def figures(table: pd.DataFrame, history: pd.DataFrame) -> dict:
    """name -> matplotlib Figure, each answering one question."""
    runs = table[["variant", "model", "regularizer", "context", "run_ids"]].explode("run_ids")
    history = history.drop(columns=["variant"]).merge(runs.rename(columns={"run_ids": "run_id"}), on="run_id")
    history["label"] = history["regularizer"]
    made = {}
    for answer in lenet5_vs_mlp(table)[:1]:
        chosen = history[history["variant"].isin([answer["lenet"].variant, answer["mlp"].variant])]
        made["models"] = plots.model_curves(chosen, f"LeNet-5 vs MLP ({answer['trained']})")
    for answer in regularizers(table)[:1]:
        variants = [answer["plain"].variant, *(i["row"].variant for i in answer["entries"])]
        made["regularizers"] = plots.regularizer_panels(
            history[history["variant"].isin(variants)],
            "none",
            f"Test accuracy of each regularizer ({answer['trained']})",
        )
    compared = table[table["baseline"].notna()]
    if len(compared):
        made["differences"] = plots.forest(
            pd.DataFrame(
                {
                    "label": [
                        short(v) + (" vs LeNet-5" if r == "none" else "")
                        for v, r in zip(compared["variant"], compared["regularizer"])
                    ],
                    "diff": compared["vs_baseline_pp"],
                    "low": compared["vs_baseline_pp_ci_low"],
                    "high": compared["vs_baseline_pp_ci_high"],
                    "significant": compared["verdict"].isin(["better", "worse"]),
                }
            ),
            "Each variant minus its baseline:\nthe same model unregularized, trained alike",
        )
    return made


# --- the report ---


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        pp=lambda x: f"{x:+.2f}",
        p=lambda x: f"{x:.3g}",
        acc=lambda row: (
            f"{row.acc_pct:.2f}"
            + ("" if pd.isna(row.acc_pct_std) else f" ± {row.acc_pct_std:.2f}")
            + f"% (n = {row.n})"
        ),
        count=lambda n, noun: f"{n:,} {noun if n == 1 else noun + 's'}",
        ci=lambda r: "" if pd.isna(r.acc_pct_ci_low) else f", 95% CI {r.acc_pct_ci_low:.2f}–{r.acc_pct_ci_high:.2f}",
        thousands="{:,}".format,
    )
    env.globals.update(
        lecun_acc=LECUN_1998_TEST_ACC,
        students_acc=STUDENTS_TEST_ACC,
        full_mnist=FULL_MNIST_TRAIN,
        helps={
            "better": "helps",
            "worse": "hurts",
            "undecided": "undecided",
            "one seed": "one seed only, noise unknown",
        },
    )
    return env


def answers(table: pd.DataFrame, course: str | None = None, trials: dict | None = None) -> dict:
    """Everything the template words: each question's numbers and verdicts, and a search's best trial."""
    return {
        "search": trials,
        "models": lenet5_vs_mlp(table),
        "regularizers": regularizers(table),
        "combinations": combinations(table),
        "recipes": recipes(table, course),
        "lecun": versus_lecun(table),
        "collapsed": [row for row in table.itertuples() if row.collapsed],
        "short": SHORT,
    }


def render(
    table: pd.DataFrame,
    table_markdown: str,
    figures: dict[str, Path],
    description: str,
    folder: Path,
    course: str | None = None,
    trials: dict | None = None,
) -> str:
    links = {name: Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix() for name, path in figures.items()}
    return (
        _environment()
        .get_template(TEMPLATE.name)
        .render(description=description, table=table_markdown, figures=links, **answers(table, course, trials))
    )


def write_report(
    table: pd.DataFrame,
    table_markdown: str,
    figures: dict[str, Path],
    description: str,
    folder: Path,
    course: str | None = None,
    trials: dict | None = None,
) -> Path:
    """report.md in `folder`; `trials`: search()'s answer, its best trial's `command` added where known."""
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / "report.md"
    report.write_text(render(table, table_markdown, figures, description, folder, course, trials))
    return report
