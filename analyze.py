"""Compare the runs of a sweep: one row per variant, seeds pooled, differences tested.

    python analyze.py                            the latest sweep of the default experiment
    python analyze.py --report reports/latest    + figures and a markdown report (also logged to the sweep's run)
    python analyze.py --sweep all --filter model=lenet5 --sort test_acc --format csv --out lenet5.csv
    python analyze.py --sweep experiment=course_grid --sweep experiment=lenet5_best --report reports/best
    python analyze.py --diff RUN_A RUN_B --plots figs   settings that differ, final metrics, curves of both
    python analyze.py --command RUN                       the train.py command that re-creates a run

Defaults for --tracking-uri and --experiment come from conf/train.yaml, like train.py's: MLflow's own
MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME when set, else sqlite:///mlflow.db and mnist-exp.
"""

import argparse
import contextlib
import os
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


def parse_args(argv=None) -> argparse.Namespace:
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
        help="write report.md and its figures to DIR, and log them to the sweep's MLflow run",
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
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar per small file
    from mnist_exp import credentials

    credentials.move_out_of_variable()  # as train.py does: a password in a URI would be printed
    defaults = default_config()
    args.tracking_uri = credentials.move_out_of_uri(args.tracking_uri or defaults.mlflow.tracking_uri)
    args.experiment = args.experiment or defaults.mlflow.experiment
    if args.diff or args.command:
        from mnist_exp import compare

        return compare.main(args.tracking_uri, args.experiment, args.diff, args.command, args.plots)

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from mnist_exp import tracking
    from mnist_exp.analysis import (
        METRICS,
        AnalysisError,
        apply_filters,
        format_table,
        register_best,
        select_runs,
        variant_table,
        with_overrides,
    )
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
                names = without.get(f"tags.{tracking.VARIANT}", without["run_name"]).fillna(without["run_name"])
                raise AnalysisError(
                    f"--metric val: {len(without)} of {len(finished)} runs held out no validation "
                    f"split ({', '.join(sorted(set(names)))}); train them with data.validation_size=N, "
                    "leave them out with --filter, or rank on the test split (--metric final)"
                )
        table = variant_table(finished, metric=args.metric, sort=args.sort)
    except (AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1

    text = format_table(table, args.format, wide=args.wide)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {len(table)} variants to {args.out}", file=sys.stderr)
    else:
        print(text)
    if args.report or args.register:  # their commands train a variant again with its runs' own overrides
        table = with_overrides(table, args.tracking_uri)
    if args.plots or args.report:
        write_figures_and_report(args, selection, finished, table, format_table(table, "markdown"), defaults)

    if args.register:
        try:
            variant, uri, basis, new = register_best(args.tracking_uri, table, finished, args.register, args.metric)
        except AnalysisError as error:
            print(f"analyze.py: {error}", file=sys.stderr)
            return 1
        done = "registered the model of" if new else "already registered: the model of"
        print(f"{done} {variant} (chosen on the {basis} split): {uri}")
        if basis == "test":
            from mnist_exp.analysis import fresh_seeds, train_command

            row = table[table["variant"] == variant].iloc[0]
            retest = train_command([row], fresh_seeds([row], 3))
            print(
                "  its margin is optimistic (no validation split)"
                + (f"; re-test it on fresh seeds: {retest}" if retest else ""),
                file=sys.stderr,
            )

    print(f"\n{selection.description}: {len(finished)} finished runs, {len(table)} variants", file=sys.stderr)
    fallback = [v for v, d in zip(table["variant"], table["data"]) if "fallback" in d]
    if fallback:
        print(f"  trained on the offline fallback sample, not on your data: {', '.join(fallback)}", file=sys.stderr)
    for run in selection.unfinished.to_dict("records"):
        pruned, superseded = run.get(f"tags.{tracking.PRUNED}"), run.get(f"tags.{tracking.SUPERSEDED_BY}")
        error = run.get(f"tags.{tracking.ERROR}") if pd.isna(pruned) else pruned
        error = error if pd.isna(superseded) else f"{error}; trained in full since as run {superseded}"
        status = run["status"] if pd.isna(pruned) else "pruned"
        print(f"  not in the table: {run['run_name']} ({status}) {'' if pd.isna(error) else error}", file=sys.stderr)
    return 0


def write_figures_and_report(args, selection, finished, table, table_markdown: str, defaults) -> None:
    from mlflow.tracking import MlflowClient

    from mnist_exp import compare, report, tracking
    from mnist_exp.analysis import AnalysisError, histories, settings

    course = settings(tracking.flat_params(defaults))  # the course's plain LeNet-5: the reference of the report
    figures_dir = args.plots or args.report
    history = histories(args.tracking_uri, finished)
    figures = report.plot_all(table, history, figures_dir)
    print(f"wrote {len(figures)} figures to {figures_dir}", file=sys.stderr)
    if args.report:
        client = MlflowClient(args.tracking_uri)
        trials = report.search(table, selection.runs)
        if trials and trials["best"] is not None:
            with contextlib.suppress(AnalysisError):  # a run logged without Hydra's files: no command to give
                best = compare.Side("best trial", [client.get_run(trials["run_id"])])
                trials["command"] = compare.command(client, best)[0]
        path = report.write_report(table, table_markdown, figures, selection.description, args.report, course, trials)
        print(f"wrote {path}", file=sys.stderr)
        for parent in selection.parent_run_ids:  # one click away in mlflow ui, on the sweep's own run
            client.log_artifact(parent, str(path), "report")
            for figure in figures.values():
                client.log_artifact(parent, str(figure), "report")
        if selection.parent_run_ids:
            print(f"logged the report to sweep run(s) {', '.join(selection.parent_run_ids)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
