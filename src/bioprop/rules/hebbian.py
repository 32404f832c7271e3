"""The clamped-phase contrastive rules: ``chl`` and ``generec``. After the free phase of
:mod:`bioprop.rules.contrastive` (the minus phase, s⁻), the output is clamped to the target, s_L = y, and the hidden
layers relax for ``clamped_steps`` steps from the free state (the plus phase, s⁺; :func:`clamped_phase`). Their loss
is the squared error ½‖s_L − y‖² (``output=se``, the only choice: the clamped phase needs the output to be a state).

- ``chl``, contrastive Hebbian learning (Movellan 1991; Xie & Seung 2003, Neural Comput. 15:441):
  ΔW_l ∝ s_{l+1}⁺ s_l⁺ᵀ − s_{l+1}⁻ s_l⁻ᵀ, i.e. ĝ = −(∂Φ/∂θ(s⁺) − ∂Φ/∂θ(s⁻)) (:func:`contrastive_hebbian`). A single
  layer gives Whittington & Bogacz 2019's Box 2 two-phase delta rule ΔW ∝ (y − s_L⁻) xᵀ.
- ``generec`` (O'Reilly 1996, Neural Comput. 8:895): for the synapse from x (sending) to y (receiving),
  ΔW ∝ (y⁺ − y⁻) x⁻ᵀ; ``midpoint`` uses x̄ = ½(x⁻ + x⁺) instead of x⁻; ``symmetric`` adds y⁻ (x⁺ − x⁻)ᵀ (ȳ with
  the midpoint); both together are CHL (:func:`generec`). Max-pooling nets are refused: the pooling switches of
  each phase would differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import Drive, EnergyNet, Relaxed
from bioprop.rules.base import Entry, Update, option, register
from bioprop.rules.contrastive import (
    Contrastive,
    ContrastiveOptions,
    contrastive_card,
    phase_declarations,
    steps_option,
)

# ------------------------------------------------------------------------------------ functional core


def clamped_phase(net: EnergyNet, x_drive: Drive, free: list[Tensor], target: Tensor, steps: int, eps: float,
                  trace: bool = False) -> Relaxed:  # fmt: skip
    """The plus phase: the output clamped to ``target`` (B, K), the hidden states relaxing for ``steps`` steps of
    size ``eps`` from the free states ``free``."""
    return energy.relax(net, x_drive, [*free[:-1], target], steps, eps=eps, clamp=target, trace=trace)


def contrastive_hebbian(net: EnergyNet, x: Tensor, plus: list[Tensor], minus: list[Tensor],
                        x_drive: Drive | None = None) -> list[Tensor]:  # fmt: skip
    """CHL's update (Movellan 1991), the batch mean of ĝ = −(∂Φ/∂θ(s⁺) − ∂Φ/∂θ(s⁻)), i.e. the descent direction of
    ΔW_l ∝ s_{l+1}⁺ s_l⁺ᵀ − s_{l+1}⁻ s_l⁻ᵀ (Hebbian in the clamped phase, anti-Hebbian in the free one), in
    ``net.parameters()`` order."""
    return energy.primitive_difference(net, x, plus, minus, -1.0, x_drive)


class GeneRecForm(NamedTuple):
    """Which GeneRec: ``midpoint`` (sending activity ½(x⁻ + x⁺)), ``symmetric`` (add the receiving side's term)."""

    midpoint: bool = False
    symmetric: bool = False


def generec(net: EnergyNet, x: Tensor, minus: list[Tensor], plus: list[Tensor], form: GeneRecForm) -> list[Tensor]:
    """GeneRec's update (O'Reilly 1996): for the synapse from x (sending, s_l; s_0 = x in both phases) to y
    (receiving, s_{l+1}), the batch mean of ΔW = (y⁺ − y⁻) x̃ᵀ, Δb = y⁺ − y⁻, plus ỹ (x⁺ − x⁻)ᵀ on W when
    ``form.symmetric``, with x̃ = x⁻ or ½(x⁻ + x⁺) (``form.midpoint``) and ỹ likewise; returned as the descent
    direction −ΔW, −Δb in ``net.parameters()`` order. Written as ∂/∂θ of Σ post · f_l(pre)
    (:func:`bioprop.nets.energy.synapse_grads`), so a convolution without pooling works as a dense synapse does."""
    batch = len(x)
    sending_minus, sending_plus = [x, *minus[:-1]], [x, *plus[:-1]]
    grads: list[Tensor] = []
    for index, (y_minus, y_plus) in enumerate(zip(minus, plus, strict=True)):
        x_minus, x_plus = sending_minus[index], sending_plus[index]
        x_tilde = 0.5 * (x_minus + x_plus) if form.midpoint else x_minus
        weight, bias = energy.synapse_grads(net, index, x_tilde, (y_plus - y_minus) / batch)
        if form.symmetric:
            y_tilde = 0.5 * (y_minus + y_plus) if form.midpoint else y_minus
            weight = weight + energy.synapse_grads(net, index, x_plus - x_minus, y_tilde / batch)[0]
        grads += [-weight, -bias]
    return grads


# ------------------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class ClampedOptions(ContrastiveOptions):
    clamped_steps: int = steps_option(10, "steps of the clamped phase (from the free state, output = target)")


class Clamped(Contrastive):
    """Free phase, then the output clamped to the target while the hidden layers relax (CHL, GeneRec); subclasses
    implement :meth:`combine`."""

    Options = ClampedOptions
    opts: ClampedOptions
    trace_specs, figures = phase_declarations("clamped", "energy E (batch mean, output clamped)")

    def phases(self, x: Tensor, y: Tensor, index: Tensor | None = None, trace: bool = False):
        """The free phase (:class:`~bioprop.rules.contrastive.FreePhase`) and the clamped phase's relaxation."""
        free = self.free_phase(x, index, trace)
        target = losses.onehot(y, free.relaxed.states[-1])
        clamped = clamped_phase(self.net, free.x_drive, free.relaxed.states, target, self.opts.clamped_steps,
                                self.opts.eps, trace)  # fmt: skip
        return free, clamped

    def combine(self, x: Tensor, x_drive: Drive, minus: list[Tensor], plus: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def contrast(self, x: Tensor, y: Tensor, index: Tensor | None, trace: bool) -> Update:
        free, clamped = self.phases(x, y, index, trace)
        logits = energy.prediction(self.net, free.relaxed.states, "se")
        grads = self.combine(x, free.x_drive, free.relaxed.states, clamped.states)
        return Update(self.named(grads), self.loss.value(logits, y), logits,
                      self.traces(free.relaxed, clamped, "clamped"), free.keep)  # fmt: skip


@register(
    "chl",
    family="contrastive",
    paper="Movellan 1991; Xie & Seung 2003, Neural Comput. 15:441; Whittington & Bogacz 2019, Box 2",
    summary="contrastive Hebbian learning: free phase, then output clamped; Hebbian minus anti-Hebbian term",
    card=contrastive_card("free and the clamped"),
)
class ContrastiveHebbian(Clamped):
    """``chl``: :func:`contrastive_hebbian` of the clamped and the free states."""

    def combine(self, x: Tensor, x_drive: Drive, minus: list[Tensor], plus: list[Tensor]) -> list[Tensor]:
        return contrastive_hebbian(self.net, x, plus, minus, x_drive)


@dataclass(frozen=True)
class GeneRecOptions(ClampedOptions):
    midpoint: bool = option(False, "use the sending unit's phase average ½(x⁻ + x⁺) instead of x⁻")
    symmetric: bool = option(False, "add the receiving side's term (x⁺ − x⁻) y⁻ᵀ; with midpoint: CHL")


@register(
    "generec",
    family="contrastive",
    paper="O'Reilly 1996, Neural Comput. 8:895",
    summary="GeneRec: sending minus-phase activity times the receiving unit's plus-minus difference",
    card=contrastive_card("minus and the plus"),
)
class GeneRec(Clamped):
    """``generec``: :func:`generec` of the free (minus) and clamped (plus) states; dense nets only."""

    Options = GeneRecOptions
    opts: GeneRecOptions

    def __init__(self, net: EnergyNet, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if any(pool > 1 for pool in net.pools):
            raise BioPropError("rule generec: max-pooling nets are not supported; use a dense net (ebm:...)")
        self.form = GeneRecForm(self.opts.midpoint, self.opts.symmetric)

    def combine(self, x: Tensor, x_drive: Drive, minus: list[Tensor], plus: list[Tensor]) -> list[Tensor]:
        return generec(self.net, x, minus, plus, self.form)
