"""What a person watching a run sees: bars on a terminal, a line per epoch elsewhere; in a worker, its Channel."""

from __future__ import annotations

import contextlib
import functools
import logging

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mnist_exp.launcher import Channel
from mnist_exp.training import EpochMetrics

log = logging.getLogger("mnist_exp")


def channel() -> Channel | None:
    """This job's Channel when it runs in a launcher's worker, else None."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, Channel)), None)


def announce(name: str, epochs: int, epoch: int = 0) -> None:
    """The job's run name, length and epochs done, as soon as it knows them (a skipped job too) and after each epoch."""
    if (to := channel()) is not None:
        to.report("progress", (name, epochs, epoch))


class ProgressBars(contextlib.ExitStack):
    """An epoch bar and a batch bar when stderr is a terminal and no sweep draws its own; log lines only otherwise."""

    def __init__(self, title: str, epochs: int, epochs_done: int, batches_per_epoch: int):
        super().__init__()
        self.title, self.epochs = title, epochs
        announce(title, epochs, epochs_done)
        bar = functools.partial(tqdm, disable=None if channel() is None else True)  # None: drawn on a terminal only
        self.epoch_bar = self.enter_context(
            bar(total=epochs, initial=epochs_done, desc=title, unit="epoch", position=0)
        )
        self.batch_bar = self.enter_context(bar(total=batches_per_epoch, unit="batch", position=1, leave=False))
        if not self.epoch_bar.disable:
            self.enter_context(logging_redirect_tqdm())  # log lines print above the bars

    def batch(self, loss: float) -> None:  # a disabled bar ignores all of these
        self.batch_bar.update()
        self.batch_bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def epoch(self, m: EpochMetrics) -> None:
        validation = "" if m.val_acc is None else f"val loss {m.val_loss:.4f} acc {m.val_acc:.2%}  "
        log.info(
            f"epoch {m.epoch}/{self.epochs}  train loss {m.train_loss:.4f} acc {m.train_acc:.2%}  {validation}"
            f"test loss {m.test_loss:.4f} acc {m.test_acc:.2%}  ({m.epoch_time_s:.1f}s)"
        )
        announce(self.title, self.epochs, m.epoch)
        self.epoch_bar.update()
        self.epoch_bar.set_postfix(test_acc=f"{m.test_acc:.2%}")
        self.batch_bar.reset()
