"""analyze.py --report on one real sweep trained with non-default settings (2 epochs, a validation split):
every course question it has runs for is answered image by image over seeds and test images, Holm-adjusted,
from the answers each run logged, and every figure is readable (few series per panel, accuracy bands within
0-100)."""

from __future__ import annotations

import re
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import run_script, sweep_runs
from matplotlib.collections import PolyCollection

from mnist_exp import plots, predictions, record, report
from mnist_exp.runs import histories, select_runs
from mnist_exp.table import variant_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, course_dataset, empty_store):
    """12 runs: LeNet-5 and the MLP x none, dropout, l2+dropout x seeds 1, 2; 2 epochs, 100 images held out."""
    cwd = tmp_path_factory.mktemp("report-sweep")
    shutil.copy(empty_store, cwd / "mlflow.db")
    uri = f"sqlite:///{cwd}/mlflow.db"
    result = run_script(
        "train.py",
        "-m",
        "model=lenet5,mlp",
        "regularizer=none,dropout,[l2,dropout]",
        "trainer.seed=1,2",
        "trainer.epochs=2",
        "hydra/launcher=basic",
        "trainer.threads=1",
        "data.validation_size=100",
        f"data.root={course_dataset.root}",
        f"mlflow.tracking_uri={uri}",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    finished = select_runs(uri, "mnist-exp").finished
    answers = predictions.correct_answers(uri, finished, "test")[0]
    table = variant_table(finished, answers=answers)
    return {"cwd": cwd, "uri": uri, "table": table, "history": histories(uri, finished), "answers": answers}


def test_every_question_with_runs_is_answered_from_runs_trained_alike(sweep):
    cwd = sweep["cwd"]
    result = run_script("analyze.py", "--tracking-uri", sweep["uri"], "--report", "out", cwd=cwd)

    assert result.returncode == 0, result.stderr
    text = (cwd / "out" / "report.md").read_text()
    assert "lacks a plain LeNet-5" not in text and "has no regularized LeNet-5" not in text
    assert "has no LeNet-5 runs with pairs" not in text
    assert "(2 epochs, sgd, a constant learning rate, on course 300/200 +100 val):\nLeNet-5 (44,426 parameters)" in text
    assert "2 matched seeds x 200 test images" in text and "Holm-adjusted" in text
    assert "the best pair, l2+dropout (chosen on the validation split among 1 candidate," in text
    assert "re-scored" not in result.stderr  # every run logged its answers per image
    (key,) = {parent.data.tags[record.SWEEP_KEY] for parent in sweep_runs(sweep["uri"])}
    for command in re.findall(r"to add them: `([^`]*)`", text):  # read with this sweep once trained
        assert f" mlflow.extends={key} " in command, command
    for figure in record.FIGURES.values():
        assert f"]({figure})" in text and (cwd / "out" / figure).stat().st_size > 10_000
    table = result.stdout.split("\n\n")[0]
    assert max(map(len, result.stdout.splitlines())) <= 120
    assert "verdict" in table and "p Holm" in table


def test_the_table_the_report_and_the_family_agree(sweep):
    table = sweep["table"].set_index("variant")
    (answer,) = report.regularizers(sweep["table"])
    dropout = next(i["c"] for i in answer["entries"] if i["row"].regularizer == "dropout")

    assert dropout["test"] == "seeds x images"
    assert dropout["p_adj"] == pytest.approx(table.loc["lenet5/dropout/sgd", "p_adj"])
    from statsmodels.stats.multitest import multipletests

    family = table[(table["model"] == "lenet5") & (table["regularizer"] != "none")]
    expected = multipletests(family["p_value"].to_numpy(), method="holm")[1]
    assert family["p_adj"].to_numpy() == pytest.approx(expected)


def _series(ax) -> int:
    """Lines a reader tells apart on one panel: data lines with more than one point, reference lines left out."""
    return len(
        {
            tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
            for line in ax.get_lines()
            if len(line.get_xdata()) > 1 and len(set(line.get_xdata())) > 1
        }
    )


def test_every_figure_has_few_series_per_panel_and_accuracy_bands_within_0_100(sweep):
    figures = report.figures(sweep["table"], sweep["history"])

    assert set(figures) == set(record.FIGURES)
    for name, fig in figures.items():
        for ax in fig.axes:
            assert _series(ax) <= plots.MAX_SERIES, (name, ax.get_title())
            if "accuracy" in ax.get_ylabel():
                bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
                assert bands, (name, ax.get_title())
                y = np.concatenate([path.vertices[:, 1] for band in bands for path in band.get_paths()])
                assert y.min() >= 0 and y.max() <= 100, (name, ax.get_title())
        assert fig.legends or all(ax.get_legend() is None for ax in fig.axes)  # legends outside the data
        plt.close(fig)
    models = figures["models"]
    assert [ax.get_title() for ax in models.axes] == ["train loss", "test loss", "train accuracy", "test accuracy"]


def test_the_regularizer_panels_show_the_later_epochs_range_not_the_first_epochs():
    history = pd.DataFrame(
        [
            {"label": label, "run_id": f"{label}{seed}", "epoch": epoch, record.TEST_ACC: acc + seed / 1000}
            for label, late in (("none", 0.97), ("l2", 0.98))
            for seed in range(3)
            for epoch, acc in ((1, 0.2), (2, 0.9), (3, late), (4, late))
        ]
    ).assign(**{record.TRAIN_ACC: 0.0})

    fig = plots.regularizer_panels(history, "none", "test")

    assert fig.axes[0].get_ylim() == (95.0, 100.0)  # 97% late, less 2 points, floored; epoch 1 (20%) runs off
    plt.close(fig)


def test_every_run_logs_its_answer_per_image_of_each_split_it_scored(sweep):
    finished = select_runs(sweep["uri"], "mnist-exp").finished
    for split, images in (("test", 200), ("validation", 100)):
        found, missing, rescored = predictions.correct_answers(sweep["uri"], finished, split)
        assert not missing and not rescored and {len(correct) for correct in found.values()} == {images}
    final = finished.set_index("run_id")["metrics.final_val_acc"]
    assert all(found[run_id].mean() == final[run_id] for run_id in found)  # the very answers it scored


def test_a_run_without_answers_is_rescored_once_from_its_logged_model(sweep):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    run = select_runs(sweep["uri"], "mnist-exp").finished.iloc[[0]]
    run_id = run["run_id"].iloc[0]
    artifacts = MlflowClient(sweep["uri"]).get_run(run_id).info.artifact_uri
    get_artifact_repository(artifacts).delete_artifacts("predictions")  # as a run logged before they existed

    found, missing, rescored = predictions.correct_answers(sweep["uri"], run, "test")

    assert rescored == [run_id] and not missing
    assert (found[run_id] == sweep["answers"][run_id]).all()  # the logged model answers as the run did
    assert predictions.correct_answers(sweep["uri"], run, "test")[2] == []  # logged back: re-scored once
