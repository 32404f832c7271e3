"""Figures, checked as objects: titles name rule, dataset and arch; panels and lines name layers by their shape;
epoch and step axes have integer ticks; the train accuracy says it is a running mean.

Expected layer shapes are worked out here by hand (e.g. 28·28 = 784 inputs; LeNet's convolutions 1→6→16→120 with
5×5 kernels; a 28×28 image after two 5×5 valid convolutions each pooled 2×2 is 4×4). Tick labels are read after
drawing, from the ticks inside the axis's view limits (matplotlib draws no others): an epoch axis of epochs a..b
must show only integers from a to b; a value axis whose values span under a decade, only plain decimals.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from matplotlib.figure import Figure

from bioprop import train
from bioprop.errors import BioPropError
from bioprop.report import plots
from conftest import tiny_config


def texts(items) -> list[str]:
    return [item.get_text() for item in items]


def legend_texts(ax) -> list[str]:
    return texts(ax.get_legend().get_texts())


def integer_ticks(ax) -> bool:
    ticks = ax.get_xticks()
    return len(ticks) > 0 and all(float(t).is_integer() for t in ticks)


def shown_tick_labels(axis) -> list[str]:
    """The non-empty labels, major and minor, of the ticks an axis draws: those inside its view limits."""
    axis.figure.draw_without_rendering()
    low, high = sorted(axis.get_view_interval())
    shown = []
    for minor in (False, True):
        for loc, label in zip(axis.get_ticklocs(minor=minor), axis.get_ticklabels(minor=minor), strict=True):
            if low <= loc <= high and label.get_text():
                shown.append(label.get_text())
    return shown


def number(label: str) -> float:
    return float(label.replace("\N{MINUS SIGN}", "-"))


PLAIN_DECIMAL = re.compile(r"[\N{MINUS SIGN}-]?\d+(\.\d+)?")  # 0.926, 12, −3.5; not 9.26×10⁻¹, 1e-3 or mathtext


def titled(fig: Figure, *words: str) -> bool:
    title = fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title()
    return all(word in title for word in words)


def hand_run(path: Path, arch: str, in_shape: list[int] | None = None, rule: str = "fa") -> Path:
    """A run directory with a config.yaml, and a summary.json recording the data's shape when ``in_shape``."""
    path.mkdir(parents=True)
    config = tiny_config(rule=rule, arch=arch, data="fashion-mnist").to_dict()
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"rule": rule, "dataset": "fashion-mnist", "arch": arch, "seed": 0}
    if in_shape is not None:
        summary |= {"in_shape": in_shape, "n_classes": 10}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------------ layer names


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("mlp:256x128", {"1.weight": "hidden 1, 784→256", "3.weight": "hidden 2, 256→128",
                         "5.weight": "output, 128→10", "5.bias": "output, 128→10 (bias)"}),
        ("lenet", {"0.weight": "conv 1, 1→6 (5×5)", "3.weight": "conv 2, 6→16 (5×5)",
                   "6.weight": "conv 3, 16→120 (5×5)", "9.weight": "fc 1, 120→84", "10.weight": "output, 84→10"}),
        ("ebm:512", {"synapses.0.weight": "hidden 1, 784→512", "synapses.1.weight": "output, 512→10"}),
        ("ebm-conv:16x32", {"synapses.0.weight": "conv 1, 1→16 (5×5)", "synapses.1.weight": "conv 2, 16→32 (5×5)",
                            "synapses.2.weight": "output, 512→10"}),  # 32 channels × 4 × 4
    ],
)  # fmt: skip
def test_layers_named_from_the_config_and_the_recorded_data_shape(tmp_path: Path, arch: str, expected: dict) -> None:
    labels = plots.layer_labels(hand_run(tmp_path / "run", arch, in_shape=[1, 28, 28]))
    assert {name: labels.get(name) for name in expected} == expected


def test_layers_named_from_the_weights_files_when_the_shape_is_not_recorded(tmp_path: Path, finished_run: Path) -> None:
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))  # mlp:32 on 8×8 digits: 64 inputs
    summary = json.loads((run / "summary.json").read_text())
    for key in ("in_shape", "n_classes"):
        summary.pop(key, None)
    (run / "summary.json").write_text(json.dumps(summary))
    expected = {"1.weight": "hidden 1, 64→32", "3.weight": "output, 32→10"}
    assert {k: plots.layer_labels(run).get(k) for k in expected} == expected  # model.safetensors
    (run / "model.safetensors").unlink()
    assert {k: plots.layer_labels(run).get(k) for k in expected} == expected  # checkpoint.safetensors
    (run / "checkpoint.safetensors").unlink()
    assert plots.layer_labels(run) == {}  # nothing describes the layers: the figures keep parameter names
    assert "1.weight" in legend_texts(plots.alignment_figure(run).axes[0])


def test_describe_layers_numbers_layers_of_each_kind() -> None:
    shapes = [("a.weight", (8, 3, 3, 3)), ("a.bias", (8,)), ("b.weight", (4, 8, 1, 1)), ("c.weight", (20, 64)),
              ("d.weight", (30, 20)), ("e.weight", (5, 30))]  # fmt: skip
    assert plots.describe_layers(shapes) == {
        "a.weight": "conv 1, 3→8 (3×3)", "a.bias": "conv 1, 3→8 (3×3) (bias)",
        "b.weight": "conv 2, 8→4 (1×1)", "b.bias": "conv 2, 8→4 (1×1) (bias)",
        "c.weight": "fc 1, 64→20", "c.bias": "fc 1, 64→20 (bias)",
        "d.weight": "fc 2, 20→30", "d.bias": "fc 2, 20→30 (bias)",
        "e.weight": "output, 30→5", "e.bias": "output, 30→5 (bias)",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------- the figures


def test_alignment_and_curves_of_a_real_run(finished_run: Path) -> None:
    fig = plots.alignment_figure(finished_run)
    [ax] = fig.axes
    assert titled(fig, "fa", "digits", "mlp:32")
    assert legend_texts(ax) == ["hidden 1, 64→32", "output, 32→10", "90° (orthogonal)"]
    assert ax.get_xlabel() == "epoch" and integer_ticks(ax)  # epochs 0 (before training), 1, 2
    fig = plots.curves_figure(finished_run)
    assert titled(fig, "fa", "digits", "mlp:32")
    for ax in fig.axes:
        assert legend_texts(ax) == ["train (running mean over the epoch)", "test (after the epoch)"]
        assert ax.get_xlabel() == "epoch" and integer_ticks(ax)


def test_alignment_per_step_and_the_comparison_figure(tmp_path: Path, finished_run: Path) -> None:
    bp = tmp_path / "bp"
    train.run(tiny_config(rule="bp", epochs=1, probe_every=2), bp, quiet=True)
    fig = plots.alignment_figure(bp)
    assert fig.axes[0].get_xlabel() == "step" and integer_ticks(fig.axes[0]) and titled(fig, "bp", "digits")
    fa = tmp_path / "fa"
    train.run(tiny_config(rule="fa", epochs=1, probe_every=2), fa, quiet=True)
    fig = plots.alignment_comparison_figure([fa, bp], output_layer=True)
    assert titled(fig, "fa, bp", "digits", "mlp:32")
    assert texts(ax.title for ax in fig.axes) == ["hidden 1, 64→32", "output, 32→10"]
    assert legend_texts(fig.axes[-1]) == ["fa", "bp"] and all(integer_ticks(ax) for ax in fig.axes)
    assert texts(ax.title for ax in plots.alignment_comparison_figure([fa, bp]).axes) == ["hidden 1, 64→32"]
    with pytest.raises(BioPropError, match="per step .* and per epoch"):
        plots.alignment_comparison_figure([fa, finished_run])


def test_traces_and_apical_figures(tmp_path: Path) -> None:
    run = hand_run(tmp_path / "mc", "mlp:20", rule="microcircuit")
    write_csv(run / "traces.csv", [{"epoch": e, "trace": t, "step": s, "value": 1.0 + e + s / 10}
                                   for e in range(3) for t in ("apical_norm", "energy") for s in range(4)])  # fmt: skip
    write_csv(run / "metrics.csv", [{"epoch": e, "diag/apical_norm_1": 0.5 / e} for e in (1, 2)])
    fig = plots.traces_figure(run)
    assert titled(fig, "microcircuit", "fashion-mnist", "mlp:20")
    assert {ax.get_title() for ax in fig.axes} >= {"energy", "apical_norm (preparation)"}
    assert all(integer_ticks(ax) for ax in fig.axes)
    fig = plots.declared_figure(run, "apical.png")
    assert titled(fig, "microcircuit", "fashion-mnist", "mlp:20") and all(integer_ticks(ax) for ax in fig.axes)


def epochs_run(path: Path, n: int) -> Path:
    """A microcircuit run directory with ``n`` epochs of metrics (two hidden layers' apical diagnostics) and an
    angle before training, as a run of ``--epochs n`` leaves them."""
    run = hand_run(path, "mlp:20x20", in_shape=[1, 28, 28], rule="microcircuit")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "alignment_init_deg": {"1.weight": 88.0}}))
    write_csv(run / "metrics.csv", [
        {"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.5 + e / 100, "test_loss": 2.1 / e,
         "test_accuracy": 0.49 + e / 100, "angle/1.weight": 80.0 - e, "angle/5.weight": 1.0,
         "diag/apical_norm_l1": 0.9 + e / 100, "diag/apical_norm_l2": 0.8, "diag/apical_norm_free_l1": 0.3,
         "diag/apical_norm_free_l2": 0.2, "diag/w_pi_down_angle_deg_l1": 70.0}
        for e in range(1, n + 1)
    ])  # fmt: skip
    write_csv(run / "traces.csv", [{"epoch": 0, "trace": "apical_norm", "step": s, "value": 1.5 - s / 10}
                                   for s in range(5)])  # fmt: skip
    return run


@pytest.mark.parametrize("n", [1, 2, 7])
def test_epoch_axes_show_only_the_integer_epochs_of_the_run(tmp_path: Path, n: int) -> None:
    """The fault seen: with --epochs 1, curves.png and apical.png had ticks 0.945 … 1.050."""
    run = epochs_run(tmp_path / "run", n)
    figures = [plots.curves_figure(run), plots.alignment_figure(run), plots.declared_figure(run, "apical.png")]
    epoch_axes = [ax for fig in figures for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(epoch_axes) == 4  # accuracy, loss, alignment, apical during training
    for ax in epoch_axes:
        first = 0 if ax.figure is figures[1] else 1  # the alignment figure starts before training, at epoch 0
        labels = shown_tick_labels(ax.xaxis)
        assert labels and all(re.fullmatch(r"\d+", label) for label in labels), labels
        assert {int(label) for label in labels} <= set(range(first, n + 1)), labels
        if n <= 2:
            assert sorted(int(label) for label in labels) == list(range(first, n + 1))  # few epochs: each one


def test_a_real_one_epoch_run_has_integer_epoch_ticks_and_readable_apical_labels(tmp_path: Path) -> None:
    run = tmp_path / "mc"
    train.run(tiny_config(rule="microcircuit", epochs=1, limit=100, rule_opts={"prepare_steps": 10}), run,
              quiet=True)  # fmt: skip
    for fig in (plots.curves_figure(run), plots.declared_figure(run, "apical.png")):
        for ax in fig.axes:
            if ax.get_xlabel() == "epoch":
                assert shown_tick_labels(ax.xaxis) == ["1"]
    legend = legend_texts(plots.declared_figure(run, "apical.png").axes[1])
    assert legend == ["hidden layer 1, with target (mean over the epoch)",
                      "hidden layer 1, without target (free, last batch)"]  # fmt: skip


def test_legends_name_no_raw_columns(tmp_path: Path) -> None:
    """Per the microcircuit's diagnostics: apical_norm_l<k> is hidden layer k's mean ‖v_A‖ with the target over the
    epoch's steps; apical_norm_free_l<k> the same without the target, on the epoch's last batch."""
    run = epochs_run(tmp_path / "run", 3)
    figures = [plots.curves_figure(run), plots.alignment_figure(run), plots.declared_figure(run, "apical.png")]
    legends = [text for fig in figures for ax in fig.axes if ax.get_legend() for text in legend_texts(ax)]
    assert legends and not [text for text in legends if "diag/" in text or "apical_norm" in text or "/" in text]
    assert legend_texts(figures[2].axes[1]) == [
        "hidden layer 1, with target (mean over the epoch)", "hidden layer 2, with target (mean over the epoch)",
        "hidden layer 1, without target (free, last batch)", "hidden layer 2, without target (free, last batch)",
    ]  # fmt: skip
    from bioprop import rules

    assert plots.diagnostic_label("diag/other", rules.entry("microcircuit").cls.diagnostic_specs) == "diag/other"


def energy_run(path: Path, values: list[float]) -> Path:
    """A predictive-coding run whose energy per inference step is ``values`` in each of two epochs."""
    run = hand_run(path, "mlp:20", rule="pc")
    write_csv(run / "traces.csv", [{"epoch": e, "trace": "energy", "step": s, "value": v * (1 - e / 1000)}
                                   for e in (1, 2) for s, v in enumerate(values)])  # fmt: skip
    return run


@pytest.mark.parametrize("values", [
    [0.9275, 0.9270, 0.9266, 0.9262, 0.9260],  # the fault seen: ticks 9.26×10⁻¹
    [2.3288, 2.30, 2.28, 2.2533],
    [9.9, 5.0, 2.0, 1.0],  # just under a decade
    [1e-4, 3e-5, 2e-5],
])  # fmt: skip
def test_energy_within_a_decade_has_plain_decimal_labels(tmp_path: Path, values: list[float]) -> None:
    fig = plots.traces_figure(energy_run(tmp_path / "pc", values))
    assert {ax.get_title() for ax in fig.axes} == {"energy", "energy / energy at step 0"}
    for ax in fig.axes:
        labels = shown_tick_labels(ax.yaxis)
        assert ax.get_yscale() == "linear" and ax.yaxis.get_offset_text().get_text() == ""
        assert len(labels) >= 2 and all(PLAIN_DECIMAL.fullmatch(label) for label in labels), labels
        low, high = ax.get_ylim()
        assert all(low <= number(label) <= high for label in labels)
        assert all(PLAIN_DECIMAL.fullmatch(label) for label in shown_tick_labels(ax.xaxis))


def test_energy_over_a_decade_or_more_is_on_a_log_axis(tmp_path: Path) -> None:
    fig = plots.traces_figure(energy_run(tmp_path / "pc", [10.0, 3.0, 1.0]))  # max = 10 × min
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log"]


def test_saving_writes_a_png_atomically(run_copy: Path) -> None:
    (run_copy / "alignment.png").unlink()
    assert plots.alignment_plot(run_copy) == run_copy / "alignment.png"
    assert (run_copy / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_copy.glob("*.tmp"))
