"""Lateral inhibition decorrelates hidden units (Földiák 1990, Biol. Cybern. 64:165; issue 12, item 4): the
experiment ``lateral-decorrelation`` (``lateral-decorrelation.png``).

The same MLP is trained by ``bp`` on digits twice from the same initial weights and the same batch order: plain
(``mlp:H``, h = φ(a)) and with learned lateral inhibition (``mlp:H:lateral``, y = φ(a − relu(M) y), M learned by the
anti-Hebbian rule of :mod:`bioprop.nets.lateral` through the rules' local-update hook, the forward weights by
autograd through the settling). The optimizer is the library's default (SGD, lr 0.01, momentum 0.9, batches of 64),
so M's step is Földiák's with α = rate · lr before momentum. After every epoch, on the test set: accuracy, the mean
absolute pairwise Pearson correlation of the hidden units (:func:`bioprop.nets.lateral.mean_abs_correlation`; units
constant over the test set left out, their count reported) and, for the lateral net, the mean off-diagonal
inhibition W = relu(M) and its largest eigenvalue. The figure: the histogram of the pairwise correlations after
training with and without, mean |correlation| and accuracy per epoch, and W itself. The full run repeats this for
three seeds (seed, seed + 1, seed + 2) and reports the mean and each seed; ``quick`` is one seed, a 64-unit layer
and two epochs.

The experiment ``lateral-decorrelation-spiking`` (``lateral-decorrelation-spiking.png``) does the same for a spiking
network (:class:`bioprop.nets.lateral.SpikingLateral`): an LSNN (``lsnn:50+50``, e-prop's LIF + ALIF neurons) trained
by ``eprop`` on the digits presented as sequences, plain and with learned lateral inhibition (``lsnn:50+50:lateral``
with two settings: rate=1 with the default decay λ = 1, and with λ = 0.1, which lets the inhibition grow ten times
stronger for the same covariance), from the same initial weights and batch order. The task (:func:`row_sequences`):
each 8×8 digit is shown row by row, a row of 8 standardised pixels held as the input current for ``hold`` = 5 steps
(T = 40 ms), the label the target over the last row's 5 steps (the sequential-image protocol of Le et al. 2015, as
:func:`bioprop.data.temporal.sequential_images`, slowed down for spiking neurons). The generated temporal tasks of
:mod:`bioprop.data.temporal` do not fit this measurement: store-recall is deterministic given its value (every
example of a class has the same spike trains, so the count correlations are ±1 by construction), and cue
accumulation's 2250 steps make one e-prop epoch ~30 s. Optimizer: SGD, lr 0.01, momentum 0.9, batches of 64 (the
library's defaults), so M's step is α = rate · lr before momentum (Adam would normalise ``rate`` away). After every
epoch, on the 360 test sequences: accuracy (:func:`bioprop.metrics.evaluate`, the summed readout over the labelled
steps), the mean absolute pairwise Pearson correlation of the neurons' **spike counts** over a sequence
(:func:`bioprop.nets.lateral.mean_abs_correlation` of the (N, n) counts; neurons whose count is the same for every
test sequence left out, their count reported): the correlation of spiking neurons as it is measured, r_SC (Cohen &
Kohn 2011), and what the rule decorrelates; the mean rate (Hz), W's mean and largest eigenvalue, and the seconds per
epoch (the lateral nets pay the rules' hook, one more forward pass per step). Full: three seeds, 20 epochs; ``quick``:
one seed, ``lsnn:20+20``, 512 training sequences, two epochs.
Measured (full run, seeds 0-2, 240 s on one core): mean |r| of the counts after 20 epochs 0.257 plain, 0.239 with
λ = 1 (−7 %), 0.185 with λ = 0.1 (−28 %), lower in every seed for both; test accuracy 74.2 %, 75.8 % and 79.9 %;
mean rate 82, 72 and 45 Hz; mean W 0.26 and 1.32 (largest eigenvalue 37 and 191).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from bioprop import experiments

NAME = "lateral-decorrelation"
SOURCE = "Földiák 1990, Biol. Cybern. 64:165 (anti-Hebbian lateral inhibition); Bengio et al. 2015, Sec. 6"
FIGURE = "lateral-decorrelation.png"
SPIKING_NAME = "lateral-decorrelation-spiking"
SPIKING_SOURCE = ("Földiák 1990, Biol. Cybern. 64:165; on spike counts as in Zylberberg et al. 2011, PLoS Comput. "
                  "Biol. 7:e1002250; r_SC as in Cohen & Kohn 2011, Nat. Neurosci. 14:811")  # fmt: skip
SPIKING_FIGURE = "lateral-decorrelation-spiking.png"
COLORS = ("C0", "C3", "C1", "C2")


class Setting(NamedTuple):
    """One comparison: hidden ``units``, ``epochs``, learning rate ``lr``, momentum, ``batch`` size."""

    units: int
    epochs: int
    lr: float = 0.01
    momentum: float = 0.9
    batch: int = 64


def hidden(net: nn.Sequential, x: Tensor) -> Tensor:
    """The first hidden layer's output (N, n): Flatten, Linear, then its activation or lateral layer."""
    with torch.no_grad():
        return net[:3](x)


def train_pair(setting: Setting, seed: int, dataset: Any) -> dict[str, Any]:
    """Train the plain and the lateral MLP (module docstring) from the same initial weights and batch order;
    per-epoch records of each, the final correlations and the final W."""
    from bioprop import data, nets, rules
    from bioprop.nets.lateral import inhibition, mean_abs_correlation, pairwise_correlations

    runs: dict[str, Any] = {}
    for kind, arch in (("plain", f"mlp:{setting.units}"), ("lateral", f"mlp:{setting.units}:lateral")):
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.manual_seed(seed)  # the same Linear weights in both: the lateral layer's M starts at 0, draws nothing
            net = nets.build(arch, dataset.in_shape, dataset.n_classes)
        rule = rules.create("bp", net)
        optimizer = torch.optim.SGD(net.parameters(), lr=setting.lr, momentum=setting.momentum)
        order = torch.Generator().manual_seed(seed)
        record: dict[str, list[float]] = {"test_accuracy": [], "mean_abs_correlation": [], "varying_units": [],
                                          "mean_inhibition": [], "largest_eigenvalue": []}  # fmt: skip
        for _ in range(setting.epochs):
            for x, y in data.batches(dataset.train_x, dataset.train_y, setting.batch, order):
                optimizer.zero_grad()
                rule.backward(x, y)
                optimizer.step()
            with torch.no_grad():
                accuracy = float((rule.predict(dataset.test_x).argmax(dim=1) == dataset.test_y).double().mean())
                h = hidden(net, dataset.test_x)
                W = inhibition(net[2].M) if kind == "lateral" else torch.zeros(1, 1)
                off = W.sum() / max(1, W.numel() - W.shape[0])
                top = float(torch.linalg.eigvalsh(W.double())[-1]) if kind == "lateral" else 0.0
            record["test_accuracy"].append(accuracy)
            record["mean_abs_correlation"].append(mean_abs_correlation(h))
            record["varying_units"].append(int((h.amax(dim=0) > h.amin(dim=0)).sum()))
            record["mean_inhibition"].append(float(off))
            record["largest_eigenvalue"].append(top)
        runs[kind] = {"arch": arch, **record, "correlations": pairwise_correlations(hidden(net, dataset.test_x))}
        if kind == "lateral":
            runs[kind]["W"] = inhibition(net[2].M.detach()).double()
    return runs


def figure(runs: dict[str, Any], setting: Setting, seed: int) -> Figure:
    """The correlation histograms, mean |correlation| and accuracy per epoch, and W (of the first seed)."""
    return draw(runs, f"after {setting.epochs} epochs of bp on digits, seed {seed}", "lateral",
                "pairwise correlation r_ij of hidden units (test set)")  # fmt: skip


def draw(runs: dict[str, Any], title: str, pictured: str, xlabel: str, what: str = "mean |r_ij|") -> Figure:
    """The correlation histograms of ``runs`` (kind → record, in order), mean |correlation| and accuracy per epoch,
    and the W of the kind ``pictured``."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    (hist, curve), (acc, image) = fig.subplots(2, 2)
    edges = torch.linspace(-1, 1, 81).tolist()
    for kind, color in zip(runs, COLORS, strict=False):
        run = runs[kind]
        r = run["correlations"]
        hist.hist(r.tolist(), bins=edges, histtype="step", color=color, density=True,
                  label=f"{run['arch']}: mean |r| = {float(r.abs().mean()):.3f}")  # fmt: skip
        epochs = range(1, len(run["test_accuracy"]) + 1)
        curve.plot(epochs, run["mean_abs_correlation"], marker="o", markersize=3, color=color, label=run["arch"])
        acc.plot(epochs, run["test_accuracy"], marker="o", markersize=3, color=color, label=run["arch"])
    hist.set(xlabel=xlabel, ylabel="density", title=title)
    curve.set(xlabel="epoch", ylabel=what, title="decorrelation over training")
    acc.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    W = runs[pictured]["W"]
    shown = image.imshow(W.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(shown, ax=image, shrink=0.8)
    image.set(title=f"learned inhibition W = relu(M), mean {float(W.mean()):.3g}\n{runs[pictured]['arch']}",
              xlabel="unit j (inhibitor)", ylabel="unit i (inhibited)")  # fmt: skip
    for ax in (hist, curve, acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


@experiments.register(
    NAME,
    "bp on digits with and without learned lateral inhibition: pairwise correlation of hidden units and accuracy",
    SOURCE,
    figures=(FIGURE,),
)
def run(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """The ``lateral-decorrelation`` experiment (module docstring)."""
    from bioprop import data
    from bioprop.report import plots

    dataset = data.load("digits")
    setting = Setting(units=32, epochs=2) if quick else Setting(units=256, epochs=20)
    seeds = [seed] if quick else [seed + k for k in range(3)]
    pairs = [train_pair(setting, s, dataset) for s in seeds]
    plots.save(figure(pairs[0], setting, seeds[0]), experiments.figure_path(out, NAME, FIGURE))
    per_seed = [
        {
            "seed": s,
            **{kind: {k: v for k, v in run.items() if k not in ("correlations", "W")} for kind, run in pair.items()},
        }
        for s, pair in zip(seeds, pairs, strict=True)
    ]

    def mean_final(kind: str, key: str) -> float:
        return sum(run[kind][key][-1] for run in per_seed) / len(per_seed)

    plain, lateral = mean_final("plain", "mean_abs_correlation"), mean_final("lateral", "mean_abs_correlation")
    return {
        "setting": setting._asdict(),
        "data": "digits",
        "seeds": seeds,
        "final_mean_abs_correlation": {"plain": plain, "lateral": lateral},
        "final_test_accuracy": {
            "plain": mean_final("plain", "test_accuracy"),
            "lateral": mean_final("lateral", "test_accuracy"),
        },  # fmt: skip
        "correlation_lowered_in_every_seed": all(
            run["lateral"]["mean_abs_correlation"][-1] < run["plain"]["mean_abs_correlation"][-1] for run in per_seed
        ),
        "relative_change_of_mean_abs_correlation": (lateral - plain) / plain
        if plain and math.isfinite(plain)
        else None,
        "runs": per_seed,
    }


# ------------------------------------------------------------------------------------------ spiking networks


class SpikingSetting(NamedTuple):
    """One spiking comparison: the plain ``arch``, the ``lateral`` settings of each lateral variant (what follows
    ``arch:lateral:``), ``epochs``, ``hold`` steps per image row, the ``rule``, learning rate ``lr``, momentum,
    ``batch`` size and ``limit`` (training sequences kept; None: all)."""

    arch: str
    lateral: tuple[str, ...]
    epochs: int
    hold: int = 5
    rule: str = "eprop"
    lr: float = 0.01
    momentum: float = 0.9
    batch: int = 64
    limit: int | None = None


def row_sequences(images: Tensor, labels: Tensor, hold: int) -> tuple[Tensor, Tensor]:
    """Images (N, 1, H, W) as sequences of their rows, each held for ``hold`` steps: x (N, H · hold, W) with
    x[n, t] = row ⌊t / hold⌋ of image n, and y (N, H · hold) int64, the label over the last row's ``hold`` steps and
    −1 before (module docstring)."""
    from bioprop.data.temporal import labels_at

    x = images[:, 0].repeat_interleave(hold, dim=1)  # (N, H·hold, W)
    steps = x.shape[1]
    return x.contiguous(), labels_at(labels, steps, range(steps - hold, steps)).to(labels.device)


def spiking_measures(rule: Any, x: Tensor, y: Tensor) -> tuple[float, Tensor, float]:
    """Accuracy, spike counts (N, n) and the mean rate in Hz of ``rule``'s network on test sequences x (T, N, C),
    y (T, N)."""
    from bioprop import metrics

    accuracy = metrics.evaluate(rule, x, y, batch_size=512)[1]
    with torch.no_grad():
        counts = torch.cat([rule.net.run(part).z.sum(0) for part in x.split(512, dim=1)])  # (N, n)
    rate = float(counts.mean()) * 1000.0 / (x.shape[0] * rule.net.params.dt)
    return accuracy, counts, rate


def train_spiking(setting: SpikingSetting, seed: int, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]
                  ) -> dict[str, Any]:  # fmt: skip
    """Train the plain net and each lateral variant (module docstring) from the same initial weights and batch
    order; per-epoch records of each, the final count correlations and W. ``train``: x (N, T, C), y (N, T);
    ``test``: time-major x (T, N, C), y (T, N)."""
    from bioprop import data, nets, rules
    from bioprop.nets.lateral import inhibition, mean_abs_correlation, pairwise_correlations

    variants = {"plain": setting.arch, **{f"lateral:{s}": f"{setting.arch}:lateral:{s}" for s in setting.lateral}}
    runs: dict[str, Any] = {}
    for kind, arch in variants.items():
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.manual_seed(seed)  # the same weights in every variant: M starts at 0 and draws nothing
            net = nets.build(arch, tuple(train[0].shape[1:]), 10)
        rule = rules.create(setting.rule, net)
        optimizer = torch.optim.SGD(net.parameters(), lr=setting.lr, momentum=setting.momentum)
        order = torch.Generator().manual_seed(seed)
        record: dict[str, list[float]] = {"test_accuracy": [], "mean_abs_correlation": [], "varying_units": [],
                                          "rate_hz": [], "mean_inhibition": [], "largest_eigenvalue": [],
                                          "seconds": []}  # fmt: skip
        for _ in range(setting.epochs):
            started = time.perf_counter()
            for x, y in data.batches(*train, setting.batch, order, time_major=True):
                optimizer.zero_grad()
                rule.backward(x, y)
                optimizer.step()
            seconds = time.perf_counter() - started
            accuracy, counts, rate = spiking_measures(rule, *test)
            with torch.no_grad():
                W = inhibition(net.lateral.M).double() if net.lateral is not None else torch.zeros(1, 1)
                top = float(torch.linalg.eigvalsh(W)[-1]) if net.lateral is not None else 0.0
            record["test_accuracy"].append(accuracy)
            record["mean_abs_correlation"].append(mean_abs_correlation(counts))
            record["varying_units"].append(int((counts.amax(dim=0) > counts.amin(dim=0)).sum()))
            record["rate_hz"].append(rate)
            record["mean_inhibition"].append(float(W.sum() / max(1, W.numel() - W.shape[0])))
            record["largest_eigenvalue"].append(top)
            record["seconds"].append(seconds)
        runs[kind] = {"arch": arch, **record, "correlations": pairwise_correlations(counts)}
        if net.lateral is not None:
            runs[kind]["W"] = inhibition(net.lateral.M.detach()).double()
    return runs


@experiments.register(
    SPIKING_NAME,
    "e-prop on an LSNN with and without learned lateral inhibition (digits as row sequences): pairwise correlation "
    "of the neurons' spike counts and accuracy",
    SPIKING_SOURCE,
    figures=(SPIKING_FIGURE,),
)
def run_spiking(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """The ``lateral-decorrelation-spiking`` experiment (module docstring)."""
    from bioprop import data
    from bioprop.report import plots

    dataset = data.load("digits")
    lateral = ("rate=1,decay=1", "rate=1,decay=0.1")
    if quick:
        setting = SpikingSetting("lsnn:20+20", lateral, epochs=2, limit=512)
    else:
        setting = SpikingSetting("lsnn:50+50", lateral, epochs=20)
    train = row_sequences(dataset.train_x[: setting.limit], dataset.train_y[: setting.limit], setting.hold)
    test_x, test_y = row_sequences(dataset.test_x, dataset.test_y, setting.hold)
    test = (test_x.transpose(0, 1).contiguous(), test_y.t().contiguous())  # time-major (T, N, C), (T, N)
    seeds = [seed] if quick else [seed + k for k in range(3)]
    pairs = [train_spiking(setting, s, train, test) for s in seeds]
    title = f"{setting.rule}, {setting.epochs} epochs on digits as row sequences, seed {seeds[0]}"
    fig = draw(pairs[0], title, list(pairs[0])[-1], "pairwise correlation r_ij of spike counts (test sequences)",
               "mean |r_ij| of spike counts")  # fmt: skip
    plots.save(fig, experiments.figure_path(out, SPIKING_NAME, SPIKING_FIGURE))
    per_seed = [
        {
            "seed": s,
            **{kind: {k: v for k, v in r.items() if k not in ("correlations", "W")} for kind, r in pair.items()},
        }
        for s, pair in zip(seeds, pairs, strict=True)
    ]
    kinds = list(pairs[0])

    def mean_final(kind: str, key: str) -> float:
        return sum(r[kind][key][-1] for r in per_seed) / len(per_seed)

    def mean_all(kind: str, key: str) -> float:
        return sum(sum(r[kind][key]) / len(r[kind][key]) for r in per_seed) / len(per_seed)

    plain = mean_final("plain", "mean_abs_correlation")
    return {
        "setting": setting._asdict(),
        "data": f"digits as row sequences: 8 rows x {setting.hold} steps (T = {8 * setting.hold}), 8 input channels",
        "measure": "mean |Pearson r| of the neurons' spike counts per test sequence (360 sequences)",
        "seeds": seeds,
        "final_mean_abs_correlation": {kind: mean_final(kind, "mean_abs_correlation") for kind in kinds},
        "final_test_accuracy": {kind: mean_final(kind, "test_accuracy") for kind in kinds},
        "final_rate_hz": {kind: mean_final(kind, "rate_hz") for kind in kinds},
        "seconds_per_epoch": {kind: mean_all(kind, "seconds") for kind in kinds},
        "correlation_lowered_in_every_seed": {
            kind: all(r[kind]["mean_abs_correlation"][-1] < r["plain"]["mean_abs_correlation"][-1] for r in per_seed)
            for kind in kinds[1:]
        },
        "relative_change_of_mean_abs_correlation": {
            kind: (mean_final(kind, "mean_abs_correlation") - plain) / plain if plain and math.isfinite(plain) else None
            for kind in kinds[1:]
        },
        "runs": per_seed,
    }
