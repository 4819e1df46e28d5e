"""Scaling out on existing engines, for real: Optuna through our Hydra sweeper, submitit's local
executor's jobs reporting to a shared `mlflow server` on 127.0.0.1. SLURM itself is only composed."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml
from conftest import CONF_DIR, analyze_main, job_runs, mlflow_server, run_script, sweep_runs

from mnist_exp import record

pytestmark = pytest.mark.slow
TINY = ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=1", "trainer.threads=1"]


def train(cwd, *args):
    return run_script("train.py", *args, cwd=cwd)


def test_optuna_search_records_every_trial_side_by_side_and_survives_a_failing_one(project_dir):
    # lr is narrowed to three choices, one diverging. The search's sampler is seeded, and with the
    # pinned optuna and seed 5 its three trials draw each choice once: the failing trial is sure to happen.
    # They run at once, in the default launcher's worker processes, each reporting to its trial.
    result = train(
        project_dir,
        "-m",
        "hparams_search=lenet5_optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=5",
        "hydra.sweeper.n_jobs=3",
        "optimizer.lr=choice(1e6,0.01,0.05)",
        "data.validation_size=100",
        *TINY,
    )

    assert "sweep summary: 2 finished, 0 skipped, 1 failed" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 1, "a failed trial makes the sweep exit non-zero"
    runs = {r.data.params["optimizer.lr"]: r for r in job_runs(f"sqlite:///{project_dir}/mlflow.db")}
    assert {lr: r.info.status for lr, r in runs.items()} == {
        "1000000.0": "FAILED",
        "0.01": "FINISHED",
        "0.05": "FINISHED",
    }
    weight_decays = {r.data.params["regularizer.l2.weight_decay"] for r in runs.values()}
    assert len(weight_decays) == 3, "the other hyperparameters are searched too"
    assert sorted(r.data.tags[record.TRIAL] for r in runs.values()) == ["0", "1", "2"]
    for lr in ("0.01", "0.05"):
        assert runs[lr].data.params["data.validation_size_used"] == "100"
        assert "val_acc" in runs[lr].data.metrics
    (results,) = (project_dir / "outputs" / "sweeps").glob("*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    finished = {float(lr): r.data.metrics["val_acc"] for lr, r in runs.items() if r.info.status == "FINISHED"}
    assert best["best_params"]["optimizer.lr"] == max(finished, key=finished.get)
    assert best["best_value"] == pytest.approx(max(finished.values()))


def test_submitit_jobs_log_to_a_real_tracking_server_then_analyze_then_shut_it_down(tmp_path, capsys):
    folder = tmp_path / "server"
    folder.mkdir()
    with mlflow_server(folder) as (uri, server):
        # Each job in a process of its own through submitit's local executor, all reporting to one shared
        # server, as the jobs of a cluster do.
        result = train(
            tmp_path, "-m", "hydra/launcher=local_executor", "model=lenet5,mlp", f"mlflow.tracking_uri={uri}", *TINY
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        runs = job_runs(uri)
        assert sorted(r.data.params["model.name"] for r in runs) == ["lenet5", "mlp"]
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert list((tmp_path / "outputs" / "sweeps").glob("*/.submitit/*")), "the jobs went through submitit"
        # Artifacts went through the server, into its artifact root, not into the client's folder.
        assert list((folder / "artifacts").rglob("learning_curves.png"))
        assert list((folder / "artifacts").rglob("MLmodel")), "the logged models went through the server too"
        assert not (tmp_path / "mlruns").exists()

        capsys.readouterr()  # analyze.py's main in this process: reading through the server is what is tested
        assert analyze_main()(["--tracking-uri", uri, "--format", "csv"]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2  # header + one row per model
    deadline = time.monotonic() + 90  # ~1 s on a quiet machine
    while group_alive(server.pid):
        if time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail("mlflow server workers outlived SIGTERM by 90 s")
        time.sleep(0.2)


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def sbatch_script(launcher, folder) -> str:
    """The sbatch file submitit writes for this launcher config: its keys passed on as
    hydra_submitit_launcher's launch() passes them (shared ones by submitit's own names for SLURM,
    the rest as SLURM's), so a key submitit does not know fails here as it would on a cluster."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm import slurm

    shared, names = set(OmegaConf.structured(BaseQueueConf).keys()), slurm.SlurmExecutor._equivalence_dict()
    params = {
        (names.get(key, key) if key in shared else key): value
        for key, value in OmegaConf.to_container(launcher, resolve=True).items()
        if key not in ("_target_", "submitit_folder", "max_num_timeout") and value is not None
    }
    params["mem"] = slurm._convert_mem(params["mem"])
    return slurm._make_sbatch_string(command="python -u -m submitit.core._submit", folder=str(folder), **params)


def test_slurm_launcher_composes_with_its_cluster_keys(tmp_path):
    from hydra import compose, initialize_config_dir

    from mnist_exp import schema

    schema.register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert {"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb"} <= set(launcher)
    assert launcher.setup == [f"export OMP_NUM_THREADS={launcher.cpus_per_task}"]
    # What reaches SLURM: the partition given on the command line and the file's resources, as sbatch flags.
    script = sbatch_script(launcher, tmp_path).splitlines()
    for flag in ("--partition=gpu", "--time=60", "--cpus-per-task=1", "--gpus-per-node=0", "--mem=4GB"):
        assert f"#SBATCH {flag}" in script, "\n".join(script)
    assert "export OMP_NUM_THREADS=1" in script


COURSE_GRID = {
    (f"{model}/{regularizer}/sgd", str(seed))
    for model in ("lenet5", "mlp")
    for regularizer in ("none", "l2", "dropout", "batchnorm", "augment")
    for seed in (0, 1, 2)
}


def test_course_grid_experiment_is_thirty_runs_in_one_command(project_dir):
    # No -m: the experiment file sets Hydra's mode to MULTIRUN. What is checked is the grid, not training:
    # every job fails at once on a data folder that does not exist, yet records its run (one after another,
    # the basic launcher), so the 30 runs cost seconds. Sweeps that finish their runs: test_sweep_integration.
    result = train(
        project_dir,
        "experiment=course_grid",
        "hydra/launcher=basic",
        "data.source=course",
        f"data.root={project_dir}/no-such-folder",
        "mlflow.system_metrics=false",
    )

    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Launching 30 jobs locally" in result.stdout
    summary = [line for line in result.stdout.splitlines() if line.startswith("sweep summary:")]
    assert summary == ["sweep summary: 0 finished, 0 skipped, 30 failed, 0 killed"], result.stdout[-2000:]
    runs = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert len(runs) == 30 and {r.info.status for r in runs} == {"FAILED"}
    assert {(r.data.tags[record.VARIANT], r.data.params["trainer.seed"]) for r in runs} == COURSE_GRID
    assert {r.data.params["trainer.epochs"] for r in runs} == {"10"}, "the experiment file's own settings"
    # each job passed config validation and stopped only at the data: the grid's configs are all valid
    assert all("no-such-folder does not exist" in r.data.tags[record.ERROR] for r in runs), runs[0].data.tags
    (sweep,) = sweep_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert {r.data.tags[record.PARENT] for r in runs} == {sweep.info.run_id}, "one command, one sweep"
