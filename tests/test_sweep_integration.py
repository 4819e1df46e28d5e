"""End to end, on one real sweep: train.py in a subprocess (the default launcher, its jobs in that process;
side by side: test_launcher) on course-format tars of real digits, a real sqlite MLflow store, non-default
settings (2 epochs, 100 training images held out for validation); what it recorded; analyze.py on it (its
main, in this process: its output is what is checked): the table in every format, and a report answering
every course question it has runs for image by image over seeds and test images, Holm-adjusted, from the
answers each run logged, with readable figures (few series per panel, accuracy bands within 0-100); then
the same sweep again."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import analyze_main, run_script, sweep_runs
from matplotlib.collections import PolyCollection
from mlflow.tracking import MlflowClient
from PIL import Image

from mnist_exp import plots, predictions, record, report
from mnist_exp.data import content_hash
from mnist_exp.runs import histories, select_runs
from mnist_exp.table import variant_table

pytestmark = pytest.mark.slow

VARIANTS = {f"{m}/{r}/sgd" for m in ("lenet5", "mlp") for r in ("none", "dropout", "l2+dropout")}
EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
ARTIFACTS = {"config.yaml", "learning_curves.png", "confusion_matrix.png", "history.csv", "hydra"}
# Loads each run's MLflow model in a process that cannot import this repository, and scores it.
SCORE_MODELS = """
import json, sys
# the model loads its own shipped code (test_finished_runs proves it without this repository)
import mlflow, numpy as np, torch
mlflow.set_tracking_uri(sys.argv[1])
test = np.load(sys.argv[2])
scores = {}
for run_id, name in zip(sys.argv[3::2], sys.argv[4::2]):
    logits = mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}").predict(test["images"])
    torch_logits = mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")(torch.from_numpy(test["images"]))
    assert np.array_equal(logits, torch_logits.detach().numpy())
    scores[run_id] = int((logits.argmax(1) == test["labels"]).sum()) / len(test["labels"])
print(json.dumps(scores))
"""


def run(cwd, script, *args, timeout=600):
    return run_script(script, *args, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, make_course_dataset, empty_store):
    """12 runs: LeNet-5 and the MLP x none, dropout, l2+dropout x seeds 1, 2; 2 epochs, 100 of the 400
    training images held out. Run once for the whole module from a fresh folder (outputs/, checkpoints/,
    data/cache/ all land there)."""
    cwd = tmp_path_factory.mktemp("sweep")
    dataset = make_course_dataset(cwd / "course")
    shutil.copy(empty_store, cwd / "mlflow.db")
    uri = f"sqlite:///{cwd}/mlflow.db"
    command = [
        "-m",
        "model=lenet5,mlp",
        "regularizer=none,dropout,[l2,dropout]",
        "trainer.seed=1,2",
        "trainer.epochs=2",
        "trainer.threads=1",
        "hydra.launcher.workers=1",  # no worker processes to start, twice (this sweep and its repeat)
        "data.validation_size=100",
        f"data.root={dataset.root}",
        f"mlflow.tracking_uri={uri}",
    ]
    result = run(cwd, "train.py", *command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (folder,) = (cwd / "outputs" / "sweeps").iterdir()  # this sweep's; the repeat below adds another
    finished = select_runs(uri, "mnist-exp").finished
    answers = predictions.correct_answers(uri, finished, "test")[0]
    return {
        "cwd": cwd,
        "uri": uri,
        "command": command,
        "result": result,
        "folder": folder,
        "dataset": dataset,
        "table": variant_table(finished, answers=answers),
        "history": histories(uri, finished),
        "answers": answers,
    }


def runs_by_role(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist-exp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(record.ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(record.ROLE) != "sweep"]
    return client, parents, children


def analyze(sweep, capsys, *args) -> str:
    """analyze.py's table of the sweep on stdout; it must exit 0."""
    capsys.readouterr()
    code = analyze_main()(["--tracking-uri", sweep["uri"], "--experiment", "mnist-exp", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_sweep_exits_0_and_reports_twelve_finished_jobs(sweep):
    result = sweep["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep summary: 12 finished, 0 skipped, 0 failed, 0 killed" in result.stdout
    # Relative paths resolved against the launch folder, not the repository.
    assert (sweep["cwd"] / "outputs" / "sweeps").is_dir() and (sweep["cwd"] / "data" / "cache").is_dir()


def test_twelve_finished_child_runs_under_one_finished_sweep_run(sweep):
    _, parents, children = runs_by_role(sweep["uri"])

    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags[record.VARIANT] for r in children} == VARIANTS
    assert {r.data.tags[record.PARENT] for r in children} == {parents[0].info.run_id}


def test_jobs_run_in_this_process_each_log_only_their_own_lines(sweep):
    assert "Launching 12 job(s) in this process" in sweep["result"].stdout
    _, _, children = runs_by_role(sweep["uri"])
    run_ids = {child.info.run_id for child in children}
    named = []
    for log in sweep["folder"].rglob("train.log"):
        text = log.read_text()
        (own,) = [run_id for run_id in run_ids if run_id in text]  # its own run, none of the jobs before it
        named.append(own)
        assert "mnist_exp.launcher" not in text, "the launcher's own lines stay out of a job's log"
    assert sorted(named) == sorted(run_ids), "a log per job"


def test_every_run_logged_exactly_two_epochs(sweep):
    client, _, children = runs_by_role(sweep["uri"])
    for child in children:
        for metric in EPOCH_METRICS:
            history = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == [1, 2], (child.info.run_name, metric)


def test_every_run_records_model_size_and_data_identity(sweep):
    _, _, children = runs_by_role(sweep["uri"])
    dataset = sweep["dataset"]  # the first 300 training images trained on, the last 100 held out
    train_hash = content_hash(dataset.train.images[:300], dataset.train.labels[:300])
    validation_hash = content_hash(dataset.train.images[300:], dataset.train.labels[300:])
    test_hash = content_hash(dataset.test.images, dataset.test.labels)

    for child in children:
        params = child.data.params
        assert params["model.lenet5_parameters"] == "44426"
        parameters = int(params["model.parameters"])
        if params["model.name"] == "lenet5":
            assert parameters == 44426
        else:
            assert abs(parameters - 44426) <= 0.02 * 44426
        digests = (params["data.train_sha256"], params["data.validation_sha256"], params["data.test_sha256"])
        assert digests == (train_hash, validation_hash, test_hash)
        sizes = (params["data.train_size"], params["data.validation_size_used"], params["data.test_size"])
        assert sizes == ("300", "100", "200")
        assert params["data.resolved_source"] == "course"


def test_every_run_has_its_artifacts_and_every_variants_mlflow_model_reproduces_its_accuracy(sweep):
    client, _, children = runs_by_role(sweep["uri"])
    for child in children:
        run_id = child.info.run_id
        assert {a.path for a in client.list_artifacts(run_id)} >= ARTIFACTS, child.info.run_name
        folder = client.download_artifacts(run_id, "", str(sweep["cwd"] / "downloads" / run_id))
        for figure in ("learning_curves.png", "confusion_matrix.png"):
            with Image.open(f"{folder}/{figure}") as image:
                assert image.format == "PNG" and image.size[0] > 100
        hydra_files = {a.path for a in client.list_artifacts(run_id, "hydra")}
        assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml", "hydra/train.log"} <= hydra_files
        assert run_id in Path(folder, "hydra", "train.log").read_text(), "the job's log names its run"

    # One run per variant: the variants' models differ (architecture, dropout), two seeds' do not.
    scored_runs = [child for child in children if child.data.params["trainer.seed"] == "1"]
    assert {child.data.tags[record.VARIANT] for child in scored_runs} == VARIANTS and len(scored_runs) == 6
    test = sweep["dataset"].test
    np.savez(sweep["cwd"] / "test.npz", images=test.images, labels=test.labels)
    scored = subprocess.run(
        [
            sys.executable,
            "-c",
            SCORE_MODELS,
            sweep["uri"],
            str(sweep["cwd"] / "test.npz"),
            *(part for c in scored_runs for part in (c.info.run_id, record.model_name(c.data.tags[record.VARIANT]))),
        ],
        capture_output=True,
        text=True,
        cwd=sweep["cwd"],
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    scores = json.loads(scored.stdout.strip().splitlines()[-1])
    for child in scored_runs:  # exactly: both are correct / total over the same 200 digits
        assert scores[child.info.run_id] == child.data.metrics["final_test_acc"], child.info.run_name


def test_analyze_prints_one_row_per_variant_in_every_format(sweep, capsys):
    markdown = analyze(sweep, capsys)
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "/sgd" in line]
    # " *" marks a variant with a collapsed seed: these 2-epoch runs on 300 digits are near chance
    assert len(rows) == 6 and {row.split("|")[1].strip().removesuffix(" *") for row in rows} == VARIANTS

    table = pd.read_csv(io.StringIO(analyze(sweep, capsys, "--format", "csv")))
    assert len(table) == 6 and set(table["variant"]) == VARIANTS and set(table["n"]) == {2}

    records = json.loads(analyze(sweep, capsys, "--format", "json"))
    assert len(records) == 6 and {r["variant"] for r in records} == VARIANTS
    # The plain models are their own baselines.
    plain = {r["variant"]: r for r in records if r["regularizer"] == "none"}
    assert plain["mlp/none/sgd"]["vs_mlp_pp"] == 0 and plain["lenet5/none/sgd"]["vs_lenet5_pp"] == 0


# --- the report ---


def test_every_question_with_runs_is_answered_from_runs_trained_alike(sweep, capsys):
    cwd = sweep["cwd"]
    capsys.readouterr()
    code = analyze_main()(["--tracking-uri", sweep["uri"], "--report", str(cwd / "out")])  # in this process
    stdout, stderr = capsys.readouterr()

    assert code == 0, stderr
    text = (cwd / "out" / "report.md").read_text()
    assert "lacks a plain LeNet-5" not in text and "has no regularized LeNet-5" not in text
    assert "has no LeNet-5 runs with pairs" not in text
    assert "(2 epochs, sgd, a constant learning rate, on course 300/200 +100 val):\nLeNet-5 (44,426 parameters)" in text
    assert "2 matched seeds x 200 test images" in text and "Holm-adjusted" in text
    assert "the best pair, l2+dropout (chosen on the validation split among 1 candidate," in text
    assert "re-scored" not in stderr  # every run logged its answers per image
    (key,) = {parent.data.tags[record.SWEEP_KEY] for parent in sweep_runs(sweep["uri"])}
    for command in re.findall(r"to add them: `([^`]*)`", text):  # read with this sweep once trained
        assert f" mlflow.extends={key} " in command, command
    for figure in record.FIGURES.values():
        assert f"]({figure})" in text and (cwd / "out" / figure).stat().st_size > 10_000
    table = stdout.split("\n\n")[0]
    assert max(map(len, stdout.splitlines())) <= 120
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
    # As a run logged before they existed; only the test split's, which the re-score logs back: the store is
    # then as the other tests of the module found it.
    get_artifact_repository(artifacts).delete_artifacts(record.PREDICTIONS["test"])

    found, missing, rescored = predictions.correct_answers(sweep["uri"], run, "test")

    assert rescored == [run_id] and not missing
    assert (found[run_id] == sweep["answers"][run_id]).all()  # the logged model answers as the run did
    assert predictions.correct_answers(sweep["uri"], run, "test")[2] == []  # logged back: re-scored once


# Runs last in this module: it adds to the store the other tests read.
def test_repeating_the_sweep_skips_every_job_and_adds_no_runs(sweep, capsys):
    _, parents_before, children_before = runs_by_role(sweep["uri"])

    again = run(sweep["cwd"], "train.py", *sweep["command"])

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "sweep summary: 0 finished, 12 skipped, 0 failed, 0 killed" in again.stdout
    _, parents_after, children_after = runs_by_role(sweep["uri"])
    assert [p.info.run_id for p in parents_after] == [p.info.run_id for p in parents_before]
    assert {c.info.run_id for c in children_after} == {c.info.run_id for c in children_before}

    table = pd.read_csv(io.StringIO(analyze(sweep, capsys, "--format", "csv")))
    assert len(table) == 6 and set(table["n"]) == {2}
