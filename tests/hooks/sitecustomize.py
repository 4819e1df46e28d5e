"""Test-only (never shipped): holds a training process at a chosen epoch until the test lets it go, so a
test kills or signals it at a point it controls rather than at a point it guesses from the time that passed.

Python imports this module at start-up when tests/hooks is on PYTHONPATH (conftest.Hold does that).
MNIST_EXP_TEST_HOLD="<folder>:<epoch>:<before|after>:<skip>" wraps mnist_exp.checkpoints.save: at the
checkpoint of epoch <epoch>, before or after writing it, past the first <skip> such checkpoints of this
process, the process writes <folder>/held-<pid>-<n> and sleeps until <folder>/release exists. Signals
still land while it sleeps (their handlers run between sleeps).
"""

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

HOLD = os.environ.get("MNIST_EXP_TEST_HOLD")
TARGET = "mnist_exp.checkpoints"
PATIENCE_S = 1800  # a test that never releases fails on its own timeouts long before this


def held(save, folder: Path, epoch: int, when: str, skip: int):
    seen = 0

    def hold(tag: str) -> None:
        (folder / f"held-{os.getpid()}-{tag}").touch()
        deadline = time.monotonic() + PATIENCE_S
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def save_and_hold(path, run_id, training, progress):
        nonlocal seen
        chosen = progress.epochs_done == epoch
        if chosen:
            seen += 1
        chosen = chosen and seen > skip
        if chosen and when == "before":
            hold(str(seen))
        save(path, run_id, training, progress)
        if chosen and when == "after":
            hold(str(seen))

    return save_and_hold


class HoldAtCheckpoint(importlib.abc.MetaPathFinder):
    """Wraps TARGET's save() as soon as the module is executed, before anyone can call it."""

    def __init__(self, folder: Path, epoch: int, when: str, skip: int):
        self.args = (folder, epoch, when, skip)

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module, then wrap it once
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.save = held(module.save, *self.args)

        spec.loader.exec_module = exec_module
        return spec


if HOLD:
    _folder, _epoch, _when, _skip = HOLD.rsplit(":", 3)
    sys.meta_path.insert(0, HoldAtCheckpoint(Path(_folder), int(_epoch), _when, int(_skip)))
