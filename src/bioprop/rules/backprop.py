"""Backpropagation (Rumelhart, Hinton & Williams 1986), the reference every rule is measured against.

.. math::
    δ_L = e ⊙ φ'(a_L), \\quad δ_l = (W_{l+1}^T δ_{l+1}) ⊙ φ'(a_l), \\quad ∂L/∂W_l = δ_l h_{l-1}^T

computed by autograd over the batch-mean output loss (:mod:`bioprop.losses`): cross-entropy (``output=ce``, the
default) or squared error against the one-hot target (``output=se``). Works for any ``nn.Module``, whose
``net(x)`` is the prediction. On an energy-based network (``--arch ebm:...``) the prediction is the free phase of
the network's own :attr:`~bioprop.nets.energy.EnergyNet.relaxation` with the rule's ``output`` (se: the last layer
is a state; ce: it is a softmax readout outside the dynamics), and the update is backprop through time over it;
the network itself is left as it was built (``net(x)`` keeps its own output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioprop.errors import BioPropError
from bioprop.nets.energy import EnergyNet, Relaxation, free_prediction
from bioprop.rules.base import Entry, Options, Rule, Update, backprop_update, make_card, register
from bioprop.rules.options import output_loss

CARD = make_card(
    linear=(False, "errors flow through a purely linear backward pass"),
    derivatives=(False, "the backward pass multiplies by the exact derivatives φ'"),
    weight_transport=(False, "the backward pass uses the transposed forward weights"),
    spikes=(False, "real-valued activities and errors"),
    clock=(False, "a separate backward phase follows each forward phase"),
    targets=(False, "needs a supervised target at the output"),
)


@dataclass(frozen=True)
class BackpropOptions(Options):
    output: str = output_loss()


@register("bp", family="backprop", paper="Rumelhart, Hinton & Williams 1986", summary="exact gradient", card=CARD)
class Backprop(Rule):
    """Exact backpropagation through autograd; its update equals :meth:`reference_grads`. Raises
    :class:`BioPropError` at creation for a network without parameters, and for ``output=ce`` on an energy net
    without a hidden layer (its readout would read the input)."""

    Options = BackpropOptions
    networks = frozenset({"feedforward", "energy"})
    opts: BackpropOptions

    def __init__(self, net: Any, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if not any(True for _ in net.parameters()):
            raise BioPropError(f"rule {self.name}: the network has no parameters to train")
        #: On an energy net: the free phase the prediction runs (the net's own, with this rule's output).
        self.relaxation: Relaxation | None = None
        if isinstance(net, EnergyNet):
            try:
                self.relaxation = net.relaxation._replace(output=self.opts.output).check(net)
            except BioPropError as exc:
                raise BioPropError(f"rule {self.name}: {exc}") from None

    def prediction(self, x: Tensor) -> Tensor:
        """``net(x)``; on an energy net, its free phase with the rule's output (module docstring)."""
        return self.net(x) if self.relaxation is None else free_prediction(self.net, x, self.relaxation)

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        return backprop_update(self.net, x, y, self.loss, self.prediction)

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return self.update(x, y).grads

    def backward(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``loss.backward()`` itself (autograd accumulates into ``.grad``), after the batch checks; the network's
        local updates (:meth:`Rule.local_grads`) are added to their parameters' ``.grad``."""
        x, _ = self.check_batch(x, y, index)
        local = self.local_grads(x)  # the network's own plastic modules (lateral inhibition), which autograd skips
        with torch.enable_grad():
            prediction = self.prediction(x)
            loss = self.loss.value(prediction, y)
            if not math.isfinite(float(loss.detach())):
                self.blame_nonfinite(x)
            if loss.requires_grad:  # False when every parameter is frozen
                loss.backward()
        self.accumulate_grads(local)
        self.step += 1
        return loss.detach(), prediction.detach()
