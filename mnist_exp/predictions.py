"""Each run's answer per image of each split it scored (docs/mlflow.md), to compare variants image by image."""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mnist_exp import record

FORMAT = 1  # bump when the file's layout changes; a reader takes every version up to its own
log = logging.getLogger(__name__)


class PredictionsError(RuntimeError):
    """A predictions file or a run that cannot give per-image answers; the message names it."""


def write_split(folder: Path, split: str, predicted, labels, sha256: str) -> Path:
    """A split's answers as record.PREDICTIONS[split] under `folder` (what job.py logs as artifacts)."""
    path = folder / record.PREDICTIONS[split]
    path.parent.mkdir(parents=True, exist_ok=True)
    uint8 = {"predicted": np.asarray(predicted, np.uint8), "labels": np.asarray(labels, np.uint8)}
    np.savez_compressed(path, format=FORMAT, **uint8, sha256=sha256)
    return path


def correct_answers(tracking_uri: str, runs, split: str) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """({run_id: correct per image}, {run_id: why none}, the runs re-scored: never retrained, their file logged)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found, missing, rescored = {}, {}, []
    for run in runs.to_dict("records"):
        run_id, digest = run["run_id"], run.get(f"params.{record.SPLIT_DIGEST[split]}")
        try:
            answers = _logged(client, run_id, split)
            if answers is None:
                answers = rescore(client, run, split)
                rescored.append(run_id)
            correct, sha256 = answers
            if sha256 != digest:
                raise PredictionsError(
                    f"{record.PREDICTIONS[split]} of run {run_id} scored images {sha256[:12]}, "
                    f"not the run's {split} split {str(digest)[:12]}"
                )
            found[run_id] = correct
        except PredictionsError as error:
            missing[run_id] = str(error)
    return found, missing, rescored


def _logged(client, run_id: str, split: str) -> tuple[np.ndarray, str] | None:
    """(correct per image, the split's SHA-256) from the run's file; None where it has none (or half of one)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, record.PREDICTIONS[split], folder)
        except Exception:  # MLflow raises several types for a missing artifact
            return None
        try:
            with np.load(path, allow_pickle=False) as file:
                if (version := int(file["format"])) > FORMAT:
                    raise PredictionsError(f"{path}: predictions format {version}; this code reads up to {FORMAT}")
                return file["predicted"] == file["labels"], str(file["sha256"])
        except (OSError, EOFError, ValueError, zipfile.BadZipFile):  # half-written by a concurrent re-score
            return None


def rescore(client, run: dict, split: str) -> tuple[np.ndarray, str]:
    """The run's logged model on its own `split`, read again as its config says (data.root relative to
    this folder, as train.py's); the images must hash to what the run recorded. Logs the file to the run."""
    import mlflow.pytorch
    import torch
    from omegaconf import OmegaConf

    from mnist_exp.data import load_mnist
    from mnist_exp.formats import DataError

    run_id, name = run["run_id"], record.PREDICTIONS[split]
    with tempfile.TemporaryDirectory() as folder:
        try:
            config = OmegaConf.load(client.download_artifacts(run_id, record.CONFIG_FILE, folder))
            (model,) = client.search_logged_models([run["experiment_id"]], filter_string=f"source_run_id = '{run_id}'")
            classifier = mlflow.pytorch.load_model(model.artifact_location).eval()  # not the default store's
        except Exception as error:  # no config or no model (or several): it cannot be re-scored
            raise PredictionsError(f"run {run_id} has no {name} and no model to re-score") from error
        try:
            data = load_mnist(config.data)
        except (DataError, OSError) as error:
            raise PredictionsError(
                f"run {run_id} has no {name}, and its data (data.root={config.data.root}) "
                f"is not here to re-score it: {str(error).splitlines()[0]}"
            ) from None
        images = getattr(data, split)
        if images is None:
            raise PredictionsError(f"run {run_id} held out no {split} split")
        with torch.inference_mode():
            batches = [classifier(x).argmax(1) for x in images.images.split(1000)]
        predicted, labels = torch.cat(batches).numpy(), images.labels.numpy()
        if images.sha256 == run.get(f"params.{record.SPLIT_DIGEST[split]}"):
            path = write_split(Path(folder), split, predicted, labels, images.sha256)
            try:
                client.log_artifact(run_id, str(path), str(Path(name).parent))
            except Exception as error:  # a read-only store: the answers still serve this analysis
                log.warning("could not log %s to run %s: %s", name, run_id, error)
        return predicted == labels, images.sha256
