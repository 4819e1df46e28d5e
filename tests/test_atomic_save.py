"""mnist_exp.data.save_atomically, the writer of both the data cache and the checkpoints."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from mnist_exp import data
from mnist_exp.data import save_atomically


def test_the_file_is_synced_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "new" / "state.pt"
    calls = []
    monkeypatch.setattr(data.os, "fsync", lambda fd: calls.append("fsync"))
    real_replace = os.replace
    monkeypatch.setattr(data.os, "replace", lambda a, b: (calls.append(("replace", a.name)), real_replace(a, b)))

    save_atomically({"x": torch.arange(3)}, path)

    assert calls == ["fsync", ("replace", f".state.pt.{os.getpid()}.tmp")]  # a temporary name per process
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert os.listdir(path.parent) == ["state.pt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    save_atomically({"x": 1}, path)

    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the pickler
        save_atomically({"x": lambda: None}, path)  # cannot be pickled: fails half way through

    assert torch.load(path, weights_only=True) == {"x": 1}
    assert os.listdir(tmp_path) == ["state.pt"]
