"""Spike-timing-dependent plasticity as approximate gradient descent, ``stdp`` (Bengio et al. 2015, "Towards
Biologically Plausible Deep Learning", arXiv:1502.04156, eq. 1; Scellier & Bengio 2017, Front. Comput. Neurosci.
11:24, sec. "STDP"): a presynaptic spike times the rate of change of the postsynaptic potential,

.. math::
    ΔW_{ij} ∝ S_i \\, \\dot V_j

(:func:`spike_voltage_update`), is stochastic gradient descent on an objective J whenever the neural dynamics move
the potentials towards lower J, V̇ ≈ −β ∂J/∂V: for one layer with the input clamped, Σ_t S_i V̇_j = −β x_i ∂J/∂V_j
summed over the time the potentials move, the delta rule.

The network is an energy-based net (:mod:`bioprop.nets.energy`, ``--arch ebm:...``), trained as ``ep`` trains it:
a free phase to the fixed point s⁰, then a nudged phase of ``nudged_steps`` steps on Φ − β ℓ from s⁰ (the output
pulled towards lower loss ℓ; :mod:`bioprop.rules.equilibrium`). Each unit's state s ∈ [0, 1] is both its potential
V and its firing rate ρ(V) (the hard sigmoid is the identity inside [0, 1]); one relaxation step is the unit of
time (dt = 1; ε = dt/τ, the leak of the potentials). Plasticity is on during the nudged phase only: every synapse
accumulates its presynaptic spikes S_i(t) times the change of its postsynaptic potential V_j(t+1) − V_j(t) over
the phase, and the sum divided by β estimates −∂J/∂W:

- ``spikes=bernoulli``: in each step a unit of rate r fires with probability ``p_max``·|r|/c (escape noise), its
  spike counted as Ŝ = ±c/``p_max`` so that E[Ŝ] = r. c = 1 for the states (|s| ≤ 1 for every bounded activation);
  for the clamped input, whose standardised values are not rates, a signed value is carried by an ON/OFF pair of
  cells (ON fires for x > 0, OFF for x < 0 through the negated synapse), with c = max(1, max_i |x_i|) per example.
  The draws come from the rule's generator (:meth:`Rule.generator`, stream 1: the same in ``grads`` and
  ``backward`` of one step).
- ``spikes=rate``: S = ρ(V) itself, the mean-field limit. Then, with S_i(t) the rate at the start of step t,
  Σ_t S_i ΔV_j + S_j ΔV_i = s_i^β s_j^β − s_i⁰ s_j⁰ − Σ_t ΔV_i ΔV_j: ``ep``'s update up to that O(β²) term.

Symmetric weights. A weight W_ij of the energy net is one synapse in each direction (i → j and j → i: the
connections are symmetric), so it gets the sum S_i V̇_j + S_j V̇_i; its bias, a synapse from an always-on unit,
gets V̇_j. The clamped input has V̇ = 0, so the first layer's weights get S_x V̇_1 only. This sum is what the
theory requires: d(s_i s_j) = s_i ds_j + s_j ds_i.

Output. ``se``: the last layer is a state, nudged by β (y − s_L). ``ce`` (the default, as for ``ep``): the readout
z = W s_{L−1} + b lies outside the dynamics; its units' potentials are pulled by the loss alone, V̇_z = −β ∂ℓ/∂z
(the one-layer case above), and their synapses' S·V̇ is averaged over the phase's steps (a potential that is never
brought back would otherwise grow with the phase's length).

``nudge=one-sided`` contrasts the phase nudged by β with the free fixed point, where V̇ = 0 (no plasticity);
``symmetric`` runs phases nudged by +β and −β from s⁰ and takes (ΔW₊ − ΔW₋)/2β (lower bias); ``random-sign``
draws the sign of β per step (:func:`bioprop.rules.equilibrium.betas`). ``grads`` is a descent direction: −ΔW.

Reference gradient (:meth:`Rule.reference_grads`): as for ``ep``, backprop through time of the output loss over the
prediction path's free phase, i.e. −∂J/∂W at the free fixed point once it has settled.

What is not modelled: the units drive each other with their rates (the mean field of many spiking synapses), so
spikes enter the plasticity, not the dynamics; a spike does not reset the potential. Dense synapses only: a
convolutional energy net (``ebm-conv``) is refused at create, naming its first convolution.

Guards: those of ``ep`` (a free phase that does not converge, a nudged phase that stops settling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import EnergyNet, Relaxed
from bioprop.rules.base import Entry, FigureSpec, Trace, Update, make_card, option, register
from bioprop.rules.contrastive import steps_option
from bioprop.rules.equilibrium import EquilibriumOptions, EquilibriumPropagation, betas, nudging

SPIKES = ("bernoulli", "rate")
#: The most numbers of spike trains and potentials a nudged phase keeps at once (:func:`stdp_phase`).
CHUNK = 1 << 22


def spike_voltage_update(S: Tensor, V: Tensor, dt: float = 1.0) -> Tensor:
    """ΔW_ij = (1/B) Σ_b Σ_t S_i(t) V̇_j(t), the STDP update of Bengio et al. 2015 (eq. 1: ΔW_ij ∝ S_i V̇_j),
    averaged over the batch.

    ``S`` (T, B, n_pre): the presynaptic spikes emitted in each of T steps (counts, 0/1, or rates for the mean-field
    limit); ``V`` (T + 1, B, n_post): the postsynaptic potentials at the T + 1 instants bounding those steps; ``dt``
    (> 0): the length of a step. V̇_j(t) = (V_j(t + 1) − V_j(t))/dt is the slope over step t, in which S(t) fell: each
    spike contributes the postsynaptic slope at its time (∫ S_i V̇_j dt with S a sum of Dirac impulses). Returns
    (n_post, n_pre), in V's units per unit of time. Raises BioPropError for shapes that do not fit or dt ≤ 0."""
    if S.dim() != 3 or V.dim() != 3 or V.shape[0] != S.shape[0] + 1 or V.shape[1] != S.shape[1]:
        raise BioPropError(f"spike_voltage_update: S (T, B, n_pre) and V (T + 1, B, n_post) do not fit: S "
                           f"{tuple(S.shape)}, V {tuple(V.shape)}")  # fmt: skip
    if not dt > 0:
        raise BioPropError(f"spike_voltage_update: dt must be positive, not {dt!r}")
    slope = (V[1:] - V[:-1]) / dt  # (T, B, n_post)
    return slope.reshape(-1, V.shape[2]).t() @ S.reshape(-1, S.shape[2]) / S.shape[1]  # Σ over t and b at once


def presynaptic_spikes(rates: Tensor, scale: Tensor | float, p_max: float, generator: torch.Generator | None) -> Tensor:
    """Ŝ for one step from ``rates`` (N, n): spikes of probability ``p_max``·|r|/``scale`` (``scale`` ≥ |r|, a
    float or (N, 1)), signed as r, counted as ±scale/p_max so that E[Ŝ] = r (module docstring); with ``generator``
    None, the rates themselves (``spikes=rate``)."""
    if generator is None:
        return rates
    fired = torch.rand(rates.shape, generator=generator, dtype=rates.dtype, device=rates.device)
    fired = (fired < rates.abs() * (p_max / scale)).to(rates.dtype)
    return fired * torch.sign(rates) * (scale / p_max)


@dataclass(frozen=True)
class StdpOptions(EquilibriumOptions):
    nudged_steps: int = steps_option(20, "T2: steps of each nudged phase, during which the synapses accumulate S·V̇")
    spikes: str = option("bernoulli", "presynaptic spikes: bernoulli (drawn each step with probability p_max·ρ(V)) "
                         "or rate (S = ρ(V), the mean-field limit)", choices=SPIKES)  # fmt: skip
    p_max: float = option(1.0, "spike probability per step of a unit at full rate ρ = 1 (spikes=bernoulli)",
                          check=lambda v: 0.0 < v <= 1.0, check_says="must be in (0, 1]")  # fmt: skip
    seed: int = option(0, "seed of the spikes and of the random signs (nudge=random-sign)")


class Phase(NamedTuple):
    """What one stacked nudged phase gives: the accumulated ΔW (an ascent direction on −J, in ``net.parameters()``
    order, each phase's rows already weighted), the relaxation (its last states and residuals, per step when
    traced) and, when traced, the output loss ℓ of the rows nudged by the largest β at each instant (steps + 1,)."""

    grads: list[Tensor]
    relaxed: Relaxed
    costs: Tensor | None


def stdp_phase(net: EnergyNet, x: Tensor, start: list[Tensor], onehot: Tensor, beta: Tensor, weights: Tensor,
               steps: int, eps: float, output: str, p_max: float, generator: torch.Generator | None,
               trace: bool = False) -> Phase:  # fmt: skip
    """Relax on Φ − β ℓ for ``steps`` steps from ``start`` (N = k·B rows: k stacked phases of the batch ``x``, with
    ``beta`` (N, 1) and ``onehot`` (N, K) per row) and accumulate Σ_rows w_r Σ_t S V̇ over the steps for every
    synapse with :func:`spike_voltage_update` (module docstring), ``weights`` (N,) the rows' weights w_r (e.g.
    ±1/(β₂ − β₁) for two phases; the function's batch mean is over the N rows, so w_r carries the factor N/B).

    The spike trains and potentials are kept for at most :data:`CHUNK` numbers at a time: the sum over t is linear,
    so a long phase is the sum of its chunks' updates (the potential at a chunk's end starts the next chunk)."""
    rows = len(beta)
    x_rows = x.flatten(1).repeat(rows // len(x), 1)  # (N, n_in)
    scale = x_rows.abs().amax(1, keepdim=True).clamp_min(1.0)  # the input's full scale, per example
    x_drive = energy.repeat_drive(energy.drive(net, 0, x), rows // len(x))
    target = nudging(net, onehot, beta, output)
    w = weights[:, None]  # (N, 1): weights the presynaptic side of each row
    total = [torch.zeros_like(p) for synapse in net.synapses for p in (synapse.weight, synapse.bias)]
    n = len(start)
    readout = output == "ce"
    chunk = max(1, CHUNK // (rows * (x_rows.shape[1] + sum(s.shape[1] for s in start))))
    spikes: list[list[Tensor]] = [[] for _ in range(n + 1)]  # Ŝ of x, s_1, ..., s_n in each step of the chunk
    potentials = [[s] for s in start]  # V of s_1, ..., s_n at each instant of the chunk
    slopes: list[Tensor] = []  # V̇_z of the readout units in each step of the chunk (output=ce)

    def flush() -> None:
        S = [torch.stack(train) for train in spikes]  # (T, N, n_l), already weighted by w
        V = [torch.stack(trace) for trace in potentials]  # (T + 1, N, n_l)
        on = w.expand(len(S[0]), rows, 1)  # the bias's always-on presynaptic unit
        for index in range(n):  # the synapse s_index → s_{index+1} (s_0 = x)
            total[2 * index] += spike_voltage_update(S[index], V[index])
            total[2 * index + 1] += spike_voltage_update(on, V[index])[:, 0]
            if index > 0:  # its other direction, s_{index+1} → s_index
                total[2 * index] += spike_voltage_update(S[index + 1], V[index - 1]).t()
        if readout:  # the readout units' potentials: V_z(t) − V_z(0) = Σ_{t' < t} V̇_z(t') (dt = 1)
            Z = torch.cumsum(torch.stack([torch.zeros_like(slopes[0]), *slopes]), 0)
            total[-2] += spike_voltage_update(S[n], Z)
            total[-1] += spike_voltage_update(on, Z)[:, 0]
        for train in spikes:
            train.clear()
        for trace in potentials:
            del trace[:-1]
        slopes.clear()

    states = list(start)
    costs: list[Tensor] = []
    residuals: list[Tensor] = []
    for t in range(steps):
        if trace:
            costs.append(loss_of(net, states, onehot, beta, output))
        spikes[0].append(presynaptic_spikes(x_rows, scale, p_max, generator) * w)
        for train, s in zip(spikes[1:], states, strict=True):
            train.append(presynaptic_spikes(s, 1.0, p_max, generator) * w)
        if readout:  # V̇_z = −β ∂ℓ/∂z at the readout of the step's states, averaged over the steps
            slopes.append(-beta * (torch.softmax(energy.readout(net, states), 1) - onehot) / steps)  # (N, K)
        new = energy.step(net, x_drive, states, eps, target.nudge)
        for trace_, s in zip(potentials, new, strict=True):
            trace_.append(s)
        if trace or t >= steps - 2:
            residuals.append(energy.mean_change(new, states))
        states = new
        if len(spikes[0]) == chunk or t == steps - 1:
            flush()
    if trace:
        costs.append(loss_of(net, states, onehot, beta, output))
    last, before = float(residuals[-1]), float(residuals[-2]) if len(residuals) > 1 else 0.0
    relaxed = Relaxed(states, steps, last, before, None, torch.stack(residuals) if trace else None)
    return Phase(total, relaxed, torch.stack(costs) if trace else None)


def loss_of(net: EnergyNet, states: list[Tensor], onehot: Tensor, beta: Tensor, output: str) -> Tensor:
    """The output loss ℓ (batch mean over the rows nudged by the largest β) at ``states``."""
    rows = beta[:, 0] == beta.max()
    z = energy.prediction(net, [s[rows] for s in states], output)
    y = onehot[rows]
    if output == "se":
        return 0.5 * (z - y).square().sum(1).mean()
    return torch.nn.functional.cross_entropy(z, y.argmax(1))


CARD = make_card(
    linear=(True, "the update is local, presynaptic spikes times the postsynaptic potential's rate of change; the "
            "network's own nonlinear relaxation carries the error"),
    derivatives=(True, "no derivative of the activation is computed: V̇ is the potential's measured change"),
    weight_transport=(False, "the nudge reaches hidden units through the transposed forward weights: the "
                      "connections are symmetric"),
    spikes=(False, "the plasticity reads presynaptic spikes, but units drive each other with their rates (the "
            "mean field)"),
    clock=(False, "a global signal switches between the free and the nudged phase, when plasticity is on"),
    targets=(False, "targets are given by the task"),
)  # fmt: skip


@register(
    "stdp",
    family="contrastive",
    paper="Bengio et al. 2015, arXiv:1502.04156 (eq. 1); Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24",
    summary="STDP: presynaptic spikes × rate of change of the postsynaptic potential over an EP-nudged phase",
    card=CARD,
)
class SpikeTimingPlasticity(EquilibriumPropagation):
    """``stdp``: see the module docstring. ``ep``'s free phase, options and guards; its own nudged phase."""

    Options = StdpOptions
    opts: StdpOptions
    trace_specs = (
        Trace("free energy", "energy E = ½Σ‖s_l‖² − Φ (batch mean)"),
        Trace("free residual", "mean |Δs| of the step"),
        Trace("nudged loss", "output loss ℓ along the +β nudged phase (batch mean)", relative=True),
        Trace("nudged residual", "mean |ΔV| of the step"),
    )
    figures = (FigureSpec("energy.png", "free and nudged phases per relaxation step",
                          tuple(t.name for t in trace_specs)),)  # fmt: skip

    def __init__(self, net: EnergyNet, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        for index, synapse in enumerate(net.synapses):
            if not isinstance(synapse, nn.Linear):
                raise BioPropError(f"rule {self.name}: layer synapses.{index} ({type(synapse).__name__}) is not "
                                   "dense: stdp trains dense energy nets (ebm:H1x...), not ebm-conv")  # fmt: skip

    def contrast(self, x: Tensor, y: Tensor, index: Tensor | None, trace: bool) -> Update:
        net, o = self.net, self.opts
        free = self.free_phase(x, index, trace)
        logits = energy.prediction(net, free.relaxed.states, o.output)
        onehot = losses.onehot(y, logits)
        beta_1, beta_2 = betas(o.nudge, o.beta, self.generator(0) if o.nudge == "random-sign" else None)
        batch = len(x)
        scale = 1.0 / (beta_2 - beta_1)
        if beta_1 == 0.0:  # one nudged phase; the free fixed point has V̇ = 0
            beta = x.new_full((batch, 1), beta_2)
            weights = x.new_full((batch,), scale)
            start = free.relaxed.states
        else:  # both phases from s⁰, side by side in one stack of 2B rows: β₂ rows, then β₁ rows
            beta = torch.cat([x.new_full((batch, 1), beta_2), x.new_full((batch, 1), beta_1)])
            weights = torch.cat([x.new_full((batch,), 2 * scale), x.new_full((batch,), -2 * scale)])
            start = [torch.cat([s, s]) for s in free.relaxed.states]
        generator = self.generator(1, x.device) if o.spikes == "bernoulli" else None
        phase = stdp_phase(net, x, start, onehot.repeat(len(beta) // batch, 1), beta, weights, o.nudged_steps,
                           o.eps, o.output, o.p_max, generator, trace)  # fmt: skip
        self.check_settled(phase.relaxed)
        grads = self.named([-g for g in phase.grads])
        nudged = phase.relaxed
        traces = None
        if free.relaxed.energies is not None:
            traces = {"free energy": free.relaxed.energies, "free residual": free.relaxed.residuals,
                      "nudged loss": phase.costs, "nudged residual": nudged.residuals}  # fmt: skip
        return Update(grads, self.loss.value(logits, y), logits, traces, free.keep)
