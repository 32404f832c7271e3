"""Backpropagation (Rumelhart, Hinton & Williams 1986), the reference every rule is measured against.

.. math::
    δ_L = e ⊙ φ'(a_L), \\quad δ_l = (W_{l+1}^T δ_{l+1}) ⊙ φ'(a_l), \\quad ∂L/∂W_l = δ_l h_{l-1}^T

computed by autograd over the batch-mean output loss: cross-entropy (``output=ce``, the default) or squared error
against the one-hot target (``output=se``). Works for any ``nn.Module``; on an energy-based network
(``--arch ebm:...``) it is backprop through time over the free relaxation, and ``output`` also says whether the
last layer is a state (se) or a readout (ce).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bioprop.errors import BioPropError
from bioprop.nets.energy import EnergyNet
from bioprop.rules.base import Entry, Option, Rule, Update, backprop_update, make_card, register

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

    options = {"output": Option("ce", "output loss: ce (cross-entropy) or se (squared error to the one-hot target)",
                                choices=("ce", "se"))}  # fmt: skip
    networks = frozenset({"feedforward", "energy"})

    def __init__(self, net: Any, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if not any(True for _ in net.parameters()):
            raise BioPropError(f"rule {self.name}: the network has no parameters to train")
        if isinstance(net, EnergyNet):
            net.configure(output=self.config["output"])

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        return backprop_update(self.net, x, y, self.loss)

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return self.update(x, y).grads

    def backward(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``loss.backward()`` itself (autograd accumulates into ``.grad``), after the batch checks."""
        x, _ = self.check_batch(x, y, index)
        with torch.enable_grad():
            prediction = self.net(x)
            loss = self.loss.value(prediction, y)
            if not math.isfinite(float(loss.detach())):
                self.blame_nonfinite(x)
            if loss.requires_grad:  # False when every parameter is frozen
                loss.backward()
        self.step += 1
        return loss.detach(), prediction.detach()
