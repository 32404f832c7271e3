"""STDP as approximate gradient descent (Bengio et al. 2015, arXiv:1502.04156, Sec. 1 and Fig. 1): three experiments
with the rule ``ΔW_ij ∝ S_i V̇_j`` (:func:`bioprop.rules.stdp.spike_voltage_update`) and the ``stdp`` rule.

``stdp-window`` (``stdp-window.png``): the classic STDP window out of S_i V̇_j alone. A presynaptic spike at t = 0
meets a postsynaptic potential passing its resting value 0 with a slope a of random sign, V_j(t) = a t (a uniform
in ±``slope`` per ms, dt = 1 ms); the postsynaptic neuron fires with escape noise, with probability
``p_max``·σ((V_j(t) − θ)/κ) per ms (threshold θ = 1). Each trial's weight change is S_i V̇_j = a; its spike-time
difference ΔT = t_post − t_pre is that of the postsynaptic spike nearest to t = 0 (trials without one are left out).
A rising potential brings the postsynaptic spike after the presynaptic one (ΔT > 0, ΔW > 0), a falling one before it,
and the steeper the slope the sooner: the mean ΔW per ΔT bin follows the sign of ΔT and decays with |ΔT|.
A·exp(−|ΔT|/τ) is fitted on each side from the side's largest mean outward (least squares on the bin means, weighted
by their standard errors; nearer to 0 the potential is still near rest, so few spikes fall there and the
mean is smaller: the JSON gives where each fit starts). This is
our reading of the simulation behind Bengio et al.'s Fig. 1 (a presynaptic spike at 0, postsynaptic voltage slopes
of random sign); the neuron model and its constants are ours.

``stdp-gradient`` (``stdp-gradient.png``): one layer, the digits' 64 pixels clamped as input and 10 output units
(``EnergyNet((64,), [], 10)``, squared-error output, so J = ½‖s − y‖² at the free fixed point), trained by
``stdp`` with one-sided nudging: in the nudged phase the output potentials start moving as V̇ = −β ∂J/∂V. At every
step, the cosine between the update (Σ S_i V̇_j over the phase, Bernoulli spikes) and −∂J/∂W (the rule's reference
gradient), the same with ``spikes=rate``, and J on the whole training set every few steps; then the cosine at the
initial weights against the spike probability per step ``p_max`` (fewer spikes, noisier update). Where the cosine
dips, look for an output unit just outside the hard sigmoid's range with a target that pulls it inside
(:func:`kinked`): the gradient through the clip is 0, the nudged dynamics still move it. The JSON counts them.

``stdp-network`` (``stdp-network.png``): ``bioprop.train`` runs ``stdp`` on ``ebm:256`` (one hidden layer and a
softmax readout: two layers of synapses) with symmetric nudging, with two neuron models: ``neurons=rate`` (the rule's
defaults: units drive each other with their rates, Bernoulli spikes in the plasticity) and ``neurons=spiking``
(units communicate by spikes alone: leaky potentials, ε = 0.2, integrate-and-fire spike generation,
``spikes=threshold``; 60 free and 30 nudged steps), on digits (20 epochs), then on Fashion-MNIST (5 epochs; skipped
with ``quick``, or when its files are not found: the JSON says which and why). Test accuracy (of the rule's
prediction path, the mean-field relaxation) per epoch and the update's angle to backprop through the free phase
are drawn.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from bioprop import experiments

WINDOW, GRADIENT, NETWORK = "stdp-window", "stdp-gradient", "stdp-network"
SOURCE = "Bengio et al. 2015, arXiv:1502.04156, Sec. 1, eq. 1 and Fig. 1"


# ------------------------------------------------------------------------------------------------ stdp-window


class Window(NamedTuple):
    """The window simulation's settings: ``trials``, half-width ``span`` (ms, steps of 1 ms), the largest slope
    ``slope`` (potential per ms, θ = 1 above rest), escape noise ``p_max`` (spike probability per ms at full rate)
    and ``kappa`` (its softness, in units of potential), ``bin`` width (ms) and the fewest trials a bin needs."""

    trials: int
    span: int = 60
    slope: float = 0.1
    p_max: float = 0.5
    kappa: float = 0.1
    bin: int = 5
    min_count: int = 20


def window_trials(setting: Window, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Simulate the trials (module docstring); returns ΔT (ms) and ΔW (S_i V̇_j) of the trials that have a
    postsynaptic spike, float64."""
    from bioprop.rules.stdp import spike_voltage_update

    n, span = setting.trials, setting.span
    times = torch.arange(-span, span + 1, dtype=torch.float64)  # (2 span + 1,) the instants, t_pre = 0 among them
    slope = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * setting.slope
    V = times[:, None, None] * slope[None, None, :]  # (T + 1, 1, n): each trial is a postsynaptic unit
    S = torch.zeros(len(times) - 1, 1, 1, dtype=torch.float64)  # (T, 1, 1): one presynaptic neuron...
    S[span] = 1.0  # ...spiking in the step that starts at t = 0
    dw = spike_voltage_update(S, V)[:, 0]  # (n,) = slope
    rate = setting.p_max * torch.sigmoid((V[:-1, 0] - 1.0) / setting.kappa)  # (T, n) spike probability per step
    fired = torch.rand(rate.shape, generator=generator, dtype=torch.float64) < rate
    distance = times[:-1].abs()[:, None] + 0.5 * (times[:-1] < 0)[:, None]  # a tie goes to the later spike
    distance = torch.where(fired, distance, math.inf)
    nearest = distance.argmin(0)
    kept = torch.isfinite(distance.gather(0, nearest[None])[0])
    return times[:-1][nearest][kept], dw[kept]


def exponential_fit(centres: Tensor, means: Tensor, errors: Tensor) -> dict[str, float]:
    """A·exp(−|ΔT|/τ) fitted to the bin means of one side (weighted least squares, scipy's curve_fit, started
    from the log-linear fit); returns amplitude A, τ (ms) and R² of the fit to the means."""
    import numpy as np
    from scipy.optimize import curve_fit

    t, m, e = (v.numpy() for v in (centres.abs(), means, errors))
    sign = 1.0 if m.sum() >= 0 else -1.0
    usable = sign * m > 0
    slope, intercept = np.polyfit(t[usable], np.log(sign * m[usable]), 1)
    start = (sign * math.exp(intercept), -1.0 / slope if slope < 0 else float(t.max()))

    def model(x: Any, amplitude: float, tau: float) -> Any:
        return amplitude * np.exp(-x / tau)

    (amplitude, tau), _ = curve_fit(model, t, m, p0=start, sigma=e, absolute_sigma=False, maxfev=10_000)
    residual = float(((m - model(t, amplitude, tau)) ** 2).sum())
    total = float(((m - m.mean()) ** 2).sum())
    return {"amplitude": float(amplitude), "tau_ms": float(tau), "r2": 1.0 - residual / total}


def window_figure(dt: Tensor, dw: Tensor, bins: dict[str, Any], fits: dict[str, dict[str, float]],
                  setting: Window) -> Figure:  # fmt: skip
    """Individual trials (a sample), the bin means with their standard errors and the fitted exponentials."""
    import numpy as np

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    sample = slice(0, min(len(dt), 3000))
    ax.scatter(dt[sample], dw[sample], s=2, color="0.75", alpha=0.5, label="trials (a sample)", rasterized=True)
    ax.errorbar(bins["dt_ms"], bins["mean_dw"], yerr=bins["sem"], fmt="o", color="C0", markersize=4,
                label="mean ΔW per bin (± s.e.m.)")  # fmt: skip
    for side, sign in (("plus", 1), ("minus", -1)):
        fit = fits[side]
        t = np.linspace(fit["from_abs_dt_ms"], setting.span, 200)
        ax.plot(sign * t, fit["amplitude"] * np.exp(-t / fit["tau_ms"]), color="C3",
                label=(f"A·exp(−|ΔT|/τ): A₊ = {fits['plus']['amplitude']:.3g}, τ₊ = {fits['plus']['tau_ms']:.1f} ms; "
                       f"A₋ = {fits['minus']['amplitude']:.3g}, τ₋ = {fits['minus']['tau_ms']:.1f} ms")
                if side == "plus" else None)  # fmt: skip
    ax.axhline(0, color="k", linewidth=0.8)
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set(xlabel="ΔT = t_post − t_pre (ms)", ylabel="ΔW = S_i · V̇_j (potential / ms)",
           title=f"STDP window from ΔW ∝ S_i V̇_j ({len(dt):,} trials with a postsynaptic spike)")  # fmt: skip
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    return fig


@experiments.register(
    WINDOW,
    "presynaptic spike at 0, postsynaptic slopes of random sign: mean S_i·V̇_j against ΔT gives the STDP window",
    SOURCE,
    figures=("stdp-window.png",),
)
def run_window(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """The ``stdp-window`` experiment (module docstring)."""
    from bioprop.report import plots

    setting = Window(trials=5_000 if quick else 100_000)
    dt, dw = window_trials(setting, torch.Generator().manual_seed(seed))
    edges = torch.arange(-setting.span, setting.span + setting.bin, setting.bin, dtype=torch.float64)
    which = torch.bucketize(dt, edges, right=True) - 1  # bin k holds [edges[k], edges[k + 1])
    bins: dict[str, list[float]] = {"dt_ms": [], "mean_dw": [], "sem": [], "count": []}
    for k in range(len(edges) - 1):
        values = dw[which == k]
        if len(values) < setting.min_count:
            continue
        inside = dt[which == k]
        bins["dt_ms"].append(float(inside.mean()))
        bins["mean_dw"].append(float(values.mean()))
        bins["sem"].append(float(values.std() / math.sqrt(len(values))))
        bins["count"].append(len(values))
    centres, means, sem = (torch.tensor(bins[key], dtype=torch.float64) for key in ("dt_ms", "mean_dw", "sem"))
    fits, sides = {}, {}
    for side, mask in (("plus", centres > 0), ("minus", centres < 0)):
        peak = centres[mask][means[mask].abs().argmax()].abs()  # the window's extreme on this side
        flank = mask & (centres.abs() >= peak)
        fits[side] = {**exponential_fit(centres[flank], means[flank], sem[flank]), "from_abs_dt_ms": float(peak)}
        m, t = means[mask], centres[mask].abs()
        order = torch.argsort(t)
        near, far = m[order][: len(m) // 3], m[order][-(len(m) // 3) :]
        sides[side] = {
            "sign_of_mean_dw": int(torch.sign(m.sum())),
            "bins_with_that_sign": float((torch.sign(m) == torch.sign(m.sum())).double().mean()),
            "mean_abs_dw_nearest_third": float(near.abs().mean()),
            "mean_abs_dw_farthest_third": float(far.abs().mean()),
        }
    plots.save(window_figure(dt, dw, bins, fits, setting), experiments.figure_path(out, WINDOW, "stdp-window.png"))
    return {
        "setting": setting._asdict(),
        "trials_with_post_spike": len(dt),
        "fit": fits,
        "sides": sides,
        "sign_follows_dt": sides["plus"]["sign_of_mean_dw"] == 1 and sides["minus"]["sign_of_mean_dw"] == -1,
        "decays_with_abs_dt": all(
            s["mean_abs_dw_farthest_third"] < s["mean_abs_dw_nearest_third"] for s in sides.values()
        ),
        "bins": bins,
    }


# ---------------------------------------------------------------------------------------------- stdp-gradient


class Gradient(NamedTuple):
    """The one-layer run's settings: training ``steps`` (batches of ``batch``), SGD ``lr``, J measured every
    ``every`` steps, the rule's nudge β, step size ε and nudged steps, and the spike probabilities of the sweep."""

    steps: int
    every: int
    sweep: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)
    sweep_batches: int = 5
    batch: int = 64
    lr: float = 0.1
    beta: float = 0.01
    eps: float = 0.1
    nudged_steps: int = 100
    free_steps: int = 300


def cosine(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """The cosine between two updates, all their tensors as one vector."""
    u = torch.cat([a[k].flatten() for k in sorted(a)])
    v = torch.cat([b[k].flatten() for k in sorted(a)])
    return float(u @ v / (u.norm() * v.norm()))


def kinked(net: Any, x: Tensor, y: Tensor, beta: float) -> int:
    """How many (example, output unit) pairs of the batch sit just outside the hard sigmoid's range, within β of it,
    with a target that pulls them inside (input u ∈ (−β, 0) and target 1, or u ∈ (1, 1 + β) and target 0): the
    gradient through the clip is 0 there, but the nudge β (y − s) moves the unit, so the update sees an error the
    gradient does not (the one-layer free fixed point is s = clip(W x + b, 0, 1))."""
    u = net.synapses[0](x.flatten(1))
    target = torch.nn.functional.one_hot(y, u.shape[1]).to(torch.bool)
    low = (u > -beta) & (u < 0) & target
    high = (u > 1) & (u < 1 + beta) & ~target
    return int(low.sum() + high.sum())


def gradient_figure(record: dict[str, Any], setting: Gradient) -> Figure:
    """Cosine to −∂J/∂W per step, J over training, cosine against the spike probability."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    steps = range(len(record["cosine"]))
    left.plot(steps, record["cosine"], color="C0", linewidth=1, label="Bernoulli spikes")
    left.plot(steps, record["cosine_rate"], color="C1", linewidth=1, label="rates (S = ρ(V))")
    marked = [k for k in steps if record["kinked"][k] > 0]
    left.scatter(marked, [record["cosine"][k] for k in marked], marker="x", s=18, color="C3", zorder=3,
                 label="an output unit within β outside the clip")  # fmt: skip
    left.axhline(0.95, color="k", linestyle="--", linewidth=0.8, label="0.95")
    left.set(xlabel="training step", ylabel="cos(Σ S_i V̇_j, −∂J/∂W)", title="update against the gradient")
    left.legend(fontsize="small")
    middle.plot(record["j_steps"], record["j"], marker="o", markersize=3, color="C2")
    middle.set(xlabel="training step", ylabel="J = ½‖s − y‖² (training-set mean)", title="J over training")
    sweep = record["cosine_vs_p_max"]
    right.plot(sweep["p_max"], sweep["cosine"], marker="o", color="C0", label="Bernoulli spikes")
    right.axhline(sweep["cosine_rate"], color="C1", linestyle=":", label="rates")
    right.set(xscale="log", xlabel="spike probability per step at full rate (p_max)", ylabel="cosine",
              title=f"at the initial weights (mean of {setting.sweep_batches} batches)")  # fmt: skip
    right.legend(fontsize="small")
    for ax in (left, middle):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"one layer (digits, 64 → 10), β = {setting.beta}, ε = {setting.eps}, {setting.nudged_steps} "
                 "nudged steps: V̇ = −β ∂J/∂V at the nudge's onset")  # fmt: skip
    return fig


@experiments.register(
    GRADIENT,
    "one layer: cosine between accumulated S_i·V̇_j and −∂J/∂W, and J falling over training",
    SOURCE,
    figures=("stdp-gradient.png",),
)
def run_gradient(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """The ``stdp-gradient`` experiment (module docstring)."""
    from bioprop import data, rules
    from bioprop.nets.energy import EnergyNet
    from bioprop.report import plots

    quick_setting = Gradient(
        steps=8, every=4, sweep=(0.1, 1.0), sweep_batches=1, eps=0.2, nudged_steps=50, free_steps=150
    )
    setting = quick_setting if quick else Gradient(steps=300, every=15)
    dataset = data.load("digits", dtype=torch.float64)
    x_all, y_all = dataset.train_x.flatten(1), dataset.train_y
    torch.manual_seed(seed)
    net = EnergyNet((x_all.shape[1],), [], dataset.n_classes).double()
    options = dict(output="se", nudge="one-sided", beta=setting.beta, eps=setting.eps, free_steps=setting.free_steps,
                   nudged_steps=setting.nudged_steps, seed=seed)  # fmt: skip
    rule = rules.create("stdp", net, **options)
    rate = rules.create("stdp", net, **options, spikes="rate")
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))

    def batch(k: int) -> tuple[Tensor, Tensor]:
        at = order[(k * setting.batch + torch.arange(setting.batch)) % len(order)]
        return x_all[at], y_all[at]

    def objective() -> float:
        return float(rule.loss.value(rule.predict(x_all), y_all))

    sweep = {"p_max": list(setting.sweep), "cosine": []}
    probes = [batch(k) for k in range(setting.sweep_batches)]
    references = [rule.reference_grads(x, y) for x, y in probes]
    for p_max in setting.sweep:
        probe = rules.create("stdp", net, **options, p_max=p_max)
        sweep["cosine"].append(sum(cosine(probe.grads(x, y).grads, r) for (x, y), r in
                                   zip(probes, references, strict=True)) / len(probes))  # fmt: skip
    sweep["cosine_rate"] = sum(cosine(rate.grads(x, y).grads, r) for (x, y), r in
                               zip(probes, references, strict=True)) / len(probes)  # fmt: skip

    optimizer = torch.optim.SGD(net.parameters(), lr=setting.lr)
    record: dict[str, Any] = {"cosine": [], "cosine_rate": [], "kinked": [], "j_steps": [0], "j": [objective()]}
    for k in range(setting.steps):
        x, y = batch(k)
        reference = rule.reference_grads(x, y)
        record["kinked"].append(kinked(net, x, y, setting.beta))
        record["cosine_rate"].append(cosine(rate.grads(x, y).grads, reference))
        optimizer.zero_grad()
        rule.backward(x, y)  # .grad holds the update (what grads would give), then the step count advances
        record["cosine"].append(cosine({name: p.grad for name, p in net.named_parameters()}, reference))
        optimizer.step()
        if (k + 1) % setting.every == 0 or k + 1 == setting.steps:
            record["j_steps"].append(k + 1)
            record["j"].append(objective())
    record["cosine_vs_p_max"] = sweep
    plots.save(gradient_figure(record, setting), experiments.figure_path(out, GRADIENT, "stdp-gradient.png"))
    j, cos, kinks = record["j"], record["cosine"], record["kinked"]
    low = [k for k, c in enumerate(cos) if c < 0.95]
    high = [k for k, c in enumerate(cos) if c >= 0.95]

    def mean_kinks(steps: list[int]) -> float | None:
        return sum(kinks[k] for k in steps) / len(steps) if steps else None

    return {
        "setting": {**setting._asdict(), "sweep": list(setting.sweep)},
        "rule_options": options,
        "cosine_mean": sum(record["cosine"]) / len(record["cosine"]),
        "cosine_min": min(cos),
        "steps_with_cosine_below_0.95": len(low),
        "mean_kinked_units_where_cosine_below_0.95": mean_kinks(low),
        "mean_kinked_units_elsewhere": mean_kinks(high),
        "cosine_rate_mean": sum(record["cosine_rate"]) / len(record["cosine_rate"]),
        "j_first": j[0],
        "j_last": j[-1],
        "j_fell": j[-1] < j[0],
        "j_intervals_falling": sum(b < a for a, b in zip(j, j[1:], strict=False)),
        "j_intervals": len(j) - 1,
        **record,
    }


# ----------------------------------------------------------------------------------------------- stdp-network


#: The rule's options for each neuron model of ``stdp-network``.
NEURONS = {"rate": {}, "spiking": {"neurons": "spiking", "spikes": "threshold", "eps": 0.2, "free_steps": 60,
                                   "nudged_steps": 30}}  # fmt: skip


class Network(NamedTuple):
    """One ``bioprop.train`` run of the experiment: dataset, neuron model (a key of :data:`NEURONS`), epochs,
    learning rate, example limit (None: all), test batches on which the update angles are measured."""

    data: str
    neurons: str
    epochs: int
    lr: float = 0.01
    limit: int | None = None
    probes: int = 4


def train_run(run: Network, seed: int) -> dict[str, Any]:
    """Train ``stdp`` on ``ebm:256`` with ``bioprop.train`` into a temporary folder; its summary and per-epoch rows,
    or the reason it could not start (a dataset not found)."""
    from bioprop import train
    from bioprop.config import RunConfig
    from bioprop.errors import BioPropError
    from bioprop.report import logs

    config = RunConfig(rule="stdp", data=run.data, arch="ebm:256", epochs=run.epochs, lr=run.lr, seed=seed,
                       limit=run.limit, probe_batches=run.probes, rule_opts=NEURONS[run.neurons])  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bioprop-stdp-") as folder:
        try:
            summary = train.run(config, Path(folder) / "run", quiet=True)
        except BioPropError as err:
            return {"data": run.data, "neurons": run.neurons, "skipped": str(err)}
        rows = logs.read_metrics(Path(folder) / "run")
    angles = [float(sum(v for k, v in row.items() if k.startswith("angle/") and "weight" in k)
                    / sum(1 for k in row if k.startswith("angle/") and "weight" in k)) for row in rows]  # fmt: skip
    return {
        "data": run.data, "neurons": run.neurons, "rule_options": NEURONS[run.neurons], "arch": "ebm:256",
        "epochs": run.epochs, "lr": run.lr, "limit": run.limit,
        "test_accuracy": summary["test_accuracy"], "best_test_accuracy": summary["best_test_accuracy"],
        "train_accuracy": summary["train_accuracy"], "test_accuracy_per_epoch": [r["test_accuracy"] for r in rows],
        "mean_weight_angle_deg_per_epoch": angles, "seconds_per_epoch": summary["epoch_seconds"],
    }  # fmt: skip


def network_figure(results: list[dict[str, Any]]) -> Figure:
    """Test accuracy and the update's mean angle to backprop (weights) per epoch, one line per dataset (colour) and
    neuron model (solid: rate, dashed: spiking)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for result in (r for r in results if "skipped" not in r):
        epochs = range(1, len(result["test_accuracy_per_epoch"]) + 1)
        color = "C0" if result["data"] == "digits" else "C1"
        style = dict(marker="o", markersize=3, color=color, linestyle="-" if result["neurons"] == "rate" else "--")
        label = f"{result['data']}, {result['neurons']} neurons"
        left.plot(epochs, result["test_accuracy_per_epoch"], label=f"{label}: {result['test_accuracy']:.1%}", **style)
        right.plot(epochs, result["mean_weight_angle_deg_per_epoch"], label=label, **style)
    left.set(xlabel="epoch", ylabel="test accuracy", title="stdp on ebm:256 (±β nudging)")
    right.set(xlabel="epoch", ylabel="angle to backprop (°, mean over weights)", title="update against backprop")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


@experiments.register(
    NETWORK,
    "a two-layer network trained with stdp under nudged dynamics on digits and Fashion-MNIST",
    SOURCE,
    figures=("stdp-network.png",),
)
def run_network(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """The ``stdp-network`` experiment (module docstring)."""
    from bioprop.report import plots

    if quick:
        runs = [Network("digits", neurons, 2, limit=400, probes=1) for neurons in NEURONS]
    else:
        runs = [Network(data, neurons, epochs) for data, epochs in (("digits", 20), ("fashion-mnist", 5))
                for neurons in NEURONS]  # fmt: skip
    results = [train_run(run, seed) for run in runs]
    if quick:
        results += [{"data": "fashion-mnist", "neurons": neurons, "skipped": "quick run: digits only"}
                    for neurons in NEURONS]  # fmt: skip
    plots.save(network_figure(results), experiments.figure_path(out, NETWORK, "stdp-network.png"))
    return {"runs": results}
