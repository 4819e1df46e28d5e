"""Compare the runs of a sweep: one row per variant, pooled over seeds.

    python analyze.py                      # the latest sweep of the default experiment
    python analyze.py --sweep all --format csv --out results.csv

Defaults for --tracking-uri and --experiment come from conf/train.yaml, like train.py's.
"""

import argparse
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"


def config_defaults() -> tuple[str, str]:
    from hydra import compose, initialize_config_dir

    from mnist_exp import schema

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    return cfg.mlflow.tracking_uri, cfg.mlflow.experiment


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="MLflow store (default: mlflow.tracking_uri of conf/train.yaml)")
    parser.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment of conf/train.yaml)")
    parser.add_argument("--sweep", default="latest",
                        help="'latest' (default), 'all', or a sweep's parent run ID (prefix) or key")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--out", type=Path, help="write the table to this file instead of stdout")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tracking_uri is None or args.experiment is None:
        default_uri, default_experiment = config_defaults()
        args.tracking_uri = args.tracking_uri or default_uri
        args.experiment = args.experiment or default_experiment

    from mnist_exp.analysis import AnalysisError, format_table, select_runs, variant_table
    from mnist_exp.tracking import TrackingError

    try:
        selection = select_runs(args.tracking_uri, args.experiment, args.sweep)
        unfinished = selection.unfinished
        if selection.finished.empty:
            reasons = "; ".join(f"{r.run_name}: {r.status}" for r in unfinished.itertuples()) or "none"
            raise AnalysisError(f"{selection.description} has no FINISHED runs ({reasons})")
        table = variant_table(selection.finished)
    except (AnalysisError, TrackingError) as error:
        print(f"analyze.py: {error}", file=sys.stderr)
        return 1

    text = format_table(table, args.format)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {len(table)} variants to {args.out}", file=sys.stderr)
    else:
        print(text)
    print(f"\n{selection.description}: {len(selection.finished)} finished runs, "
          f"{len(table)} variants", file=sys.stderr)
    error_column = "tags.mnist_exp.error"
    for run in unfinished.itertuples():
        error = getattr(run, "_asdict")().get(error_column, "")
        print(f"  not in the table: {run.run_name} ({run.status}) {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
