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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from bioprop import experiments

NAME = "lateral-decorrelation"
SOURCE = "Földiák 1990, Biol. Cybern. 64:165 (anti-Hebbian lateral inhibition); Bengio et al. 2015, Sec. 6"
FIGURE = "lateral-decorrelation.png"


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
    fig = Figure(figsize=(11, 8), layout="constrained")
    (hist, curve), (acc, image) = fig.subplots(2, 2)
    edges = torch.linspace(-1, 1, 81).tolist()
    for kind, color in (("plain", "C0"), ("lateral", "C3")):
        run = runs[kind]
        r = run["correlations"]
        hist.hist(r.tolist(), bins=edges, histtype="step", color=color, density=True,
                  label=f"{run['arch']}: mean |r| = {float(r.abs().mean()):.3f}")  # fmt: skip
        epochs = range(1, len(run["test_accuracy"]) + 1)
        curve.plot(epochs, run["mean_abs_correlation"], marker="o", markersize=3, color=color, label=run["arch"])
        acc.plot(epochs, run["test_accuracy"], marker="o", markersize=3, color=color, label=run["arch"])
    hist.set(xlabel="pairwise correlation r_ij of hidden units (test set)", ylabel="density",
             title=f"after {setting.epochs} epochs of bp on digits, seed {seed}")  # fmt: skip
    curve.set(xlabel="epoch", ylabel="mean |r_ij|", title="decorrelation over training")
    acc.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    W = runs["lateral"]["W"]
    shown = image.imshow(W.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(shown, ax=image, shrink=0.8)
    image.set(title=f"learned inhibition W = relu(M), mean {float(W.mean()):.3g}", xlabel="unit j (inhibitor)",
              ylabel="unit i (inhibited)")  # fmt: skip
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
