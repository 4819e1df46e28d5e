"""Train one model per Hydra job and log it to MLflow.

    python train.py                                   # LeNet-5, no regularizer, SGD
    python train.py -m model=lenet5,mlp regularizer=none,l2,dropout
    python train.py experiment=course_grid            # a whole study (its file sets multirun)
    python train.py --help                            # every config group and option

MLflow is imported once a job runs, so --help and config errors answer in a second or two (checking the
model options loads torch).
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mnist_exp import credentials, schema

schema.register()
CONF_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mnist_exp.job import run_hydra_job

    return run_hydra_job(cfg)


def refuse_appended_groups(args: list[str]) -> None:
    """`+experiment=x` is what some templates teach; here every group is in the defaults list already."""
    for arg in args:
        group = arg[1:].split("=", 1)[0]
        if arg.startswith("+") and not arg.startswith("++") and "=" in arg and (CONF_DIR / group).is_dir():
            sys.exit(
                f"train.py: error: {arg}: write {arg[1:]} without '+': the {group} group is already "
                "in conf/train.yaml's defaults, so it is chosen, not added"
            )


if __name__ == "__main__":
    refuse_appended_groups(sys.argv[1:])
    sys.argv[1:] = credentials.move_out_of_overrides(sys.argv[1:])  # before Hydra writes or logs any override
    try:
        main()
    except KeyboardInterrupt:  # each open run was closed as KILLED; the same command resumes them
        sys.exit(130)
