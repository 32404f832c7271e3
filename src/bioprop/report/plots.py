"""Figures of a run directory, drawn with matplotlib's Agg canvas (no pyplot, no global backend switch).

Each figure has a function that builds it and returns the :class:`~matplotlib.figure.Figure` without saving
(``*_figure``, for inspection and tests) and one that saves it into the run directory as a PNG, written atomically
(``*_plot``):

- :func:`alignment_figure`: the angle between the rule's update and backprop's, one line per weight tensor, against
  the epoch (the value before training at epoch 0), or against the step when ``alignment.csv`` exists; a dashed
  line marks 90°, where an update is orthogonal to the gradient (no better than chance). Lillicrap et al. 2016,
  Fig. 1 draws this curve for feedback alignment.
- :func:`curves_figure`: train and test accuracy and loss per epoch (the train values are the running mean over
  the epoch's steps, taken while the weights change; the test values are measured after the epoch).
- :func:`traces_figure`: per-step traces of a rule's inner dynamics (e.g. the energy at each inference step), one
  panel per trace and one line per epoch, coloured from early (dark) to late (light); a rule's preparation phase
  (epoch 0, e.g. the microcircuit's self-predicting phase) gets its own panel.
- :func:`declared_figure`: a figure the run's rule declares (:class:`bioprop.rules.base.FigureSpec`), e.g. the
  microcircuit's ``apical.png``: its traces per epoch, its preparation phase, its diagnostics per epoch. The report
  knows no rule by name: it draws what the rule declares.
- :func:`alignment_comparison_figure`: several runs (e.g. one per rule) in one figure, a panel per weight tensor.

Every title names the rule, dataset and architecture; weight tensors are named by their layer and shape
(:func:`layer_labels`: ``hidden 1, 784→256``, ``output, 256→10``, ``conv 1, 1→6 (5×5)``); step and epoch axes have
ticks at integers only, however few the epochs (an epoch axis spans first − ½ to last + ½). A value axis (energy,
‖v_A‖) is logarithmic only when its positive values span at least a decade; otherwise it is linear, with plain
decimal tick labels (no ``×10⁻¹``, no offset).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from bioprop import nets
from bioprop.errors import BioPropError
from bioprop.report import logs

TRAIN_LABEL = "train (running mean over the epoch)"
TEST_LABEL = "test (after the epoch)"
SAFETENSORS_HEADER_MAX = 1 << 26  # bytes; a larger header is not a weights file of ours


# ------------------------------------------------------------------------------------- what a run is called


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load((run_dir / logs.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def run_title(run_dir: str | Path) -> str:
    """``"<rule> · <dataset> · <arch> · seed <seed>"`` from ``summary.json`` (else ``config.yaml``), else the
    directory's name."""
    run_dir = Path(run_dir)
    about = {**_read_config(run_dir), **_read_json(run_dir / logs.SUMMARY)}
    if "dataset" not in about and "data" in about:
        about["dataset"] = about["data"]
    if not {"rule", "dataset", "arch"} <= set(about):
        return run_dir.name
    seed = f" · seed {about['seed']}" if "seed" in about else ""
    return f"{about['rule']} · {about['dataset']} · {about['arch']}{seed}"


def _order(name: str) -> tuple[tuple[int, Any], ...]:
    """Sort key putting ``2.weight`` before ``10.weight``: the modules' order in the network."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in name.split("."))


def _header_shapes(path: Path, prefix: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of the tensors named ``prefix<name>`` in a safetensors file, read from its JSON header
    alone (no tensor is loaded); empty when the file is missing or not safetensors."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= SAFETENSORS_HEADER_MAX:
                return []
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return []
    shapes = [(key[len(prefix):], tuple(entry["shape"])) for key, entry in header.items()
              if key.startswith(prefix) and isinstance(entry, dict) and "shape" in entry]  # fmt: skip
    return sorted(shapes, key=lambda item: _order(item[0]))


def parameter_shapes(run_dir: str | Path) -> list[tuple[str, tuple[int, ...]]]:
    """The network's ``(parameter name, shape)`` in forward order: rebuilt on the ``meta`` device (nothing is
    allocated) from ``config.yaml`` and the ``in_shape`` and ``n_classes`` in ``summary.json``, else read from the
    header of ``model.safetensors`` or ``checkpoint.safetensors``; empty when none of these is there."""
    run_dir = Path(run_dir)
    config, summary = _read_config(run_dir), _read_json(run_dir / logs.SUMMARY)
    if "arch" in config and summary.get("in_shape") and summary.get("n_classes"):
        try:
            with torch.device("meta"):
                net = nets.build(config["arch"], summary["in_shape"], summary["n_classes"],
                                 config.get("activation", "auto"))  # fmt: skip
            return [(name, tuple(p.shape)) for name, p in net.named_parameters()]
        except (BioPropError, TypeError, ValueError, RuntimeError):
            pass  # a config this version cannot build: the weights files say the same
    for file, prefix in ((logs.MODEL, ""), (logs.CHECKPOINT, "model.")):
        shapes = _header_shapes(run_dir / file, prefix)
        if shapes:
            return shapes
    return []


def describe_layers(shapes: Sequence[tuple[str, Sequence[int]]]) -> dict[str, str]:
    """Readable names of the weight tensors (and their biases) of a network given its ``(name, shape)`` in forward
    order: a convolution's ``(out, in, kh, kw)`` weight is ``conv k, in→out (kh×kw)``; a linear ``(out, in)``
    weight is ``output, in→out`` when it is the last layer, else ``hidden k, in→out`` (``fc k`` after
    convolutions); a bias is its layer's name with `` (bias)``."""
    weights = [(name, tuple(shape)) for name, shape in shapes if name.endswith("weight") and len(shape) in (2, 4)]
    has_conv = any(len(shape) == 4 for _, shape in weights)
    labels: dict[str, str] = {}
    counts = {"conv": 0, "linear": 0}
    roles = {"input.weight": "input", "recurrent.weight": "recurrent", "readout.weight": "readout"}
    for index, (name, shape) in enumerate(weights):
        if name in roles:  # a recurrent network (bioprop.nets.recurrent): W_in, W_rec, W_out by their roles
            text = f"{roles[name]}, {shape[1]}→{shape[0]}"
        elif len(shape) == 4:
            counts["conv"] += 1
            text = f"conv {counts['conv']}, {shape[1]}→{shape[0]} ({shape[2]}×{shape[3]})"
        elif index == len(weights) - 1:
            text = f"output, {shape[1]}→{shape[0]}"
        else:
            counts["linear"] += 1
            text = f"{'fc' if has_conv else 'hidden'} {counts['linear']}, {shape[1]}→{shape[0]}"
        labels[name] = text
        labels[name.removesuffix("weight") + "bias"] = f"{text} (bias)"
    return labels


def layer_labels(run_dir: str | Path) -> dict[str, str]:
    """Readable layer names of a run's parameters (see :func:`describe_layers`); a parameter the run's files do not
    describe keeps its name."""
    return describe_layers(parameter_shapes(run_dir))


# ---------------------------------------------------------------------------------------------- drawing


def _integer_x(ax: Axes) -> None:
    """Epochs and steps are counts: ticks only at integers, even when the axis holds a single one (matplotlib's
    default asks for two integers in view before it keeps to integers)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _epoch_x(ax: Axes, epochs: Sequence[int]) -> None:
    """An epoch axis: from the first epoch − ½ to the last + ½, ticks at integers only."""
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    _integer_x(ax)


def _count_x(ax: Axes, xlabel: str, xs: Sequence[int]) -> None:
    """An ``epoch`` axis (:func:`_epoch_x`) or a ``step`` axis (integer ticks)."""
    if xlabel == "epoch":
        _epoch_x(ax, xs)
    else:
        _integer_x(ax)


def _value_y(ax: Axes, values: Sequence[float | None]) -> None:
    """A logarithmic y axis when the finite values are all positive and span at least a decade (max ≥ 10 min);
    else a linear one with plain decimal tick labels, without scientific notation or an offset."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) >= 10 * min(finite):
        ax.set_yscale("log")
        return
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    ax.yaxis.set_major_formatter(formatter)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (see :func:`~bioprop.report.logs.write_atomic`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    logs.write_atomic(Path(path), buffer.getvalue())
    return Path(path)


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
            ys.append(float("nan") if row["angle_deg"] is None else row["angle_deg"])
        return series, "step"
    rows = _rows(run_dir)
    init = _read_json(run_dir / logs.SUMMARY).get("alignment_init_deg") or {}
    for key in rows[0]:
        if key.startswith("angle/"):
            name = key[6:]
            first = ([0], [init[name]]) if init.get(name) is not None else ([], [])
            ys = [float("nan") if r[key] is None else r[key] for r in rows]
            series[name] = (first[0] + [r["epoch"] for r in rows], first[1] + ys)
    return series, "epoch"


def _weights_only(series: dict[str, Any]) -> dict[str, Any]:
    return {name: xy for name, xy in series.items() if not name.endswith(".bias")} or series


def alignment_figure(run_dir: str | Path) -> Figure:
    """The update angle to the reference gradient per weight tensor (see the module docstring)."""
    run_dir = Path(run_dir)
    series, xlabel = _alignment_series(run_dir)
    labels = layer_labels(run_dir)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, (xs, ys) in _weights_only(series).items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=labels.get(name, name))
    ax.axhline(90.0, color="grey", linestyle="--", linewidth=1, label="90° (orthogonal)")
    ax.set(xlabel=xlabel, ylabel="angle to the reference gradient (degrees)", ylim=(-3, 100),
           title=run_title(run_dir))  # fmt: skip
    _count_x(ax, xlabel, [x for xs, _ in series.values() for x in xs])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def alignment_plot(run_dir: str | Path) -> Path:
    """Draw ``alignment.png`` (:func:`alignment_figure`) in ``run_dir`` and return its path."""
    return save(alignment_figure(run_dir), Path(run_dir) / logs.ALIGNMENT_PNG)


def curves_figure(run_dir: str | Path) -> Figure:
    """Accuracy and loss per epoch, train (a running mean over the epoch) and test (after the epoch); the loss is the
    run's one output loss, named on its axis (``loss_label`` in summary.json). A regression run (float targets, no
    accuracy) has the loss panel only."""
    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    epochs = [row["epoch"] for row in rows]
    loss = _read_json(run_dir / logs.SUMMARY).get("loss_label") or "loss"  # the run's one output loss
    accuracies = [row.get("test_accuracy") for row in rows]
    regression = bool(rows) and all(v is None or (isinstance(v, float) and math.isnan(v)) for v in accuracies)
    panels = ("loss",) if regression else ("accuracy", "loss")  # float targets (regression) have no accuracy
    fig = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, what in zip([axes] if len(panels) == 1 else axes, panels, strict=True):
        for split, label in (("train", TRAIN_LABEL), ("test", TEST_LABEL)):
            ax.plot(epochs, [row[f"{split}_{what}"] for row in rows], marker="o" if len(rows) < 30 else None,
                    markersize=3, label=label)  # fmt: skip
        ax.set(xlabel="epoch", ylabel=loss if what == "loss" else what, title=loss if what == "loss" else what)
        _epoch_x(ax, epochs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(run_title(run_dir))
    return fig


def curves_plot(run_dir: str | Path) -> Path:
    """Draw ``curves.png`` (:func:`curves_figure`) in ``run_dir`` and return its path."""
    return save(curves_figure(run_dir), Path(run_dir) / logs.CURVES_PNG)


def _run_rule(run_dir: Path) -> Any:
    """The rule class of the run in ``run_dir`` (from summary.json, else config.yaml), or None if unknown."""
    from bioprop import rules  # here: the report reads rules' declarations only when it draws their figures

    name = {**_read_config(run_dir), **_read_json(run_dir / logs.SUMMARY)}.get("rule")
    return rules.entry(name).cls if isinstance(name, str) and name in rules.names() else None


def _trace_rows(run_dir: Path) -> list[dict]:
    return logs.read_csv(run_dir / logs.TRACES) if (run_dir / logs.TRACES).is_file() else []


def _trace_panels(rows: list[dict], names: Sequence[str] | None, declared: Sequence[Any]) -> dict[str, dict]:
    """Per trace (those in ``names``, else all recorded), its values per epoch, ``{title: {epoch: (xs, ys)}}``; a
    preparation phase (epoch 0) is a panel of its own; a trace declared ``relative`` gets a second panel of its
    value over its value at step 0 (how much of it the dynamics remove, which a log scale hides)."""
    panels: dict[str, dict[int, tuple[list[int], list[float]]]] = {}
    for row in rows:
        if names is not None and row["trace"] not in names:
            continue
        key = f"{row['trace']} (preparation)" if row["epoch"] == 0 else row["trace"]
        xs, ys = panels.setdefault(key, {}).setdefault(row["epoch"], ([], []))
        xs.append(row["step"])
        ys.append(float("nan") if row["value"] is None else row["value"])
    for trace in declared:
        if trace.relative and trace.name in panels:
            panels[f"{trace.name} / {trace.name} at step 0"] = {
                epoch: (xs, [y / ys[0] if ys[0] else float("nan") for y in ys])
                for epoch, (xs, ys) in panels[trace.name].items()
            }
    return panels


def _draw_trace_panel(
    ax: Axes,
    name: str,
    by_epoch: dict[int, tuple[list[int], list[float]]],
    ylabel: str = "",
    steps: str = "inference step",
) -> None:
    import matplotlib as mpl

    colours, last = mpl.colormaps["viridis"], max(by_epoch)
    for epoch, (xs, ys) in sorted(by_epoch.items()):
        label = "before training" if epoch == 0 else f"epoch {epoch}"
        show = epoch in (min(by_epoch), last) or len(by_epoch) <= 6
        ax.plot(xs, ys, color=colours(0.0 if last <= 1 else (epoch - 1) / (last - 1) * 0.9),
                label=label if show else None)  # fmt: skip
    ax.set(xlabel="step" if "preparation" in name else steps, ylabel=ylabel or name, title=name)
    _value_y(ax, [y for _, ys in by_epoch.values() for y in ys])
    _integer_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def traces_figure(run_dir: str | Path) -> Figure:
    """Every per-step trace of ``traces.csv`` (see the module docstring), with the relative panels the run's rule
    declares (:class:`bioprop.rules.base.Trace`)."""
    run_dir = Path(run_dir)
    rows = _trace_rows(run_dir)
    if not rows:
        raise BioPropError(f"no traces recorded in {run_dir / logs.TRACES}")
    rule = _run_rule(run_dir)
    panels = _trace_panels(rows, None, rule.trace_specs if rule is not None else ())
    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    labels = {t.name: t.label for t in (rule.trace_specs if rule is not None else ())}
    step_axes = {t.name: t.steps for t in (rule.trace_specs if rule is not None else ())}
    for ax, (name, by_epoch) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True):
        _draw_trace_panel(ax, name, by_epoch, labels.get(name, ""), step_axes.get(name, "inference step"))
    fig.suptitle(run_title(run_dir))
    return fig


def diagnostic_label(column: str, specs: Sequence[Any]) -> str:
    """The legend text of a ``metrics.csv`` column ``diag/<name>``: the label of the first declared
    :class:`~bioprop.rules.base.Diagnostic` whose pattern matches ``<name>``, formatted with its groups; other
    columns are returned as they are."""
    name = column.removeprefix("diag/")
    for spec in specs:
        match = re.fullmatch(spec.pattern, name)
        if match is not None:
            return spec.label.format(**match.groupdict())
    return column


def declared_figures(run_dir: str | Path) -> list[str]:
    """The files of the figures the run's rule declares (:class:`~bioprop.rules.base.FigureSpec`) for which the run
    directory records something to draw."""
    run_dir = Path(run_dir)
    rule = _run_rule(run_dir)
    if rule is None:
        return []
    rows, metrics = _trace_rows(run_dir), logs.read_metrics(run_dir) or [{}]
    found = []
    for spec in rule.figures:
        traces = any(r["trace"] in spec.traces and r["epoch"] > 0 for r in rows)
        preparation = any(r["trace"] == spec.preparation and r["epoch"] == 0 for r in rows)
        patterns = [rule.diagnostic_specs[i].pattern for i in spec.diagnostics]
        diagnostics = any(re.fullmatch(p, key.removeprefix("diag/")) for key in metrics[0] for p in patterns)
        if traces or preparation or diagnostics:
            found.append(spec.file)
    return found


def declared_figure(run_dir: str | Path, file: str) -> Figure:
    """The figure ``file`` the run's rule declares (:class:`~bioprop.rules.base.FigureSpec`): a panel per declared
    trace (one line per epoch), a panel of the preparation trace (titled with the spec's title) and a panel of the
    declared diagnostics per epoch (one line per matching ``diag/`` column, labelled by
    :func:`diagnostic_label`), each panel drawn when the run recorded its data.

    Raises :class:`BioPropError` when the run's rule declares no such figure or nothing of it was recorded."""
    run_dir = Path(run_dir)
    rule = _run_rule(run_dir)
    spec = next((f for f in (rule.figures if rule is not None else ()) if f.file == file), None)
    if spec is None:
        raise BioPropError(f"the rule of the run in '{run_dir}' declares no figure {file!r}")
    rows = _trace_rows(run_dir)
    panels = _trace_panels([r for r in rows if r["epoch"] > 0], spec.traces, rule.trace_specs) if spec.traces else {}
    phase = [(r["step"], r["value"]) for r in rows if r["epoch"] == 0 and r["trace"] == spec.preparation]
    metrics = logs.read_metrics(run_dir)
    diag_specs = [rule.diagnostic_specs[i] for i in spec.diagnostics]
    columns = [key for key in (metrics[0] if metrics else {})
               if any(re.fullmatch(d.pattern, key.removeprefix("diag/")) for d in diag_specs)]  # fmt: skip
    if not panels and not phase and not columns:
        raise BioPropError(f"nothing of {file} is recorded in '{run_dir}'")
    labels = {t.name: t.label for t in rule.trace_specs}
    step_axes = {t.name: t.steps for t in rule.trace_specs}
    count = len(panels) + bool(spec.preparation) + bool(spec.diagnostics)
    fig = Figure(figsize=(5.5 * count, 4.2), layout="constrained")
    axes = list(fig.subplots(1, count, squeeze=False)[0])
    for name, by_epoch in panels.items():
        _draw_trace_panel(axes.pop(0), name, by_epoch, labels.get(name, ""), step_axes.get(name, "inference step"))
    if spec.preparation:
        ax = axes.pop(0)
        if phase:
            ax.plot([s for s, _ in phase], [float("nan") if v is None else v for _, v in phase])
            _value_y(ax, [v for _, v in phase])
        ax.set(xlabel="step", ylabel=labels.get(spec.preparation, spec.preparation), title=spec.title)
        _integer_x(ax)
        ax.grid(alpha=0.3)
    if spec.diagnostics:
        ax = axes.pop(0)
        for key in columns:
            ax.plot([r["epoch"] for r in metrics], [r[key] for r in metrics],
                    marker="o" if len(metrics) < 30 else None, markersize=3,
                    label=diagnostic_label(key, rule.diagnostic_specs))  # fmt: skip
        ax.set(xlabel="epoch", ylabel=spec.ylabel, title="during training")
        _epoch_x(ax, [r["epoch"] for r in metrics] if columns else [])
        ax.grid(alpha=0.3)
        if columns:
            ax.legend(fontsize="small")
    fig.suptitle(run_title(run_dir))
    return fig


def declared_plot(run_dir: str | Path, file: str) -> Path:
    """Draw :func:`declared_figure` ``file`` into ``run_dir`` and return its path."""
    return save(declared_figure(run_dir, file), Path(run_dir) / file)


def _joined(values: Sequence[Any]) -> str:
    """Distinct values in order of first appearance, comma-separated."""
    return ", ".join(dict.fromkeys(str(v) for v in values))


EXACT_DEG = 1e-3  # an angle below this is rounding: the update is the exact gradient


def _exact_everywhere(name: str, curves: Any) -> bool:
    values = [y for series in curves if name in series for y in series[name][1]]
    return bool(values) and all(y is not None and math.isfinite(y) and y < EXACT_DEG for y in values)


def alignment_comparison_figure(run_dirs: Sequence[str | Path], output_layer: bool = False) -> Figure:
    """Several runs' update angle to their reference gradient, one panel per weight tensor (named after the first
    run's layers) and one line per run. A tensor whose update is exact in every run at every point (all angles
    below :data:`EXACT_DEG`, e.g. the output layer under feedback alignment and backprop) is left out, as it has
    nothing to compare, unless ``output_layer``: this is measured, not known by rule. The runs must all be measured
    per step or all per epoch."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise BioPropError("alignment comparison needs at least one run directory")
    curves, xlabels, about = {}, set(), []
    for run_dir in run_dirs:
        series, xlabel = _alignment_series(run_dir)
        xlabels.add(xlabel)
        summary = _read_json(run_dir / logs.SUMMARY)
        about.append(summary)
        label = str(summary.get("rule", run_dir.name))
        curves[label if label not in curves else f"{label} ({run_dir.name})"] = _weights_only(series)
    if len(xlabels) > 1:
        raise BioPropError("cannot draw runs measured per step (probe_every) and per epoch in one figure")
    xlabel, labels = xlabels.pop(), layer_labels(run_dirs[0])
    names = list(next(iter(curves.values())))
    if not output_layer:
        names = [n for n in names if not _exact_everywhere(n, curves.values())] or names
    fig = Figure(figsize=(4.2 * len(names), 4), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        for label, series in curves.items():
            if name in series:
                ax.plot(*series[name], label=label)
        ax.axhline(90.0, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel=xlabel, ylabel="angle to the reference gradient (degrees)", ylim=(-3, 100),
               title=labels.get(name, name))  # fmt: skip
        _count_x(ax, xlabel, [x for series in curves.values() if name in series for x in series[name][0]])
        ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle(" · ".join(_joined([s.get(key, "?") for s in about]) for key in ("rule", "dataset", "arch")))
    return fig


def alignment_comparison(run_dirs: Sequence[str | Path], path: str | Path, output_layer: bool = False) -> Path:
    """Draw :func:`alignment_comparison_figure` into ``path``; returns ``path``."""
    return save(alignment_comparison_figure(run_dirs, output_layer), path)


# ------------------------------------------------------------------------------ one sequence (recurrent networks)


def example_figure(run_dir: str | Path) -> Figure:
    """One test sequence through the trained recurrent network (``example.safetensors``): the input (a spike raster
    or the values), the hidden layer (spike raster, or the rate units' activity), the membrane potential v and the
    threshold A of a few neurons (spiking networks), and the readout against the target over time (steps)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    tensors = {key: value.numpy() for key, value in load_file(run_dir / logs.EXAMPLE).items()}
    x, target = tensors["input"], tensors["target"]
    readout = tensors["state.y"]
    spiking = "state.z" in tensors
    rows = 4 if spiking else 3
    fig = Figure(figsize=(8, 2.1 * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True)
    steps = range(x.shape[0])

    def raster(ax: Axes, values: Any, label: str) -> None:
        times, units = values.nonzero()
        ax.scatter(times, units, s=max(1.5, 60.0 / values.shape[1]), marker="|", color="black")
        ax.set_ylabel(label)
        ax.set_ylim(-0.5, values.shape[1] - 0.5)

    binary = bool(((x == 0) | (x == 1)).all())
    if binary:
        raster(axes[0], x, "input channel")
    else:
        axes[0].imshow(x.T, aspect="auto", interpolation="nearest", cmap="viridis")
        axes[0].set_ylabel("input channel")
    axes[0].set_title(run_title(run_dir) + ": one test sequence", fontsize=9)
    if spiking:
        raster(axes[1], tensors["state.z"], "neuron (spikes)")
        potential, threshold = tensors["state.v"], tensors["state.A"]
        shown = list(range(min(3, potential.shape[1])))
        if potential.shape[1] > 3:  # the last neuron too: an ALIF one in an lsnn net
            shown.append(potential.shape[1] - 1)
        for unit in shown:
            line = axes[2].plot(steps, potential[:, unit], linewidth=0.8, label=f"v, neuron {unit}")[0]
            axes[2].plot(steps, threshold[:, unit], linestyle="--", linewidth=0.8, color=line.get_color())
        axes[2].set_ylabel("membrane v (solid),\nthreshold A (dashed)")
        axes[2].legend(fontsize=7, loc="upper right", ncols=len(shown))
    else:
        axes[1].imshow(tensors["state.h"].T, aspect="auto", interpolation="nearest", cmap="coolwarm", vmin=-1, vmax=1)
        axes[1].set_ylabel("unit (activity h)")
    ax = axes[-1]
    for k in range(readout.shape[1]):
        line = ax.plot(steps, readout[:, k], linewidth=0.9, label=f"readout {k}")[0]
        if target.ndim == 2:
            ax.plot(steps, target[:, k], linestyle=":", color=line.get_color(), label=f"target {k}")
    if target.ndim == 1:  # labels, −1 where a step has no target
        counted = target >= 0
        if counted.any():
            first = int(counted.argmax())
            ax.axvspan(first, len(target) - 1, color="0.9", zorder=0, label=f"target: class {int(target[counted][-1])}")
    ax.set_ylabel("readout y")
    ax.set_xlabel("time step")
    ax.legend(fontsize=7, loc="upper left", ncols=min(readout.shape[1] + 1, 4))
    return fig


def example_plot(run_dir: str | Path) -> Path:
    return save(example_figure(run_dir), Path(run_dir) / logs.EXAMPLE_PNG)
