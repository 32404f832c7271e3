"""The study report: ``report.md`` and a self-contained ``report.html`` rebuilt from run directories (issue 13).

    from bioprop.report.study import build_report
    build_report(["runs/demo"])                      # runs/demo/report.md and runs/demo/report.html
    build_report(["runs/a", "runs/b"], "reports")    # several folders: out is required

Which runs: each path given is a run directory or is searched, at any depth, for run directories as
:mod:`bioprop.report.tables` does (hidden directories skipped, a run reached twice counted once). A directory that
looks like a run but is not a whole one (it holds ``.bioprop-run``, ``config.yaml``, ``summary.json`` or
``metrics.csv`` but not both of ``summary.json`` and ``config.yaml``), a run whose files cannot be read or hold a
field of the wrong type (:func:`bioprop.report.tables.read_run`), a run whose status is not ``finished``
(``running``, ``interrupted``, ``diverged``, ``failed``) and a second run of the same configuration and seed are
*skipped*: the report has a line ``skipped: PATH (reason)`` for each, and nothing crashes. No run to report at all
is a one-line :class:`~bioprop.errors.BioPropError`, as is a path that does not exist or is a file.

What the report holds:

1. **Leaderboard**: the rows of :func:`bioprop.report.tables.table` over the runs kept (runs differing only in
   their seed form a row: mean ± sample std of test and best accuracy in %, final angle to the reference gradient
   per weight tensor in degrees, seconds per epoch, here to 3 significant digits), plus ``cost ÷ bp``: the row's
   mean seconds per epoch over the mean seconds per epoch of the row of :data:`BASELINE` (backprop) with the same
   data, architecture and epochs (when several such rows exist, the one whose other settings are the row's; ``–``
   when there is none).
2. **Implausibility matrix**: :func:`bioprop.report.tables.implausibility_table` of the rules present (Bengio et
   al. 2015, arXiv:1502.04156).
3. **Figures** (matplotlib Agg, 100 dpi PNG, embedded in ``report.html`` as ``data:image/png;base64`` URIs; listed
   by caption in ``report.md``): test accuracy per epoch (mean over a row's seeds, ± one std as a band); the update
   angle to the reference gradient per weight tensor over the epochs (one panel per tensor, one line per row, the
   angle before training at epoch 0); the figures each row's rule declares
   (:class:`bioprop.rules.base.FigureSpec`, drawn by :func:`bioprop.report.plots.declared_figure` for the row's
   first run: nothing here knows a rule by name); seconds per epoch per row (bars, ± std over the row's runs).
   A figure that cannot be drawn from what the runs recorded is a line ``figure not drawn: ...`` instead.

Both files start with the line :data:`MARK`. Into ``out`` (default: the one directory given; required when several
paths are given) only ``report.md`` and ``report.html`` are written (atomically); an existing file of either name
that does not start with :data:`MARK` (bioprop did not write it), or a folder or link of either name, is refused
before anything is written.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import bioprop
from bioprop import rules
from bioprop.errors import BioPropError
from bioprop.report import logs, tables

MARK = "<!-- written by bioprop report -->"  # first line of report.md and report.html: the files are ours
REPORT_MD, REPORT_HTML = "report.md", "report.html"
BASELINE = "bp"  # the cost ratio's denominator: backprop's registered name
COST = "cost ÷ bp"
SECONDS = "s/epoch"  # the column of tables.table shown with 3 significant digits here
DPI = 100
FIGURE_ERRORS = (BioPropError, OSError, ValueError, KeyError, TypeError, IndexError)  # what a bad run file raises


@dataclass
class Row:
    """One leaderboard row: its ``label`` in figures, its ``cells`` (``{column: text}``, the columns of
    :func:`tables.table` and :data:`COST`), its finished ``runs``, their mean seconds per epoch and the cost ratio."""

    label: str
    cells: dict[str, str]
    runs: list[tables.Run]
    seconds: float | None = None
    cost: float | None = None
    metrics: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)  # metrics.csv per run, once read


@dataclass
class Study:
    """What a report is built from: the leaderboard's ``header`` and ``rows``, the runs ``skipped`` (path, reason)
    and the figures (caption, PNG bytes) and notes about figures that could not be drawn."""

    header: tuple[str, ...]
    rows: list[Row]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ finding the runs


def candidates(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories, whole or not (see the module docstring), among and under ``paths``, in order, each
    resolved path once. Raises :class:`BioPropError` for no path, a path that does not exist or is a file."""
    if not paths:
        raise BioPropError("report needs at least one run directory")
    found, visited = [], set()
    for given in map(Path, paths):
        if not given.exists():
            raise BioPropError(f"run directory {str(given)!r} does not exist")
        if not given.is_dir():
            raise BioPropError(f"{str(given)!r} is not a directory of runs (a run directory holds {logs.SUMMARY} and "
                               f"{logs.CONFIG})")  # fmt: skip
        found += tables.search(given, tables.looks_like_run, visited)
    return found


def _one_line(text: str, most: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= most else text[: most - 1] + "…"


def _twin(kept: Sequence[tables.Run], run: tables.Run) -> tables.Run | None:
    """The run of ``kept`` with the configuration and seed of ``run`` (:func:`tables.group` refuses the pair)."""
    for other in kept:
        try:
            tables.group([other, run])
        except BioPropError:
            return other
    return None


def read_runs(paths: Sequence[str | Path]) -> tuple[list[tables.Run], list[tuple[Path, str]]]:
    """The finished runs among and under ``paths`` and the directories skipped with the reason (module docstring).

    Raises :class:`BioPropError` (one line) when there is no run directory at all or none is left to report."""
    kept: list[tables.Run] = []
    skipped: list[tuple[Path, str]] = []
    for folder in candidates(paths):
        reason = tables.incomplete(folder)
        if reason is not None:
            skipped.append((folder, reason))
            continue
        try:
            run = tables.read_run(folder)
        except BioPropError as exc:
            skipped.append((folder, _one_line(str(exc))))
            continue
        if not run.finished:
            status = run.summary.get("status") or "unknown"
            message = run.summary.get("message")
            skipped.append((folder, f"status {status}" + (f": {_one_line(message, 120)}" if message else "")))
            continue
        twin = _twin(kept, run)
        if twin is not None:
            skipped.append((folder, f"same configuration and seed as {str(twin.path)!r}"))
            continue
        kept.append(run)
    if not kept:
        where = ", ".join(repr(str(p)) for p in paths)
        if not skipped:
            raise BioPropError(f"no run directories in {where} (a run directory holds {logs.SUMMARY} and "
                               f"{logs.CONFIG})")  # fmt: skip
        raise BioPropError(f"no finished run to report in {where}: {tables.skipped_text(skipped)}")
    return kept, skipped


# ------------------------------------------------------------------------------------------------ leaderboard


def _seconds(runs: Sequence[tables.Run]) -> float | None:
    """Mean seconds per epoch over every epoch of ``runs`` (as :func:`tables.table` computes its s/epoch)."""
    values = [s for run in runs for s in run.summary.get("epoch_seconds") or [] if s is not None]
    return statistics.fmean(values) if values else None


def _labels(cells: Sequence[dict[str, str]]) -> list[str]:
    """Short, unique row names for legends: the rule, then whatever of dataset, arch, epochs and settings varies."""
    varying = [key for key in ("dataset", "arch", "epochs", "settings") if len({c.get(key) for c in cells}) > 1]
    labels = []
    for c in cells:
        parts = [c["rule"], *(f"{c[key]} epochs" if key == "epochs" else c[key] for key in varying)]
        label = " · ".join(p for p in parts if p and p != "–")
        labels.append(label if label not in labels else f"{label} #{labels.count(label) + 1}")
    return labels


def _baseline(row: Row, rows: Sequence[Row]) -> Row | None:
    """The :data:`BASELINE` row of the same data, arch and epochs as ``row`` (preferring equal other settings)."""
    mine = row.runs[0].settings
    same = [r for r in rows if r.runs[0].settings.get("rule") == BASELINE and r.seconds
            and all(r.runs[0].settings.get(k) == mine.get(k) for k in ("data", "arch", "epochs"))]  # fmt: skip
    if len(same) <= 1:
        return same[0] if same else None

    def others(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k != "rule" and not k.startswith(tables.RULE_OPTION)}

    equal = [r for r in same if others(r.runs[0].settings) == others(mine)]
    return equal[0] if len(equal) == 1 else None


def _duration(seconds: float) -> str:
    """Seconds with 3 significant digits below 100 s (``0.00497``, ``1.23``, ``12.3``), whole seconds above."""
    return f"{seconds:.0f}" if seconds >= 100 else f"{seconds:.3g}"


def leaderboard(runs: Sequence[tables.Run]) -> tuple[tuple[str, ...], list[Row]]:
    """The header and rows of :func:`tables.table` over ``runs`` (finished runs, at most one per configuration and
    seed) with the :data:`COST` column (module docstring)."""
    header, body = tables.table([run.path for run in runs])
    groups = tables.group(list(runs))  # the grouping table() made, in the same order
    if len(groups) != len(body):
        raise AssertionError("tables.table and tables.group disagree on the rows")
    cells = [dict(zip(header, row, strict=True)) for row in body]
    rows = [Row(label, c, g, _seconds(g)) for label, c, g in zip(_labels(cells), cells, groups, strict=True)]
    for row in rows:
        if row.seconds is not None and SECONDS in row.cells:  # tables' 2 decimals read 0.00 for a fast epoch
            row.cells[SECONDS] = _duration(row.seconds)
        base = _baseline(row, rows)
        row.cost = row.seconds / base.seconds if base is not None and row.seconds is not None else None
        row.cells[COST] = "–" if row.cost is None else f"{row.cost:.2f}"
    return (*header, COST), rows


# ---------------------------------------------------------------------------------------------------- figures


def _epoch_axis(ax: Any, epochs: Sequence[int]) -> None:
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _band(ax: Any, by_epoch: dict[int, list[float]], label: str, scale: float = 1.0) -> list[int]:
    """Plot the mean over runs per epoch (markers and line) and a ± one std band; returns the epochs drawn."""
    epochs = sorted(e for e, vs in by_epoch.items() if vs)
    means = [scale * statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [scale * statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    line = ax.plot(epochs, means, marker="o" if len(epochs) < 30 else None, markersize=4, label=label)[0]
    if any(stds):
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
    return epochs


def _metrics(row: Row, run: tables.Run) -> list[dict[str, Any]]:
    """The rows of ``run``'s metrics.csv (read once per row)."""
    if run.path not in row.metrics:
        row.metrics[run.path] = logs.read_metrics(run.path)
    return row.metrics[run.path]


def curves_figure(rows: Sequence[Row]) -> Figure:
    """Test accuracy (%) per epoch, one line per row: the mean over its runs, ± one std as a band.
    Raises :class:`BioPropError` when no run recorded a test accuracy (e.g. regression runs)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    drawn: list[int] = []
    for row in rows:
        by_epoch: dict[int, list[float]] = {}
        for run in row.runs:
            for m in _metrics(row, run):
                if _finite(m.get("test_accuracy")) and isinstance(m.get("epoch"), int):
                    by_epoch.setdefault(m["epoch"], []).append(m["test_accuracy"])
        if by_epoch:
            drawn += _band(ax, by_epoch, row.label, scale=100.0)
    if not drawn:
        raise BioPropError("no run recorded a test accuracy per epoch in metrics.csv")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Learning curves (mean over seeds, band ± 1 std)")
    _epoch_axis(ax, drawn)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _angles(row: Row, run: tables.Run) -> dict[str, dict[int, float]]:
    """``{parameter: {epoch: angle (°)}}`` from metrics.csv's ``angle/`` columns, epoch 0 the angle before training
    (``alignment_init_deg`` of summary.json)."""
    series: dict[str, dict[int, float]] = {}
    init = run.summary.get("alignment_init_deg")
    for name, value in init.items() if isinstance(init, dict) else ():
        if _finite(value):
            series.setdefault(name, {})[0] = value
    for m in _metrics(row, run):
        for key, value in m.items():
            if key.startswith("angle/") and _finite(value) and isinstance(m.get("epoch"), int):
                series.setdefault(key.removeprefix("angle/"), {})[m["epoch"]] = value
    return series


def alignment_figure(rows: Sequence[Row]) -> Figure:
    """The update's angle to the reference gradient (°) per weight tensor over the epochs: a panel per tensor
    (titled by its layer, :func:`bioprop.report.plots.layer_labels` of the first run that has it), a line per row
    (mean over its runs, band ± one std), a dashed line at 90° (orthogonal: no better than chance). Raises
    :class:`BioPropError` when no run recorded an angle."""
    from bioprop.report import plots

    per_row: list[dict[str, dict[int, list[float]]]] = []
    titles: dict[str, str] = {}
    for row in rows:
        merged: dict[str, dict[int, list[float]]] = {}
        for run in row.runs:
            series = _angles(row, run)
            for name, by_epoch in series.items():
                if name not in titles:
                    titles[name] = plots.layer_labels(run.path).get(name, name)
                for epoch, value in by_epoch.items():
                    merged.setdefault(name, {}).setdefault(epoch, []).append(value)
        per_row.append(merged)
    names = [n for n in titles if not n.endswith(".bias")] or list(titles)
    if not names:
        raise BioPropError("no run recorded an angle to the reference gradient in metrics.csv")
    columns = min(3, len(names))
    lines = math.ceil(len(names) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.8 * lines + 0.4), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        drawn, top = [], 100.0
        for row, merged in zip(rows, per_row, strict=True):
            if merged.get(name):
                drawn += _band(ax, merged[name], row.label)
                top = max(top, *(v + 5 for vs in merged[name].values() for v in vs))
        ax.axhline(90.0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="epoch (0: before training)", ylabel="angle to the reference gradient (°)",
               ylim=(-3, min(top, 183)), title=titles[name])  # fmt: skip
        _epoch_axis(ax, drawn)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    fig.suptitle("Update angle to the reference gradient per weight tensor (mean over seeds, band ± 1 std)")
    return fig


def cost_figure(rows: Sequence[Row]) -> Figure:
    """Seconds per epoch per row (bars; error bars ± one std over the row's runs' own means), the cost ratio to
    :data:`BASELINE` written above each bar that has one. Raises :class:`BioPropError` when no run timed an epoch."""
    shown = [row for row in rows if row.seconds is not None]
    if not shown:
        raise BioPropError("no run recorded its seconds per epoch (epoch_seconds in summary.json)")
    spreads = []
    for row in shown:
        means = [m for m in (_seconds([run]) for run in row.runs) if m is not None]
        spreads.append(statistics.stdev(means) if len(means) > 1 else 0.0)
    fig = Figure(figsize=(max(6.5, 1.1 * len(shown) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    places = range(len(shown))
    bars = ax.bar(places, [row.seconds for row in shown], yerr=spreads, capsize=4, color="tab:blue", alpha=0.8)
    for bar, row, spread in zip(bars, shown, spreads, strict=True):
        if row.cost is not None:  # above the error bar
            ax.annotate(f"{row.cost:.2f}× {BASELINE}", (bar.get_x() + bar.get_width() / 2, bar.get_height() + spread),
                        xytext=(0, 4), textcoords="offset points", ha="center", fontsize="small")  # fmt: skip
    slanted = len(shown) > 4
    ax.set_xticks(list(places), [row.label for row in shown], rotation=30 if slanted else 0,
                  ha="right" if slanted else "center")  # fmt: skip
    ax.set(ylabel="seconds per epoch (s)", title="Training time per epoch (mean over seeds, ± 1 std)")
    ax.grid(alpha=0.3, axis="y")
    return fig


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (:data:`DPI`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def draw(study: Study) -> None:
    """Add the figures of ``study`` (module docstring) to it, and a note for each that cannot be drawn."""

    def add(caption: str, make: Callable[[], Figure]) -> None:
        try:
            study.figures.append((caption, png(make())))
        except FIGURE_ERRORS as exc:
            study.notes.append(f"figure not drawn: {caption} ({_one_line(str(exc), 160)})")

    for row in study.rows:  # a run whose metrics.csv cannot be read is left out of the curves, not the report
        for run in row.runs:
            try:
                _metrics(row, run)
            except FIGURE_ERRORS as exc:
                row.metrics[run.path] = []
                study.notes.append(f"left out of the curves: {run.path} ({_one_line(str(exc), 160)})")
    add("Learning curves: test accuracy per epoch", lambda: curves_figure(study.rows))
    add("Update angle to the reference gradient over training, per weight tensor", lambda: alignment_figure(study.rows))
    for row in study.rows:
        study.figures += _declared(row, study.notes)
    add("Cost: seconds per epoch per row", lambda: cost_figure(study.rows))


def _declared(row: Row, notes: list[str]) -> list[tuple[str, bytes]]:
    """The figures the rule of ``row`` declares, drawn from its first run that recorded them readably (caption,
    PNG); a note in ``notes`` when no run of the row could draw them."""
    from bioprop.report import plots

    failure = None
    for run in row.runs:
        try:
            files = plots.declared_figures(run.path)
            caption = f"{row.label}: {{}}, declared by the rule (seed {run.seed}; {run.path})"
            return [(caption.format(file), png(plots.declared_figure(run.path, file))) for file in files]
        except FIGURE_ERRORS as exc:
            failure = f"{run.path}: {_one_line(str(exc), 160)}"
    notes.append(f"figure not drawn: the figures the rule of {row.label} declares ({failure})")
    return []


# ---------------------------------------------------------------------------------------------------- writing


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    rows = [[cell(c) for c in header], *([cell(c) for c in row] for row in body)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def _matrix(study: Study) -> str:
    """The implausibility matrix (Markdown) of the registered rules among the runs."""
    present = {run.summary["rule"] for row in study.rows for run in row.runs}
    names = [name for name in rules.names() if name in present]
    return tables.implausibility_table(markdown=True, names=names) if names else "No registered rule among the runs."


def _intro(study: Study, paths: Sequence[str | Path]) -> str:
    count = sum(len(row.runs) for row in study.rows)
    sources = ", ".join(f"`{p}`" for p in paths)
    return f"{count} finished runs in {len(study.rows)} rows, from {sources} (bioprop {bioprop.__version__})."


def _body(study: Study) -> list[list[str]]:
    return [[row.cells[h] for h in study.header] for row in study.rows]


def markdown(study: Study, paths: Sequence[str | Path]) -> str:
    """``report.md``: :data:`MARK`, the skipped runs, the leaderboard, the implausibility matrix, the figures'
    captions (the figures themselves are in ``report.html``)."""
    parts = [MARK, "# bioprop report", "", _intro(study, paths)]
    if study.skipped:
        parts += ["", "## Skipped runs", "", *(f"- skipped: {path} ({reason})" for path, reason in study.skipped)]
    parts += ["", "## Leaderboard", "", _leaderboard_intro(), "", _md_table(study.header, _body(study))]
    parts += ["", "## Implausibility matrix", "", _matrix(study)]
    parts += ["", "## Figures", "", "Embedded in `report.html` (next to this file):", ""]
    parts += [f"{i}. {caption}" for i, (caption, _) in enumerate(study.figures, 1)]
    parts += [f"- {note}" for note in study.notes]
    return "\n".join(parts) + "\n"


def _leaderboard_intro() -> str:
    return ("Rows group the finished runs that differ only in their seed: mean ± std over seeds of test and best "
            "accuracy (%), the final angle of each weight tensor's update to its reference gradient (°), seconds "
            f"per epoch, and {COST}: the row's seconds per epoch over those of the `{BASELINE}` row with the same "
            "data, architecture and epochs (– where there is none).")  # fmt: skip


def _inline(text: str) -> str:
    """Markdown ``code`` and ``**bold**`` of escaped text as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def html_table(header: Sequence[str], body: Sequence[Sequence[str]], css: str = "") -> str:
    """An HTML table of escaped cells (Markdown ``code`` and ``**bold**`` rendered)."""
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _markdown_html(text: str) -> str:
    """The subset of Markdown :func:`tables.implausibility_table` writes (paragraphs, ``-`` bullets, pipe tables)
    as HTML."""
    out, table, bullets = [], [], []

    def flush() -> None:
        if bullets:
            out.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()
        if table:
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
                     for line in table if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip())]  # fmt: skip
            out.append(html_table(cells[0], cells[1:], "matrix"))
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif line.startswith("- "):
            bullets.append(line[2:])
        else:
            flush()
            if line.strip():
                out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
table.matrix td { max-width: 22em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.skipped { color: #a40; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""


def figure_html(caption: str, data: bytes) -> str:
    """A PNG figure embedded as a ``data:image/png;base64`` URI, with its caption."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    text = html.escape(caption)
    return f'<figure><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def document(title: str, body: Sequence[str], mark: str = MARK) -> str:
    """A self-contained HTML page: ``mark`` (the first line, by which bioprop knows its own file), the title, the
    style inline, then ``body``'s parts."""
    return "\n".join([mark, "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style></head><body>", *body,
                      "</body></html>"]) + "\n"  # fmt: skip


def page(study: Study, paths: Sequence[str | Path]) -> str:
    """``report.html``: the same sections as :func:`markdown`, the figures as ``data:image/png;base64`` URIs, the
    style inline; nothing is fetched to view it."""
    body = ["<h1>bioprop report</h1>", f"<p>{_inline(_intro(study, paths))}</p>"]
    if study.skipped:
        items = "".join(f"<li>skipped: {html.escape(str(p))} ({html.escape(r)})</li>" for p, r in study.skipped)
        body += ['<h2 id="skipped">Skipped runs</h2>', f'<ul class="skipped">{items}</ul>']
    body += ['<h2 id="leaderboard">Leaderboard</h2>', f"<p>{_inline(_leaderboard_intro())}</p>",
             html_table(study.header, _body(study), "leaderboard")]  # fmt: skip
    body += ['<h2 id="implausibility">Implausibility matrix</h2>', _markdown_html(_matrix(study))]
    body += ['<h2 id="figures">Figures</h2>']
    body += [figure_html(caption, data) for caption, data in study.figures]
    body += [f"<p>{html.escape(note)}</p>" for note in study.notes]
    return document("bioprop report", body)


def check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file or a run directory (a report or study written into a run would make it hold
    files its own ``--overwrite`` refuses to clear), and a ``report.md`` or ``report.html`` in it that is a folder, a
    link, or a file bioprop did not write (:class:`BioPropError`, naming it). Touches nothing."""
    if out.exists() and not out.is_dir():
        raise BioPropError(f"--out {str(out)!r} is a file, not a folder")
    logs.check_not_a_run(out)
    for name in (REPORT_MD, REPORT_HTML):
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise BioPropError(f"refusing to write {str(path)!r}: it is a folder or a link (choose another --out)")
        if path.exists() and not logs.marked(path, MARK):
            raise BioPropError(f"refusing to overwrite {str(path)!r}: bioprop did not write it (choose another --out)")


def build_report(
    paths: Sequence[str | Path], out: str | Path | None = None, on_skip: Callable[[str], None] | None = None
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (module docstring) about the runs in and under ``paths`` into ``out``
    (default: the one directory given, or the folder holding it when it is itself a run) and return their paths.
    ``on_skip`` is called with each ``skipped: PATH (reason)`` line (e.g. to print it as a warning).

    Raises :class:`BioPropError` (one line) for no path, a path that does not exist or is a file, no run to report,
    several paths without ``out``, or a report file in ``out`` bioprop did not write; :class:`logs.WriteError` when
    a file cannot be written."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = list(paths)
    if out is None:
        if len(paths) != 1:
            raise BioPropError(f"--out is needed: {len(paths)} directories given, so where the report goes is unclear")
        out = Path(paths[0])
        if tables.is_run_dir(out):  # a run directory holds only what a run writes: the report goes beside it
            out = out.resolve().parent
    out = Path(out)
    runs, skipped = read_runs(paths)  # first: a DIR that is a file is named as the DIR it was given as, not as --out
    check_out(out)
    header, rows = leaderboard(runs)
    study = Study(header, rows, skipped)
    draw(study)
    for path, reason in skipped:
        if on_skip is not None:
            on_skip(f"skipped: {path} ({reason})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise logs.WriteError(f"cannot create '{out}': {exc.strerror or exc}") from None
    check_out(out)  # again: nothing appeared there while the figures were drawn
    md, web = out / REPORT_MD, out / REPORT_HTML
    logs.write_atomic(md, markdown(study, paths).encode())
    logs.write_atomic(web, page(study, paths).encode())
    return md, web
