"""The docs' commands run as pasted: every shell command and Python snippet in README.md's and docs/*.md's
code blocks runs here, in order, in one scratch folder with one tiny store, shrunk by the rewrites below
(REWRITES, SHRINK); a command too long to train is composed instead (COMPOSED, `--cfg job`, all of them after
the pages' other commands, in one interpreter), and one that cannot run here is listed with the reason
(NOT_RUN). A command added to the docs runs until it is listed.

Blocks tagged `yaml` (a file's contents) or `text` (a file tree) hold no commands. In a block whose lines
start with `$ `, those lines are the commands and the rest their output."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, free_port
from mlflow.tracking import MlflowClient

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV_BIN = os.path.dirname(sys.executable)

# The rewrites every command and snippet gets, in order: (what the docs say, what runs, why).
REWRITES = [
    (".venv/bin/", "", "the venv's bin folder is first on PATH, as after `source .venv/bin/activate`"),
    ("/tmp/readme-ex", "{folder}", "the README's example store is the one scratch store"),
    ("<partition>", "debug", "a SLURM partition, for composing"),
    ("<model_id>", "{model_id}", "the best model in the scratch store"),
    ("5001", "{port}", "the model server's port: a free one"),
]
# train.py commands (not COMPOSED) train tiny: these settings replace the command's own, or are added.
SHRINK = ["data.source=sample", "data.limit_train=300", "data.limit_test=100", "trainer.epochs=1"]
SHRINK += ["trainer.threads=1", "hydra/launcher=basic"]  # one thread; jobs one after another, no worker processes

COMPOSED = {  # train.py commands too long to train here: their config is composed, `--cfg job`
    "python train.py experiment=course_grid data.source=sample": (
        "the course grid, 30 runs of 10 epochs (tests/test_scaling.py expands its 30 jobs)"
    ),
    "python train.py experiment=course_grid data.source=sample trainer.threads=1 hydra.launcher.workers=1 "
    "mlflow.tracking_uri=sqlite:////work/runs/course-grid/mlflow.db": "the course grid into the store docs/report read",
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=<partition> experiment=course_grid "
    "mlflow.tracking_uri=http://tracking-host:5055": "a SLURM cluster and a team server: make test-cluster runs them",
    "python train.py -m hparams_search=lenet5_optuna": "20 trials of 10 epochs (tests/test_search.py searches)",
    "python train.py -m hparams_search=lenet5_optuna hydra.sweeper.n_trials=50": "the search above, continued",
    "python train.py -m hparams_search=lenet5_optuna hydra/sweeper/pruner=none": "the search above, unpruned",
    "python train.py -m hparams_search=lenet5_optuna hydra.sweeper.n_jobs=2": "the search above, 2 trials at once",
    "python train.py experiment=tune model=mlp data.root=DIR": (
        "30 trials of 20 epochs, then 6 runs on every image (tests/test_tune.py runs it with 2 trials of 1 epoch)"
    ),
    "python train.py experiment=tune model=lenet5 data.source=sample": "the same, for LeNet-5 on mnist-10k",
    "python train.py experiment=tune model=lenet5 data.source=sample hydra.sweeper.n_trials=30 trainer.epochs=40 "
    "hydra.sweeper.pruner.n_warmup_steps=24 hydra.sweeper.n_jobs=1 hydra.launcher.workers=1 trainer.threads=1": (
        "docs/results.md's LeNet-5 search, 30 trials of 40 epochs"
    ),
    "python train.py experiment=tune model=lenet5 data.source=sample hydra.sweeper.n_trials=30 trainer.epochs=100 "
    "hydra.sweeper.pruner.n_warmup_steps=60 hydra.sweeper.n_jobs=1 hydra.launcher.workers=1 trainer.threads=1": (
        "docs/results.md's second-round LeNet-5 search, 30 trials of 100 epochs"
    ),
    "python train.py experiment=tune model=mlp data.source=sample hydra.sweeper.n_trials=30 trainer.epochs=80 "
    "hydra.sweeper.pruner.n_warmup_steps=48 hydra.sweeper.n_jobs=1 hydra.launcher.workers=1 trainer.threads=1": (
        "docs/results.md's MLP search, 30 trials of 80 epochs"
    ),
    "python train.py experiment=tune model=lenet5 data.root=/work/runs/inverted-10k": (
        "docs/results.md's tune on inverted digits, with the default budget"
    ),
    "python train.py experiment=lenet5_best data.source=sample": "3 runs of 40 epochs (test_config expands them)",
    "python train.py experiment=lenet5_best data.root=/work/runs/inverted-10k hydra.launcher.workers=1 "
    "trainer.threads=1": "the same, on the inverted digits of docs/results.md",
    "python train.py experiment=mlp_best data.source=sample": "3 runs of 80 epochs (test_config expands them)",
    "python train.py experiment=regularizer_combos data.source=sample hydra.launcher.workers=1 trainer.threads=1 "
    "mlflow.tracking_uri=sqlite:////work/runs/combos/mlflow.db": "33 runs of 20 epochs into the store results.md reads",
}
NOT_RUN = {
    "make sweep": "the default grid for 10 epochs; its train.py command runs here (README.md's three plain commands)",
    "make test": "the test suite itself",
    "make test PYTEST_ARGS='-m \"not slow\"'": "the test suite itself",
    "make lint": "CI runs it (.ci/run)",
    ".venv/bin/ruff check --fix . && .venv/bin/ruff format .": "it rewrites the checkout; CI's make lint checks",
    ".venv/bin/pre-commit install": "it writes the checkout's git hooks",
    "python analyze.py --tracking-uri sqlite:////work/runs/course-grid/mlflow.db --sweep experiment=course_grid "
    "--report docs/report": (
        "it reads the course grid's store (composed above); tests/test_sweep_integration.py writes reports"
    ),
    "python analyze.py --tracking-uri sqlite:////work/runs/combos/mlflow.db --sweep experiment=regularizer_combos "
    "--report docs/report-combos": "it reads the combinations' store (composed above)",
    "python analyze.py --check docs/report-combos/claims.json": "it re-checks against the combinations' store",
    "python analyze.py --tracking-uri sqlite:////work/runs/tune-inverted-lenet5/mlflow.db "
    "--report docs/report-tune-inverted": "it reads the inverted digits' tune store (composed above)",
    "python analyze.py --check docs/report-tune-inverted/claims.json": "it re-checks against that store",
    "python analyze.py --check docs/report/claims.json": (
        "it re-checks against the course grid's store; tests/test_analysis.py runs --check on a store it makes"
    ),
    "sudo deploy/tracking-server.sh start": "needs root and PostgreSQL: make test-cluster runs the team server",
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5055 MLFLOW_TRACKING_USERNAME=admin": "the team server's block",
    'export MLFLOW_TRACKING_PASSWORD="$(sudo cat /var/lib/mnist-exp-tracking/admin-password)"': "the same",
    "python train.py -m model=lenet5,mlp": "through the team server: make test-cluster runs it",
    "sudo deploy/tracking-server.sh stop": "the team server's block",
    "export PGPASSFILE=/var/lib/mnist-exp-tracking/pgpass": "the team server's PostgreSQL, for a search's study",
    "python train.py -m hparams_search=lenet5_optuna "
    "hydra.sweeper.storage=postgresql+psycopg2://mlflow@127.0.0.1:5433/optuna": (
        "a search's study in the team server's PostgreSQL: make test-cluster runs two such searches at once"
    ),
    "# mnist_exp/schema.py": "an excerpt to add to mnist_exp/schema.py, not a script",
}
# Commands that start a server run in the background while the page's later snippets run; each answers its
# check (the UI: the store's experiment, so it opens the store the docs say). The UI gets one uvicorn worker, not
# its default 4 (each imports MLflow's server: seconds of CPU), and no job runner (SERVER_ENV), as in conftest.
SERVERS = {
    "mlflow ui": (
        "--port {port} --host 127.0.0.1 --workers 1",
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist-exp",
    ),
    "mlflow models serve": ("", "/ping"),
}
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner processes


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line
    kind: str  # "shell" (one command) or "python" (a whole block)
    text: str

    @property
    def key(self) -> str:  # how COMPOSED and NOT_RUN name it
        return self.text if self.kind == "shell" else self.text.splitlines()[0]


def snippets(path: Path) -> list[Snippet]:
    """The shell commands (one per line, `\\` continuations joined, comments cut) and Python blocks of a page."""
    found, lines = [], path.read_text().splitlines()
    name = path.relative_to(REPO)
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"(\s*)```(\w*)\s*", lines[i])
        i += 1
        if not fence:
            continue
        start, block = i, []
        while not lines[i].strip().startswith("```"):
            block.append(lines[i][len(fence.group(1)) :])
            i += 1
        i += 1
        language = fence.group(2)
        if language == "python":
            found.append(Snippet(f"{name}:{start}", "python", "\n".join(block)))
        elif language in ("", "bash", "sh", "console"):
            transcript = any(line.startswith("$ ") for line in block)
            command = ""
            for number, line in enumerate(block, start + 1):
                if transcript and not command and not line.startswith("$ "):
                    continue  # output
                if not command:
                    first = number
                command = f"{command} {line.removeprefix('$ ').strip()}".strip()
                if command.endswith("\\"):
                    command = command[:-1]
                    continue
                command = re.sub(r"\s+#\s.*$", "", command)  # a trailing comment
                if command.strip():
                    found.append(Snippet(f"{name}:{first}", "shell", " ".join(command.split())))
                command = ""
    return found


def every_snippet() -> list[Snippet]:
    return [snippet for path in DOCS for snippet in snippets(path)]


def test_every_command_in_the_docs_is_run_composed_or_listed_with_its_reason():
    found = every_snippet()
    keys = {snippet.key for snippet in found}
    assert len(found) > 30 and any(s.kind == "python" for s in found), "the extraction finds the docs' commands"
    stale = sorted((set(COMPOSED) | set(NOT_RUN)) - keys)
    assert not stale, f"listed here, but no longer in the docs: {stale}"
    assert all(key.startswith("python train.py") for key in COMPOSED), "only train.py composes"
    assert not set(COMPOSED) & set(NOT_RUN)


@contextlib.contextmanager
def background(command: str, folder: Path, env: dict, url: str, check: str):
    """A server the docs start: up (/health), answering `check`, and stopped with its process group afterwards."""
    log = folder / f"server-{url.rsplit(':', 1)[1]}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=folder, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{command} did not come up: {log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        with urllib.request.urlopen(url + check, timeout=30):
            yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def rewritten(snippet: Snippet, values: dict[str, str]) -> str:
    text = snippet.text
    for said, runs, _ in REWRITES:
        text = text.replace(said, runs.format(**values))
    if snippet.kind == "python":
        return text
    words = [str(REPO / word) if word in ("train.py", "analyze.py") else word for word in shlex.split(text)]
    if "train.py" in snippet.text:
        if snippet.key in COMPOSED:  # Hydra composes one job's config, without -m
            words = [word for word in words if word not in ("-m", "--multirun")] + ["--cfg", "job"]
        else:
            keys = {setting.split("=")[0] for setting in SHRINK}
            words = [word for word in words if word.split("=")[0] not in keys] + SHRINK
    return shlex.join(words)


@pytest.mark.slow
def test_the_docs_commands_and_snippets_run_as_pasted(tmp_path, empty_store):
    folder = tmp_path / "project"  # where a user would launch from: its default store, mlflow.db
    folder.mkdir()
    (folder / "mlflow.db").write_bytes(empty_store.read_bytes())
    env = {**os.environ, "PATH": os.pathsep.join([VENV_BIN, os.environ["PATH"]])}
    done, failures, composed = set(), [], []

    for path in DOCS:
        with contextlib.ExitStack() as servers:  # a page's servers stay up for its later snippets
            port = free_port()
            for snippet in snippets(path):
                if snippet.key in NOT_RUN or snippet.key in done:
                    continue
                done.add(snippet.key)
                model_id = best_model_id(folder) if "<model_id>" in snippet.text else ""
                command = rewritten(snippet, {"folder": str(folder), "port": str(port), "model_id": model_id})
                server = next((name for name in SERVERS if snippet.text.startswith(name)), None)
                if server:
                    arguments, check = SERVERS[server]
                    url = f"http://127.0.0.1:{port}"
                    servers.enter_context(
                        background(f"{command} {arguments.format(port=port)}", folder, env | SERVER_ENV, url, check)
                    )
                    continue
                if snippet.key in COMPOSED:  # composing reads conf/ only: all of them in one process, below
                    composed.append((snippet, command))
                    continue
                argv = [sys.executable, "-c", command] if snippet.kind == "python" else ["bash", "-c", command]
                result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
                if result.returncode != 0:
                    failures.append(f"{snippet.where}: {snippet.key}\n  ran: {command}\n{result.stderr[-1500:]}")

    # Each `python train.py ... --cfg job` runs train.py as __main__ with its words as sys.argv, one after another in
    # one interpreter: ~1 s of Hydra imports once instead of once per command.
    commands = [shlex.split(command)[1:] for _, command in composed]
    result = subprocess.run(
        [sys.executable, "-c", COMPOSE_EACH, json.dumps(commands)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = [
        json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("composed ")
    ]
    assert len(outcomes) == len(composed), result.stdout[-3000:]
    for (snippet, command), (code, output) in zip(composed, outcomes, strict=True):
        if code != 0:
            failures.append(f"{snippet.where}: {snippet.key}\n  ran: {command}\n{output[-1500:]}")

    assert not failures, "\n\n".join(failures)


# Each command starts as a fresh `python train.py` would: its environment, sys.path (the script's folder first)
# and Hydra's global state as the interpreter had them, nothing left by the command before.
COMPOSE_EACH = """
import contextlib, io, json, os, runpy, sys
from hydra.core.global_hydra import GlobalHydra
environment, path = dict(os.environ), list(sys.path)
for argv in json.loads(sys.argv[1]):
    os.environ.clear()
    os.environ.update(environment)
    sys.path[:] = [os.path.dirname(argv[0]), *path]
    GlobalHydra.instance().clear()
    sys.argv, output, code = argv, io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    print("composed", json.dumps([code, output.getvalue()]), flush=True)
"""


def best_model_id(folder: Path) -> str:
    """The logged model with the highest final_test_acc in the folder's store."""
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("mnist-exp")
    order = [{"field_name": "metrics.final_test_acc", "ascending": False}]
    return client.search_logged_models([experiment.experiment_id], order_by=order, max_results=1)[0].model_id
