"""``ernoult2019``: the GDU property — equilibrium propagation's step-by-step updates equal backprop through time's
gradients step by step (Ernoult, Grollier, Querlioz, Bengio & Scellier 2019, "Updates of equilibrium prop match
gradients of backprop through time in an RNN with static input", NeurIPS; Theorem 1 and its figures of EP's
neuron and weight updates beside BPTT's gradients).

An energy net of :mod:`bioprop.nets.energy` (dense, hard-sigmoid states, ``output="se"``: the last layer is a
state, cost ℓ = ½‖s_L − y‖², as in the paper's prototypical setting), untrained, on a batch of scikit-learn's
digits (64 standardised pixels, from :func:`bioprop.data.load`), float64. Its weights are rescaled to spectral norm
0.5 so that the free phase contracts to a fixed point s* (the theorem's premise, checked: the free phase's last
step moves the states by less than :data:`FIXED_POINT_TOL`).

From s*, the library's nudged phases (:func:`bioprop.rules.equilibrium.nudged_phase`, symmetric nudging ±β) run K
steps; after each step t the library's EP update (:func:`~bioprop.rules.equilibrium.equilibrium_propagation`) is
taken. EP's step-by-step updates are the increments
    neurons: ΔEP_s(t) = (δ_{t+1} − δ_t),  δ_t = (s^{+β}_t − s^{−β}_t) / (2β)        (per example)
    weights: ΔEP_θ(t) = ĝ_θ(t + 1) − ĝ_θ(t),  ĝ_θ(k) the EP update after k nudged steps (ĝ_θ(0) = 0).
BPTT runs the library's free dynamics (:func:`bioprop.nets.energy.relax`, differentiable) for K steps from s*, with
the loss L = batch mean of ℓ at the last state; its step-by-step gradients are
    neurons: −B·D ⊙ ∂L/∂s_{K−t}   (D: the units inside the hard sigmoid's linear range at s*; B the batch)
    weights: −(∇_θ^{BPTT}(t + 1) − ∇_θ^{BPTT}(t)),  ∇_θ^{BPTT}(k) the gradient of L through the last k steps.
(The paper states the neuron identity for ∂L/∂s; with the clip outside the gradient of Φ, as here, the two sides
match on the units the clip lets through, D.) The weight identity is the sign convention of the library: EP's ĝ
is a descent direction, so ΔEP_θ(t) is compared with +(∇^{BPTT}(t + 1) − ∇^{BPTT}(t)).

Measured per step t < K and per layer / weight matrix the nudge has reached by then (a layer l below the output
gets its first signal after L − l steps, and then every other step: the states update synchronously; a step
without signal, BPTT's norm below :data:`NO_SIGNAL` of its largest, is checked for EP's update being ~0 instead):
the cosine and the relative error ‖ΔEP − ∇BPTT‖ / ‖∇BPTT‖, for β in
:data:`BETAS` (the theorem holds as β → 0: the error should shrink with β, like β² for symmetric nudging).

Scales: ``quick`` 64-32-10, batch 16, K = 8; ``default`` 64-64-32-10, batch 64, K = 15; ``full`` 64-256-256-10,
batch 128, K = 30 (the paper's nets are on MNIST: 784-512-10 and deeper; ours stays on digits).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor

from bioprop import reproduce

NAME = "ernoult2019"
FIGURE = "ernoult2019.png"
#: The nudging strengths measured, largest first; the claim is judged at the smallest.
BETAS: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
#: The free phase counts as converged when its last step moves the states (max |Δs|) by less than this.
FIXED_POINT_TOL = 1e-12
#: A BPTT increment whose norm is below this fraction of the same tensor's largest over the steps carries no signal
#: (rounding of a difference of equal sums): in a layered net stepped synchronously, a layer gets the output's error
#: only at every other step (the wave of the nudge goes down and up), so W1's increment is 0 at even steps.
NO_SIGNAL = 1e-10
#: At the smallest β, every reached tensor at every step must match BPTT this closely.
MIN_COSINE, MAX_RELATIVE = 0.999, 1e-3


class Setting(NamedTuple):
    """Hidden layer sizes ``hidden``, ``batch`` digits, ``steps`` K nudged / BPTT steps, ``free_steps`` of the
    free phase, ``seeds`` nets (seed, seed + 1, ...)."""

    hidden: tuple[int, ...]
    batch: int
    steps: int
    seeds: int = 1
    free_steps: int = 300
    spectral_norm: float = 0.5


SETTINGS = {"quick": Setting((32,), 16, 8), "default": Setting((64, 32), 64, 15, 2),
            "full": Setting((256, 256), 128, 30, 3)}  # fmt: skip


def build(setting: Setting, seed: int) -> tuple[Any, Tensor, Tensor]:
    """The float64 energy net (weights rescaled to ``setting.spectral_norm``), a batch of training digits (B, 64)
    drawn with ``seed`` and their one-hot targets (B, 10)."""
    from bioprop import data
    from bioprop.nets.energy import EnergyNet

    digits = data.load("digits", dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(digits.train_x), generator=generator)[: setting.batch]
    x = digits.train_x[pick].flatten(1)
    onehot = torch.nn.functional.one_hot(digits.train_y[pick], 10).double()
    torch.manual_seed(seed)
    net = EnergyNet((x.shape[1],), list(setting.hidden), 10).double()
    with torch.no_grad():
        for synapse in net.synapses:
            synapse.weight.mul_(setting.spectral_norm / torch.linalg.matrix_norm(synapse.weight, 2))
    return net, x, onehot


def measure(setting: Setting, seed: int) -> dict[str, Any]:
    """One net's comparison (module docstring): per β, per step and per tensor, cosine and relative error of EP's
    increment against BPTT's; plus a few units' and synapses' curves for the figure."""
    from bioprop.nets import energy
    from bioprop.rules.equilibrium import Equilibrium, Nudging, equilibrium_propagation, nudged_phase

    net, x, onehot = build(setting, seed)
    batch, K, n_layers = len(x), setting.steps, len(net.synapses)
    with torch.no_grad():
        x_drive = energy.drive(net, 0, x)
        free = energy.relax(net, x_drive, energy.zero_states(net, x, "se"), setting.free_steps)
        fixed = free.states
        after = energy.relax(net, x_drive, fixed, 1).states
        residual = max(float((a - b).abs().max()) for a, b in zip(after, fixed, strict=True))
    weights = [f"synapses.{i}.weight" for i in range(n_layers)]
    names = [name for name, _ in net.named_parameters()]
    params = list(net.parameters())

    # BPTT: neurons from one K-step run; weights through the last k steps for k = 0..K.
    with torch.enable_grad():
        states = [s.detach().requires_grad_() for s in fixed]
        history = [states]
        for _ in range(K):
            states = energy.relax(net, x_drive, states, 1).states
            for s in states:
                s.retain_grad()
            history.append(states)
        loss = 0.5 * (states[-1] - onehot).square().sum(1).mean()
        loss.backward()
    mask = [((s > 0) & (s < 1)).double() for s in fixed]
    bptt_s = [[-batch * mask[j] * grad_or_zero(history[K - t][j]) for j in range(n_layers)] for t in range(K)]
    for p in params:
        p.grad = None
    cumulative = [dict.fromkeys(weights, None)]
    for k in range(1, K + 1):
        with torch.enable_grad():
            last = energy.relax(net, energy.drive(net, 0, x), [s.detach() for s in fixed], k).states[-1]
            grads = torch.autograd.grad(0.5 * (last - onehot).square().sum(1).mean(), params, allow_unused=True)
        cumulative.append({n: g for n, g in zip(names, grads, strict=True) if n in weights})
    zero = {n: torch.zeros_like(p) for n, p in zip(names, params, strict=True)}
    bptt_w = [{n: (cumulative[t + 1][n] if cumulative[t + 1][n] is not None else zero[n])
               - (cumulative[t][n] if cumulative[t][n] is not None else zero[n]) for n in weights}
              for t in range(K)]  # fmt: skip

    per_beta: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    with torch.no_grad():
        for beta in BETAS:
            start = [torch.cat([s, s]) for s in fixed]
            b = torch.cat([x.new_full((batch, 1), beta), x.new_full((batch, 1), -beta)])
            deltas, ep = [[torch.zeros_like(s) for s in fixed]], [dict.fromkeys(weights, 0.0)]
            params_k = Nudging(1, 1.0, "se")
            for _ in range(K):
                start = nudged_phase(net, x_drive, start, onehot.repeat(2, 1), b, params_k).states
                plus, minus = [s[:batch] for s in start], [s[batch:] for s in start]
                deltas.append([(p - m) / (2 * beta) for p, m in zip(plus, minus, strict=True)])
                grads = equilibrium_propagation(net, x, onehot, Equilibrium(plus, beta), Equilibrium(minus, -beta),
                                                "se", x_drive)  # fmt: skip
                ep.append({n: g for n, g in zip(names, grads, strict=True) if n in weights})
            ep_s = [[deltas[t + 1][j] - deltas[t][j] for j in range(n_layers)] for t in range(K)]
            ep_w = [{n: ep[t + 1][n] - ep[t][n] for n in weights} for t in range(K)]
            floor_s = [NO_SIGNAL * max(float(bptt_s[t][j].norm()) for t in range(K)) for j in range(n_layers)]
            floor_w = {n: NO_SIGNAL * max(float(bptt_w[t][n].norm()) for t in range(K)) for n in weights}
            rows = []
            for t in range(K):
                row: dict[str, Any] = {"step": t}
                for j in range(n_layers):
                    row[f"s{j + 1}"] = compare(ep_s[t][j], bptt_s[t][j], floor_s[j])
                for n in weights:
                    row[n] = compare(ep_w[t][n], bptt_w[t][n], floor_w[n])
                rows.append(row)
            per_beta[f"{beta:g}"] = rows
            if beta == BETAS[-1]:
                curves = {
                    "step": list(range(K)),
                    "ep_neuron": [[float(ep_s[t][j][0, 0]) for t in range(K)] for j in range(n_layers)],
                    "bptt_neuron": [[float(bptt_s[t][j][0, 0]) for t in range(K)] for j in range(n_layers)],
                    "ep_weight": [[float(ep_w[t][n][0, 0]) for t in range(K)] for n in weights],
                    "bptt_weight": [[float(bptt_w[t][n][0, 0]) for t in range(K)] for n in weights],
                }
    return {"seed": seed, "fixed_point_residual": residual, "per_beta": per_beta, "curves": curves,
            "tensors": [f"s{j + 1}" for j in range(n_layers)] + weights}  # fmt: skip


def grad_or_zero(state: Tensor) -> Tensor:
    """``state.grad``, or zeros where the loss does not depend on it (the nudge has not reached it yet)."""
    return torch.zeros_like(state) if state.grad is None else state.grad


def compare(ep: Tensor, bptt: Tensor, floor: float = 0.0) -> dict[str, float | None]:
    """Cosine and relative error ‖ep − bptt‖/‖bptt‖ of two updates, and ``ep_norm`` / ``bptt_norm``; cosine and
    relative error are None where BPTT's norm is at most ``floor`` (no signal at this step: rounding only)."""
    a, b = ep.flatten(), bptt.flatten()
    na, nb = float(a.norm()), float(b.norm())
    if nb <= floor:
        return {"cosine": None, "relative_error": None, "ep_norm": na, "bptt_norm": nb}
    cosine = float(a @ b) / (na * nb) if na > 0 else 0.0
    return {"cosine": cosine, "relative_error": float((a - b).norm()) / nb, "ep_norm": na, "bptt_norm": nb}


def worst(rows: list[dict[str, Any]], tensors: list[str]) -> dict[str, Any]:
    """Over steps and reached tensors: the smallest cosine, the largest relative error, how many (step, tensor)
    pairs were reached, and the largest EP norm where BPTT's is zero (the unreached ones)."""
    reached = [row[n] for row in rows for n in tensors if row[n]["cosine"] is not None]
    unreached = [row[n]["ep_norm"] for row in rows for n in tensors if row[n]["cosine"] is None]
    return {"min_cosine": min(r["cosine"] for r in reached), "max_relative_error": max(r["relative_error"] for r in
            reached), "reached": len(reached), "max_ep_norm_unreached": max(unreached, default=0.0)}  # fmt: skip


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """One net's numbers: :func:`worst` per β (neurons and weights apart) and the fixed point's residual."""
    tensors = result["tensors"]
    weights = [t for t in tensors if t.endswith(".weight")]
    neurons = [t for t in tensors if t not in weights]
    summary: dict[str, Any] = {"fixed_point_residual": result["fixed_point_residual"]}
    for beta, rows in result["per_beta"].items():
        summary[f"beta={beta}"] = {"neurons": worst(rows, neurons), "weights": worst(rows, weights)}
    return summary


def holds_for(summary: dict[str, Any]) -> bool:
    """The claim for one net: the free phase reached a fixed point; at the smallest β every reached (step, tensor)
    has cosine ≥ :data:`MIN_COSINE` and relative error ≤ :data:`MAX_RELATIVE`, the unreached ones get no EP update
    (norm < 1e-9); and the largest relative error shrinks as β does."""
    if summary["fixed_point_residual"] >= FIXED_POINT_TOL:
        return False
    small = summary[f"beta={BETAS[-1]:g}"]
    for part in ("neurons", "weights"):
        w = small[part]
        if w["min_cosine"] < MIN_COSINE or w["max_relative_error"] > MAX_RELATIVE or w["max_ep_norm_unreached"] > 1e-9:
            return False
        errors = [summary[f"beta={beta:g}"][part]["max_relative_error"] for beta in BETAS]
        if any(b >= a for a, b in zip(errors, errors[1:], strict=False)):
            return False
    return True


def figure(results: list[dict[str, Any]], setting: Setting) -> Figure:
    """Left: one unit per layer, EP's ΔEP_s(t) (solid) and −BPTT's (markers) against the step; middle: one synapse
    per weight matrix, the same; right: the largest relative error over tensors per step, for each β (first net)."""
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    neuron_ax, weight_ax, error_ax = fig.subplots(1, 3)
    first = results[0]
    c = first["curves"]
    for j, (ep, bp) in enumerate(zip(c["ep_neuron"], c["bptt_neuron"], strict=True)):
        neuron_ax.plot(c["step"], ep, color=f"C{j}", label=f"layer {j + 1}: EP")
        neuron_ax.plot(c["step"], bp, color=f"C{j}", linestyle="none", marker="o", markersize=4,
                       label=f"layer {j + 1}: −BPTT")  # fmt: skip
    for j, (ep, bp) in enumerate(zip(c["ep_weight"], c["bptt_weight"], strict=True)):
        weight_ax.plot(c["step"], ep, color=f"C{j}", label=f"W{j + 1}: EP")
        weight_ax.plot(c["step"], bp, color=f"C{j}", linestyle="none", marker="o", markersize=4,
                       label=f"W{j + 1}: BPTT")  # fmt: skip
    for k, (beta, rows) in enumerate(first["per_beta"].items()):
        errors = []
        for row in rows:
            reached = [row[n]["relative_error"] for n in first["tensors"] if row[n]["cosine"] is not None]
            errors.append(max(reached) if reached else math.nan)
        error_ax.plot(c["step"], errors, marker=".", color=f"C{k}", label=f"β = {beta}")
    error_ax.axhline(MAX_RELATIVE, color="k", linestyle="--", linewidth=0.8, label="criterion")
    neuron_ax.set(xlabel="nudged step t (BPTT: step K − t)", ylabel="neuron update (state units per step)",
                  title="neurons: ΔEP_s(t) against −∂L/∂s")  # fmt: skip
    weight_ax.set(xlabel="nudged step t (BPTT: step K − t)", ylabel="weight update (per step, unitless)",
                  title="one synapse per layer: ΔEP_W(t) against BPTT")  # fmt: skip
    error_ax.set(yscale="log", xlabel="nudged step t", ylabel="‖ΔEP − ∇BPTT‖ / ‖∇BPTT‖ (worst tensor)",
                 title="relative error per step, by β")  # fmt: skip
    for ax in (neuron_ax, weight_ax, error_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    sizes = "-".join(str(n) for n in (64, *setting.hidden, 10))
    fig.suptitle(f"GDU on digits: energy net {sizes} (hard sigmoid, squared error), batch {setting.batch}, "
                 f"K = {setting.steps}, symmetric nudging, float64")  # fmt: skip
    return fig


@reproduce.register(
    NAME,
    paper="Ernoult, Grollier, Querlioz, Bengio & Scellier 2019, NeurIPS",
    source="Theorem 1 (GDU property) and its figures of EP's updates beside BPTT's gradients",
    claim="in the nudged phase, EP's step-by-step neuron and weight updates equal BPTT's gradients step by step "
    "(in the limit β → 0), when the free phase has reached a steady state",
    paper_value="ΔEP(β, t) → −∇BPTT(t) as β → 0 for every step t (Theorem 1); the curves coincide in the paper's "
    "figures (no table)",
    summary="ep on a digits energy net: EP's per-step updates against BPTT's, cosine and relative error per step",
    figures=(FIGURE,),
)
def run(out: Path, seed: int, scale: str) -> dict[str, Any]:
    """The reproduction (module docstring): ``ours`` holds, at the smallest β, the smallest cosine and the largest
    relative error over nets, steps and reached tensors (neurons and weights apart), and the largest relative error
    at each β; ``holds`` is :func:`holds_for` for every net."""
    from bioprop.report import plots

    setting = SETTINGS[scale]
    results = [measure(setting, seed + k) for k in range(setting.seeds)]
    per_seed = [summarise(r) for r in results]
    plots.save(figure(results, setting), reproduce.figure_path(out, NAME, FIGURE))
    small = f"beta={BETAS[-1]:g}"
    ours: dict[str, Any] = {}
    for part in ("neurons", "weights"):
        ours[f"{part}_min_cosine"] = min(s[small][part]["min_cosine"] for s in per_seed)
        ours[f"{part}_max_relative_error"] = max(s[small][part]["max_relative_error"] for s in per_seed)
    for beta in BETAS:
        ours[f"max_relative_error_beta={beta:g}"] = max(
            max(s[f"beta={beta:g}"][part]["max_relative_error"] for part in ("neurons", "weights")) for s in per_seed
        )
    ours["beta"] = BETAS[-1]
    ours["steps"] = setting.steps
    ours["seeds_holding"] = sum(holds_for(s) for s in per_seed)
    ours["seeds"] = len(per_seed)
    return {
        "ours": ours,
        "holds": all(holds_for(s) for s in per_seed),
        "criterion": f"for every net: the free phase reached a fixed point (last step's max |Δs| < "
        f"{FIXED_POINT_TOL:g}); at β = {BETAS[-1]:g} (symmetric), at every step and for every layer and weight "
        f"matrix the nudge has reached, cosine ≥ {MIN_COSINE} and relative error ≤ {MAX_RELATIVE:g} against BPTT, "
        f"no EP update where BPTT's is zero; and the largest relative error shrinks with β over {BETAS}",
        "setting": setting._asdict(),
        "betas": list(BETAS),
        "per_seed": per_seed,
        "curves": results,
    }
