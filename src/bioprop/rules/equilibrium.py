"""Equilibrium propagation, ``ep`` (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24; Laborieux et al. 2021,
Front. Neurosci. 15:633674): the free phase of :mod:`bioprop.rules.contrastive`, then nudged phases, then

.. math::
    \\hat g_θ = -\\frac{1}{β_2 - β_1}\\Bigl(\\frac{∂Φ_{β_2}}{∂θ}(s^{β_2}) - \\frac{∂Φ_{β_1}}{∂θ}(s^{β_1})\\Bigr),
    \\qquad Φ_β = Φ - β\\,\\ell

(:func:`equilibrium_propagation`). The nudged phases relax on Φ − β ℓ for ``nudged_steps`` steps from the free fixed
point, ℓ the run's output loss: ``ce`` (the default), cross-entropy of a readout W_L s_{L−1} + b_L outside the
dynamics, which enters Φ_β through −β ℓ only (Laborieux et al. 2021's softmax readout); ``se``, ½‖s_L − y‖² with the
last layer a state (Scellier & Bengio 2017).

Why ``ce`` by default: with ``se`` the output units are hard-sigmoid states, and a unit whose input stays below −β
for every example sits at 0 in both phases, so it never gets a signal. On digits (``ebm:256``, the trainer's
defaults, seed 0) 3 of the 10 output units end up that way and ``se`` stalls at 66 % test accuracy in 5 epochs, for
β from 0.2 to 0.9 and 30 to 60 free steps; ``ce`` reaches 94 %. ``se`` trains with a far larger nudge (β = 1, ε = 0.5,
one-sided: 95 %), where EP no longer estimates the gradient of a small perturbation.

``nudge=one-sided``: (β₁, β₂) = (0, β), the free fixed point is s⁰; ``random-sign``: (0, ±β), the sign drawn from
the rule's step-seeded generator (:meth:`Rule.generator`: the same in ``grads`` and ``backward`` of one step,
another at the next step); ``symmetric``: (−β, +β), both from the free fixed point (bias O(β²) instead of O(β),
Laborieux et al. 2021). With small β, ĝ tends to the gradient of ℓ at the free fixed point; over K nudged steps it
equals the backprop-through-time gradient of the free dynamics' last K steps (the GDU property, Ernoult et al.
2019).

Optimisations around the definition, each checked against it by the tests: the two symmetric phases relax as one
stack of 2B rows (each row with its own β: rows never interact, so this is the two relaxations side by side), and
the contrast of ∂Φ/∂θ is one product per synapse over the stacked phases
(:func:`bioprop.nets.energy.primitive_difference`).

Guard: a nudged phase that stops settling (its last step's mean |Δs| above ``max_residual`` and no smaller than the
step before, once the nudge has had the steps to reach every layer: too large a β makes the output oscillate) is
:class:`~bioprop.rules.base.Unstable`, naming ``beta`` and ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bioprop import losses
from bioprop.nets import energy
from bioprop.nets.energy import OUTPUTS, Drive, EnergyNet, Relaxed
from bioprop.rules.base import Unstable, Update, option, register
from bioprop.rules.contrastive import (
    Contrastive,
    ContrastiveOptions,
    contrastive_card,
    phase_declarations,
    steps_option,
)
from bioprop.rules.options import seed_option

NUDGES = ("symmetric", "one-sided", "random-sign")


@dataclass(frozen=True)
class EquilibriumOptions(ContrastiveOptions):
    output: str = option("ce", "output loss: ce (softmax readout outside the dynamics) or se (last layer is a state)",
                         choices=OUTPUTS)  # fmt: skip
    nudged_steps: int = steps_option(10, "T2: steps of each nudged phase (from the free fixed point)")
    beta: float = option(0.5, "nudging strength β (the output's pull towards the target)", check=lambda v: v != 0.0,
                         check_says="must be non-zero (β = 0 gives no learning signal)")  # fmt: skip
    nudge: str = option("symmetric", "symmetric (±β), one-sided (β) or random-sign (±β drawn per batch)",
                        choices=NUDGES)  # fmt: skip
    seed: int = seed_option("seed of the random signs (nudge=random-sign)")


# ------------------------------------------------------------------------------------ functional core


class Equilibrium(NamedTuple):
    """A nudged equilibrium s^β: the states s_1..s_n (B rows each) reached with the nudge β."""

    states: list[Tensor]
    beta: float


class Nudging(NamedTuple):
    """The parameters of a nudged phase: ``steps`` (T2), step size ``eps`` and ``output`` (``se`` or ``ce``)."""

    steps: int
    eps: float
    output: str


class Target(NamedTuple):
    """The output's pull in a nudged phase: ``nudge`` (last state ↦ −β ∂ℓ/∂s) and ``cost`` (last state ↦ β ℓ per
    row), for a stack of copies of the batch with one β per row."""

    nudge: Callable[[Tensor], Tensor]
    cost: Callable[[Tensor], Tensor]


def betas(nudge: str, beta: float, generator: torch.Generator | None = None) -> tuple[float, float]:
    """(β₁, β₂) of a step's two phases for ``nudge`` (module docstring); ``random-sign`` draws one number from
    ``generator`` (which it needs)."""
    if nudge == "symmetric":
        return -abs(beta), abs(beta)
    if nudge == "random-sign" and float(torch.rand((), generator=generator)) < 0.5:
        return 0.0, -beta
    return 0.0, beta


def nudging(net: EnergyNet, onehot: Tensor, beta: Tensor, output: str) -> Target:
    """The nudge of Φ − β ℓ for ``output``; ``onehot`` (N, K) and ``beta`` (N, 1), one entry per row."""
    if output == "se":
        return Target(lambda s: beta * (onehot - s), lambda s: beta[:, 0] * 0.5 * (s - onehot).square().sum(1))
    weight = net.synapses[-1].weight

    def nudge(s: Tensor) -> Tensor:
        error = torch.softmax(energy.readout(net, [s]), 1) - onehot
        return (-beta * error @ weight).view_as(s)

    def cost(s: Tensor) -> Tensor:
        return beta[:, 0] * F.cross_entropy(energy.readout(net, [s]), onehot.argmax(1), reduction="none")

    return Target(nudge, cost)


def nudged_phase(net: EnergyNet, x_drive: Drive, start: list[Tensor], onehot: Tensor, beta: Tensor,
                 params: Nudging, trace: bool = False) -> Relaxed:  # fmt: skip
    """Relax on Φ − β ℓ for ``params.steps`` steps from ``start`` (N rows, N a multiple of the batch B; ``x_drive``
    for B rows), with ``beta`` (N, 1) per row and the targets ``onehot`` (N, K)."""
    target = nudging(net, onehot, beta, params.output)
    x_drive = energy.repeat_drive(x_drive, len(beta) // len(x_drive.value))
    return energy.relax(net, x_drive, start, params.steps, eps=params.eps, nudge=target.nudge, cost=target.cost,
                        trace=trace)  # fmt: skip


def readout_grads(net: EnergyNet, states: list[Tensor], onehot: Tensor, coef: Tensor) -> list[Tensor]:
    """Σ_rows coef_r ∂ℓ_r/∂(W, b) of the cross-entropy readout at the last state, [weight, bias]."""
    last = states[-1].flatten(1)
    error = (torch.softmax(energy.readout(net, states), 1) - onehot) * coef[:, None]
    return [error.t() @ last, error.sum(0)]


def equilibrium_propagation(net: EnergyNet, x: Tensor, onehot: Tensor, second: Equilibrium, first: Equilibrium,
                            output: str, x_drive: Drive | None = None) -> list[Tensor]:  # fmt: skip
    """EP's update, the batch mean of ĝ_θ = −(∂Φ_{β₂}/∂θ(s^{β₂}) − ∂Φ_{β₁}/∂θ(s^{β₁}))/(β₂ − β₁) with Φ_β = Φ − β ℓ
    (Scellier & Bengio 2017, eq. 10, with β₁ = 0; Laborieux et al. 2021's symmetric estimate with β₁ = −β₂), for
    the equilibria ``second`` (s^{β₂}) and ``first`` (s^{β₁}) of the batch ``x`` with targets ``onehot`` (B, K).
    A descent direction, in ``net.parameters()`` order. Φ's synapses get −(∂Φ/∂θ(s^{β₂}) − ∂Φ/∂θ(s^{β₁}))/(β₂ − β₁);
    with ``output="ce"`` the readout, which Φ_β holds only through −β ℓ, gets (β₂ ∂ℓ/∂θ(s^{β₂}) −
    β₁ ∂ℓ/∂θ(s^{β₁}))/(β₂ − β₁)."""
    scale = 1.0 / (second.beta - first.beta)
    grads = energy.primitive_difference(net, x, second.states, first.states, -scale, x_drive)
    if output == "ce":
        batch = len(x)
        stacked = [torch.cat([a, b]) for a, b in zip(second.states, first.states, strict=True)]
        coef = torch.cat([x.new_full((batch,), second.beta * scale / batch),
                          x.new_full((batch,), -first.beta * scale / batch)])  # fmt: skip
        grads += readout_grads(net, stacked, onehot.repeat(2, 1), coef)
    return grads


# ------------------------------------------------------------------------------------------------ the rule


@register(
    "ep",
    family="contrastive",
    paper="Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24; Laborieux et al. 2021, Front. Neurosci.",
    summary="equilibrium propagation: free phase, then ±β-nudged phases; Hebbian difference over β",
    card=contrastive_card("free and the nudged"),
)
class EquilibriumPropagation(Contrastive):
    """``ep``: see the module docstring."""

    Options = EquilibriumOptions
    opts: EquilibriumOptions
    trace_specs, figures = phase_declarations("nudged", "energy E + βℓ (batch mean over the nudged phases)")

    def contrast(self, x: Tensor, y: Tensor, index: Tensor | None, trace: bool) -> Update:
        net, o = self.net, self.opts
        free = self.free_phase(x, index, trace)
        logits = energy.prediction(net, free.relaxed.states, o.output)
        onehot = losses.onehot(y, logits)
        beta_1, beta_2 = betas(o.nudge, o.beta, self.generator(0) if o.nudge == "random-sign" else None)
        params = Nudging(o.nudged_steps, o.eps, o.output)
        batch = len(x)
        if beta_1 == 0.0:  # one nudged phase, contrasted with the free fixed point
            nudged = nudged_phase(net, free.x_drive, free.relaxed.states, onehot, x.new_full((batch, 1), beta_2),
                                  params, trace)  # fmt: skip
            second, first = Equilibrium(nudged.states, beta_2), Equilibrium(free.relaxed.states, 0.0)
        else:  # both nudged from the free fixed point, side by side in one stack of 2B rows: β₂ rows, then β₁ rows
            start = [torch.cat([s, s]) for s in free.relaxed.states]
            beta = torch.cat([x.new_full((batch, 1), beta_2), x.new_full((batch, 1), beta_1)])
            nudged = nudged_phase(net, free.x_drive, start, onehot.repeat(2, 1), beta, params, trace)
            second = Equilibrium([s[:batch] for s in nudged.states], beta_2)
            first = Equilibrium([s[batch:] for s in nudged.states], beta_1)
        self.check_settled(nudged)
        grads = equilibrium_propagation(net, x, onehot, second, first, o.output, free.x_drive)
        return Update(self.named(grads), self.loss.value(logits, y), logits,
                      self.traces(free.relaxed, nudged, "nudged"), free.keep)  # fmt: skip

    def check_settled(self, nudged: Relaxed) -> None:
        """Refuse a nudged phase that does not settle (module docstring)."""
        o = self.opts
        wave = nudged.steps > self.net.n_states(o.output) + 1  # the nudge reached every layer: no more growth
        if wave and nudged.residual > o.max_residual and not nudged.residual < nudged.previous_residual:
            raise Unstable(self.name, f"the nudged phase does not settle (the states' mean |change| did not shrink "
                           f"from step {nudged.steps - 1} to {nudged.steps}: {nudged.previous_residual:.3g}, "
                           f"{nudged.residual:.3g})", f"lower beta (now {o.beta:g}) or eps (now {o.eps:g})",
                           named=("beta", "eps"))  # fmt: skip
