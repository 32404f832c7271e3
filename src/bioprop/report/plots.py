"""Figures of a run directory, drawn with matplotlib's Agg canvas (no pyplot, no global backend switch).

- :func:`alignment_plot`: the angle between the rule's update and backprop's, one line per weight tensor, against
  the epoch (the value before training at epoch 0), or against the step when ``alignment.csv`` exists; a dashed
  line marks 90°, where an update is orthogonal to the gradient (no better than chance). Lillicrap et al. 2016,
  Fig. 1 draws this curve for feedback alignment.
- :func:`curves_plot`: train and test accuracy and loss per epoch.
- :func:`traces_plot`: per-step traces of a rule's inner dynamics (e.g. the energy at each inference step), one
  panel per trace and one line per epoch, coloured from early (dark) to late (light); a rule's preparation phase
  (epoch 0, e.g. the microcircuit's self-predicting phase) gets its own panel.
- :func:`alignment_comparison`: several runs (e.g. one per rule) in one figure, a panel per hidden weight tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from bioprop.errors import BioPropError
from bioprop.report import logs


def _title(run_dir: Path) -> str:
    try:
        s = json.loads((run_dir / logs.SUMMARY).read_text())
        return f"{s['rule']} · {s['dataset']} · {s['arch']} · seed {s['seed']}"
    except (OSError, ValueError, KeyError):
        return run_dir.name


def _rows(run_dir: Path) -> list[dict]:
    rows = logs.read_metrics(run_dir)
    if not rows:
        raise BioPropError(f"no epochs recorded in {run_dir / logs.METRICS} yet")
    return rows


def _alignment_series(run_dir: Path) -> tuple[dict[str, tuple[list[float], list[float]]], str]:
    """Angle to backprop per parameter: against the step from ``alignment.csv`` when present, else per epoch."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    if (run_dir / logs.ALIGNMENT).is_file() and logs.read_csv(run_dir / logs.ALIGNMENT):
        for row in logs.read_csv(run_dir / logs.ALIGNMENT):
            xs, ys = series.setdefault(row["parameter"], ([], []))
            xs.append(row["step"])
            ys.append(row["angle_deg"])
        xlabel = "step"
    else:
        rows = _rows(run_dir)
        try:
            init = json.loads((run_dir / logs.SUMMARY).read_text()).get("alignment_init_deg") or {}
        except (OSError, ValueError):
            init = {}
        for key in rows[0]:
            if key.startswith("angle/"):
                name = key[6:]
                first = ([0], [init[name]]) if init.get(name) is not None else ([], [])
                series[name] = (first[0] + [r["epoch"] for r in rows], first[1] + [r[key] for r in rows])
        xlabel = "epoch"
    return series, xlabel


def alignment_plot(run_dir: str | Path) -> Path:
    """Draw ``alignment.png`` in ``run_dir`` and return its path."""
    run_dir = Path(run_dir)
    series, xlabel = _alignment_series(run_dir)
    weights = {name: xy for name, xy in series.items() if not name.endswith(".bias")} or series
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, (xs, ys) in weights.items():
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o" if len(xs) < 30 else None,
                markersize=3, label=name)  # fmt: skip
    ax.axhline(90.0, color="grey", linestyle="--", linewidth=1, label="90° (orthogonal)")
    ax.set(xlabel=xlabel, ylabel="angle to the reference gradient (degrees)", ylim=(-3, 100), title=_title(run_dir))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = run_dir / "alignment.png"
    fig.savefig(path, dpi=110)
    return path


def curves_plot(run_dir: str | Path) -> Path:
    """Draw ``curves.png`` (accuracy and loss, train and test, per epoch) in ``run_dir`` and return its path."""
    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    epochs = [row["epoch"] for row in rows]
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, what in zip(fig.subplots(1, 2), ("accuracy", "loss"), strict=True):
        for split in ("train", "test"):
            ax.plot(epochs, [row[f"{split}_{what}"] for row in rows], marker="o" if len(rows) < 30 else None,
                    markersize=3, label=split)  # fmt: skip
        ax.set(xlabel="epoch", ylabel=what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(_title(run_dir))
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=110)
    return path


def traces_plot(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Draw ``energy.png`` (or ``path``) from ``traces.csv`` in ``run_dir`` and return its path."""
    import matplotlib as mpl

    run_dir = Path(run_dir)
    rows = logs.read_csv(run_dir / logs.TRACES) if (run_dir / logs.TRACES).is_file() else []
    if not rows:
        raise BioPropError(f"no traces recorded in {run_dir / logs.TRACES}")
    panels: dict[str, dict[int, tuple[list[int], list[float]]]] = {}
    for row in rows:
        key = f"{row['trace']} (preparation)" if row["epoch"] == 0 else row["trace"]
        xs, ys = panels.setdefault(key, {}).setdefault(row["epoch"], ([], []))
        xs.append(row["step"])
        ys.append(float("nan") if row["value"] is None else row["value"])
    if "energy" in panels:  # how much of the energy inference removes, which a log scale hides as epochs pass
        panels["energy / energy at step 0"] = {
            epoch: (xs, [y / ys[0] if ys[0] else float("nan") for y in ys])
            for epoch, (xs, ys) in panels["energy"].items()
        }
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    colours = mpl.colormaps["viridis"]
    for ax, (name, by_epoch) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True):
        last = max(by_epoch)
        for epoch, (xs, ys) in sorted(by_epoch.items()):
            label = "before training" if epoch == 0 else f"epoch {epoch}"
            show = epoch in (min(by_epoch), last) or len(by_epoch) <= 6
            ax.plot(xs, ys, color=colours(0.0 if last <= 1 else (epoch - 1) / (last - 1) * 0.9),
                    label=label if show else None)  # fmt: skip
        positive = all(y > 0 for _, ys in by_epoch.values() for y in ys if y == y)
        ax.set(xlabel="step" if "preparation" in name else "inference step", ylabel=name,
               yscale="log" if positive else "linear", title=name)  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(_title(run_dir))
    out = Path(path) if path is not None else run_dir / "energy.png"
    fig.savefig(out, dpi=110)
    return out


def alignment_comparison(run_dirs: list[str | Path], path: str | Path, output_layer: bool = False) -> Path:
    """Draw, for several runs, the angle of each weight tensor's update to the rule's reference gradient, one panel
    per tensor and one line per run; returns ``path``. The last tensor is left out unless ``output_layer`` (the
    output layer gets the exact gradient in the feedforward rules, not in the contrastive ones)."""
    curves = {}
    for run_dir in map(Path, run_dirs):
        series, xlabel = _alignment_series(run_dir)
        label = json.loads((run_dir / logs.SUMMARY).read_text())["rule"]
        curves[label] = {name: xy for name, xy in series.items() if not name.endswith(".bias")}
    names = list(next(iter(curves.values())))
    names = names if output_layer else names[:-1] or names
    fig = Figure(figsize=(4.2 * len(names), 4), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        for label, series in curves.items():
            if name in series:
                ax.plot(*series[name], label=label)
        ax.axhline(90.0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel=xlabel, ylabel="angle to the reference gradient (degrees)", ylim=(-3, 100), title=name)
        ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)


def apical_plot(run_dir: str | Path) -> Path:
    """Draw ``apical.png``: left, the mean apical potential ‖v_A‖ during the microcircuit's self-predicting phase
    (``traces.csv`` rows of epoch 0, trace ``apical_norm``); right, the per-epoch ``diag/apical_norm_*`` columns of
    ``metrics.csv`` (with and without the target, one line per hidden layer). Returns its path."""
    run_dir = Path(run_dir)
    traces = logs.read_csv(run_dir / logs.TRACES) if (run_dir / logs.TRACES).is_file() else []
    phase = [(r["step"], r["value"]) for r in traces if r["epoch"] == 0 and r["trace"] == "apical_norm"]
    rows = logs.read_metrics(run_dir)
    columns = [key for key in (rows[0] if rows else {}) if key.startswith("diag/apical_norm")]
    if not phase and not columns:
        raise BioPropError(f"no apical norms recorded in {run_dir}")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    if phase:
        left.plot([s for s, _ in phase], [float("nan") if v is None else v for _, v in phase])
        left.set(yscale="log" if all(v and v > 0 for _, v in phase) else "linear")
    left.set(xlabel="step", ylabel="mean ‖v_A‖ without target", title="self-predicting phase")
    for key in columns:
        right.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o" if len(rows) < 30 else None,
                   markersize=3, label=key[5:])  # fmt: skip
    right.set(xlabel="epoch", ylabel="mean ‖v_A‖", title="during training")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if columns:
        right.legend(fontsize="small")
    fig.suptitle(_title(run_dir))
    path = run_dir / "apical.png"
    fig.savefig(path, dpi=110)
    return path
