"""The progress display of a training run on stderr: a line saying where a resumed run continues, a rich bar
(epoch, batch, the epoch's running-mean loss and accuracy, ETA; no accuracy on a regression task) and one line per
finished epoch. With ``quiet`` nothing at all is written."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def accuracy_text(accuracy: float, digits: int) -> str:
    """``"  acc 0.9123"``, or nothing for a regression task (its accuracy is NaN: there are no classes)."""
    return "" if math.isnan(accuracy) else f"  acc {accuracy:.{digits}f}"


class Progress:
    """``with Progress(epochs, batches_per_epoch, start_epoch, quiet) as bar:`` then ``bar.advance(...)`` after
    every step and ``bar.epoch_done(row)`` after every epoch. The ETA covers the remaining epochs. With
    ``resumed`` (the run directory), entering first prints ``resuming DIR from epoch E/N``."""

    def __init__(self, epochs: int, batches: int, start_epoch: int, quiet: bool, resumed: Path | None = None) -> None:
        self.epochs, self.batches, self.quiet = epochs, batches, quiet
        self.start_epoch, self.resumed = start_epoch, resumed
        self.bar: RichProgress | None = None
        if quiet or start_epoch >= epochs:
            return
        self.console = Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("batch {task.fields[batch]}/{task.fields[batches]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}{task.fields[acc]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task(
            "train", total=(epochs - start_epoch) * batches, epoch=start_epoch + 1, epochs=epochs,
            batch=0, batches=batches, loss=float("nan"), acc="",
        )  # fmt: skip

    def __enter__(self) -> Progress:
        if self.bar is not None:
            if self.resumed is not None:
                self.console.print(f"resuming {self.resumed} from epoch {self.start_epoch + 1}/{self.epochs}",
                                   markup=False, highlight=False, soft_wrap=True)  # fmt: skip
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, epoch: int, batch: int, batches: int, loss: float, acc: float) -> None:
        """After step ``batch`` (1-based) of ``epoch`` (0-based), with the epoch's running loss and accuracy."""
        if self.bar is not None:
            self.bar.update(self.task, advance=1, epoch=epoch + 1, batch=batch, batches=batches, loss=loss,
                            acc=accuracy_text(acc, 3))  # fmt: skip

    def epoch_done(self, row: dict[str, Any]) -> None:
        """Print the epoch's line of metrics above the bar."""
        if self.bar is None:
            return
        self.console.print(
            f"epoch {row['epoch']}/{self.epochs}  train (running mean) loss {row['train_loss']:.4f}"
            f"{accuracy_text(row['train_accuracy'], 4)}  test loss {row['test_loss']:.4f}"
            f"{accuracy_text(row['test_accuracy'], 4)}  {row['seconds']:.1f} s",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
