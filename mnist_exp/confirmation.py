"""A search's last stage (docs/search.md): its best recipe and the plain model on fresh seeds, on the test split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from mnist_exp.sweep import override_key

log = logging.getLogger(__name__)


def jobs(fixed: list[str], best: dict, changes: list[str], seeds: list[int]) -> tuple[list[list[str]], list[list[str]]]:
    """(recipe jobs, plain jobs): the search's fixed overrides, the best params and `changes`, later ones winning;
    the plain model is the same with regularizer=none."""
    merged: dict[str, str] = {}
    for override in [*fixed, *(f"{key}={value}" for key, value in best.items()), *changes]:
        merged.pop(override_key(override), None)  # the later one wins, in the later one's place
        merged[override_key(override)] = override
    recipe = list(merged.values())
    plain = [o for k, o in merged.items() if k != "regularizer" and not k.startswith("regularizer.")]
    plain.append("regularizer=none")
    return [[*recipe, f"trainer.seed={s}"] for s in seeds], [[*plain, f"trainer.seed={s}"] for s in seeds]


def confirm(launcher, config: DictConfig, fixed: list[str], study, info, initial_job_idx: int) -> None:
    """Train the best recipe and the plain model on fresh seeds, print their table and record it on the sweep run."""
    from optuna.trial import TrialState

    from mnist_exp import record, tracking
    from mnist_exp.sweep import read_job_statuses

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.warning("no trial completed: nothing to confirm")
        return
    best_trial, settings = study.best_trial, config.hydra.sweeper.confirm
    seeds = [config.trainer.seed + 1 + i for i in range(settings.seeds)]
    recipe, plain = jobs(fixed, best_trial.params, list(settings.overrides), seeds)
    alike = f"trained alike with {' '.join(settings.overrides)}" if settings.overrides else "trained alike"
    log.info(
        f"confirmation: trial {best_trial.number}'s recipe and the plain model (regularizer=none), {alike}, "
        f"seeds {', '.join(map(str, seeds))}: {len(recipe) + len(plain)} runs"
    )
    launcher.launch([*recipe, *plain], initial_job_idx=initial_job_idx)

    found = {tuple(s.overrides): s.run_id for s in read_job_statuses(config.hydra.sweep.dir, info.launch_id)}
    batches = {"recipe": recipe, "plain": plain}
    run_ids = {role: [found[tuple(job)] for job in batch if found.get(tuple(job))] for role, batch in batches.items()}
    client, _ = tracking.connect(config.mlflow.tracking_uri, config.mlflow.experiment)
    client.set_tag(info.parent_run_id, record.CONFIRMATION, json.dumps(run_ids))
    text = _table(config, best_trial, [*run_ids["recipe"], *run_ids["plain"]])
    path = Path(config.hydra.sweep.dir) / record.CONFIRMATION_FILE
    path.write_text(text + "\n")
    client.log_artifact(info.parent_run_id, str(path))
    log.info("%s", text)


def _table(config: DictConfig, best_trial, run_ids: list[str]) -> str:
    """analyze.py's table of the confirmation's finished runs, under a line saying what they are."""
    from mnist_exp import predictions
    from mnist_exp.runs import AnalysisError, select_runs
    from mnist_exp.table import SPLITS, format_table, variant_table

    heading = (
        f"Confirmation on the test split: trial {best_trial.number}'s recipe (chosen on the validation split) "
        "and the plain model, trained alike on fresh seeds"
    )
    selection = select_runs(config.mlflow.tracking_uri, config.mlflow.experiment, "all")
    finished = selection.finished[selection.finished["run_id"].isin(run_ids)]
    answers, _, _ = predictions.correct_answers(config.mlflow.tracking_uri, finished, SPLITS["final"])
    try:
        return f"{heading}:\n\n{format_table(variant_table(finished, answers=answers), 'markdown')}"
    except AnalysisError as error:  # every confirmation job failed, and said why
        return f"{heading}: no table ({error})"
