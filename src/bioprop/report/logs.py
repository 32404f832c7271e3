"""The files of a run directory: written whole and atomically, read back for plots and tables, and guarded.

A run directory holds (this is the one list of every file a run can write):

- ``.bioprop-run``: the marker written when the directory is created: JSON ``{"format": "bioprop-run/1", "id",
  "created", "bioprop_version"}``. Only a directory with this marker is ever cleared by ``--overwrite``, and
  then only of the files in this list; anything else in it is refused, by name, and the directory is kept whole;
- ``.bioprop-lock``: present while a process writes to the run (``train`` or ``resume``): held with ``flock``
  (released by the kernel when the process dies) and holding JSON ``{"pid", "host", "started", "command"}``
  naming the holder; removed when the run ends. A second writer is refused, naming the holder; a lock file
  left by a killed process is taken over;
- ``config.yaml``: the :class:`~bioprop.config.RunConfig` the run was started with;
- ``metrics.csv``: one row per epoch: epoch, loss (the name of the run's one output loss, :mod:`bioprop.losses`:
  ``ce`` or ``se``, which train_loss and test_loss both measure), train_loss, train_accuracy (both a running mean
  over the epoch's steps, taken while the weights change), test_loss, test_accuracy, seconds, lr, then
  ``angle/<parameter>`` (update angle to the reference gradient, degrees) and ``diag/<key>`` (the rule's
  diagnostics);
- ``alignment.csv`` (only with ``probe_every > 0``): step, epoch, parameter, angle_deg, every N steps;
- ``traces.csv`` (rules with an inner dynamics): epoch, trace, step, value: the mean over the epoch's batches of
  a per-step quantity such as the energy at each inference step; epoch 0 is the rule's preparation phase;
- ``summary.json``: the run at a glance (final and best accuracy, per-epoch angles, status, versions); status is
  ``running``, ``finished``, ``interrupted`` (Ctrl-C or SIGTERM), ``diverged`` or ``failed`` (with a message);
- ``checkpoint.safetensors`` (each epoch end; its metadata holds the SHA-256 of its tensors, checked when it is
  read) and, once finished, ``model.safetensors``;
- the plots ``alignment.png`` and ``curves.png``, and the figures the run's rule declares
  (:class:`bioprop.rules.base.FigureSpec`, e.g. ``energy.png``, the microcircuit's ``apical.png``; :func:`run_files`);
- ``<name>.tmp``, briefly: each file above but the lock is written to it, flushed, renamed over ``<name>``; a failed
  write removes it (one left by a killed process is removed by the next ``resume`` or ``--overwrite``).

A file that cannot be written (a full disk, a quota, permissions) raises :class:`WriteError`: one line naming
the file and the reason, exit code 74 (``EX_IOERR``); the files already there are left as they were.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bioprop
from bioprop.errors import BioPropError

MARKER = ".bioprop-run"
MARKER_FORMAT = "bioprop-run/1"
LOCK = ".bioprop-lock"
CONFIG = "config.yaml"
METRICS = "metrics.csv"
ALIGNMENT = "alignment.csv"
TRACES = "traces.csv"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
EXAMPLE = "example.safetensors"  # recurrent networks: one test sequence run through the trained network
ALIGNMENT_PNG, CURVES_PNG, EXAMPLE_PNG = PLOTS = ("alignment.png", "curves.png", "example.png")
RUN_FILES = frozenset({MARKER, LOCK, CONFIG, METRICS, ALIGNMENT, TRACES, SUMMARY, CHECKPOINT, MODEL, EXAMPLE, *PLOTS})


def run_files() -> frozenset[str]:
    """Every name a run can write: :data:`RUN_FILES` and the figures any registered rule declares."""
    from bioprop import rules  # here: the rules are only needed to know their figures' names

    return RUN_FILES | {spec.file for name in rules.names() for spec in rules.entry(name).cls.figures}


TMP = ".tmp"
BASE_COLUMNS = ("epoch", "loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr")
ALIGNMENT_COLUMNS = ("step", "epoch", "parameter", "angle_deg")
TRACE_COLUMNS = ("epoch", "trace", "step", "value")


class WriteError(BioPropError):
    """A file of the run directory could not be written (disk full, quota, permissions, I/O error)."""

    exit_code = 74  # EX_IOERR of sysexits.h: not bad input (2), not a divergence (3)


def marked(path: Path, mark: str) -> bool:
    """Whether ``path`` is a regular file (not a link) whose first line is ``mark``: how bioprop knows a page or a
    file it wrote beside the runs (a report, the gallery, a sweep's files) from one it must not overwrite."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            first = handle.readline(len(mark.encode()) + 3)
    except OSError:
        return False
    return first.rstrip(b"\r\n") == mark.encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``<path>.tmp``, flush it to disk, then rename it over ``path``, so that ``path`` always
    holds either the old or the new contents. On any failure the temporary file is removed; an ``OSError``
    becomes a one-line :class:`WriteError` naming ``path``."""
    tmp = path.with_name(path.name + TMP)
    opened = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)  # a link there: an error
        opened = True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, or Ctrl-C / SIGTERM in the middle: never leave the .tmp behind
        if opened:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the original error says what went wrong
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write '{path}': {exc.strerror or exc}") from None
        raise


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
        raise BioPropError(f"cannot read '{path}': {exc.strerror or exc}") from None
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
        raise BioPropError(f"no {SUMMARY} in '{run_dir}'; is it a bioprop run directory?")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BioPropError(f"cannot read '{path}': {exc}") from None


# ------------------------------------------------------------------------------- owning a run directory


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``.bioprop-run`` marker, or None when there is none or it is not one bioprop wrote."""
    try:
        marker = json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):  # missing, a directory, unreadable, not UTF-8, not JSON
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def is_run_file(path: Path) -> bool:
    """Whether ``path`` is a plain file (not a link, not a folder) with the name of a file a run writes."""
    name = path.name[: -len(TMP)] if path.name.endswith(TMP) else path.name
    return name in run_files() and path.is_file() and not path.is_symlink()


def _names(names: Sequence[str], most: int = 6) -> str:
    shown = ", ".join(repr(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _check_clearable(out: Path) -> None:
    """Raise unless ``out`` is a marked run directory holding only files a run writes."""
    foreign = sorted(path.name for path in out.iterdir() if not is_run_file(path))
    if read_marker(out) is None:
        if foreign:
            raise BioPropError(f"refusing to clear '{out}': it is not a bioprop run directory (no {MARKER} marker) and "
                               f"holds {_names(foreign)}, which bioprop did not write")  # fmt: skip
        raise BioPropError(
            f"refusing to clear '{out}': it has no {MARKER} marker, so bioprop cannot prove it wrote the files there "
            f"(run directories of bioprop versions before the marker have none); delete it yourself or choose "
            f"another --out"
        )
    if foreign:
        raise BioPropError(f"refusing to clear '{out}': it holds {_names(foreign)}, which bioprop did not write")


def _check_contents(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` without ``overwrite``, and one bioprop may not clear with it."""
    if any(path.name != LOCK for path in out.iterdir()):  # a lock file alone is what a killed start leaves
        if not overwrite:
            raise BioPropError(f"output directory '{out}' is not empty; pass --overwrite or choose another --out")
        _check_clearable(out)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not a directory, is in use by another process, is not empty (without
    ``overwrite``), holds anything bioprop did not write (with it), or cannot be written. Touches nothing."""
    if out.exists() and not out.is_dir():
        raise BioPropError(f"output '{out}' exists and is not a directory")
    if out.is_dir():
        check_not_in_use(out)
        _check_contents(out, overwrite)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BioPropError(f"cannot write to '{out}': '{existing}' is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BioPropError(f"cannot write to '{out}': permission denied on '{existing}'")


def open_run(out: Path, overwrite: bool) -> RunLock:
    """Take ``out`` for a new run (after :func:`check_out_dir`): create it, hold its lock, check it again now that
    no other bioprop can change it, remove the earlier run's files (with ``overwrite``) and write the marker.
    Returns the held :class:`RunLock`; raises BioPropError (another holder, foreign files) or WriteError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create '{out}': {exc.strerror or exc}") from None
    lock = RunLock.acquire(out)
    try:
        _check_contents(out, overwrite)
        for path in list(out.iterdir()):
            if path.name != LOCK:  # only run files are left: _check_contents refused anything else
                path.unlink()
        marker = {"format": MARKER_FORMAT, "id": uuid.uuid4().hex, "created": _now(),
                  "bioprop_version": bioprop.__version__}  # fmt: skip
        write_atomic(out / MARKER, (json.dumps(marker) + "\n").encode())
    except BaseException:
        lock.release()
        raise
    return lock


def claim_run(run_dir: Path) -> RunLock:
    """Hold the lock of an existing run directory (for ``resume``) and remove the temporary files a killed
    write left there. Raises BioPropError naming the holder if another process writes to it."""
    lock = RunLock.acquire(run_dir)
    for path in list(run_dir.iterdir()):
        if path.name.endswith(TMP) and is_run_file(path):
            path.unlink(missing_ok=True)
    return lock


# ------------------------------------------------------------------------------------- one writer at a time


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2025-01-01T12:00:00+0000 (bioprop train ...)``."""
    return (f"pid {holder.get('pid')} on {holder.get('host', '?')} since {holder.get('started', '?')} "
            f"({holder.get('command', '?')})")  # fmt: skip


def _in_use(run_dir: Path, holder: dict[str, Any] | None) -> BioPropError:
    who = describe_holder(holder) if holder else "another process"
    return BioPropError(f"'{run_dir}' is in use by {who}; wait for it to end or stop it")


def _stale(holder: dict[str, Any]) -> bool:
    """A holder description whose process is gone: on this host and its pid no longer alive."""
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])


def _holder(run_dir: Path) -> tuple[bool, dict[str, Any] | None]:
    """Whether a process (this one included) holds ``run_dir``'s lock now, and the description it wrote there (None
    if it wrote none). Touches nothing."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False, None  # no lock file (or none we may read): nobody holds the run
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at close; taken only if no writer holds it
    except BlockingIOError:
        return True, _read_holder(fd)
    finally:
        os.close(fd)
    return False, None


def check_not_in_use(run_dir: Path) -> None:
    """Raise BioPropError naming the process that holds ``run_dir``'s lock, if one does. Touches nothing."""
    in_use, holder = _holder(run_dir)
    if in_use:
        raise _in_use(run_dir, holder)


def held(run_dir: Path) -> bool:
    """Whether a process (this one included) holds ``run_dir``'s lock now: what tells a run whose summary says
    ``running`` from one whose process was killed (SIGKILL, a Ray worker or a machine stopped) before it could say
    so. A lock that cannot be probed counts as not held. Touches nothing."""
    try:
        return _holder(run_dir)[0]
    except OSError:
        return False


def check_not_a_run(out: Path) -> None:
    """Refuse (BioPropError) an ``--out`` for a study, report, sweep or reproduction that is a run directory: what
    it wrote there would be files the run's own ``--overwrite`` refuses to clear. Touches nothing."""
    if (out / MARKER).exists():
        raise BioPropError(f"--out '{out}' is a run directory; give a folder of its own")


class RunLock:
    """The exclusive ``flock`` of ``<run_dir>/.bioprop-lock``, with the holder's description written in it.

    ``taken_over`` is the description left by an earlier holder that died without releasing it, else None.
    Use as a context manager or call :meth:`release`; the kernel releases it if the process dies.
    """

    def __init__(self, path: Path, fd: int, taken_over: dict[str, Any] | None) -> None:
        self.path, self.fd, self.taken_over = path, fd, taken_over

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        path = Path(run_dir) / LOCK
        holder = None
        for _ in range(100):  # a retry only while another process is between two system calls
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never a file a link points to
            except OSError as exc:
                raise WriteError(f"cannot create the lock '{path}': {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if holder is not None and not _stale(holder):
                    raise _in_use(run_dir, holder) from None
                time.sleep(0.01)  # a checker's brief shared lock, or a holder still writing its description
                continue
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and our lock: start over
                os.close(fd)
                continue
            lock = cls(path, fd, _read_holder(fd))
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                  "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}  # fmt: skip
            try:
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(me) + "\n").encode())
            except OSError as exc:
                lock.release()
                raise WriteError(f"cannot write the lock '{path}': {exc.strerror or exc}") from None
            return lock
        last = f" (it last named {describe_holder(holder)}, no longer running)" if holder else ""
        raise BioPropError(
            f"'{run_dir}' is in use: its lock '{path}' is held by a process that does not name itself{last}"
        )

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one else holds that file) and unlock."""
        if self.fd < 0:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):  # not a newer lock file of someone else
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
