"""The default launcher of `train.py -m` (mnist_exp/launcher.py): how it shares the cores out, the
order it starts jobs in, and for real, in subprocesses on real digits: jobs side by side with
metrics identical to Hydra's sequential launcher, the sweep's progress line on a terminal, per-job
prefixed log lines, Ctrl-C, and a worker that dies."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import REPO, Hold, job_runs, run_script, sweep_runs
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from mnist_exp.launcher import plan
from mnist_exp.sweep import launch_plan


@pytest.mark.parametrize(
    ("jobs", "cores", "workers", "threads", "expected"),
    [
        (6, 2, None, None, (2, 1)),  # the README's grid on this machine: two jobs side by side, a thread each
        (1, 2, None, None, (1, 2)),  # a single job gets every core
        (3, 8, None, None, (3, 2)),  # fewer jobs than cores: the spare cores are shared out
        (6, 8, None, None, (6, 1)),
        (6, 2, None, 2, (1, 2)),  # trainer.threads=2 on two cores leaves room for one job at a time
        (6, 4, 3, None, (3, 1)),  # hydra.launcher.workers=3
    ],
)
def test_workers_and_threads_follow_the_cores_and_the_jobs(jobs, cores, workers, threads, expected):
    assert plan(jobs, cores, workers, threads) == expected


def test_the_longest_jobs_start_first(compose):
    costs = {
        overrides: launch_plan(compose(list(overrides)))[0]
        for overrides in [
            ("model=mlp", "trainer.epochs=10"),
            ("model=lenet5", "trainer.epochs=10"),
            ("model=lenet5", "trainer.epochs=20"),
            ("model=mlp", "trainer.epochs=20"),
        ]
    }

    order = sorted(costs, key=lambda o: -costs[o])

    assert order[:2] == [("model=lenet5", "trainer.epochs=20"), ("model=lenet5", "trainer.epochs=10")]
    assert order[2:] == [("model=mlp", "trainer.epochs=20"), ("model=mlp", "trainer.epochs=10")]


# --- for real ---

slow = pytest.mark.slow


def metrics_of(uri: str) -> dict[str, list]:
    client = MlflowClient(uri)
    return {
        run.info.run_name: [
            (m.step, m.value)
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
            for m in client.get_metric_history(run.info.run_id, key)
        ]
        for run in job_runs(uri)
    }


def on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """train.py with stderr on a 160-column terminal and stdout a pipe, as with `| tee`: (exit code, stdout, screen)."""
    main, replica = pty.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=replica, text=True
    )
    os.close(replica)
    screen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the process closed its end
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    stdout, _ = process.communicate(timeout=300)
    os.close(main)
    return process.returncode, stdout, screen.decode(errors="replace")


@slow
def test_a_sweep_runs_side_by_side_with_the_same_numbers_as_hydras_sequential_launcher(
    tmp_path, empty_store, make_course_dataset
):
    # Course tars of 600 digits: each job decodes its PNGs in forked processes, so its worker must allow children.
    course = make_course_dataset(tmp_path / "course", n_train=600, n_test=100)
    grid = ["-m", "model=lenet5,mlp", "regularizer=none,dropout", "trainer.epochs=2", f"data.root={course.root}"]
    results = {}
    for launcher in ("parallel", "basic"):
        folder = tmp_path / launcher
        folder.mkdir()
        (folder / "mlflow.db").write_bytes(empty_store.read_bytes())
        if launcher == "parallel":  # 1 thread each; its progress line on a terminal
            returncode, stdout, screen = on_a_terminal(grid, folder)
        else:
            result = run_script("train.py", *grid, "hydra/launcher=basic", "trainer.threads=1", cwd=folder, timeout=300)
            returncode, stdout = result.returncode, result.stdout + result.stderr
        assert returncode == 0, stdout[-3000:]
        results[launcher] = (stdout, metrics_of(f"sqlite:///{folder}/mlflow.db"))

    parallel, _ = results["parallel"]
    assert "Launching 4 jobs on 2 workers x 1 thread(s), longest first" in parallel
    assert "sweep summary: 4 finished, 0 skipped, 0 failed, 0 killed" in parallel
    # Each job's lines arrive whole and prefixed with its run's name; the job's folder keeps its full log.
    for name in ("lenet5/none/sgd seed=0", "mlp/dropout/sgd seed=0"):
        assert [line for line in parallel.splitlines() if line.startswith(f"[{name}] ") and "epoch 2/2" in line]
    assert all(line.startswith(("[", "sweep summary", "  ", "runs: ")) for line in parallel.splitlines() if line)
    logs = list((tmp_path / "parallel" / "outputs" / "sweeps").rglob("train.log"))
    assert len(logs) == 4 and all("epoch 2/2" in log.read_text() for log in logs)
    # Started longest first: the two LeNet-5 jobs before either MLP.
    order = [line for line in parallel.splitlines() if "MLflow run" in line]
    assert [("lenet5" in line) for line in order] == [True, True, False, False]
    # On a terminal, one progress line on stderr; log lines go to stdout, above it.
    assert "sweep 0/4 jobs done | running: " in screen and "elapsed, ETA" in screen
    assert "sweep 4/4 jobs done" in screen

    assert results["parallel"][1] == results["basic"][1], "the launcher must not change a single digit"
    assert len(results["basic"][1]) == 4


# Jobs run in this process (hydra.launcher.workers=1), each logging only its own lines: test_sweep_integration's
# sweep runs that way.


def test_help_names_the_default_launcher():
    config = OmegaConf.load(REPO / "conf" / "train.yaml")
    (default,) = [entry["override hydra/launcher"] for entry in config.defaults if "override hydra/launcher" in entry]
    assert f"{default}, the default" in config.hydra.help.footer


@slow
def test_ctrl_c_stops_every_worker_promptly_and_the_same_command_resumes_them(project_dir):
    command = [
        "-m",
        "model=lenet5",
        "trainer.seed=0,1",
        "data.source=sample",
        "data.limit_train=500",
        "data.limit_test=100",
        "trainer.epochs=2",
        f"hydra.sweep.dir={project_dir}/sweep",
    ]
    log = project_dir / "sweep.log"
    hold = Hold(project_dir / "hold", epoch=1)  # both workers wait after epoch 1: only the signal can stop them
    with open(log, "w") as out:  # its own process group, as a terminal's Ctrl-C reaches the whole group
        process = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *command],
            cwd=project_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **hold.env},
        )
    hold.wait(processes=2, alive=process)
    interrupted = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    # ~3 s on a quiet machine; without the signal reaching them the held workers would never stop.
    assert time.monotonic() - interrupted < 90, "workers must stop promptly"

    uri = f"sqlite:///{project_dir}/mlflow.db"
    runs = job_runs(uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}
    assert [p.info.status for p in sweep_runs(uri)] == ["KILLED"]
    statuses = [json.loads(p.read_text()) for p in (project_dir / "sweep").rglob("job_status.json")]
    assert sorted(s["run_id"] for s in statuses) == sorted(r.info.run_id for r in runs)
    assert not [line for line in log.read_text().splitlines() if "Traceback" in line]

    resumed = run_script("train.py", *command, cwd=project_dir)  # the default guard: minutes under load
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert sum("resuming run" in line for line in resumed.stdout.splitlines()) == 2
    assert {r.info.status for r in job_runs(uri)} == {"FINISHED"} and len(job_runs(uri)) == 2


@slow
def test_a_job_whose_worker_dies_fails_alone(project_dir):
    command = [
        "-m",
        "model=mlp",
        "trainer.seed=0,1,2",
        "data.source=sample",
        "data.limit_train=500",
        "data.limit_test=100",
        "trainer.epochs=2",
    ]
    log = project_dir / "sweep.log"
    hold = Hold(project_dir / "hold", epoch=1)  # both workers mid-job, each after its epoch 1
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *command],
            cwd=project_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **hold.env},
        )
    hold.wait(processes=2, alive=process)
    os.kill(children(process.pid)[0], signal.SIGKILL)  # a worker, as the kernel's out-of-memory killer would
    hold.release()
    assert process.wait(timeout=600) == 1

    text = log.read_text()
    assert "sweep summary: 2 finished, 0 skipped, 1 failed, 0 killed" in text, text[-3000:]
    (named,) = [line for line in text.splitlines() if line.startswith("  FAILED: ")]
    assert "trainer.seed=" in named and "its worker process was killed by SIGKILL" in named, named
    assert "Traceback" not in text and "rejected" not in text, "no Hydra traceback, no misleading hint"
    runs = job_runs(f"sqlite:///{project_dir}/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"], "no run left RUNNING"
    (failed,) = [r for r in runs if r.info.status == "FAILED"]
    assert "killed by SIGKILL" in failed.data.tags["mnist_exp.error"]


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` that run Python (the workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if (
                int(fields[1]) == pid
                and "multiprocessing" in cmdline(int(entry.name))
                and "resource_tracker" not in cmdline(int(entry.name))
            ):
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
