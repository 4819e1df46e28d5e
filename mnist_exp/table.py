"""The variant table (docs/analysis.md): one row per variant, seeds pooled, compared with its baseline trained alike,
and its text. Accuracies in percent (`..._pct`), differences in points (`..._pp`); MLflow holds fractions."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap

import numpy as np
import pandas as pd

from mnist_exp import record, tracking
from mnist_exp.runs import AnalysisError, column, metric
from mnist_exp.significance import COMPARISON, MCNEMAR, SMALLEST_EFFECT_PP, family, variant_accuracy
from mnist_exp.sweep import clip, significant

# --metric: which accuracy of a run counts (`val`: chooses a recipe without looking at the test set).
METRICS = {"final": record.FINAL_TEST_ACC, "best": record.BEST_TEST_ACC, "val": record.FINAL_VAL_ACC}
HEADERS = {"final": "test acc %", "best": "best-epoch test acc %", "val": "validation acc %"}
# The split whose per-image answers a metric is about; the best epoch's are not kept (it is chosen on test).
SPLITS = {"final": "test", "val": "validation"}
# --sort name: its column, best first (accuracies descending, the rest ascending).
SORT_KEYS = {"test_acc": "acc_pct", "best_test_acc": "best_test_acc_pct", "test_loss": "test_loss", "gap": "gap_pp"}
SORT_KEYS |= {"params": "params", "train_time_s": "train_time_s", "variant": "variant"}
# Settings a baseline may differ in, and the data, compared by what was read (record.DATA_IDENTITY).
COMPARED = ("model.", "regularizer.", "trainer.seed", "data.")
# A collapsed seed: near chance (10 digits: 10%), or this far below the median of its variant's other seeds.
CHANCE_PCT, COLLAPSE_PP = 20.0, 10.0
WIDTH = 120  # the default terminal table fits this many columns
# Short names for the narrow table and the figures, printed as a key where used.
SHORT = {
    "batchnorm": "bn",
    "augment": "aug",
    "dropout": "drop",
    "label_smoothing": "ls",
    "early_stopping": "es",
    "onecycle": "1cyc",
    "cosine": "cos",
}
# --wide's number columns: header -> (column, format).
WIDE = {
    "best %": ("best_test_acc_pct", "{:.2f}"),
    "val %": ("val_acc_pct", "{:.2f}"),
    "test loss": ("test_loss", "{:.4f}"),
    "train (eval) %": ("train_eval_acc_pct", "{:.2f}"),
    "gap pp": ("gap_pp", "{:+.2f}"),
    "epochs": ("epochs", "{}"),
    "time s": ("train_time_s", "{:.1f}"),
    "Δ MLP pp": ("vs_mlp_pp", "{:+.2f}"),
    "Δ LeNet-5 pp": ("vs_lenet5_pp", "{:+.2f}"),
}
# Each variant's columns: from its latest run, and averaged over its seeds.
SAME = ("variant", "model", "regularizer", "optimizer", "scheduler", "data", "settings", "params", "epochs")
SAME += ("train_size", "digest", "confirmed")
MEANS = ("acc_pct", "final_test_acc_pct", "best_test_acc_pct", "test_loss", "train_eval_acc_pct")
MEANS += ("gap_pp", "train_time_s", "val_acc_pct")


def _context_key(run: pd.Series) -> str:
    """What a run's baseline shares with it: every setting but COMPARED, and the data read (by content)."""
    ignored = tuple(f"params.{prefix}" for prefix in record.NOT_IDENTITY + COMPARED)
    context = {key: value for key, value in run.items() if key.startswith("params.") and not key.startswith(ignored)}
    data = {key: run.get(f"params.{key}") for key in record.DATA_IDENTITY}
    return hashlib.sha256(json.dumps({**context, **data}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings(params: dict[str, str]) -> str:
    """A run's own settings (JSON) from its params, without the seed and the data: equal within a variant."""
    recorded = {key: value for key, value in params.items() if not pd.isna(value)}
    return json.dumps(record.identity(recorded, ignore=("trainer.seed", "data.")), sort_keys=True)


def _data_label(run: pd.Series) -> str:
    """'sample 8000/2000 (offline fallback)': where a run's digits came from, and how many."""
    label = f"{run[f'params.{record.SOURCE}']} {run[f'params.{record.TRAIN_SIZE}']}/{run[f'params.{record.TEST_SIZE}']}"
    validation = run.get(f"params.{record.VALIDATION_SIZE}")
    label += "" if pd.isna(validation) or validation == "0" else f" +{validation} val"
    return label + (" (offline fallback)" if not pd.isna(run.get(f"tags.{record.FALLBACK}")) else "")


def per_run(finished: pd.DataFrame, metric_name: str = "final") -> pd.DataFrame:
    """The numbers of each finished run, in percent, with its variant, its data and its comparison context."""
    params = finished[[c for c in finished if c.startswith("params.")]].rename(columns=lambda c: c[len("params.") :])
    runs = pd.DataFrame(
        {
            "run_id": finished["run_id"],
            "variant_hash": finished[f"tags.{record.VARIANT_HASH}"],
            "variant": finished[f"tags.{record.VARIANT}"],
            "context": finished.apply(_context_key, axis=1),
            "data": finished.apply(_data_label, axis=1),
            "settings": [settings(row) for row in params.to_dict("records")],
            "model": finished["params.model.name"],
            "regularizer": finished[f"params.{record.REGULARIZERS}"],
            "optimizer": finished["params.optimizer.name"],
            "scheduler": column(finished, "params.scheduler.name").fillna("none"),
            "params": finished[f"params.{record.PARAMETERS}"].astype(int),
            "epochs": finished["params.trainer.epochs"].astype(int),
            "train_size": pd.to_numeric(column(finished, f"params.{record.TRAIN_SIZE}")),
            "final_test_acc_pct": 100 * metric(finished, record.FINAL_TEST_ACC),
            "best_test_acc_pct": 100 * metric(finished, record.BEST_TEST_ACC),
            "test_loss": metric(finished, record.FINAL_TEST_LOSS),
            "train_eval_acc_pct": 100 * metric(finished, record.TRAIN_EVAL_ACC),
            "train_time_s": metric(finished, record.TRAIN_TIME),
            "seed": pd.to_numeric(column(finished, "params.trainer.seed")),
            "val_acc_pct": 100 * metric(finished, record.FINAL_VAL_ACC),
            "digest": column(finished, f"params.{record.SPLIT_DIGEST[SPLITS.get(metric_name, 'test')]}"),
            "confirmed": column(finished, "confirmed"),  # runs.select_runs: a search's confirmation's recipe or plain
        }
    )
    runs["acc_pct"] = 100 * metric(finished, METRICS[metric_name])
    runs["gap_pp"] = runs["train_eval_acc_pct"] - runs["final_test_acc_pct"]  # the same model, both in eval mode
    return runs.reset_index(drop=True)


def variant_table(
    finished: pd.DataFrame,
    metric: str = "final",
    sort: str | None = None,
    answers: dict | None = None,
    smallest_effect: float = SMALLEST_EFFECT_PP,
    half_width: float | None = None,
) -> pd.DataFrame:
    """One row per variant, COMPARISON's columns per baseline's family; `answers`: {run_id: correct per image}."""
    if finished.empty:
        raise AnalysisError("no FINISHED runs to compare")
    runs = per_run(finished, metric)
    grouped = runs.groupby(["variant_hash", "context"], sort=False)
    table = grouped[list(SAME)].first().assign(n=grouped.size()).join(grouped[list(MEANS)].mean())
    table["gap_pp_std"] = grouped["gap_pp"].std(ddof=1)
    table["acc_pct_samples"] = grouped["acc_pct"].apply(list)
    table["seeds"] = grouped["seed"].apply(lambda seeds: [int(s) for s in seeds])
    table["run_ids"] = grouped["run_id"].apply(list)
    answers = answers or {}
    table["answers"] = [  # {seed: correct per image}; None where a run has none
        dict(zip(r.seeds, (answers[i] for i in r.run_ids))) if all(i in answers for i in r.run_ids) else None
        for r in table.itertuples()
    ]
    estimates = [variant_accuracy(r.answers, r.acc_pct_samples) for r in table.itertuples()]
    for name, field in (("acc_pct_std", "std"), ("acc_pct_ci_low", "ci_low"), ("acc_pct_ci_high", "ci_high")):
        table[name] = [getattr(e, field) for e in estimates]
    table["collapsed"] = [collapsed_seeds(r.acc_pct_samples, r.seeds, r.run_ids) for r in table.itertuples()]
    table = table.reset_index()
    table.attrs.update(metric=metric, judging={"smallest_effect": smallest_effect, "half_width": half_width})

    plain = table[table["regularizer"] == "none"]
    for name, model in (("vs_mlp_pp", "mlp"), ("vs_lenet5_pp", "lenet5")):
        reference = plain[plain["model"] == model].drop_duplicates("context").set_index("context")["acc_pct"]
        table[name] = table["acc_pct"] - table["context"].map(reference)
    _compare_with_baselines(table, plain)
    _disambiguate(table)
    return _sorted(table, sort).drop(columns=["variant_hash"]).reset_index(drop=True)


def collapsed_seeds(accuracies: list[float], seeds: list[int], run_ids: list[str]) -> list[str]:
    """Seeds below CHANCE_PCT, or COLLAPSE_PP below the median of the others: 'seed 2 (run 1a2b3c4d, 11.35%)'."""
    notes = []
    for i, (acc, seed, run_id) in enumerate(zip(accuracies, seeds, run_ids)):
        others = accuracies[:i] + accuracies[i + 1 :]
        if acc < CHANCE_PCT or (others and acc <= np.median(others) - COLLAPSE_PP):
            notes.append(f"seed {seed} (run {run_id[:8]}, {acc:.2f}%)")
    return notes


def _compare_with_baselines(table: pd.DataFrame, plain: pd.DataFrame) -> None:
    """COMPARISON's columns: each variant against its baseline, one family per baseline."""
    rows = {(r.model, r.context): r for r in plain.itertuples()}
    families: dict[tuple, list[tuple]] = {}
    for row in table.itertuples():
        baseline_model = row.model if row.regularizer != "none" else ("lenet5" if row.model == "mlp" else None)
        baseline = rows.get((baseline_model, row.context))
        if baseline is not None:
            families.setdefault((baseline_model, row.model, row.context), []).append((row, baseline))
    for name in COMPARISON:
        table[name] = None if name in ("baseline", "test", "why_untested", "verdict") else np.nan
    for name in ("seeds_needed", "holm_only", "larger_test_set"):
        table[name] = table[name].astype(object)
    for pairs in families.values():
        for (row, _), c in zip(pairs, family(pairs, **table.attrs["judging"])):
            for name in COMPARISON:
                table.at[row.Index, name] = c[name]


def _sorted(table: pd.DataFrame, sort: str | None) -> pd.DataFrame:
    if sort is not None:
        if sort not in SORT_KEYS:
            raise AnalysisError(f"--sort {sort}: choose one of {', '.join(SORT_KEYS)}")
        return table.sort_values(SORT_KEYS[sort], ascending=not SORT_KEYS[sort].endswith("acc_pct"), kind="stable")
    # Reading order: per optimizer, the MLP first, then LeNet-5 plain, then its regularized variants.
    order = table.assign(
        _model_rank=table["model"].map({"mlp": 0, "lenet5": 1}), _regularized=table["regularizer"] != "none"
    ).sort_values(["data", "optimizer", "_model_rank", "_regularized", "regularizer"], kind="stable")
    return table.loc[order.index]


def _disambiguate(table: pd.DataFrame) -> None:
    """Variants sharing a name get what differs, in the fewest figures that tell them apart: 'mlp/none/sgd lr=0.02'."""
    duplicated = table["variant"].duplicated(keep=False)
    for variant, rows in table[duplicated].groupby("variant"):
        found = [json.loads(s) for s in rows["settings"]]
        differing = sorted({key for s in found for key in s if any(o.get(key) != s.get(key) for o in found)})
        for figures in (3, 4, 6, 17):  # 17: every digit of a float
            # 'lr=0.0229': each differing setting, its group left out, a number to `figures` significant figures
            named = ((f"{k.split('.', 1)[-1]}={significant(s.get(k, '-'), figures)}" for k in differing) for s in found)
            labels = [" ".join([variant, *parts]) for parts in named]
            if len(set(labels)) < len(labels):  # the same settings on other data (a search's trial, its confirmation)
                labels = [f"{label} [{data}]" for label, data in zip(labels, rows["data"])]
            if len(set(labels)) == len(labels):
                break
        table.loc[rows.index, "variant"] = labels


def choose_best(rows: pd.DataFrame) -> tuple[pd.Series, str]:
    """The best of `rows` (seeded ones first) and what chose it: 'search' (its recipe), 'validation' or 'test'."""
    confirmed = rows[rows["confirmed"] == "recipe"]
    if len(confirmed) == 1:
        return confirmed.iloc[0], "search"
    seeded = rows[rows["n"] >= 2]
    rows = seeded if len(seeded) else rows
    basis = "validation" if rows["val_acc_pct"].notna().all() else "test"
    column = "val_acc_pct" if basis == "validation" else "acc_pct"
    return rows.sort_values(column, ascending=False, kind="stable").iloc[0], basis


def named_variants(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows a model name selects: each word naming an option keeps those with it (lenet5-dropout), never none."""
    conf = tracking.TRAIN_SCRIPT.parent / "conf"
    groups = ("model", "regularizer", "optimizer", "scheduler")
    options = {group: {path.stem for path in (conf / group).glob("*.yaml")} for group in groups}
    words = sorted({word for word in re.split(r"[-.]", name) if any(word in known for known in options.values())})

    def has(row, word: str) -> bool:  # a group that offers the word is set to it (l2+dropout: both)
        return any(word in options[group] and word in row[group].split("+") for group in groups)

    kept = table.apply(lambda row: all(has(row, word) for word in words), axis=1)
    if not kept.any():
        raise AnalysisError(
            f"--register {name}: the name says {' and '.join(words)}, which no variant of this selection is "
            f"({', '.join(table['variant'])}); give another name, or select such runs (--sweep, --filter)"
        )
    return table[kept]


def register_best(tracking_uri: str, table: pd.DataFrame, finished: pd.DataFrame, name: str, metric_name: str) -> tuple:
    """Register the best seed of the best variant `name` selects: (variant, models:/NAME/<version>, split, new)."""
    best, basis = choose_best(named_variants(table, name))
    chosen_on = record.FINAL_VAL_ACC if basis == "validation" else METRICS[metric_name]
    runs = finished.set_index("run_id").loc[best.run_ids]
    run_id = metric(runs, chosen_on).idxmax()
    tags = {
        "variant": best.variant,
        "metric": chosen_on,
        "variant_mean_pct": f"{best.acc_pct:.2f}",
        "seeds": str(best.n),
        "data": best.data,
        "run_id": run_id,
    }
    uri, new = tracking.register_model(tracking_uri, run_id, runs.loc[run_id, "experiment_id"], name, tags)
    return best.variant, uri, basis, new


# --- the table as text ---


def format_table(table: pd.DataFrame, fmt: str, wide: bool = False) -> str:
    """markdown for people (WIDTH columns, or `wide`: every column), then notes; csv and json: all but answers."""
    if fmt == "csv":
        return table.drop(columns="answers").to_csv(index=False, float_format="%.6g")
    if fmt == "json":
        return table.drop(columns="answers").to_json(orient="records", indent=2)
    smallest = table.attrs["judging"]["smallest_effect"]
    rows = list(table.itertuples())

    def compared(cell, *args) -> list[str]:  # the cell of each row that has a baseline
        return ["" if pd.isna(row.baseline) else cell(row, *args) for row in rows]

    marked = table["variant"] + table["collapsed"].map(lambda notes: " *" if notes else "")
    accuracy = HEADERS[table.attrs.get("metric", "final")]
    common = {
        "n": table["n"],
        accuracy: [f"{r.acc_pct:.2f}" + number(r.acc_pct_std, " ± {:.2f}") for r in rows],
        "95% CI": [number(r.acc_pct_ci_low, "{:.2f}–") + number(r.acc_pct_ci_high, "{:.2f}") for r in rows],
    }
    if wide:
        numbers = {header: [number(v, template) for v in table[name]] for header, (name, template) in WIDE.items()}
        plan = ["larger test set" if r.larger_test_set is True else number(r.seeds_needed, "{:.0f}") for r in rows]
        shown = pd.DataFrame({"variant": marked, "data": table["data"], "params": table["params"], **common, **numbers})
        shown = shown.assign(**{"vs baseline": compared(_versus, smallest), "seeds needed": plan})
        return shown.to_markdown(index=False, disable_numparse=True) + _notes(table, {}, smallest)
    narrow = pd.DataFrame({**common, "Δ baseline pp (CI)": compared(_diff), "p Holm": [_p(p) for p in table["p_adj"]]})
    narrow["verdict"] = compared(_verdict_word, smallest)
    key: dict[str, str] = {}
    for shorten, compact in ((False, False), (True, False), (True, True)):
        labels = marked.map(lambda v: short(v, key)) if shorten else marked
        columns = narrow.loc[:, (narrow != "").any()] if compact else narrow  # compact: without columns no row fills
        text = pd.concat([labels.rename("variant"), columns], axis=1).to_markdown(index=False, disable_numparse=True)
        if max(map(len, text.splitlines())) <= WIDTH:
            break
    else:  # still too wide: labels cut between words, never inside a number (--wide shows them whole)
        room = WIDTH - max(map(len, text.splitlines())) + labels.str.len().max()
        labels = labels.map(clip, limit=room)
        text = pd.concat([labels.rename("variant"), columns], axis=1).to_markdown(index=False, disable_numparse=True)
    return text + _notes(table, key, smallest, compared="p Holm" in columns)


def short(variant: str, key: dict[str, str] | None = None) -> str:
    """The variant with SHORT's abbreviations; those used are added to `key`."""
    for name, abbreviation in SHORT.items():
        if name in variant:
            variant = variant.replace(name, abbreviation)
            if key is not None:
                key[abbreviation] = name
    return variant


def _notes(table: pd.DataFrame, key: dict[str, str], smallest: float, compared: bool = True) -> str:
    """Under the table: what Δ compares (where shown), collapsed seeds by run id, the key to short names."""
    lines = []
    if compared:
        lines.append(
            "Δ baseline: against the same model unregularized (the MLP: against LeNet-5), trained alike, image by "
            "image; intervals cover other seeds and other digits drawn like the test set (95% for accuracy; for Δ, "
            "1 - 0.05/m within each baseline's family of m: Bonferroni); p Holm: adjusted within that family; "
            f"verdict: Holm's, and '<{smallest:g}' or '±{smallest:g}' where the whole interval lies within "
            f"±{smallest:g} pp, the smallest difference worth having (within: no difference worth having); "
            "'1 seed': McNemar's test, about that seed's models only."
        )
    lines += [
        f"* {row.variant}: collapsed {', '.join(row.collapsed)}; kept in every statistic"
        for row in table.itertuples()
        if row.collapsed
    ]
    if key:
        lines.append("key: " + ", ".join(f"{short} = {name}" for short, name in key.items()))
    text = "\n".join(textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in lines)
    return f"\n\n{text}" if text else ""


def number(value, template: str) -> str:
    """`template` filled with `value`, or nothing where it is missing."""
    return "" if pd.isna(value) else template.format(value)


def _p(p: float) -> str:
    """A p-value in three decimals; never 0.000, which reads as certainty."""
    return "" if pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _verdict_word(row, smallest: float) -> str:
    """'better', 'better <0.5', '±0.5' (no difference worth having), 'undecided', or why there is no test."""
    if row.test is None:
        return row.why_untested
    word = f"±{smallest:g}" if row.verdict == "equivalent" else row.verdict.replace(" by less", f" <{smallest:g}")
    return word + (", 1 seed" if row.test == MCNEMAR else "")


def _versus(row, smallest: float) -> str:
    """'+0.41 vs lenet5/none/sgd (seeds x images, p=0.012, Holm 0.036: better)'."""
    if row.test is None:
        return f"{row.vs_baseline_pp:+.2f} vs {row.baseline} ({row.why_untested}: no test)"
    tested = f"{row.test}, p {_p(row.p_value)}, Holm {_p(row.p_adj)}: {_verdict_word(row, smallest)}"
    return f"{row.vs_baseline_pp:+.2f} vs {row.baseline} ({tested})"


def _diff(row) -> str:
    """'+0.41 (-0.20 to +1.02)'; the difference alone where there is no test."""
    interval = number(row.vs_baseline_pp_ci_low, " ({:+.2f} to ") + number(row.vs_baseline_pp_ci_high, "{:+.2f})")
    return f"{row.vs_baseline_pp:+.2f}{interval}"
