"""Side-by-side comparison of finished (or running) runs, read from their ``summary.json`` files.

    print(bioprop.report.compare(["runs/bp-s0", "runs/bp-s1", "runs/fa-s0"]))

Runs sharing rule, dataset and architecture are grouped (typically seeds): accuracies are then given as
mean ± standard deviation over the group, angles and seconds per epoch as means.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bioprop.errors import BioPropError
from bioprop.report import logs

HEADER = ("rule", "dataset", "arch", "runs", "epochs", "test acc (%)", "best acc (%)", "final angle to reference (°)",
          "s/epoch")  # fmt: skip


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _final_angles(group: list[dict[str, Any]]) -> str:
    """Mean over the group of each weight tensor's last measured angle (biases left out when weights exist)."""
    finals: dict[str, list[float]] = {}
    for summary in group:
        for name, values in (summary.get("alignment_deg") or {}).items():
            if values and values[-1] is not None and math.isfinite(values[-1]):
                finals.setdefault(name, []).append(values[-1])
    shown = {name: vs for name, vs in finals.items() if not name.endswith(".bias")} or finals
    return ", ".join(f"{name} {statistics.fmean(vs):.1f}" for name, vs in shown.items()) or "–"


def rows(run_dirs: Sequence[str | Path]) -> list[tuple[str, ...]]:
    """One table row per (rule, dataset, arch) group, in the order the groups first appear."""
    if not run_dirs:
        raise BioPropError("compare needs at least one run directory")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run_dir in run_dirs:
        summary = logs.read_summary(Path(run_dir))
        groups.setdefault((summary["rule"], summary["dataset"], summary["arch"]), []).append(summary)
    table = []
    for (rule, dataset, arch), group in groups.items():
        seconds = [s for summary in group for s in summary.get("epoch_seconds") or []]
        epochs = sorted({f"{g['epochs_done']}/{g['epochs']}" for g in group})
        table.append((
            rule, dataset, arch, str(len(group)), ", ".join(epochs),
            _mean_std([g.get("test_accuracy") for g in group]),
            _mean_std([g.get("best_test_accuracy") for g in group]),
            _final_angles(group),
            f"{statistics.fmean(seconds):.2f}" if seconds else "–",
        ))  # fmt: skip
    return table


def compare(run_dirs: Sequence[str | Path]) -> str:
    """A Markdown table comparing the runs in ``run_dirs`` (see the module docstring)."""
    body = rows(run_dirs)
    widths = [max(len(row[i]) for row in (HEADER, *body)) for i in range(len(HEADER))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
