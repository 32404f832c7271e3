"""Sparse attentive backtracking (Ke et al. 2018, NeurIPS, "Sparse Attentive Backtracking: Temporal Credit
Assignment Through Reminding", Algorithm 1 and §3), the attention-based credit assignment Lillicrap & Santoro 2019
discuss.

The attention is part of the network (:class:`bioprop.nets.attention.SABNet`: at each step the provisional state
attends to the k_top best of the memories stored every k_att steps and adds their weighted sum); the sparse
backtracking is the rule. Its update is autograd of the run's sequence loss through the network's own dynamics with
the state h_{t−1}, ĥ_{t−1} detached before every step t that is a multiple of k_trunc (``truncation``), and the
memories left attached:

.. math::
    \\hat g = \\frac{dE}{dθ}\\Big|_{h_{t−1},\\, ĥ_{t−1} \\text{ cut at } t ∈ k_{trunc}\\mathbb{N}}

so credit flows back at most k_trunc steps along the recurrence, and through each memory m_i = h_{t_i} the attention
selected at a later step (its weight α_ti > 0) into the k_trunc-step window that computed it: credit skips across
delays far beyond the truncation. The memories the sparsifier zeroed get no credit through their values; the
(k_top + 1)-th best gets some through its score, which sets the threshold (Algorithm 1's sparsifier, differentiated
as it is). The forward pass is ``net(x)``'s exactly. With k_trunc ≥ T it is BPTT; without memories it is
truncated BPTT with windows of k_trunc steps (``tbptt``).

Shapes: x (T, B, C) time-major, y (T, B) labels (−1: no target) or (T, B, K) float targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets.attention import SABNet
from bioprop.rules.backprop import BackpropOptions
from bioprop.rules.base import Entry, Rule, Update, make_card, register
from bioprop.rules.bptt import MAX_TRUNCATION
from bioprop.rules.options import count

CARD = make_card(
    linear=(False, "errors flow through a purely linear backward pass"),
    derivatives=(False, "the backward pass multiplies by the exact derivatives"),
    weight_transport=(False, "the backward pass uses the transposed forward, recurrent and attention weights"),
    spikes=(False, "real-valued activities and errors"),
    clock=(False, "a backward sweep over k_trunc steps, and around each selected memory, follows the forward sweep"),
    targets=(False, "needs a supervised target at the readout"),
)


@dataclass(frozen=True)
class SABOptions(BackpropOptions):
    truncation: int = count(10, "k_trunc: the steps credit flows back along the recurrence (and around each "
                            "selected memory)", MAX_TRUNCATION)  # fmt: skip


def sparse_attentive_backtracking(net: SABNet, x: Tensor, y: Tensor, loss: losses.Loss,
                                  k_trunc: int) -> tuple[dict[str, Tensor], Tensor]:  # fmt: skip
    """The sab update (module docstring): gradients keyed like ``net.named_parameters()`` (trainable ones) and the
    readout (T, B, K)."""
    named = {n: p for n, p in net.named_parameters() if p.requires_grad}
    with torch.enable_grad():
        outputs, _ = net.unroll(x, truncation=k_trunc)
        value = loss.value(outputs, y)
        found = torch.autograd.grad(value, list(named.values()), allow_unused=True)
    grads = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), found, strict=True)}
    return grads, outputs.detach()


@register("sab", family="temporal", paper="Ke et al. 2018", summary="sparse attentive backtracking", card=CARD)
class SAB(Rule):
    """Sparse attentive backtracking on an :class:`~bioprop.nets.attention.SABNet` (module docstring). Raises
    :class:`BioPropError` at creation for a recurrent network without an attention memory."""

    Options = SABOptions
    networks = frozenset({"recurrent"})
    arch = "sab:32"
    opts: SABOptions

    def __init__(self, net: Any, entry: Entry, options: dict[str, Any]) -> None:
        if not isinstance(net, SABNet):
            raise BioPropError(f"rule {entry.name} backtracks through an attention memory, which "
                               f"{type(net).__name__} has not: use --arch sab:N (e.g. sab:32)")  # fmt: skip
        super().__init__(net, entry, options)

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        grads, outputs = sparse_attentive_backtracking(self.net, x, y, self.loss, self.opts.truncation)
        return Update(grads, self.loss.value(outputs, y), outputs)
