"""Compare the runs of a sweep: one row per variant, seeds pooled, differences tested.

    python analyze.py                            the latest sweep of the default experiment
    python analyze.py --report reports/latest    + figures and a markdown report (also logged to the sweep's run)
    python analyze.py --sweep all --filter model=lenet5 --sort test_acc --format csv --out lenet5.csv
    python analyze.py --sweep experiment=course_grid --sweep experiment=lenet5_best --report reports/best
    python analyze.py --diff RUN_A RUN_B --plots figs   settings that differ, final metrics, curves of both
    python analyze.py --command RUN                       the train.py command that re-creates a run
    python analyze.py --check reports/latest/claims.json  do the report's claims still hold on the store?

Defaults for --tracking-uri and --experiment come from conf/train.yaml, like train.py's: MLflow's own
MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME when set, else sqlite:///mlflow.db and mnist-exp.
"""

import argparse
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"


def default_config():
    """conf/train.yaml with no overrides: the course's own run, and the store's defaults."""
    from hydra import compose, initialize_config_dir

    from mnist_exp import schema

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train")


def _points(text: str) -> float:
    """A positive number of percentage points."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of percentage points (0.5), got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    from mnist_exp.significance import SMALLEST_EFFECT_PP

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else mnist-exp)")
    parser.add_argument(
        "--sweep",
        action="append",
        help="'latest' (default), 'all', a sweep's parent run ID (prefix) or key, or words of its name "
        "(experiment=course_grid: the latest such sweep); repeat to pool sweeps",
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose setting matches, e.g. model=lenet5 or optimizer.lr=0.01; repeatable",
    )
    parser.add_argument(
        "--metric",
        choices=("final", "best", "val"),
        default="final",
        help="a run's accuracy: of its delivered model on the test split (default), of its best "
        "epoch, or of its delivered model on the validation split (to choose a recipe)",
    )
    parser.add_argument(
        "--sort",
        help="order rows best first by test_acc, best_test_acc, test_loss, gap, params, "
        "train_time_s or variant (default: MLP, LeNet-5, regularized LeNet-5)",
    )
    parser.add_argument(
        "--smallest-effect",
        type=_points,
        default=SMALLEST_EFFECT_PP,
        metavar="PP",
        help=f"the smallest difference worth having, in percentage points (default {SMALLEST_EFFECT_PP}): "
        "an interval inside ±PP is 'no difference worth having'; plans detect it with 80%% power",
    )
    parser.add_argument(
        "--half-width",
        type=_points,
        metavar="PP",
        help="plan seeds for an interval this narrow (± PP) instead of for detecting --smallest-effect",
    )
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="markdown with every column (default: what fits 120 columns; csv and json keep all)",
    )
    parser.add_argument("--out", type=Path, help="write the table to this file instead of stdout")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write the figures (PNG) to DIR")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write report.md, its figures and claims.json (its claims, for --check) to DIR, and log them to "
        "the sweep's MLflow run",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the best variant's model (mean over seeds, on the validation split where the "
        "runs have one, else by --metric) in MLflow's Model Registry as NAME; print its URI",
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="compare two runs (run IDs or names) or variants (labels such as mlp/none/sgd: all "
        "their seeds): the settings that differ and the final metrics; --plots DIR adds curves",
    )
    parser.add_argument("--command", metavar="RUN", help="print the train.py command that re-creates a run")
    parser.add_argument(
        "--check",
        type=Path,
        metavar="FILE",
        help="recompute the claims of a report's claims.json from the store (--tracking-uri, else the one it "
        "names) and exit 1 naming each claim that no longer holds",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mnist_exp import credentials

    credentials.move_out_of_variable()  # as train.py does: a password in a URI would be printed
    defaults = default_config()
    if args.check:
        return check(args, defaults)
    args.tracking_uri = credentials.move_out_of_uri(args.tracking_uri or defaults.mlflow.tracking_uri)
    args.experiment = args.experiment or defaults.mlflow.experiment
    if args.diff or args.command:
        return diff_or_command(args)

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from mnist_exp import record, tracking
    from mnist_exp.commands import train_command, with_overrides
    from mnist_exp.runs import AnalysisError, apply_filters, select_runs
    from mnist_exp.table import METRICS, format_table, register_best, variant_table
    from mnist_exp.tracking import TrackingError

    try:
        try:
            selection = select_runs(args.tracking_uri, args.experiment, args.sweep or ["latest"])
        except MlflowException as error:  # a store MLflow cannot open (foo://x): train.py's line for it
            raise tracking.store_error(args.tracking_uri, error) from None
        finished = apply_filters(selection.finished, args.filter)
        if finished.empty:
            unfinished = selection.unfinished
            reasons = "; ".join(f"{r.run_name}: {r.status}" for r in unfinished.itertuples()) or "none"
            where = f" matching {' and '.join(args.filter)}" if args.filter else ""
            raise AnalysisError(f"{selection.description} has no FINISHED runs{where} (others: {reasons})")
        if args.metric == "val":  # a table of NaN otherwise
            held_out = finished.get(f"metrics.{METRICS['val']}", pd.Series(index=finished.index, dtype=float))
            without = finished[held_out.isna()]
            if not without.empty:
                names = without.get(f"tags.{record.VARIANT}", without["run_name"]).fillna(without["run_name"])
                raise AnalysisError(
                    f"--metric val: {len(without)} of {len(finished)} runs held out no validation "
                    f"split ({', '.join(sorted(set(names)))}); train them with data.validation_size=N, "
                    "leave them out with --filter, or rank on the test split (--metric final)"
                )
        table = variant_table(
            finished,
            metric=args.metric,
            sort=args.sort,
            answers=per_image_answers(args.tracking_uri, finished, args.metric),
            smallest_effect=args.smallest_effect,
            half_width=args.half_width,
        )
    except (AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1

    text = format_table(table, args.format, wide=args.wide)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {len(table)} variants to {args.out}", file=sys.stderr)
    else:
        print(text)
    try:
        if args.report or args.register:  # their commands train a variant again with its runs' own overrides
            keys = selection.sweep_keys
            table = with_overrides(table, args.tracking_uri, keys[0] if len(keys) == 1 else None)
        if args.plots or args.report:
            write_figures_and_report(args, selection, finished, table, format_table(table, "markdown"), defaults)
        if args.register:
            variant, uri, basis, new = register_best(args.tracking_uri, table, finished, args.register, args.metric)
    except (AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1

    if args.register:
        done = "registered the model of" if new else "already registered: the model of"
        chosen = "by a search on its validation split" if basis == "search" else f"on the {basis} split"
        print(f"{done} {variant} (chosen {chosen}): {uri}")
        if basis == "test":
            from mnist_exp.report import VALIDATION

            candidates = list(table.itertuples())
            seeds = sorted({seed for row in candidates for seed in row.seeds})
            instead = train_command(candidates, seeds, (VALIDATION,))
            print(
                "  chosen on the test split (no validation split): its margin is optimistic, and fresh seeds on "
                "the same test images cannot remove that selection"
                + (f"; to choose on a validation split instead: {instead}" if instead else ""),
                file=sys.stderr,
            )

    print(f"\n{selection.description}: {len(finished)} finished runs, {len(table)} variants", file=sys.stderr)
    fallback = [v for v, d in zip(table["variant"], table["data"]) if "fallback" in d]
    if fallback:
        print(f"  trained on the offline fallback sample, not on your data: {', '.join(fallback)}", file=sys.stderr)
    for run in selection.unfinished.to_dict("records"):
        pruned, superseded = run.get(f"tags.{record.PRUNED}"), run.get(f"tags.{record.SUPERSEDED_BY}")
        error = run.get(f"tags.{record.ERROR}") if pd.isna(pruned) else pruned
        error = error if pd.isna(superseded) else f"{error}; trained in full since as run {superseded}"
        status = run["status"] if pd.isna(pruned) else "pruned"
        print(f"  not in the table: {run['run_name']} ({status}) {'' if pd.isna(error) else error}", file=sys.stderr)
    return 0


def per_image_answers(tracking_uri: str, finished, metric: str) -> dict:
    """{run_id: correct per image} on the metric's split; runs without them are re-scored from their logged
    models, and those that cannot be are named on stderr with what to do."""
    from mnist_exp import predictions
    from mnist_exp.table import SPLITS

    if metric not in SPLITS:
        print(f"--metric {metric}: each run's best epoch was chosen on the test split: no tests", file=sys.stderr)
        return {}
    found, missing, rescored = predictions.correct_answers(tracking_uri, finished, SPLITS[metric])
    if rescored:
        print(
            f"re-scored {len(rescored)} runs that predate per-image answers from their logged models "
            f"(nothing retrained); their {SPLITS[metric]} answers are now logged with them",
            file=sys.stderr,
        )
    if missing:
        names = finished.set_index("run_id").loc[list(missing), "run_name"].tolist()
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        print(
            f"{len(missing)} runs have no per-image answers, so their comparisons have no test: {listed} "
            f"({next(iter(missing.values()))}); run analyze.py in the folder they were trained from (data.root "
            "is relative to it) to re-score them from their logged models",
            file=sys.stderr,
        )
    return found


def course_settings(defaults) -> str:
    """The course's plain LeNet-5 (conf/train.yaml as it is): the report's reference for the best recipes."""
    from mnist_exp import record
    from mnist_exp.table import settings

    return settings(record.flat_params(defaults))


def write_figures_and_report(args, selection, finished, table, table_markdown: str, defaults) -> None:
    from mlflow.tracking import MlflowClient

    from mnist_exp import claims, commands, credentials, record, report
    from mnist_exp.diff import Side
    from mnist_exp.runs import histories
    from mnist_exp.significance import ALPHA, POWER

    figures_dir = args.plots or args.report
    figures = report.plot_all(table, histories(args.tracking_uri, finished), figures_dir)
    print(f"wrote {len(figures)} figures to {figures_dir}", file=sys.stderr)
    if args.report:
        client = MlflowClient(args.tracking_uri)
        trials = report.search(table, selection.runs)
        if trials and trials["best"] is not None:
            best = selection.runs[selection.runs["run_id"] == trials["run_id"]]
            trials["command"] = commands.run_command(client, Side("best trial", best))[0]
        found = report.answers(table, course_settings(defaults), trials)
        path = report.write_report(args.report, found, table_markdown, figures, selection.description)
        claimed = claims.write(
            args.report / record.CLAIMS_FILE,
            claims.collect(found),
            {
                "tracking_uri": credentials.redact(args.tracking_uri),
                "experiment": args.experiment,
                "sweep": args.sweep or ["latest"],
                "parent_run_ids": selection.parent_run_ids,
                "description": selection.description,
                "filter": args.filter,
                "metric": args.metric,
            },
            {"smallest_effect": args.smallest_effect, "half_width": args.half_width, "alpha": ALPHA, "power": POWER},
        )
        print(f"wrote {path} and {claimed}", file=sys.stderr)
        for parent in selection.parent_run_ids:  # one click away in mlflow ui, on the sweep's own run
            for artifact in (path, claimed, *figures.values()):
                client.log_artifact(parent, str(artifact), record.REPORT_FOLDER)
        if selection.parent_run_ids:
            print(f"logged the report to sweep run(s) {', '.join(selection.parent_run_ids)}", file=sys.stderr)


def diff_or_command(args) -> int:
    """--diff A B [--plots DIR] and --command RUN."""
    from mlflow.tracking import MlflowClient

    from mnist_exp import commands, diff
    from mnist_exp.runs import AnalysisError, select_runs
    from mnist_exp.tracking import TrackingError

    try:
        selection = select_runs(args.tracking_uri, args.experiment, "all")
        if args.command:
            line, note = commands.run_command(MlflowClient(args.tracking_uri), diff.find(selection, args.command))
            print(line)
            print(f"# {note}", file=sys.stderr)
            return 0
        a, b = (diff.find(selection, ref) for ref in args.diff)
    except (AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1
    print(diff.diff_text(a, b))
    if args.plots:
        print(f"wrote {diff.plot(args.tracking_uri, a, b, args.plots / 'diff_curves.png')}", file=sys.stderr)
    return 0


def check(args, defaults) -> int:
    """--check FILE: 0 when every claim holds on the store now, else 1; each claim's state on stdout."""
    from mnist_exp import claims, credentials
    from mnist_exp.runs import AnalysisError
    from mnist_exp.tracking import TrackingError

    try:
        document = claims.read(args.check)
        recorded = document["selection"]
        uri = credentials.move_out_of_uri(args.tracking_uri or recorded["tracking_uri"])
        results = claims.check(document, uri, args.experiment or recorded["experiment"], course_settings(defaults))
    except (ValueError, AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1
    broken = [(claim, why) for claim, why in results if why]
    for claim, why in results:
        state = "no longer holds: " + "; ".join(why) if why else f"holds ({claim['verdict']})"
        print(f"{claim['id']}: {state}")
    print(f"\n{len(results) - len(broken)} of {len(results)} claims of {args.check} hold on {uri}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
