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

Neurons. ``neurons=rate`` (the default, above): the units drive each other with their rates (the mean field of many
spiking synapses), so spikes enter the plasticity, not the dynamics. ``neurons=spiking``: the units communicate by
spikes alone. Each unit has a leaky potential V (time constant dt/ε) integrating the spikes it receives,

.. math::
    V_l ← σ\bigl((1 − ε) V_l + ε (W_{l−1} Ŝ_{l−1} + b_{l−1} + W_l^T Ŝ_{l+1} − β ∂ℓ/∂V_l)\bigr)

(:func:`spiking_step`: the energy net's step with every presynaptic rate replaced by its spikes, E[Ŝ] = ρ(V), the
input's included; σ bounds V), and emits spikes at rate ρ(V): ``spikes=threshold``, an integrate-and-fire generator
(u ← u + p_max ρ(V); a spike when u ≥ 1, then u ← u − 1, :func:`integrate_and_fire`; u starts uniform in [0, 1) from
the rule's generator), or ``spikes=bernoulli`` (escape noise, as above; noisier). The free phase is then
``free_steps`` steps of this network from rest (:meth:`SpikeTimingPlasticity.spiking_free_phase`): the potentials
keep fluctuating, there is no fixed point to check. Both nudged phases (β₂ and β₁; β₁ = 0 for ``one-sided``, the free
phase continued) run from its end, with the generators continuing, and the update is their weighted difference as
above: the fluctuations the two phases share, and the pairings' biases at the stationary state, cancel in it. Each
spike Ŝ(t) is paired with the slope its postsynaptic potential has when it arrives, V(t) − V(t − 1)
(:func:`spiking_phase`): the slope over the step it drives would add ε W_ji Ŝ_i(t)² to every pairing. The readout
(``ce``) and the nudge read the last layer's potential. Predictions (:meth:`Rule.predict`) and the reference gradient
stay the network's mean-field relaxation: what the net computes, which the spiking network approximates.
Measured (``bioprop experiment stdp-network``: ebm:256, ε = 0.2, 60 free and 30 nudged steps, threshold spikes;
see the README). What is not modelled: synaptic delays and currents beyond the one-step leak, refractoriness.
Dense synapses only: a convolutional energy net (``ebm-conv``) is refused at create, naming its first convolution.

Guards: those of ``ep`` (a free phase that does not converge, a nudged phase that stops settling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import Drive, EnergyNet, Relaxed
from bioprop.rules.base import Entry, FigureSpec, Trace, Unstable, Update, make_card, option, register
from bioprop.rules.contrastive import FreePhase, steps_option
from bioprop.rules.equilibrium import EquilibriumOptions, EquilibriumPropagation, betas, nudging
from bioprop.rules.options import seed_option

SPIKES = ("bernoulli", "threshold", "rate")
NEURONS = ("rate", "spiking")
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


def integrate_and_fire(rates: Tensor, u: Tensor, scale: Tensor | float, p_max: float) -> tuple[Tensor, Tensor]:
    """One step of the integrate-and-fire spike generator (``spikes=threshold``): u ← u + ``p_max``·|r|/``scale``,
    a spike where u ≥ 1, then u ← u − 1 there (reset by subtraction), counted as ±scale/p_max, signed as r.
    ``rates`` and ``u`` (N, n); |r| ≤ ``scale`` so at most one spike per step. Over T steps the spike count
    differs from Σ_t |r(t)| p_max/scale by less than one, whatever the rates do: the sigma-delta property that makes
    the spike train an unbiased, low-noise code of the rate. Returns (Ŝ, the new u)."""
    u = u + rates.abs() * (p_max / scale)
    fired = (u >= 1.0).to(rates.dtype)
    return fired * torch.sign(rates) * (scale / p_max), u - fired


class SpikeSource:
    """The spikes of every population of a phase, step by step, for ``spikes`` = bernoulli, threshold or rate
    (:func:`presynaptic_spikes`, :func:`integrate_and_fire`). The integrate-and-fire generators keep one u per unit
    (``state``, keyed by population: 0 the input, l the state layer l), started uniform in [0, 1) from ``generator``
    so that units of equal rate do not fire in lockstep."""

    def __init__(self, spikes: str, p_max: float, generator: torch.Generator | None) -> None:
        self.spikes, self.p_max, self.generator = spikes, p_max, generator
        self.state: dict[int, Tensor] = {}

    def __call__(self, population: int, rates: Tensor, scale: Tensor | float) -> Tensor:
        if self.spikes != "threshold":
            return presynaptic_spikes(rates, scale, self.p_max, self.generator if self.spikes == "bernoulli" else None)
        u = self.state.get(population)
        if u is None:
            u = torch.rand(rates.shape, generator=self.generator, dtype=rates.dtype, device=rates.device)
        spikes, self.state[population] = integrate_and_fire(rates, u, scale, self.p_max)
        return spikes

    def repeat(self, copies: int) -> None:
        """Continue each unit's generator in ``copies`` stacked copies of its rows (the nudged phases run side by
        side from one free phase)."""
        self.state = {key: u.repeat(copies, 1) for key, u in self.state.items()}


class Plasticity:
    """Σ_rows Σ_t S V̇ for every synapse of ``net`` (:func:`spike_voltage_update`), fed step by step: the spikes of
    the input and of each state layer (already weighted by the row weights), the potentials of the state layers and,
    with the ``ce`` readout, the readout units' slopes. Pairs spikes k with the change of the potentials from instant
    k to k + 1 of what it was fed; kept for at most :data:`CHUNK` numbers at a time (the sum over t is linear, so a
    long phase is the sum of its chunks: the last potential starts the next chunk)."""

    def __init__(self, net: EnergyNet, start: list[Tensor], w: Tensor, readout: bool, inputs: int) -> None:
        self.n, self.w, self.readout = len(start), w, readout
        self.total = [torch.zeros_like(p) for synapse in net.synapses for p in (synapse.weight, synapse.bias)]
        self.spikes: list[list[Tensor]] = [[] for _ in range(self.n + 1)]  # Ŝ of x, s_1, ..., s_n per step
        self.potentials = [[s] for s in start]  # V of s_1, ..., s_n at each instant
        self.slopes: list[Tensor] = []  # V̇_z of the readout units per step (output=ce)
        numbers_per_step = len(start[0]) * (inputs + sum(s.shape[1] for s in start))  # spikes of x and all states
        self.chunk = max(1, CHUNK // numbers_per_step)

    def add(self, spikes: list[Tensor], potentials: list[Tensor], slope: Tensor | None) -> None:
        """One step: the spikes Ŝ (x, s_1, ..., s_n), the potentials at the step's end, the readout's slope."""
        for train, S in zip(self.spikes, spikes, strict=True):
            train.append(S)
        for trace, V in zip(self.potentials, potentials, strict=True):
            trace.append(V)
        if slope is not None:
            self.slopes.append(slope)
        if len(self.spikes[0]) == self.chunk:
            self.flush()

    def flush(self) -> list[Tensor]:
        """Add the kept steps to the totals and forget them; the totals (descent directions of −J, unsigned)."""
        if not self.spikes[0]:
            return self.total
        total, n = self.total, self.n
        S = [torch.stack(train) for train in self.spikes]  # (T, N, n_l), weighted
        V = [torch.stack(trace) for trace in self.potentials]  # (T + 1, N, n_l)
        on = self.w.expand(len(S[0]), *self.w.shape)  # the bias's always-on presynaptic unit
        for index in range(n):  # the synapse s_index → s_{index+1} (s_0 = x)
            total[2 * index] += spike_voltage_update(S[index], V[index])
            total[2 * index + 1] += spike_voltage_update(on, V[index])[:, 0]
            if index > 0:  # its other direction, s_{index+1} → s_index
                total[2 * index] += spike_voltage_update(S[index + 1], V[index - 1]).t()
        if self.readout:  # the readout units' potentials: V_z(t) − V_z(0) = Σ_{t' < t} V̇_z(t') (dt = 1)
            Z = torch.cumsum(torch.stack([torch.zeros_like(self.slopes[0]), *self.slopes]), 0)
            total[-2] += spike_voltage_update(S[n], Z)
            total[-1] += spike_voltage_update(on, Z)[:, 0]
        for train in self.spikes:
            train.clear()
        for trace in self.potentials:
            del trace[:-1]
        self.slopes.clear()
        return total


@dataclass(frozen=True)
class StdpOptions(EquilibriumOptions):
    nudged_steps: int = steps_option(20, "T2: steps of each nudged phase, during which the synapses accumulate S·V̇")
    neurons: str = option("rate", "rate: units drive each other with their rates, spikes enter the plasticity only; "
                          "spiking: units drive each other with spikes alone (leaky potentials integrating spike "
                          "input; needs eps < 1, e.g. eps=0.2 free_steps=60 nudged_steps=30)",
                          choices=NEURONS)  # fmt: skip
    spikes: str = option("bernoulli", "spike generation: bernoulli (escape noise, probability p_max·ρ(V) per step), "
                         "threshold (integrate-and-fire, reset by subtraction) or rate (S = ρ(V), the mean-field "
                         "limit; neurons=rate only)", choices=SPIKES)  # fmt: skip
    p_max: float = option(1.0, "spikes per step of a unit at full rate ρ = 1: a probability (spikes=bernoulli) or the "
                          "integrate-and-fire generator's gain (spikes=threshold)",
                          check=lambda v: 0.0 < v <= 1.0, check_says="must be in (0, 1]")  # fmt: skip
    seed: int = seed_option("seed of the spikes and of the random signs (nudge=random-sign)")


class Phase(NamedTuple):
    """What one stacked nudged phase gives: the accumulated ΔW (an ascent direction on −J, in ``net.parameters()``
    order, each phase's rows already weighted), the relaxation (its last states and residuals, per step when
    traced) and, when traced, the output loss ℓ of the rows nudged by the largest β at each instant (steps + 1,)."""

    grads: list[Tensor]
    relaxed: Relaxed
    costs: Tensor | None


def stdp_phase(net: EnergyNet, x: Tensor, start: list[Tensor], onehot: Tensor, beta: Tensor, weights: Tensor,
               steps: int, eps: float, output: str, source: SpikeSource, trace: bool = False) -> Phase:  # fmt: skip
    """``neurons=rate``: relax on Φ − β ℓ for ``steps`` steps from ``start`` (N = k·B rows: k stacked phases of the
    batch ``x``, with ``beta`` (N, 1) and ``onehot`` (N, K) per row), the units driven by each other's rates, and
    accumulate Σ_rows w_r Σ_t Ŝ(t) (V(t + 1) − V(t)) for every synapse (:class:`Plasticity`; module docstring),
    ``weights`` (N,) the rows' weights w_r (e.g. ±1/(β₂ − β₁) for two phases; the function's batch mean is over the
    N rows, so w_r carries the factor N/B), the spikes Ŝ(t) drawn by ``source`` from the rates at the step's start."""
    rows = len(beta)
    x_rows, scale, x_drive = clamped_input(net, x, rows)
    target = nudging(net, onehot, beta, output)
    w = weights[:, None]  # (N, 1): weights the presynaptic side of each row
    plasticity = Plasticity(net, start, w, output == "ce", x_rows.shape[1])
    states = list(start)
    costs: list[Tensor] = []
    residuals: list[Tensor] = []
    for t in range(steps):
        if trace:
            costs.append(loss_of(net, states, onehot, beta, output))
        spikes = [source(0, x_rows, scale) * w] + [source(i, s, 1.0) * w for i, s in enumerate(states, start=1)]
        slope = readout_slope(net, states, onehot, beta, steps) if output == "ce" else None
        new = energy.step(net, x_drive, states, eps, target.nudge)
        plasticity.add(spikes, new, slope)
        if trace or t >= steps - 2:
            residuals.append(energy.mean_change(new, states))
        states = new
    if trace:
        costs.append(loss_of(net, states, onehot, beta, output))
    return Phase(plasticity.flush(), relaxed_of(states, steps, residuals, trace), torch.stack(costs) if trace else None)


def spiking_phase(net: EnergyNet, x: Tensor, start: list[Tensor], onehot: Tensor | None, beta: Tensor | None,
                  weights: Tensor | None, steps: int, eps: float, output: str, source: SpikeSource,
                  trace: bool = False) -> Phase:  # fmt: skip
    """``neurons=spiking``: ``steps`` steps of the spiking network from the potentials ``start`` (N rows, as in
    :func:`stdp_phase`); every unit's potential integrates the spikes of its neighbours (:func:`spiking_step`),
    nudged by β when ``beta`` is given (the nudged phase; None: the free phase, with no plasticity either).

    Plasticity (``weights`` given) pairs the spike Ŝ(t) drawn at instant t with the slope the postsynaptic potential
    has when it arrives, V(t) − V(t − 1), for t = 1 … ``steps`` (one last draw at the end): the slope of the step
    that the spike itself drives, V(t + 1) − V(t) = ε (… + W_ji Ŝ_i(t) …), would add ε W_ji Ŝ_i(t)² to every
    pairing, a bias that grows each weight's magnitude (Hebbian runaway) and that no nudge causes."""
    rows = len(start[0])
    x_rows, scale, x_drive = clamped_input(net, x, rows)
    nudge = None if beta is None else nudging(net, onehot, beta, output).nudge
    plastic = weights is not None
    w = weights[:, None] if plastic else None
    plasticity = Plasticity(net, start, w, output == "ce", x_rows.shape[1]) if plastic else None
    states, before = list(start), None
    costs: list[Tensor] = []
    residuals: list[Tensor] = []
    for t in range(steps + 1):
        if trace:  # nudged: the output loss; free: the mean field's energy at the potentials
            costs.append(energy.mean_energy(net, x_drive, states) if beta is None else
                         loss_of(net, states, onehot, beta, output))  # fmt: skip
        if t == steps and not plastic:
            break
        spikes = [source(0, x_rows, scale)] + [source(i, s, 1.0) for i, s in enumerate(states, start=1)]
        if plastic and t >= 1:  # Ŝ(t) with V(t) − V(t − 1); the readout's slope of step t − 1
            slope = readout_slope(net, before, onehot, beta, steps) if output == "ce" else None
            plasticity.add([S * w for S in spikes], states, slope)
        if t == steps:
            break
        new = spiking_step(net, spikes, states, eps, nudge)
        if trace or t >= steps - 2:
            residuals.append(energy.mean_change(new, states))
        before, states = states, new
    grads = plasticity.flush() if plastic else []
    return Phase(grads, relaxed_of(states, steps, residuals, trace), torch.stack(costs) if costs else None)


def spiking_step(net: EnergyNet, spikes: list[Tensor], potentials: list[Tensor], eps: float,
                 nudge: Callable[[Tensor], Tensor] | None) -> list[Tensor]:  # fmt: skip
    """One step of the spiking units: V_l ← σ((1 − ε) V_l + ε (W_{l−1} Ŝ_{l−1} + b_{l−1} + W_lᵀ Ŝ_{l+1}
    [− β ∂ℓ/∂V_l for the last])), the energy net's step (:func:`bioprop.nets.energy.step`) with every presynaptic
    rate replaced by its spikes ``spikes`` (x, s_1, …, s_n: Ŝ, E[Ŝ] = ρ(V)), the clamped input's too. σ, the
    activation, bounds the potential."""
    new = []
    last = len(potentials) - 1
    for i, V in enumerate(potentials):  # V is V_{i+1}: driven by Ŝ_i from below, Ŝ_{i+2} from above
        total = energy.drive(net, i, spikes[i]).value
        if i < last:
            total = total + spikes[i + 2] @ net.synapses[i + 1].weight
        if i == last and nudge is not None:
            total = total + nudge(V)
        new.append(net.act(torch.lerp(V, total, eps)))
    return new


def clamped_input(net: EnergyNet, x: Tensor, rows: int) -> tuple[Tensor, Tensor, Drive]:
    """The clamped input for ``rows`` = k·B stacked rows: x flattened (N, n_in), its full scale per example
    max(1, max_i |x_i|) (N, 1) (module docstring) and its drive f_0(x) = W_0 x + b_0 (N, n_1)."""
    x_rows = x.flatten(1).repeat(rows // len(x), 1)
    scale = x_rows.abs().amax(1, keepdim=True).clamp_min(1.0)
    return x_rows, scale, energy.repeat_drive(energy.drive(net, 0, x), rows // len(x))


def readout_slope(net: EnergyNet, states: list[Tensor], onehot: Tensor, beta: Tensor, steps: int) -> Tensor:
    """V̇_z = −β ∂ℓ/∂z of the readout units at ``states``, divided by the phase's ``steps`` (module docstring)."""
    return -beta * (torch.softmax(energy.readout(net, states), 1) - onehot) / steps  # (N, K)


def relaxed_of(states: list[Tensor], steps: int, residuals: list[Tensor], trace: bool) -> Relaxed:
    """The :class:`Relaxed` record of a phase: its last states and the mean |change| of its last two steps."""
    last, before = float(residuals[-1]), float(residuals[-2]) if len(residuals) > 1 else 0.0
    return Relaxed(states, steps, last, before, None, torch.stack(residuals) if trace else None)


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
    spikes=(False, "by default the units drive each other with their rates (the mean field) and spikes enter the "
            "plasticity only; neurons=spiking makes them communicate by spikes alone"),
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
        if self.opts.neurons == "spiking" and self.opts.spikes == "rate":
            raise BioPropError(f"rule {self.name}: spikes=rate with neurons=spiking: spiking units drive each other "
                               "with spikes; choose spikes=bernoulli or spikes=threshold")  # fmt: skip
        if self.opts.neurons == "spiking" and self.opts.eps >= 1.0:
            raise BioPropError(f"rule {self.name}: eps={self.opts.eps:g} with neurons=spiking: each potential would be "
                               "its last step's spike input alone, with no leaky integration; use eps < 1 with more "
                               "steps, e.g. eps=0.2 free_steps=60 nudged_steps=30")  # fmt: skip
        for index, synapse in enumerate(net.synapses):
            if not isinstance(synapse, nn.Linear):
                raise BioPropError(f"rule {self.name}: layer synapses.{index} ({type(synapse).__name__}) is not "
                                   "dense: stdp trains dense energy nets (ebm:H1x...), not ebm-conv")  # fmt: skip

    def contrast(self, x: Tensor, y: Tensor, index: Tensor | None, trace: bool) -> Update:
        net, o = self.net, self.opts
        spiking = o.neurons == "spiking"
        source = SpikeSource(o.spikes, o.p_max, self.generator(1, x.device) if o.spikes != "rate" else None)
        free = self.spiking_free_phase(x, index, source, trace) if spiking else self.free_phase(x, index, trace)
        logits = energy.prediction(net, free.relaxed.states, o.output)
        onehot = losses.onehot(y, logits)
        beta_1, beta_2 = betas(o.nudge, o.beta, self.generator(0) if o.nudge == "random-sign" else None)
        batch = len(x)
        scale = 1.0 / (beta_2 - beta_1)
        if beta_1 == 0.0 and not spiking:  # one nudged phase; the free fixed point has V̇ = 0
            beta = x.new_full((batch, 1), beta_2)
            weights = x.new_full((batch,), scale)
            start = free.relaxed.states
        else:  # both phases from s⁰, side by side in one stack of 2B rows: β₂ rows, then β₁ rows
            beta = torch.cat([x.new_full((batch, 1), beta_2), x.new_full((batch, 1), beta_1)])
            weights = torch.cat([x.new_full((batch,), 2 * scale), x.new_full((batch,), -2 * scale)])
            start = [torch.cat([s, s]) for s in free.relaxed.states]
            source.repeat(2)
        targets = onehot.repeat(len(beta) // batch, 1)
        if spiking:
            phase = spiking_phase(net, x, start, targets, beta, weights, o.nudged_steps, o.eps, o.output, source,
                                  trace)  # fmt: skip
        else:
            phase = stdp_phase(net, x, start, targets, beta, weights, o.nudged_steps, o.eps, o.output, source, trace)
            self.check_settled(phase.relaxed)
        grads = self.named([-g for g in phase.grads])
        nudged = phase.relaxed
        traces = None
        if free.relaxed.energies is not None:
            traces = {"free energy": free.relaxed.energies, "free residual": free.relaxed.residuals,
                      "nudged loss": phase.costs, "nudged residual": nudged.residuals}  # fmt: skip
        return Update(grads, self.loss.value(logits, y), logits, traces, free.keep)

    def spiking_free_phase(self, x: Tensor, index: Tensor | None, source: SpikeSource, trace: bool) -> FreePhase:
        """``neurons=spiking``: ``free_steps`` steps of the spiking network from rest (or from the examples'
        persistent particles), no nudge, no plasticity (:func:`spiking_phase`). The potentials keep fluctuating
        with the spikes, so there is no convergence to check: a non-finite potential is :class:`Unstable`."""
        net, o = self.net, self.opts
        start = energy.zero_states(net, x, o.output)
        if self.particles is not None:
            self.particles.check_room(index, start, self.name)
            start = self.particles.start(start, index)
        phase = spiking_phase(net, x, start, None, None, None, o.free_steps, o.eps, o.output, source, trace)
        relaxed = phase.relaxed
        if not all(bool(torch.isfinite(s).all()) for s in relaxed.states):
            raise Unstable(self.name, "the spiking free phase reached non-finite potentials",
                           "lower the learning rate", named=())  # fmt: skip
        if trace:  # E = ½Σ‖V‖² − Φ(x, V) per step: the mean field's energy at the spiking potentials
            relaxed = relaxed._replace(energies=phase.costs)
        keep = (index, relaxed.states) if self.particles is not None and index is not None else None
        return FreePhase(energy.drive(net, 0, x), relaxed, keep)
