"""Two runs (or two variants, all their seeds) side by side, and the command that re-creates a run.

A run is named by its ID (or a prefix of it), its run name, or its variant label
(model/regularizer/optimizer[+scheduler], as mnist_exp.variant holds it): a label stands for all
the FINISHED seeds of that variant.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mnist_exp import tracking
from mnist_exp.analysis import GRIDS, AnalysisError, _require_store, hydra_file

# Tags that are settings of a run: what code trained it, on how many threads.
SETTING_TAGS = {
    tracking.CODE_VERSION: "code version",
    tracking.PREFIX + "threads": "threads (used)",
    tracking.PREFIX + "device": "device",
}
CURVES = (("accuracy (%)", ("test_acc", "val_acc"), 100), ("cross-entropy loss", ("train_loss", "test_loss"), 1))


@dataclass
class Side:
    """One side of a diff: a run, or the FINISHED seeds of a variant."""

    label: str
    runs: list  # mlflow.entities.Run


def find(client, experiment_id: str, ref: str) -> Side:
    """The run or variant `ref` names (see the module's docstring); an AnalysisError names what exists."""
    runs = [
        run
        for run in client.search_runs([experiment_id], max_results=50_000)
        if run.data.tags.get(tracking.ROLE) != "sweep"
    ]
    by_id = [run for run in runs if run.info.run_id == ref or (len(ref) >= 6 and run.info.run_id.startswith(ref))]
    by_name = sorted((run for run in runs if run.info.run_name == ref), key=lambda run: run.info.start_time)
    if len(by_id) == 1 or by_name:  # a name used twice (force=true trained it again): its latest run
        run = by_id[0] if len(by_id) == 1 else by_name[-1]
        return Side(f"run {run.info.run_id[:8]} ({run.info.run_name})", [run])
    seeds = _latest_per_config(
        [
            run
            for run in runs
            if run.data.tags.get(tracking.VARIANT) == ref
            and run.info.status == "FINISHED"
            and tracking.PRUNED not in run.data.tags  # stopped early by a search: not a seed of the variant
        ]
    )
    variants = {run.data.tags.get(tracking.VARIANT_HASH) for run in seeds}
    if len(variants) > 1:
        names = "; ".join(sorted(run.info.run_name for run in seeds))
        raise AnalysisError(
            f"{ref!r} names {len(variants)} variants that differ in other settings; name one of their runs: {names}"
        )
    if not seeds:
        known = sorted({run.data.tags.get(tracking.VARIANT) for run in runs} - {None})
        raise AnalysisError(
            f"no run ID, run name or variant {ref!r} (with FINISHED runs) in this experiment; "
            f"variants: {', '.join(known) or 'none'}"
        )
    return Side(f"variant {ref} ({len(seeds)} run{'s' * (len(seeds) > 1)})", seeds)


def _latest_per_config(runs: list) -> list:
    """A run re-trained with force=true counts once: its latest."""
    latest = {}
    for run in sorted(runs, key=lambda run: run.info.start_time):
        latest[run.data.tags.get(tracking.CONFIG_HASH), run.data.params.get(tracking.DATA_IDENTITY[1])] = run
    return sorted(latest.values(), key=lambda run: int(run.data.params.get("trainer.seed", 0)))


def settings(side: Side) -> dict[str, str]:
    """Each setting (params, and SETTING_TAGS) as one value, or its values over the side's runs."""
    keys = {key for run in side.runs for key in run.data.params} | set(SETTING_TAGS)
    merged = {}
    for key in sorted(keys):
        values = [run.data.params.get(key, run.data.tags.get(key, "-")) for run in side.runs]
        distinct = list(dict.fromkeys(values))
        merged[SETTING_TAGS.get(key, key)] = distinct[0] if len(distinct) == 1 else ", ".join(distinct)
    return merged


def final_metrics(side: Side) -> dict[str, str]:
    """Each metric's last value (mean ± std over a variant's runs); system/ metrics left out."""
    frame = pd.DataFrame([run.data.metrics for run in side.runs])
    frame = frame[sorted(column for column in frame if not column.startswith("system/"))]
    if len(frame) == 1:
        return {key: f"{value:.6g}" for key, value in frame.iloc[0].dropna().items()}
    return {
        key: f"{values.mean():.6g} ± {values.std(ddof=1):.2g}" for key, values in frame.items() if values.notna().any()
    }


def diff_text(a: Side, b: Side) -> str:
    """The settings that differ and the final metrics, as two markdown tables."""

    def table(first: dict, second: dict, header: str, only_differing: bool) -> str:
        rows = [(key, first.get(key, "-"), second.get(key, "-")) for key in sorted(first.keys() | second.keys())]
        rows = [row for row in rows if row[1] != row[2] or not only_differing]
        frame = pd.DataFrame(rows, columns=[header, "A", "B"])
        return frame.to_markdown(index=False, disable_numparse=True) if rows else f"no {header} differs"

    return "\n".join(
        [
            f"A: {a.label}",
            f"B: {b.label}",
            "",
            table(settings(a), settings(b), "setting", True),
            "",
            table(final_metrics(a), final_metrics(b), "final metric", False),
        ]
    )


def plot_curves(client, a: Side, b: Side, path: Path) -> Path:
    """Both sides' per-epoch curves in one figure: accuracy and loss, one colour per side, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (ylabel, keys, scale), ax in zip(CURVES, axes):
        for side, name, color in ((a, "A", "tab:blue"), (b, "B", "tab:orange")):
            for key, style in zip(keys, ("o-", "s--")):
                for i, run in enumerate(side.runs):
                    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                    if history:
                        steps, values = zip(*history)
                        ax.plot(
                            steps,
                            [scale * v for v in values],
                            style,
                            color=color,
                            alpha=0.8,
                            markersize=4,
                            label=f"{name} {key}" if i == 0 else None,
                        )
        ax.set(xlabel="epoch", ylabel=ylabel, title=ylabel.split(" (")[0])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"A: {a.label}\nB: {b.label}", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.84, wspace=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def command(client, side: Side) -> tuple[str, str]:
    """(the train.py command that re-creates the run, a note on where and with what code to run it).

    The overrides are the run's own, as Hydra wrote them (hydra/overrides.yaml); the thread count is
    added when they leave it to torch, since other thread counts sum in another order. A search's trial
    is trained alone (hydra.mode=RUN: its overrides hold the search's config, which would search again);
    a pruned trial cannot be re-created as it stopped, so its command trains that config in full.
    """
    if len(side.runs) != 1:
        names = "; ".join(run.info.run_name for run in side.runs)
        raise AnalysisError(f"--command needs one run; {side.label} has {len(side.runs)}: {names}")
    run = side.runs[0]
    overrides = hydra_file(client, run.info.run_id, "overrides", run.info.run_name) or []
    hydra = hydra_file(client, run.info.run_id, "hydra", run.info.run_name)["hydra"]
    threads = run.data.tags.get(tracking.PREFIX + "threads")
    if threads and not any(o.split("=", 1)[0].lstrip("+~") == "trainer.threads" for o in overrides):
        overrides.append(f"trainer.threads={threads}")
    if hydra["runtime"]["choices"].get("hydra/sweeper", "basic") not in GRIDS:
        overrides.append("hydra.mode=RUN")
    launched_from = hydra["runtime"]["cwd"]
    script = os.path.relpath(tracking.TRAIN_SCRIPT, launched_from)
    script = script if not script.startswith("..") else str(tracking.TRAIN_SCRIPT)
    line = " ".join(["python", shlex.quote(script), *map(shlex.quote, overrides)])
    trained_by, now = run.data.tags.get(tracking.CODE_VERSION, "unrecorded"), tracking.code_version()[1]
    code = f"code {now}" + ("" if trained_by == now else f"; the run was trained by {trained_by}")
    if tracking.PRUNED in run.data.tags:
        return line, (
            f"run it from {launched_from} ({code}). No command re-creates this run as it stopped "
            f"({run.data.tags[tracking.PRUNED]}: the pruner judged it against other trials); this one trains its "
            "config in full, resuming this run from its checkpoint where that is still there, else in a new run "
            "that supersedes it"
        )
    return line, f"run it from {launched_from} ({code}); add force=true to train it again beside the run"


def main(tracking_uri: str, experiment: str, diff: list[str] | None, run: str | None, plots: Path | None) -> int:
    """analyze.py --diff A B [--plots DIR] and analyze.py --command RUN."""
    import sys

    from mlflow.tracking import MlflowClient

    try:
        _require_store(tracking_uri)
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise AnalysisError(f"no experiment named {experiment!r} in {tracking_uri}")
        if run is not None:
            line, note = command(client, find(client, found.experiment_id, run))
            print(line)
            print(f"# {note}", file=sys.stderr)
            return 0
        a, b = (find(client, found.experiment_id, ref) for ref in diff)
    except (AnalysisError, tracking.TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1
    print(diff_text(a, b))
    if plots:
        print(f"wrote {plot_curves(client, a, b, plots / 'diff_curves.png')}", file=sys.stderr)
    return 0
