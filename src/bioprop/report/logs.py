"""The files of a run directory, written whole and atomically and read back for plots and tables.

A run directory holds:

- ``config.yaml``: the :class:`~bioprop.config.RunConfig` the run was started with;
- ``metrics.csv``: one row per epoch: epoch, train_loss, train_accuracy, test_loss, test_accuracy, seconds, lr,
  then ``angle/<parameter>`` (update angle to backprop, degrees) and ``diag/<key>`` (the rule's diagnostics);
- ``alignment.csv`` (only with ``probe_every > 0``): step, epoch, parameter, angle_deg, every N steps;
- ``traces.csv`` (rules with an inner dynamics): epoch, trace, step, value: the mean over the epoch's batches of
  a per-step quantity such as the energy at each inference step; epoch 0 is the rule's preparation phase;
- ``summary.json``: the run at a glance (final and best accuracy, per-epoch angles, status, versions);
- ``checkpoint.safetensors`` and, once finished, ``model.safetensors``; ``alignment.png``, ``curves.png`` and,
  with traces, ``energy.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bioprop.errors import BioPropError

CONFIG = "config.yaml"
METRICS = "metrics.csv"
ALIGNMENT = "alignment.csv"
SUMMARY = "summary.json"
BASE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr")
ALIGNMENT_COLUMNS = ("step", "epoch", "parameter", "angle_deg")
TRACES = "traces.csv"
TRACE_COLUMNS = ("epoch", "trace", "step", "value")
TIMING_COLUMNS = ("seconds",)  # differ between otherwise identical runs


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, flush it to disk, then rename it over ``path``, so
    that ``path`` always holds either the old or the new contents."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The base columns, then every other key in first-seen order (``angle/...`` before ``diag/...``)."""
    extra: list[str] = []
    for row in rows:
        extra += [key for key in row if key not in BASE_COLUMNS and key not in extra]
    return [*BASE_COLUMNS, *sorted(extra, key=lambda key: not key.startswith("angle/"))]


def _cell(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[_cell(row.get(column)) for column in columns] for row in rows])
    write_atomic(path, buffer.getvalue().encode())


def write_metrics(run_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_csv(run_dir / METRICS, metric_columns(rows), rows)


def write_alignment(run_dir: Path, rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` of (step, epoch, parameter, angle_deg)."""
    write_csv(run_dir / ALIGNMENT, ALIGNMENT_COLUMNS, [dict(zip(ALIGNMENT_COLUMNS, row, strict=True)) for row in rows])


def write_traces(run_dir: Path, rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` of (epoch, trace, step, value)."""
    write_csv(run_dir / TRACES, TRACE_COLUMNS, [dict(zip(TRACE_COLUMNS, row, strict=True)) for row in rows])


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written here, numbers as floats (``epoch`` and ``step`` as ints), empty cells as None."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise BioPropError(f"cannot read {path}: {exc.strerror or exc}") from None
    return [{key: _parse(key, value) for key, value in row.items()} for row in rows]


def _parse(key: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        return int(value) if key in ("epoch", "step") else float(value)
    except ValueError:
        return value


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_csv(Path(run_dir) / METRICS) if (Path(run_dir) / METRICS).is_file() else []


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: those become None, recursively through lists and dicts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(run_dir / SUMMARY, (json.dumps(finite_or_none(summary), indent=2) + "\n").encode())


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise BioPropError(f"no {SUMMARY} in {run_dir}; is it a bioprop run directory?")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BioPropError(f"cannot read {path}: {exc}") from None


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` without ``overwrite`` and an ``out`` that cannot be written; touches nothing."""
    if out.exists() and not out.is_dir():
        raise BioPropError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BioPropError(f"output directory {out} is not empty; pass --overwrite or choose another --out")
        if not (out / CONFIG).is_file():
            raise BioPropError(f"refusing to clear {out}: it has no {CONFIG}, so it is not a bioprop run directory")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BioPropError(f"cannot write to {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BioPropError(f"cannot write to {out}: permission denied on {existing}")


def make_out_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; with ``overwrite``, empty it first (after :func:`check_out_dir` said that is safe)."""
    try:
        if overwrite and out.is_dir():
            for child in out.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BioPropError(f"cannot write to {out}: {exc.strerror or exc}") from None
