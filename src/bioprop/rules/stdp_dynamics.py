"""Spike-timing-dependent plasticity's update, its spike generators and its phases, over tensors: ΔW_ij ∝ S_i V̇_j
(:func:`spike_voltage_update`), accumulated over a nudged phase of the energy net's relaxation (:func:`stdp_phase`)
or of its spiking network (:func:`spiking_phase`). The rule ``stdp`` that runs them, its options and the equations
in full are in :mod:`bioprop.rules.stdp`'s docstring, which the docstrings below refer to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import Drive, EnergyNet, Relaxed
from bioprop.rules.equilibrium import nudging

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
    float or (N, 1)), signed as r, counted as ±scale/p_max so that E[Ŝ] = r (:mod:`bioprop.rules.stdp`); with
    ``generator`` None, the rates themselves (``spikes=rate``)."""
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
    accumulate Σ_rows w_r Σ_t Ŝ(t) (V(t + 1) − V(t)) for every synapse (:class:`Plasticity`; :mod:`bioprop.rules.stdp`),
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
    max(1, max_i |x_i|) (N, 1) (:mod:`bioprop.rules.stdp`) and its drive f_0(x) = W_0 x + b_0 (N, n_1)."""
    x_rows = x.flatten(1).repeat(rows // len(x), 1)
    scale = x_rows.abs().amax(1, keepdim=True).clamp_min(1.0)
    return x_rows, scale, energy.repeat_drive(energy.drive(net, 0, x), rows // len(x))


def readout_slope(net: EnergyNet, states: list[Tensor], onehot: Tensor, beta: Tensor, steps: int) -> Tensor:
    """V̇_z = −β ∂ℓ/∂z of the readout units at ``states``, divided by the phase's ``steps``
    (:mod:`bioprop.rules.stdp`)."""
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
