"""mnist_exp.console: bars only on a terminal outside a sweep worker, one log line per epoch always."""

from __future__ import annotations

import io
import logging
import queue

import pytest

from mnist_exp import console
from mnist_exp.launcher import Channel
from mnist_exp.training import EpochMetrics


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_two_epochs(caplog) -> None:
    """Two epochs of two batches, checking the log lines: one per epoch, bars or not."""
    with caplog.at_level(logging.INFO, logger="mnist_exp"), console.ProgressBars("mlp seed=0", 2, 0, 2) as bars:
        for epoch in (1, 2):
            bars.batch(0.5)
            bars.batch(0.25)
            bars.epoch(EpochMetrics(epoch, 0.4, 0.9, 0.3, 0.91, 1.5))
    assert [r.getMessage() for r in caplog.records] == [
        f"epoch {e}/2  train loss 0.4000 acc 90.00%  test loss 0.3000 acc 91.00%  (1.5s)" for e in (1, 2)
    ]


@pytest.fixture
def stderr(monkeypatch):
    def use(stream):
        monkeypatch.setattr("sys.stderr", stream)
        return stream

    return use


def test_a_terminal_gets_an_epoch_bar(stderr, caplog):
    shown = stderr(Terminal())
    run_two_epochs(caplog)
    assert "mlp seed=0" in shown.getvalue() and "2/2" in shown.getvalue() and "test_acc=91.00%" in shown.getvalue()


def test_no_bars_when_stderr_is_not_a_terminal(stderr, caplog):
    shown = stderr(io.StringIO())
    run_two_epochs(caplog)
    assert shown.getvalue() == ""


@pytest.fixture
def channel():
    """A job's launcher.Channel, installed as a launcher's worker installs it: on the root logger."""
    events = queue.Queue()
    installed = Channel(events, 3, 7)
    logging.getLogger().addHandler(installed)
    yield events
    logging.getLogger().removeHandler(installed)


def test_no_bars_in_a_sweep_worker_even_on_a_terminal(stderr, caplog, channel):
    shown = stderr(Terminal())
    run_two_epochs(caplog)
    assert shown.getvalue() == ""
    line = "epoch {}/2  train loss 0.4000 acc 90.00%  test loss 0.3000 acc 91.00%  (1.5s)"
    assert [channel.get_nowait() for _ in range(channel.qsize())] == [
        ("progress", 3, 7, ("mlp seed=0", 2, 0)),
        ("log", 3, 7, line.format(1)),
        ("progress", 3, 7, ("mlp seed=0", 2, 1)),
        ("log", 3, 7, line.format(2)),
        ("progress", 3, 7, ("mlp seed=0", 2, 2)),
    ]
