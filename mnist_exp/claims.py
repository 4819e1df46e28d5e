"""The report's claims as claims.json, and analyze.py --check (docs/analysis.md#claims-you-can-re-check)."""

from __future__ import annotations

import json
import math
from pathlib import Path

FORMAT, VERSION = "mnist-exp claims", 1  # the file's layout: a reader takes every version up to its own


def collect(answers: dict) -> list[dict]:
    """The claims of report.answers(): one per comparison the report words (each answer's `compared`)."""
    groups = ("models", "regularizers", "combinations", "recipes")
    return [_claim(*compared, a["runs"]) for group in groups for a in answers[group] for compared in a["compared"]]


def _claim(question: str, row, baseline, c: dict, chosen_on: str | None, runs: list) -> dict:
    """One claim, keyed by its question alone where the question picks its variant (`chosen_on`: on which split)."""
    variant, baseline = row.variant, baseline.variant
    return {
        "id": question if chosen_on else f"{question}: {variant} vs {baseline}",
        "question": question,
        "variant": variant,
        "baseline": baseline,
        "chosen_on": chosen_on,
        "difference_pp": _number(c["vs_baseline_pp"]),
        "interval_pp": [_number(c["vs_baseline_pp_ci_low"]), _number(c["vs_baseline_pp_ci_high"])],
        "confidence": _number(c.get("confidence", math.nan)),
        "p_holm": _number(c["p_adj"]),
        "test": c["test"],
        "verdict": c["verdict"],
        "seeds": int(c["n_compared"]),
        "images": int(c["images"]),
        "runs": {row.variant: list(row.run_ids) for row in runs},
    }


def _number(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def write(path: Path, claims: list[dict], selection: dict, settings: dict) -> Path:
    """`selection`: the store, experiment, sweeps, filters and metric the report read; `settings`: how it judged."""
    document = {"format": FORMAT, "version": VERSION, "selection": selection, "settings": settings, "claims": claims}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def read(path: Path) -> dict:
    """The claims file, or ValueError with one line naming the file and what is wrong."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--check {path}: cannot read it as a claims file ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"--check {path}: not a claims file (analyze.py --report writes claims.json)")
    if document.get("version", 0) > VERSION:
        raise ValueError(
            f"--check {path}: claims format version {document['version']}; this code reads up to {VERSION}"
        )
    return document


def differences(before: dict, after: dict | None) -> list[str]:
    """Why a claim no longer holds, in words; [] while it holds."""
    if after is None:
        return ["no longer made: its runs or their comparison are gone"]
    found = []
    same_runs = _runs(before, "variant") & _runs(after, "variant")
    if after["chosen_on"] and after["variant"] != before["variant"] and not same_runs:  # same runs: same winner
        found.append(f"winner {before['variant']} -> {after['variant']}")
    if after["verdict"] != before["verdict"]:
        found.append(f"verdict {before['verdict']} -> {after['verdict']}")
    for key, name in (("difference_pp", "difference"), ("interval_pp", "interval")):
        if (was := _shown(before[key])) != (now := _shown(after[key])):  # moved by the printed precision
            found.append(f"{name} {was} -> {now} pp")
    if found and after["seeds"] != before["seeds"]:
        found.append(f"now {after['seeds']} seeds, was {before['seeds']}")
    return found


def _shown(value) -> str:
    """As the report prints it: 0.01 pp."""
    if isinstance(value, list):
        return " to ".join(map(_shown, value))
    return "none" if value is None else f"{value:+.2f}"


def check(document: dict, tracking_uri: str, experiment: str, course: str | None) -> list[tuple[dict, list[str]]]:
    """Each recorded claim with why it no longer holds ([] while it holds), recomputed from the store now."""
    from mnist_exp import predictions, report
    from mnist_exp.runs import AnalysisError, apply_filters, select_runs
    from mnist_exp.table import SPLITS, per_run, variant_table

    recorded, settings = document["selection"], document["settings"]
    finished = apply_filters(select_runs(tracking_uri, experiment, "all").finished, recorded["filter"])
    if finished.empty:
        raise AnalysisError(f"no FINISHED runs in {experiment!r} at {tracking_uri} to check the claims on")
    runs = per_run(finished, recorded["metric"])
    used = {run_id for claim in document["claims"] for ids in claim["runs"].values() for run_id in ids}
    wanted = {key for key, run_id in zip(zip(runs["variant_hash"], runs["context"]), runs["run_id"]) if run_id in used}
    if not wanted:
        raise AnalysisError(f"none of the runs the claims rest on is in {experiment!r} at {tracking_uri} any more")
    kept = finished[[key in wanted for key in zip(runs["variant_hash"], runs["context"])]]
    split = SPLITS.get(recorded["metric"])
    answers = predictions.correct_answers(tracking_uri, kept, split)[0] if split else {}
    judging = {key: settings[key] for key in ("smallest_effect", "half_width")}
    table = variant_table(kept, recorded["metric"], answers=answers, **judging)
    now = collect(report.answers(table, course))
    return [(claim, differences(claim, _same_claim(claim, now))) for claim in document["claims"]]


def _same_claim(claim: dict, now: list[dict]) -> dict | None:
    """The claim of `now` that is `claim` again: by its id, else by its question and both sides' runs."""

    def same_runs(c: dict) -> bool:
        return c["question"] == claim["question"] and all(
            _runs(c, s) & _runs(claim, s) for s in ("variant", "baseline")
        )

    return next((c for c in now if c["id"] == claim["id"]), None) or next(filter(same_runs, now), None)


def _runs(claim: dict, side: str) -> set[str]:
    """The run IDs of a claim's `side` ("variant" or "baseline")."""
    return set(claim["runs"].get(claim[side], ()))
