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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import EnergyNet
from bioprop.rules.base import Entry, FigureSpec, Trace, Unstable, Update, make_card, option, register
from bioprop.rules.contrastive import FreePhase, steps_option
from bioprop.rules.equilibrium import EquilibriumOptions, EquilibriumPropagation, betas
from bioprop.rules.options import seed_option
from bioprop.rules.stdp_dynamics import (  # noqa: F401  (re-exported: tests and experiments import them from here)
    SpikeSource,
    integrate_and_fire,
    presynaptic_spikes,
    spike_voltage_update,
    spiking_phase,
    spiking_step,
    stdp_phase,
)

SPIKES = ("bernoulli", "threshold", "rate")
NEURONS = ("rate", "spiking")


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
