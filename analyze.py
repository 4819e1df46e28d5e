"""Compare the runs of a sweep: one row per variant, seeds pooled, differences tested.

    python analyze.py                            the latest sweep of the default experiment
    python analyze.py --report reports/latest    + figures and a markdown report (also logged to the sweep's run)
    python analyze.py --sweep all --filter model=lenet5 --sort test_acc --format csv --out lenet5.csv
    python analyze.py --sweep experiment=course_grid --sweep experiment=lenet5_best --report reports/best

Defaults for --tracking-uri and --experiment come from conf/train.yaml, like train.py's: MLflow's own
MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME when set, else sqlite:///mlflow.db and mnist-exp.
"""

import argparse
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
    parser.add_argument("--sweep", action="append",
                        help="'latest' (default), 'all', a sweep's parent run ID (prefix) or key, or words of its name "
                             "(experiment=course_grid: the latest such sweep); repeat to pool sweeps")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose setting matches, e.g. model=lenet5 or optimizer.lr=0.01; repeatable")
    parser.add_argument("--metric", choices=("final", "best", "val"), default="final",
                        help="a run's accuracy: of its delivered model on the test split (default), of its best "
                             "epoch, or of its delivered model on the validation split (to choose a recipe)")
    parser.add_argument("--sort", help="order rows best first by test_acc, best_test_acc, test_loss, gap, params, "
                                       "train_time_s or variant (default: MLP, LeNet-5, regularized LeNet-5)")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--out", type=Path, help="write the table to this file instead of stdout")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write the figures (PNG) to DIR")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write report.md and its figures to DIR, and log them to the sweep's MLflow run")
    parser.add_argument("--register", metavar="NAME",
                        help="register the best variant's model (by --metric, mean over seeds) in MLflow's Model "
                             "Registry as NAME and print its models:/NAME/<version> URI")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a progress bar per small file
    defaults = default_config()
    args.tracking_uri = args.tracking_uri or defaults.mlflow.tracking_uri
    args.experiment = args.experiment or defaults.mlflow.experiment

    from mnist_exp.analysis import AnalysisError, apply_filters, format_table, register_best, select_runs, variant_table
    import pandas as pd

    from mnist_exp import tracking
    from mnist_exp.search import PRUNED_TAG
    from mnist_exp.tracking import TrackingError

    try:
        selection = select_runs(args.tracking_uri, args.experiment, args.sweep or ["latest"])
        finished = apply_filters(selection.finished, args.filter)
        if finished.empty:
            unfinished = selection.unfinished
            reasons = "; ".join(f"{r.run_name}: {r.status}" for r in unfinished.itertuples()) or "none"
            where = f" matching {' and '.join(args.filter)}" if args.filter else ""
            raise AnalysisError(f"{selection.description} has no FINISHED runs{where} (others: {reasons})")
        table = variant_table(finished, metric=args.metric, sort=args.sort)
    except (AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1

    text = format_table(table, args.format)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {len(table)} variants to {args.out}", file=sys.stderr)
    else:
        print(text)
    if args.plots or args.report:
        write_figures_and_report(args, selection, finished, table, format_table(table, "markdown"), defaults)

    if args.register:
        try:
            variant, uri = register_best(args.tracking_uri, table, finished, args.register, args.metric)
        except AnalysisError as error:
            print(f"analyze.py: {error}", file=sys.stderr)
            return 1
        print(f"registered the model of {variant}: {uri}")

    print(f"\n{selection.description}: {len(finished)} finished runs, {len(table)} variants", file=sys.stderr)
    fallback = [v for v, d in zip(table["variant"], table["data"]) if "fallback" in d]
    if fallback:
        print(f"  trained on the offline fallback sample, not on your data: {', '.join(fallback)}", file=sys.stderr)
    for run in selection.unfinished.to_dict("records"):
        pruned = run.get(f"tags.{PRUNED_TAG}")
        error = run.get(f"tags.{tracking.ERROR}") if pd.isna(pruned) else pruned
        status = run["status"] if pd.isna(pruned) else "pruned"
        print(f"  not in the table: {run['run_name']} ({status}) {'' if pd.isna(error) else error}", file=sys.stderr)
    return 0


def write_figures_and_report(args, selection, finished, table, table_markdown: str, defaults) -> None:
    from mlflow.tracking import MlflowClient

    from mnist_exp import report, tracking
    from mnist_exp.analysis import histories, settings

    course = settings(tracking.flat_params(defaults))  # the course's plain LeNet-5: the reference of the report
    figures_dir = args.plots or args.report
    history = histories(args.tracking_uri, finished)
    figures = report.plot_all(table, history, figures_dir, course)
    print(f"wrote {len(figures)} figures to {figures_dir}", file=sys.stderr)
    if args.report:
        path = report.write_report(table, table_markdown, figures, selection.description, args.report, course)
        print(f"wrote {path}", file=sys.stderr)
        client = MlflowClient(args.tracking_uri)
        for parent in selection.parent_run_ids:  # one click away in mlflow ui, on the sweep's own run
            client.log_artifact(parent, str(path), "report")
            for figure in figures.values():
                client.log_artifact(parent, str(figure), "report")
        if selection.parent_run_ids:
            print(f"logged the report to sweep run(s) {', '.join(selection.parent_run_ids)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
