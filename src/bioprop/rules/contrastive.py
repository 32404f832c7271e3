"""Contrastive learning and equilibrium propagation (Whittington & Bogacz 2019, Trends Cogn. Sci., Box 2).

An energy-based network (:mod:`bioprop.nets.energy`, ``--arch ebm:...``) relaxes twice: in a free phase with
only the input clamped, then with the target acting on the output. The weights change by the difference of
Hebbian terms between the phases: the free phase is unlearnt (anti-Hebbian), the target phase learnt. With
Φ = Σ_l s_{l+1} · f_l(s_l) the network's primitive function (so ∂Φ/∂W_l = s_{l+1} s_lᵀ for a dense synapse):

- ``ep``, equilibrium propagation (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24; Laborieux et al.
  2021, Front. Neurosci. 15:633674). The nudged phases relax on Φ − β ℓ for ``nudged_steps`` steps from the free
  fixed point, ℓ the output cost (``se``: ½‖s_L − y‖²; ``ce``: cross-entropy of a readout outside the dynamics):

  .. math::
      \\hat g_θ = -\\frac{1}{β_2 - β_1}\\Bigl(\\frac{∂Φ_{β_2}}{∂θ}(s^{β_2}) - \\frac{∂Φ_{β_1}}{∂θ}(s^{β_1})\\Bigr),
      \\qquad Φ_β = Φ - β\\,\\ell

  ``nudge=one-sided``: (β₁, β₂) = (0, β); ``random-sign``: (0, ±β) with the sign drawn per batch;
  ``symmetric``: (−β, +β), both from the free fixed point and batched together (bias O(β²) instead of O(β)).
  With small β, ĝ tends to the gradient of ℓ at the free fixed point; over K nudged steps it equals the
  backprop-through-time gradient of the free dynamics' last K steps (the GDU property, Ernoult et al. 2019).
- ``chl``, contrastive Hebbian learning (Movellan 1991; Xie & Seung 2003): the second phase clamps the output
  to the target, s_L = y, and relaxes the hidden layers for ``clamped_steps`` steps from the free state:
  ΔW_l ∝ s_{l+1}⁺ s_l⁺ᵀ − s_{l+1}⁻ s_l⁻ᵀ, i.e. ĝ = −(∂Φ/∂θ(s⁺) − ∂Φ/∂θ(s⁻)). A single layer gives Box 2's two-phase
  delta rule ΔW ∝ (y − s_L⁻) xᵀ.
- ``generec`` (O'Reilly 1996, Neural Comput. 8:895): the same phases; for the synapse from x (sending) to y
  (receiving), ΔW ∝ x⁻ (y⁺ − y⁻)ᵀ; ``midpoint`` uses x̄ = ½(x⁻ + x⁺) instead of x⁻; ``symmetric`` adds
  (x⁺ − x⁻) y⁻ᵀ (ȳ with the midpoint), and both together are CHL.

Batch reduction: each sample relaxes on its own energy; the update is the batch mean of the per-sample ĝ, on the
scale of the gradient of the batch-mean cost. Every update is written as a descent direction.

``persistent=true`` keeps each training example's free state and starts its next free phase there (persistent
particles, Scellier & Bengio 2017), which lets a short free phase settle over the epochs; the particles are not
checkpointed (a resumed run starts them from rest again).

``reference_grads`` is the exact gradient of the batch-mean cost at the end of the free phase, by backprop through
time (autograd) over the ``free_steps`` steps of the free dynamics from rest.

Step budgets (``free_steps``, ``nudged_steps``, ``clamped_steps``) are at most 10 000 each.

Guards: a free phase whose last step still changes the state units by more than ``max_residual`` on average
(non-convergence, e.g. an oscillation of the synchronous updates, or non-finite states) raises
:class:`DivergenceError` naming the settings to change; so does a nudged phase that stops settling (its last
step's change above ``max_residual`` and no smaller than the step before, once the nudge has had the steps to
reach every layer: too large a β makes the output oscillate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets.energy import (
    OUTPUTS,
    Drive,
    EnergyNet,
    Relaxed,
    drive,
    prediction,
    readout,
    relax,
    repeat_drive,
    synapse_grads,
    zero_states,
)
from bioprop.rules.base import (
    CardEntry,
    Entry,
    Option,
    Rule,
    Unstable,
    Update,
    backprop_update,
    make_card,
    register,
)

NUDGES = ("symmetric", "one-sided", "random-sign")
MAX_STEPS = 10_000  # steps of one phase; more would run for minutes per batch without a word


def _positive_steps(value: int) -> bool:
    return value >= 1


COMMON: dict[str, Option] = {
    "free_steps": Option(30, "T1: steps of the free phase (from rest)", check=_positive_steps,
                         check_says="must be a positive number of steps", maximum=MAX_STEPS),
    "eps": Option(1.0, "step size ε of s ← σ((1 − ε) s + ε ∂Φ/∂s); 1 is the discrete form, < 1 descends E",
                  check=lambda v: 0.0 < v <= 1.0, check_says="must be in (0, 1]"),
    "tol": Option(0.0, "end the free phase once the mean |change| of the states in a step is below tol (0: no)",
                  check=lambda v: v >= 0.0, check_says="must be 0 or positive"),
    "max_residual": Option(1e-3, "largest mean |change| of the states allowed in the free phase's last step",
                           check=lambda v: v > 0.0, check_says="must be positive"),
    "trace_every": Option(20, "record energy and residual traces every N batches (0: never)",
                          check=lambda v: v >= 0, check_says="must be 0 or a positive number of batches"),
    "persistent": Option(False, "persistent particles: each example's free phase starts from its last free state"),
}  # fmt: skip


# ------------------------------------------------------------------------------------ functional pieces


class Target(NamedTuple):
    """The output's pull in a nudged phase: ``nudge`` (last state ↦ −β ∂ℓ/∂s) and ``cost`` (last state ↦ β ℓ per
    sample), for a stack of copies of the batch with one β per row."""

    nudge: Callable[[Tensor], Tensor]
    cost: Callable[[Tensor], Tensor]


def nudging(net: EnergyNet, onehot: Tensor, beta: Tensor, output: str) -> Target:
    """The nudge of Φ − β ℓ for ``output`` (``se`` or ``ce``); ``beta`` has one entry per row, shape (N, 1)."""
    if output == "se":
        return Target(lambda s: beta * (onehot - s), lambda s: beta[:, 0] * 0.5 * (s - onehot).square().sum(1))
    weight = net.synapses[-1].weight

    def nudge(s: Tensor) -> Tensor:
        error = torch.softmax(readout(net, [s]), 1) - onehot
        return (-beta * error @ weight).view_as(s)

    def cost(s: Tensor) -> Tensor:
        return beta[:, 0] * F.cross_entropy(readout(net, [s]), onehot.argmax(1), reduction="none")

    return Target(nudge, cost)


def primitive_grads(net: EnergyNet, x: Tensor, x_drive: Drive, states: list[Tensor], coef: Tensor) -> list[Tensor]:
    """Σ_rows coef_r ∂Φ/∂θ (s_r) for the dynamic synapses, in ``net.parameters()`` order; ``states`` stack K copies
    of the batch (rows r), all with the input ``x``."""
    batch = len(x)
    copies = len(states[0]) // batch
    grads: list[Tensor] = []
    for index, post in enumerate(states):
        post = post * coef.view(-1, *[1] * (post.dim() - 1))
        if index == 0:  # the input is the same in every copy: combine the copies first
            grads += synapse_grads(net, 0, x, post.view(copies, batch, *post.shape[1:]).sum(0), x_drive)
        else:
            pre = states[index - 1]
            pooled = net.pools[index] > 1
            grads += synapse_grads(net, index, pre, post, drive(net, index, pre) if pooled else None)
    return grads


def readout_grads(net: EnergyNet, states: list[Tensor], onehot: Tensor, coef: Tensor) -> list[Tensor]:
    """Σ_rows coef_r ∂ℓ_r/∂(W, b) of the cross-entropy readout at the last state."""
    last = states[-1].flatten(1)
    error = (torch.softmax(readout(net, states), 1) - onehot) * coef[:, None]
    return [error.t() @ last, error.sum(0)]


class Particles:
    """Persistent particles (Scellier & Bengio 2017): each training example's free state is kept and the next free
    phase of that example starts from it instead of from rest. Examples are recognised by their input's bytes (the
    rule sees batches, not dataset indices); the states live on the CPU, flattened into one row per example."""

    def __init__(self) -> None:
        self.rows: dict[int, Tensor] = {}

    @staticmethod
    def keys(x: Tensor) -> list[int]:
        return [hash(row.numpy().tobytes()) for row in x.detach().cpu().flatten(1)]

    def start(self, net: EnergyNet, x: Tensor, output: str, keys: list[int]) -> list[Tensor]:
        states = zero_states(net, x, output)
        known = [i for i, key in enumerate(keys) if key in self.rows]
        if known:
            stored = torch.stack([self.rows[keys[i]] for i in known]).to(x.device, x.dtype)
            index, start = torch.tensor(known, device=x.device), 0
            for s in states:
                size = s[0].numel()
                s[index] = stored[:, start : start + size].view(len(known), *s.shape[1:])
                start += size
        return states

    def keep(self, states: list[Tensor], keys: list[int]) -> None:
        flat = torch.cat([s.detach().flatten(1) for s in states], 1).cpu()
        for key, row in zip(keys, flat, strict=True):
            self.rows[key] = row.clone()


def free_phase(rule: Contrastive, x: Tensor, trace: bool) -> tuple[Drive, Relaxed]:
    """Relax from rest (or from the examples' persistent particles) with the input clamped; non-convergence within
    the budget is a DivergenceError."""
    c = rule.config
    x_drive = drive(rule.net, 0, x)
    keys = Particles.keys(x) if rule.particles is not None else []
    start = rule.particles.start(rule.net, x, rule.output, keys) if rule.particles is not None else None
    free = relax(rule.net, x_drive, start or zero_states(rule.net, x, rule.output), c["free_steps"], eps=c["eps"],
                 tol=c["tol"], trace=trace)  # fmt: skip
    if rule.particles is not None:
        rule.particles.keep(free.states, keys)
    if not free.residual <= c["max_residual"]:  # NaN fails too
        what = "non-finite states"
        if math.isfinite(free.residual):
            what = f"states still changing by {free.residual:.3g} on average"
        raise Unstable(rule.name, f"the free phase did not converge ({what} in step {free.steps}, max_residual "
                       f"{c['max_residual']:g})", f"raise free_steps (now {c['free_steps']}) or lower eps (now "
                       f"{c['eps']:g}) or the learning rate", named=("free_steps", "eps", "max_residual"))  # fmt: skip
    return x_drive, free


# ------------------------------------------------------------------------------------------------ rules


class Contrastive(Rule):
    """The phases shared by ``ep``, ``chl`` and ``generec``; subclasses say what the second phase does and how the
    update combines the phases."""

    options = COMMON
    networks = frozenset({"energy"})

    def __init__(self, net: EnergyNet, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        synapses = {id(p) for synapse in net.synapses for p in synapse.parameters()}
        outside = next((name for name, p in net.named_parameters() if id(p) not in synapses), None)
        if outside is not None:
            raise BioPropError(f"rule {self.name}: parameter {outside!r} is not a synapse of the energy-based network")
        self.output = self.config.get("output", "se")
        if self.net.n_states(self.output) < 1:
            raise BioPropError(f"rule {self.name}: output=ce needs at least one hidden layer (e.g. ebm:500)")
        self.net.configure(steps=self.config["free_steps"], eps=self.config["eps"], tol=self.config["tol"],
                           output=self.output)  # fmt: skip
        self.batches = 0
        self.particles = Particles() if self.config["persistent"] else None

    def _tracing(self) -> bool:
        every = self.config["trace_every"]
        self.batches += 1
        return every > 0 and (self.batches - 1) % every == 0

    @staticmethod
    def _traces(free: Relaxed, second: Relaxed, name: str) -> dict[str, Tensor] | None:
        if free.energies is None:
            return None
        traces = {"free energy": free.energies, "free residual": free.residuals}
        if second.energies is not None:
            traces[f"{name} energy"] = second.energies
        if second.residuals is not None:
            traces[f"{name} residual"] = second.residuals
        return traces

    def state_dict(self) -> dict[str, Tensor]:
        """The batch counter, so that a resumed run (and the angle probes) keep the trace schedule."""
        return {"batches": torch.tensor(self.batches)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "batches" in state:
            self.batches = int(state["batches"])
        super().load_state_dict({k: v for k, v in state.items() if k != "batches"})

    def _named(self, grads: list[Tensor]) -> dict[str, Tensor]:
        return {name: g for (name, _), g in zip(self.net.named_parameters(), grads, strict=True)}

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Backprop through time of the batch-mean cost over the free phase from rest: autograd through ``net(x)``,
        which relaxes with this rule's settings."""
        return backprop_update(self.net, x, y, losses.get(self.output)).grads


def contrastive_card(phases: str) -> dict[str, CardEntry]:
    """The card of the contrastive rules; ``phases`` names the two phases a global signal switches between."""
    return make_card(
        linear=(True, "the update is local and Hebbian; the network's own nonlinear relaxation carries the error"),
        derivatives=(True, "no derivative of the activation is computed: the relaxation propagates the nudge"),
        weight_transport=(False, "feedback uses the transposed forward weights: the connections are symmetric"),
        spikes=(False, "rate units"),
        clock=(False, f"a global signal switches between the {phases} phases"),
        targets=(False, "targets are given by the task"),
    )


@register(
    "ep",
    family="contrastive",
    paper="Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24; Laborieux et al. 2021, Front. Neurosci.",
    summary="equilibrium propagation: free phase, then ±β-nudged phases; Hebbian difference over β",
    card=contrastive_card("free and the nudged"),
)
class EquilibriumPropagation(Contrastive):
    options = {
        **COMMON,
        "nudged_steps": Option(10, "T2: steps of each nudged phase (from the free fixed point)",
                               check=_positive_steps, check_says="must be a positive number of steps",
                               maximum=MAX_STEPS),
        "beta": Option(0.5, "nudging strength β (the output's pull towards the target)",
                       check=lambda v: v != 0.0 and math.isfinite(v),
                       check_says="must be non-zero (β = 0 gives no learning signal)"),
        "nudge": Option("symmetric", "symmetric (±β), one-sided (β) or random-sign (±β drawn per batch)",
                        choices=NUDGES),
        "output": Option("se", "output cost: se (last layer is a state) or ce (softmax readout outside the dynamics)",
                         choices=OUTPUTS),
        "seed": Option(0, "seed of the random signs (nudge=random-sign)"),
    }  # fmt: skip

    def __init__(self, net: EnergyNet, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        self.generator = torch.Generator().manual_seed(self.config["seed"])

    def betas(self) -> tuple[float, float]:
        """(β₁, β₂) of this batch's two phases."""
        beta = abs(self.config["beta"]) if self.config["nudge"] == "symmetric" else self.config["beta"]
        if self.config["nudge"] == "symmetric":
            return -beta, beta
        if self.config["nudge"] == "random-sign" and torch.rand((), generator=self.generator) < 0.5:
            beta = -beta
        return 0.0, beta

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        c, net = self.config, self.net
        trace = self._tracing()
        x_drive, free = free_phase(self, x, trace)
        onehot = F.one_hot(y, net.synapses[-1].out_features).to(x.dtype)
        beta1, beta2 = self.betas()
        batch = len(x)
        if beta1 == 0.0:  # one phase nudged, contrasted with the free state
            start, betas = free.states, x.new_full((batch, 1), beta2)
        else:  # both nudged, from the free state, batched together
            start = [torch.cat([s, s]) for s in free.states]
            betas = torch.cat([x.new_full((batch, 1), beta2), x.new_full((batch, 1), beta1)])
        copies = len(betas) // batch
        target = nudging(net, onehot.repeat(copies, 1), betas, self.output)
        nudged = relax(net, repeat_drive(x_drive, copies), start, c["nudged_steps"], eps=c["eps"],
                       nudge=target.nudge, cost=target.cost, trace=trace)  # fmt: skip
        settled_wave = nudged.steps > net.n_states(self.output) + 1  # the nudge reached every layer: no more growth
        if settled_wave and nudged.residual > c["max_residual"] and not nudged.residual < nudged.previous_residual:
            raise Unstable(self.name, f"the nudged phase does not settle (the states' mean |change| did not shrink "
                           f"from step {nudged.steps - 1} to {nudged.steps}: {nudged.previous_residual:.3g}, "
                           f"{nudged.residual:.3g})", f"lower beta (now {c['beta']:g}) or eps (now {c['eps']:g})",
                           named=("beta", "eps"))  # fmt: skip
        scale = 1.0 / ((beta2 - beta1) * batch)  # rows of the β₂ phase first, then the β₁ phase's
        coef = torch.cat([x.new_full((batch,), scale), x.new_full((batch,), -scale)])
        if beta1 == 0.0:
            states = [torch.cat([a, b]) for a, b in zip(nudged.states, free.states, strict=True)]
            betas_all = torch.cat([betas[:, 0], x.new_zeros(batch)])
        else:
            states, betas_all = nudged.states, betas[:, 0]
        grads = primitive_grads(net, x, x_drive, states, -coef)  # −: the update is a descent direction
        if self.output == "ce":
            grads += readout_grads(net, states, onehot.repeat(len(coef) // batch, 1), coef * betas_all)
        logits = prediction(net, free.states, self.output)
        return Update(self._named(grads), losses.get(self.output).value(logits, y), logits,
                      self._traces(free, nudged, "nudged"))  # fmt: skip

    def state_dict(self) -> dict[str, Tensor]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        super().load_state_dict({k: v for k, v in state.items() if k != "generator"})


class Clamped(Contrastive):
    """Free phase, then the output clamped to the target while the hidden layers relax (CHL, GeneRec)."""

    options = {
        **COMMON,
        "clamped_steps": Option(10, "steps of the clamped phase (from the free state, output = target)",
                                check=_positive_steps, check_says="must be a positive number of steps",
                                maximum=MAX_STEPS),
    }  # fmt: skip

    def phases(self, x: Tensor, y: Tensor) -> tuple[Drive, Relaxed, Relaxed]:
        c, net = self.config, self.net
        trace = self._tracing()
        x_drive, free = free_phase(self, x, trace)
        onehot = F.one_hot(y, net.synapses[-1].out_features).to(x.dtype)
        start = [*free.states[:-1], onehot]
        clamped = relax(net, x_drive, start, c["clamped_steps"], eps=c["eps"], clamp=onehot, trace=trace)
        return x_drive, free, clamped

    def combine(self, x: Tensor, x_drive: Drive, free: Relaxed, clamped: Relaxed) -> list[Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        x_drive, free, clamped = self.phases(x, y)
        logits = prediction(self.net, free.states)
        return Update(self._named(self.combine(x, x_drive, free, clamped)), losses.get("se").value(logits, y), logits,
                      self._traces(free, clamped, "clamped"))  # fmt: skip


@register(
    "chl",
    family="contrastive",
    paper="Movellan 1991; Xie & Seung 2003, Neural Comput. 15:441; Whittington & Bogacz 2019, Box 2",
    summary="contrastive Hebbian learning: free phase, then output clamped; Hebbian minus anti-Hebbian term",
    card=contrastive_card("free and the clamped"),
)
class ContrastiveHebbian(Clamped):
    def combine(self, x: Tensor, x_drive: Drive, free: Relaxed, clamped: Relaxed) -> list[Tensor]:
        batch = len(x)
        states = [torch.cat([a, b]) for a, b in zip(clamped.states, free.states, strict=True)]
        coef = torch.cat([x.new_full((batch,), -1.0 / batch), x.new_full((batch,), 1.0 / batch)])  # descent
        return primitive_grads(self.net, x, x_drive, states, coef)


@register(
    "generec",
    family="contrastive",
    paper="O'Reilly 1996, Neural Comput. 8:895",
    summary="GeneRec: sending minus-phase activity times the receiving unit's plus-minus difference",
    card=contrastive_card("minus and the plus"),
)
class GeneRec(Clamped):
    options = {
        **Clamped.options,
        "midpoint": Option(False, "use the sending unit's phase average ½(x⁻ + x⁺) instead of x⁻"),
        "symmetric": Option(False, "add the receiving side's term (x⁺ − x⁻) y⁻ᵀ; with midpoint: CHL"),
    }

    def __init__(self, net: EnergyNet, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if any(pool > 1 for pool in net.pools):
            raise BioPropError("rule generec: max-pooling nets are not supported; use a dense net (ebm:...)")

    def combine(self, x: Tensor, x_drive: Drive, free: Relaxed, clamped: Relaxed) -> list[Tensor]:
        batch = len(x)
        grads: list[Tensor] = []
        below_minus, below_plus = [x, *free.states[:-1]], [x, *clamped.states[:-1]]
        for index, (minus, plus) in enumerate(zip(free.states, clamped.states, strict=True)):
            sending_minus, sending_plus = below_minus[index], below_plus[index]
            sending = 0.5 * (sending_minus + sending_plus) if self.config["midpoint"] else sending_minus
            weight, bias = synapse_grads(self.net, index, sending, (plus - minus) / batch)
            if self.config["symmetric"]:
                receiving = 0.5 * (minus + plus) if self.config["midpoint"] else minus
                weight = weight + synapse_grads(self.net, index, (sending_plus - sending_minus), receiving / batch)[0]
            grads += [-weight, -bias]
        return grads
