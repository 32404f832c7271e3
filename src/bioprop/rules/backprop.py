"""Backpropagation (Rumelhart, Hinton & Williams 1986), the reference every rule is measured against.

.. math::
    δ_L = e ⊙ φ'(a_L), \\quad δ_l = (W_{l+1}^T δ_{l+1}) ⊙ φ'(a_l), \\quad ∂L/∂W_l = δ_l h_{l-1}^T

computed by autograd over the batch-mean cross-entropy. Works for any ``nn.Module``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bioprop.rules.base import Rule, Update, backprop_update, make_card, register

CARD = make_card(
    linear=(False, "errors flow through a purely linear backward pass"),
    derivatives=(False, "the backward pass multiplies by the exact derivatives φ'"),
    weight_transport=(False, "the backward pass uses the transposed forward weights"),
    spikes=(False, "real-valued activities and errors"),
    clock=(False, "a separate backward phase follows each forward phase"),
    targets=(False, "needs a supervised target at the output"),
)


@register("bp", family="backprop", paper="Rumelhart, Hinton & Williams 1986", summary="exact gradient", card=CARD)
class Backprop(Rule):
    """Exact backpropagation through autograd; its update equals :meth:`reference_grads`."""

    def grads(self, x: Tensor, y: Tensor) -> Update:
        return backprop_update(self.net, x, y)

    def backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            prediction = self.net(x)
            loss = F.cross_entropy(prediction, y)
            loss.backward()
        return loss.detach(), prediction.detach()
