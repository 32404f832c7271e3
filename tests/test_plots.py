"""Figures, checked as objects: titles name rule, dataset and arch; panels and lines name layers by their shape;
epoch and step axes have integer ticks; the train accuracy says it is a running mean.

Expected layer shapes are worked out here by hand (e.g. 28·28 = 784 inputs; LeNet's convolutions 1→6→16→120 with
5×5 kernels; a 28×28 image after two 5×5 valid convolutions each pooled 2×2 is 4×4).
"""

from __future__ import annotations

import csv
import json
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
    fig = plots.apical_figure(run)
    assert titled(fig, "microcircuit", "fashion-mnist", "mlp:20") and all(integer_ticks(ax) for ax in fig.axes)


def test_saving_writes_a_png_atomically(run_copy: Path) -> None:
    (run_copy / "alignment.png").unlink()
    assert plots.alignment_plot(run_copy) == run_copy / "alignment.png"
    assert (run_copy / "alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_copy.glob("*.tmp"))
