"""Train one model per Hydra job and log it to MLflow.

    python train.py                                   # LeNet-5, no regularizer, SGD
    python train.py -m model=lenet5,mlp regularizer=none,l2,dropout
    python train.py --help                            # every config group and option

Heavy imports (torch, mlflow) happen inside the job, so --help and config errors are instant.
"""

import hydra
from omegaconf import DictConfig

from mnist_exp import schema

schema.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mnist_exp.experiment import run_hydra_job

    return run_hydra_job(cfg)


if __name__ == "__main__":
    main()
