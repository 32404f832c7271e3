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
    "murray2019",
    "sacramento2018",
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


def accuracy_per_epoch(config: Any) -> list[float]:
    """Train the :class:`~bioprop.config.RunConfig` ``config`` with :func:`bioprop.train.run` in a temporary folder
    (deleted after) and return its test accuracy (0–1) after each epoch, as its ``metrics.csv`` records it."""
    import tempfile

    from bioprop import train
    from bioprop.report import logs

    with tempfile.TemporaryDirectory(prefix="bioprop-reproduce-") as tmp:
        run_dir = Path(tmp) / "run"
        train.run(config, run_dir, quiet=True)
        return [float(row["test_accuracy"]) for row in logs.read_metrics(run_dir)]


def gallery_cells(record: dict[str, Any]) -> list[str]:
    """A reproduction's record as the gallery's cells: name, claim, the paper's value, ours, whether it holds (plain
    text, one line each; numbers to 4 significant digits)."""

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            text = "; ".join(f"{key} {cell(item)}" for key, item in value.items())
        elif isinstance(value, list | tuple):
            text = "[" + ", ".join(cell(item) for item in value) + "]"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        return " ".join(text.split())

    holds = "yes" if record.get("holds") is True else "no" if record.get("holds") is False else "?"
    return [cell(record.get(key)) for key in (KIND, "claim", "paper_value", "ours")] + [holds]


def gallery_row(record: dict[str, Any]) -> str:
    """One Markdown table row of a reproduction's record (:func:`gallery_cells`, ``|`` escaped)."""
    return "| " + " | ".join(text.replace("|", "\\|") for text in gallery_cells(record)) + " |"


#: The gallery page's files (:func:`gallery`) and the first line that marks them as bioprop's.
GALLERY_MD, GALLERY_HTML = "gallery.md", "gallery.html"
GALLERY_MARK = "<!-- written by bioprop reproduce --all -->"


def gallery(
    out: Path, seed: int = 0, scale: str = "default", progress: Callable[[str], None] | None = None
) -> tuple[Path, Path]:
    """Run every reproduction (:func:`names`) at ``scale`` into ``out``, then write the gallery: ``gallery.md`` (a
    table, a row per reproduction, :func:`gallery_row`, and each one's figures) and ``gallery.html`` (the same page,
    self-contained: the figures embedded as base64 PNG). A gallery file in ``out`` that bioprop did not write is
    refused before any work (:class:`BioPropError`); so is each reproduction's own foreign file, by
    :func:`reproduce`. ``progress`` gets a line per finished reproduction. Returns the two paths."""
    import html

    from bioprop.report import logs, study

    out = Path(out)
    for name in (GALLERY_MD, GALLERY_HTML):
        path = out / name
        if (path.exists() or path.is_symlink()) and not logs.marked(path, GALLERY_MARK):
            raise BioPropError(f"'{out / name}' was not written by bioprop reproduce --all; move it or use another "
                               "--out")  # fmt: skip
    records = []
    for index, name in enumerate(names(), start=1):
        record = reproduce(name, out, seed=seed, scale=scale)
        records.append(record)
        if progress is not None:
            verdict = "holds" if record["holds"] else "does NOT hold"
            progress(f"[{index}/{len(names())}] {name}: {record['seconds']:.1f} s, the claim {verdict}")
    header = "| reproduction | claim | the paper's value | ours | holds |\n|---|---|---|---|---|"
    rows = [gallery_row(record) for record in records]
    intro = f"The seed papers' headline results at scale `{scale}`, seed {seed} (`bioprop reproduce --all`)."
    md = [GALLERY_MARK, "# bioprop reproduction gallery", "", intro, "", header, *rows, ""]
    for record in records:
        md += [f"## {record[KIND]}", "", record["claim"], ""]
        md += [f"![{record[KIND]}: {figure}]({figure})" for figure in record["figures"]] + [""]
    titles = ("reproduction", "claim", "the paper's value", "ours", "holds")
    body = ["<h1>bioprop reproduction gallery</h1>", f"<p>{html.escape(intro).replace('`', '')}</p>",
            study.html_table(titles, [gallery_cells(record) for record in records], "gallery")]  # fmt: skip
    for record in records:
        body += [f"<h2>{html.escape(record[KIND])}</h2>", f"<p>{html.escape(record['claim'])}</p>"]
        body += [study.figure_html(figure, (out / figure).read_bytes()) for figure in record["figures"]]
    page = study.document("bioprop reproduction gallery", body, GALLERY_MARK)
    logs.write_atomic(out / GALLERY_MD, "\n".join(md).encode())
    logs.write_atomic(out / GALLERY_HTML, page.encode())
    return out / GALLERY_MD, out / GALLERY_HTML
