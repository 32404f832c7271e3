"""The reproduction gallery: each seed paper's headline result, one command that writes a figure and ``NAME.json``
with our number beside the paper's (issue 13).

    bioprop reproduce --list
    bioprop reproduce lillicrap2016 --out runs/reproduce [--full]

A reproduction is a function ``run(out, seed, scale) -> dict`` registered under a name with :func:`register`, in a
module of this package (imported by :data:`MODULES`), with the paper it reproduces, the claim (one sentence) and the
paper's value (a number, or the paper's statement where it gives none). ``scale`` is one of :data:`SCALES`:
``"quick"`` (a few seconds: the tests, a first look), ``"default"`` (under a minute on one core) and ``"full"`` (the
paper's scale, where it differs). ``run`` writes its figures through :func:`figure_path` and returns JSON-able
numbers with at least ``"ours"`` (number(s) measured) and ``"holds"`` (bool: do they bear the claim out), and
``"criterion"`` (how ``holds`` is decided) by convention.

This is a thin layer over :mod:`bioprop.experiments`: :func:`reproduce` hands an
:class:`~bioprop.experiments.Experiment` of kind ``"reproduction"`` to :func:`bioprop.experiments.execute`, which
checks ``out``, refuses a file of one of its names that bioprop did not write (before any work), claims the names,
runs it, and writes ``out/NAME.json``::

    {"reproduction": NAME, "status": "finished", "paper": ..., "claim": ..., "paper_value": ..., "ours": ...,
     "holds": true, "summary": ..., "source": ..., "seed": 0, "quick": false, "scale": "default",
     "figures": [...], "seconds": ..., "torch": ..., "bioprop": ..., "machine": ..., "results": {...}}

Errors: an unknown name, scale or seed and a bad ``out`` are a one-line :class:`~bioprop.errors.BioPropError` (the
CLI's exit 2); a file that cannot be written, :class:`~bioprop.report.logs.WriteError` (exit 74).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioprop import experiments
from bioprop.errors import BioPropError

#: The modules that register reproductions, imported on first use.
MODULES: tuple[str, ...] = (
    "bellec2020",
    "bengio2015",
    "ernoult2019",
    "lillicrap2016",
    "lillicrap_santoro2019",
    "whittington_bogacz2017",
)
SCALES: tuple[str, ...] = ("quick", "default", "full")
KIND = "reproduction"
#: The keys of the record's top level that every reproduction's JSON holds (the gallery's columns).
TOP: tuple[str, ...] = ("paper", "claim", "paper_value", "ours", "holds")

Runner = Callable[[Path, int, str], dict[str, Any]]


@dataclass(frozen=True)
class Reproduction:
    """A registered reproduction: ``name`` (the CLI's NAME), ``paper`` (authors, year, venue), ``source`` (where in
    the paper), ``claim`` (the headline result, one sentence), ``paper_value`` (the paper's number or statement),
    ``summary`` (one line for ``--list``), the ``figures`` it writes (file names in ``out``) and ``run``."""

    name: str
    paper: str
    source: str
    claim: str
    paper_value: Any
    summary: str
    figures: tuple[str, ...]
    run: Runner


CATALOG = experiments.Catalog("reproduction", __name__, MODULES)


def register(
    name: str, paper: str, source: str, claim: str, paper_value: Any, summary: str, figures: tuple[str, ...]
) -> Callable[[Runner], Runner]:
    """Decorator: register ``run(out, seed, scale) -> dict`` as the reproduction ``name`` (:class:`Reproduction`)."""

    def wrap(run: Runner) -> Runner:
        CATALOG.add(name, Reproduction(name, paper, source, claim, paper_value, summary, tuple(figures), run))
        return run

    return wrap


def names() -> list[str]:
    """The registered reproductions' names, sorted."""
    return CATALOG.names()


def get(name: str) -> Reproduction:
    """The reproduction ``name``; anything else raises :class:`BioPropError` listing the known ones."""
    return CATALOG.get(name)


def experiment(name: str, scale: str = "default") -> experiments.Experiment:
    """The reproduction ``name`` at ``scale`` as an :class:`~bioprop.experiments.Experiment` of kind
    ``"reproduction"``, its paper, claim and paper's value added to what ``run`` returns and lifted with ``ours``
    and ``holds`` to the record's top level."""
    entry = get(name)
    if scale not in SCALES:
        raise BioPropError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")

    def run(out: Path, seed: int, quick: bool) -> dict[str, Any]:
        results = entry.run(out, seed, scale)
        return {"paper": entry.paper, "claim": entry.claim, "paper_value": entry.paper_value, **results}

    return experiments.Experiment(entry.name, entry.summary, f"{entry.paper}, {entry.source}", entry.figures, run,
                                  kind=KIND, top=TOP)  # fmt: skip


def figure_path(out: Path, name: str, figure: str) -> Path:
    """Where reproduction ``name`` writes its figure ``figure`` (one it declared at :func:`register`)."""
    return experiments.figure_path(out, experiment(name), figure)


def reproduce(name: str, out: Path, seed: int = 0, scale: str = "default") -> dict[str, Any]:
    """Run the reproduction ``name`` at ``scale`` into the folder ``out`` (created if missing) with ``seed``;
    returns the record written to ``out/NAME.json`` (module docstring)."""
    return experiments.execute(experiment(name, scale), out, seed, quick=scale == "quick", extra={"scale": scale})


def gallery_row(record: dict[str, Any]) -> str:
    """One Markdown table row of a reproduction's record: name, claim, the paper's value, ours, whether it holds."""

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            text = "; ".join(f"{key} {cell(item)}" for key, item in value.items())
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        return " ".join(text.split()).replace("|", "\\|")

    holds = "yes" if record.get("holds") is True else "no" if record.get("holds") is False else "?"
    return "| " + " | ".join(cell(record.get(key)) for key in (KIND, "claim", "paper_value", "ours")) + f" | {holds} |"
