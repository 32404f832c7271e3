"""Experiments: small, self-contained reproductions, each one command that writes its figures and a JSON of its
numbers (issue 12).

    bioprop experiment --list
    bioprop experiment variational-bound --out runs/experiments

An experiment is a function ``run(out, seed, quick) -> dict`` registered under a name with :func:`register`, in a
module of this package (imported by :data:`MODULES`). It writes its figures into ``out`` through :func:`figure_path`
(a name it declared, so that bioprop only ever writes and overwrites files it knows are its own) and returns its
numbers: JSON-able values (floats, ints, strings, lists and dicts of them; non-finite floats become ``null``).
``quick=True`` is a smaller version of the same computation, for tests and for a first look; the JSON says which.

:func:`run_experiment` checks the name and the output folder first, writes ``out/<name>.json`` with
``"status": "running"`` and the figure names (so that a run stopped half-way still owns what it wrote; Ctrl-C
marks it ``"interrupted"``), runs the experiment, and rewrites ``out/<name>.json`` with ``"status": "finished"``,
the numbers under ``"results"`` and ``"experiment"``, ``"seed"``, ``"quick"``, ``"figures"`` (those written),
``"seconds"``, ``"torch"``, ``"bioprop"``. A file in ``out`` of one of the names it would write that bioprop did
not write (no ``<name>.json`` of the same experiment, in the form bioprop writes, lists it), or a folder or link
there, is refused before any work, and nothing else in ``out`` is touched.

Other registries reuse this machinery (:mod:`bioprop.reproduce`): :func:`execute` runs any :class:`Experiment`,
whose ``kind`` is the key that names it in its record (``"experiment"`` here, ``"reproduction"`` there) and whose
``top`` lists result keys written at the record's top level instead of under ``"results"``.

Errors: an unknown name or a bad ``out`` raise :class:`~bioprop.errors.BioPropError` (the CLI's one-line error,
exit 2); a file that cannot be written, :class:`~bioprop.report.logs.WriteError` (exit 74).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioprop.errors import BioPropError

#: The modules that register experiments, imported on first use (so that ``import bioprop`` stays light).
MODULES: tuple[str, ...] = ("variational_bound", "stdp", "lateral")

Runner = Callable[[Path, int, bool], dict[str, Any]]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: ``name`` (the CLI's NAME), a one-line ``summary``, the ``source`` it reproduces
    (paper, figure or equation), the ``figures`` it writes (file names in ``out``) and its ``run`` function;
    ``kind``, the record's key naming it, and ``top``, result keys lifted to the record's top level (module
    docstring)."""

    name: str
    summary: str
    source: str
    figures: tuple[str, ...]
    run: Runner
    kind: str = "experiment"
    top: tuple[str, ...] = ()


class Catalog:
    """Named entries of one ``kind`` (``experiment``, ``reproduction``) registered by the modules ``modules`` of the
    package ``package``, which are imported on first use (so that ``import bioprop`` stays light)."""

    def __init__(self, kind: str, package: str, modules: tuple[str, ...]) -> None:
        self.kind, self.package, self.modules = kind, package, modules
        self.entries: dict[str, Any] = {}

    def add(self, name: str, entry: Any) -> None:
        """Register ``entry`` as ``name``; a name registered twice is a programming error (ValueError)."""
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self.entries[name] = entry

    def load(self) -> None:
        for module in self.modules:
            importlib.import_module(f"{self.package}.{module}")

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self.load()
        return sorted(self.entries)

    def get(self, name: str) -> Any:
        """The entry ``name``; anything else raises :class:`BioPropError` listing the known ones."""
        self.load()
        if not isinstance(name, str) or name not in self.entries:
            raise BioPropError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.entries)) or 'none'}")
        return self.entries[name]


CATALOG = Catalog("experiment", __name__, MODULES)
STATUSES = ("running", "interrupted", "finished")


def register(name: str, summary: str, source: str, figures: tuple[str, ...]) -> Callable[[Runner], Runner]:
    """Decorator: register ``run(out, seed, quick) -> dict`` as the experiment ``name``, writing ``figures``."""

    def wrap(run: Runner) -> Runner:
        CATALOG.add(name, Experiment(name, summary, source, tuple(figures), run))
        return run

    return wrap


def names() -> list[str]:
    """The registered experiments' names, sorted."""
    return CATALOG.names()


def get(name: str) -> Experiment:
    """The experiment ``name``; an unknown name raises :class:`BioPropError` listing the known ones."""
    return CATALOG.get(name)


def figure_path(out: Path, name: str | Experiment, figure: str) -> Path:
    """Where experiment ``name`` (a registered name, or an :class:`Experiment`) writes its figure ``figure`` (one it
    declared at :func:`register`)."""
    experiment = name if isinstance(name, Experiment) else get(name)
    if figure not in experiment.figures:
        raise ValueError(f"{experiment.kind} {experiment.name!r} did not declare the figure {figure!r}")
    return out / figure


def own_files(out: Path, experiment: Experiment) -> list[Path]:
    """The files :func:`run_experiment` writes for ``experiment`` in ``out``: its JSON and its figures."""
    return [out / f"{experiment.name}.json", *(out / figure for figure in experiment.figures)]


def _written_by_us(out: Path, experiment: Experiment) -> set[str]:
    """The file names an earlier run of ``experiment`` recorded in ``out/<name>.json`` (empty if there is none, or
    if that file is not such a record)."""
    record = out / f"{experiment.name}.json"
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return set()
    if (not isinstance(data, dict) or data.get(experiment.kind) != experiment.name or "bioprop" not in data
            or data.get("status") not in STATUSES or not isinstance(data.get("figures"), list)):  # fmt: skip
        return set()  # not a record of this experiment in the form bioprop writes it: the user's file
    return {record.name, *(f for f in data["figures"] if isinstance(f, str))}


def check_out(out: Path, experiment: Experiment) -> None:
    """Refuse an ``out`` that is a file or a run directory, or that holds a file of a name this experiment writes
    which an earlier run of it did not write (:class:`BioPropError`, naming the file)."""
    if out.exists() and not out.is_dir():
        raise BioPropError(f"--out {str(out)!r} is a file, not a folder")
    from bioprop.report.logs import check_not_a_run

    check_not_a_run(out)
    if not out.is_dir():
        return
    ours = _written_by_us(out, experiment)
    for path in own_files(out, experiment):
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise BioPropError(f"refusing to write {str(path)!r}: it is a folder or a link (choose another --out)")
        if path.exists() and path.name not in ours:
            raise BioPropError(f"refusing to overwrite {str(path)!r}: bioprop did not write it (choose another --out)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        return _jsonable(value.item())
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def run_experiment(name: str, out: Path, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """Run the experiment ``name`` into the folder ``out`` (created if missing) with ``seed``; returns the record
    written to ``out/<name>.json`` (module docstring)."""
    return execute(get(name), out, seed, quick)


def execute(
    experiment: Experiment, out: Path, seed: int = 0, quick: bool = False, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`run_experiment` for any :class:`Experiment`, registered here or not (another registry's entry):
    ``extra`` (JSON-able) is added to the record (claim and final) after ``"quick"``. Raises ``ValueError`` if the
    results lack a key of ``experiment.top``."""
    import torch

    import bioprop
    from bioprop.config import parse_seed
    from bioprop.report import logs

    name = experiment.name
    seed = parse_seed("--seed", seed)  # the one validator and message of bioprop train and bioprop experiment
    if not isinstance(quick, bool):
        raise BioPropError(f"quick must be True or False, not {quick!r}")
    if not isinstance(out, str | os.PathLike) or not str(out):
        raise BioPropError(f"--out must be a folder's path, not {out!r}")
    out = Path(out)
    check_out(out, experiment)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise logs.WriteError(f"cannot create '{out}': {err.strerror or err}") from None
    # Claim the names first: a run that stops after writing a figure leaves a record that says the figure is ours.
    claim = {experiment.kind: name, "status": "running", "figures": list(experiment.figures),
             "bioprop": bioprop.__version__, "seed": seed, "quick": quick, **_jsonable(extra or {})}  # fmt: skip
    logs.write_atomic(out / f"{name}.json", (json.dumps(claim, indent=2) + "\n").encode())
    started = time.perf_counter()
    try:
        results = experiment.run(out, seed, quick)
    except KeyboardInterrupt:  # Ctrl-C (the CLI turns SIGTERM into one too): the record says so, then stop
        claim["status"] = "interrupted"
        logs.write_atomic(out / f"{name}.json", (json.dumps(claim, indent=2) + "\n").encode())
        raise
    missing = [key for key in experiment.top if key not in results]
    if missing:
        raise ValueError(f"{experiment.kind} {name!r} returned no {', '.join(missing)}")
    record = {
        experiment.kind: name, "status": "finished", **{key: _jsonable(results[key]) for key in experiment.top},
        "summary": experiment.summary, "source": experiment.source, "seed": seed, "quick": quick,
        **_jsonable(extra or {}), "figures": [f for f in experiment.figures if (out / f).is_file()],
        "seconds": time.perf_counter() - started, "torch": torch.__version__, "bioprop": bioprop.__version__,
        "machine": platform.machine(),
        "results": _jsonable({key: value for key, value in results.items() if key not in experiment.top}),
    }  # fmt: skip
    logs.write_atomic(out / f"{name}.json", (json.dumps(record, indent=2) + "\n").encode())
    return record
