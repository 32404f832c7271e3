"""The progress display of a training run on stderr: a line saying where a resumed run continues, a rich bar
(epoch, batch, the epoch's running-mean loss and accuracy, ETA) and one line per finished epoch. With ``quiet``
nothing at all is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


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
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task(
            "train", total=(epochs - start_epoch) * batches, epoch=start_epoch + 1, epochs=epochs,
            batch=0, batches=batches, loss=float("nan"), acc=float("nan"),
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
            self.bar.update(self.task, advance=1, epoch=epoch + 1, batch=batch, batches=batches, loss=loss, acc=acc)

    def epoch_done(self, row: dict[str, Any]) -> None:
        """Print the epoch's line of metrics above the bar."""
        if self.bar is None:
            return
        self.console.print(
            f"epoch {row['epoch']}/{self.epochs}  train (running mean) loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f}  "
            f"{row['seconds']:.1f} s",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
