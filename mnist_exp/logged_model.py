"""What job.py logs beside params and metrics: the network as an MLflow logged model, the splits as datasets."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from pathlib import Path

import mlflow

from mnist_exp import record


def datasets(data) -> dict:
    """Each split as an MLflow dataset (name, digest, source, size), by context: train, validation, test."""
    import mlflow.data

    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    with warnings.catch_warnings(action="ignore", category=UserWarning):  # MLflow warns of two sources for a local path
        return {  # digest: MLflow stores at most 36 characters
            context: mlflow.data.from_numpy(
                split.images.numpy(),
                targets=split.labels.numpy(),
                source=data.url or data.location,
                name=f"{data.name}-{context}",
                digest=split.sha256[:16],
            )
            for context, split in splits.items()
            if split is not None
        }


def log_datasets(datasets: dict) -> None:
    """As inputs of the active run, so the runs table's Dataset column and run.inputs show them."""
    for attempt in range(3):
        try:
            mlflow.log_inputs(list(datasets.values()), contexts=list(datasets), tags_list=[None] * len(datasets))
            return
        except Exception as error:  # parallel jobs adding the same new dataset race on its unique row;
            if attempt == 2 or "unique" not in str(error).lower():  # the retry finds the row the other wrote
                raise
            time.sleep(0.1 * (attempt + 1))


def log_model(classifier, example, variant: str):
    """The network as an MLflow pytorch model named after its variant (why this way: docs/mlflow.md, 'a model')."""
    import mlflow.pytorch
    import torch

    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning that pickles run code: this model's code ships with it
    try:
        return mlflow.pytorch.log_model(
            classifier,
            name=record.model_name(variant),
            code_paths=[str(Path(_shipped_code().name) / "mnist_exp")],
            serialization_format="pickle",
            signature=False,
            input_example=example.numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        quiet.setLevel(level)


@functools.cache
def _shipped_code():
    """A temporary folder (removed at exit) holding mnist_exp/{__init__,models,shipped}.py."""
    import tempfile

    folder = tempfile.TemporaryDirectory(prefix="mnist-exp-shipped-")
    package = Path(folder.name) / "mnist_exp"
    package.mkdir()
    for name in ("__init__.py", "models.py", "shipped.py"):
        (package / name).write_bytes((Path(__file__).parent / name).read_bytes())
    return folder
