"""The sweep as a report: each course question's answer and figure, and report.md (worded in report.md.j2)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import jinja2
import pandas as pd

from mnist_exp import plots, record
from mnist_exp.commands import analyze_command, fresh_seeds, more_seeds, train_command
from mnist_exp.runs import column
from mnist_exp.significance import MCNEMAR, POWER, family, selected_on_test
from mnist_exp.table import SHORT, choose_best, number, short

LECUN_1998_TEST_ACC = 99.05  # LeNet-5 on full MNIST: 0.95% test error (LeCun et al. 1998)
STUDENTS_TEST_ACC = 98.8  # what the course's own solutions report for LeNet-5 on full MNIST
FULL_MNIST_TRAIN = 60_000
MODELS = ("lenet5", "lenet5_32", "mlp")
TEMPLATE = Path(__file__).with_name("report.md.j2")
VALIDATION = "data.validation_size=1000"  # what a winner chosen on the test split is chosen on instead
RETEST_SEEDS = 3


def groups(table: pd.DataFrame, wanted) -> list[pd.DataFrame]:
    """The sets of runs trained alike (one `context` each) holding what `wanted(rows)` asks for, largest first."""
    found = [rows for _, rows in table.groupby("context", sort=False) if wanted(rows)]
    return sorted(found, key=lambda rows: -rows["n"].sum())


def _plain(rows: pd.DataFrame, model: str) -> pd.Series | None:
    plain = rows[(rows["model"] == model) & (rows["regularizer"] == "none")]
    return plain.iloc[0] if len(plain) else None


def _family(pairs: list, table: pd.DataFrame, on_test: bool = False) -> list[dict]:
    """[(row, baseline)] as one family (`on_test`: chosen on the test split), each with the command adding seeds."""
    found = family(pairs, **table.attrs["judging"])
    for c, (row, baseline) in zip(found, pairs):
        c.update(selected_on_test(c) if on_test else {}, have=min(row.n, baseline.n))
        if c["verdict"] == "undecided" and c["seeds_needed"]:
            c["command"] = train_command([row, baseline], more_seeds([row, baseline], c["seeds_needed"]), pooled=True)
    return [{"row": row, "c": c} for (row, _), c in zip(pairs, found)]


def lenet5_vs_mlp(table: pd.DataFrame) -> list[dict]:
    """Per group trained alike with a plain LeNet-5 and a plain MLP: LeNet-5 minus the MLP."""
    answers = []
    for rows in groups(table, lambda r: _plain(r, "lenet5") is not None and _plain(r, "mlp") is not None):
        lenet, mlp = _plain(rows, "lenet5"), _plain(rows, "mlp")
        c = _family([(lenet, mlp)], table)[0]["c"]
        compared = [("LeNet-5 vs the MLP", lenet, mlp, c, None)]
        answers.append(dict(lenet=lenet, mlp=mlp, c=c, trained=_trained(lenet), runs=[lenet, mlp], compared=compared))
    return answers


def regularizers(table: pd.DataFrame) -> list[dict]:
    """Per group trained alike: each regularized LeNet-5 against plain LeNet-5, those with one seed each apart."""

    def regularized(rows):
        return list(rows[(rows["model"] == "lenet5") & (rows["regularizer"] != "none")].itertuples())

    answers = []
    for rows in groups(table, lambda r: _plain(r, "lenet5") is not None and regularized(r)):
        plain = _plain(rows, "lenet5")
        judged = _family([(row, plain) for row in regularized(rows)], table)
        entries, one_seed = ([e for e in judged if (e["c"]["test"] == MCNEMAR) == apart] for apart in (False, True))
        runs = [plain, *regularized(rows)]
        compared = [("regularizers", e["row"], plain, e["c"], None) for e in entries + one_seed]
        answers.append(
            dict(plain=plain, trained=_trained(plain), entries=entries, one_seed=one_seed, runs=runs, compared=compared)
        )
    return answers


def combinations(table: pd.DataFrame) -> list[dict]:
    """Per group trained alike: each pair of regularizers against the best single one, as chosen among them."""

    def parts(rows):
        lenet = rows[rows["model"] == "lenet5"]
        count = lenet["regularizer"].str.count(r"\+")
        return lenet[(lenet["regularizer"] != "none") & (count == 0)], lenet[count == 1]

    answers = []
    for rows in groups(table, lambda r: all(len(p) for p in parts(r))):
        singles, pairs = parts(rows)
        single, basis = choose_best(singles)
        best_pair, _ = choose_best(pairs)
        entries = _family([(row, single) for row in pairs.itertuples()], table, basis == "test")
        best = next(item for item in entries if item["row"].variant == best_pair.variant)
        candidates = [*singles.itertuples(), *pairs.itertuples()]
        answers.append(
            {
                "single": single,
                "best": best,
                "entries": entries,
                "basis": basis,
                "trained": _trained(single),
                "better": [i["row"].regularizer for i in entries if i["c"]["verdict"].startswith("better")],
                "retest": _retest(basis, [best_pair, single], candidates),
                "runs": candidates,
                "compared": [(f"best pair vs best single ({_trained(single)})", best["row"], single, best["c"], basis)],
            }
        )
    return answers


def recipes(table: pd.DataFrame, course: str | None) -> list[dict]:
    """Each model's best variant against it unregularized, trained the course's way where there is one, else alike."""
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
        references = [] if reference is None else [reference]
        seeded = list((rows[rows["n"] >= 2] if (rows["n"] >= 2).any() else rows).itertuples())  # choose_best's
        candidates = [r for r in seeded if reference is None or r.variant != reference.variant]
        judged = _family([(row, reference) for row in candidates if reference is not None], table, basis == "test")
        c = next((e["c"] for e in judged if e["row"].variant == best.variant), None)  # None: not a candidate
        compared = [(f"best recipe for {model} vs {reference.variant}", best, reference, c, basis)] if c else []
        answers.append(
            {
                "model": model,
                "best": best,
                "basis": basis,
                "reference": reference,
                "candidates": len(candidates),
                "c": c,
                "changes": " ".join(map(shlex.quote, overrides)) if isinstance(overrides, list) else None,
                "retest": _retest(basis, [best, *references], seeded),
                "runs": [*seeded, *references],
                "compared": compared,
            }
        )
    return answers


def search(table: pd.DataFrame, runs: pd.DataFrame) -> dict | None:
    """An Optuna search's trials among `runs`: how many ended how, the best one and the settings it varied."""
    trials = runs[column(runs, f"tags.{record.TRIAL}").notna()]
    if trials.empty:
        return None
    numbers = dict(zip(trials["run_id"], trials[f"tags.{record.TRIAL}"]))
    rows = table[table["run_ids"].map(lambda ids: any(run_id in numbers for run_id in ids))]
    pruned = column(trials, f"tags.{record.PRUNED}").notna()
    finished = trials["status"] == "FINISHED"
    counts = {"finished": len(rows), "pruned": int((finished & pruned).sum()), "failed": int((~finished).sum())}
    if rows.empty:
        return {"best": None, "command": None, **counts}
    best, basis = choose_best(rows)
    run_id = best.run_ids[-1]
    varied = [c for c in trials if c.startswith("params.") and trials[c].nunique() > 1]  # pruned trials too
    settings = trials.set_index("run_id").loc[run_id, varied].rename(lambda c: c.removeprefix("params.")).to_dict()
    # command: analyze.py adds it, as it needs the run's logged files
    return dict(best=best, basis=basis, trial=numbers[run_id], run_id=run_id, settings=settings, command=None, **counts)


def versus_lecun(table: pd.DataFrame) -> dict | None:
    lenet = table[table["model"].isin(["lenet5", "lenet5_32"])]
    if lenet.empty:
        return None
    best, basis = choose_best(lenet)
    return {"best": best, "basis": basis, "size": None if pd.isna(best.train_size) else int(best.train_size)}


def _same_but_groups(settings: str, course: str) -> bool:
    ignore = ("model.", "regularizer.")
    return record.identity(json.loads(settings), ignore) == record.identity(json.loads(course), ignore)


def _retest(basis: str, rows: list, candidates: list) -> dict | None:
    """Re-test commands: on fresh seeds, or where the test split chose, every candidate with a validation split."""
    if basis != "test":
        seeds, extra = fresh_seeds(rows, RETEST_SEEDS), ()
    else:
        rows, seeds, extra = candidates, sorted({s for row in candidates for s in row.seeds}), (VALIDATION,)
    train = train_command(rows, seeds, extra)
    return None if train is None else {"train": train, "analyze": analyze_command(rows, seeds, extra), "basis": basis}


def _trained(row) -> str:
    """'2 epochs, sgd, constant learning rate, on sample 2000/2000'."""
    schedule = "a constant learning rate" if row.scheduler == "none" else f"the {row.scheduler} schedule"
    return f"{row.epochs:,} epoch{'s' if row.epochs != 1 else ''}, {row.optimizer}, {schedule}, on {row.data}"


# --- figures ---


def plot_all(table: pd.DataFrame, history: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The figures that have runs to show, saved in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: plots.save(fig, folder / record.FIGURES[name]) for name, fig in figures(table, history).items()}


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
        title = f"Test accuracy of each regularizer ({answer['trained']})"
        made["regularizers"] = plots.regularizer_panels(history[history["variant"].isin(variants)], "none", title)
    compared = table[table["baseline"].notna()]
    if len(compared):
        labels = [short(r.variant) + (" vs LeNet-5" if r.regularizer == "none" else "") for r in compared.itertuples()]
        title = "Each variant minus its baseline:\nthe same model unregularized, trained alike"
        smallest = table.attrs["judging"]["smallest_effect"]
        made["differences"] = plots.forest(compared.assign(label=labels), title, smallest)
    return made


# --- the report ---


def answers(table: pd.DataFrame, course: str | None = None, trials: dict | None = None) -> dict:
    """Everything the template words: each question's answer, and `trials` (search()'s, with its command)."""
    return {
        "search": trials,
        **table.attrs["judging"],
        "images": sorted({len(next(iter(a.values()))) for a in table["answers"] if a is not None}),
        "models": lenet5_vs_mlp(table),
        "regularizers": regularizers(table),
        "combinations": combinations(table),
        "recipes": recipes(table, course),
        "lecun": versus_lecun(table),
        "collapsed": [row for row in table.itertuples() if row.collapsed],
    }


def write_report(folder: Path, found: dict, table_markdown: str, figures: dict[str, Path], description: str) -> Path:
    """report.md in `folder`, wording `found` (answers())."""
    folder.mkdir(parents=True, exist_ok=True)
    links = {name: Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix() for name, path in figures.items()}
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    env.filters.update(
        pp=lambda x: f"{x:+.2f}",
        p=lambda x: f"{x:.3g}",
        acc=lambda row: f"{row.acc_pct:.2f}{number(row.acc_pct_std, ' ± {:.2f}')}% (n = {row.n})",
        count=lambda n, noun: f"{n:,} {noun if n == 1 else noun + 's'}",
        ci=lambda row: number(row.acc_pct_ci_low, ", 95% CI {:.2f}–") + number(row.acc_pct_ci_high, "{:.2f}"),
        thousands="{:,}".format,
        level=lambda confidence: f"{100 * confidence:.4g}%",
    )
    env.globals.update(lecun_acc=LECUN_1998_TEST_ACC, students_acc=STUDENTS_TEST_ACC, full_mnist=FULL_MNIST_TRAIN)
    env.globals.update(power=POWER, MCNEMAR=MCNEMAR, short=SHORT)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    report = folder / record.REPORT_FILE
    report.write_text(template.render(description=description, table=table_markdown, figures=links, **found))
    return report
