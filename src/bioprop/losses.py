"""The output losses a run can train and be measured with: one per run (a rule's ``output`` option).

Every loss ℓ(z, y) compares the network's output z (B, K) with integer class labels y (B,) and is averaged over the
batch. :func:`get` refuses an unknown name with the known ones; nothing falls through to a default.

- ``ce``: cross-entropy of softmax(z), ℓ = −log softmax(z)_y, in nats; ∂ℓ/∂z = softmax(z) − onehot(y).
- ``se``: squared error against the one-hot target, ℓ = ½‖z − onehot(y)‖² summed over classes;
  ∂ℓ/∂z = z − onehot(y). The loss of the energy-based and predictive-coding papers (Scellier & Bengio 2017, eq. 2;
  Whittington & Bogacz 2017, eq. 7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bioprop.errors import BioPropError


def onehot(y: Tensor, like: Tensor) -> Tensor:
    """The one-hot targets of labels ``y`` (B,) with the shape (B, K), dtype and device of ``like``. The labels are
    not range-checked here (the rules check every batch first): ``F.one_hot`` would, with a synchronising min/max
    on every call."""
    return torch.zeros_like(like).scatter_(1, y.to(like.device).unsqueeze(1), 1.0)


def _ce_per_example(z: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(z, y, reduction="none")


def _ce_error(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    log_p = torch.log_softmax(z, dim=1)  # one softmax pass serves the loss and its gradient
    loss = F.nll_loss(log_p, y)
    error = log_p.exp()  # (B, K)
    error.scatter_add_(1, y.unsqueeze(1), error.new_full((len(y), 1), -1.0))
    return loss, error.div_(len(y))


def _se_per_example(z: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (z - onehot(y, z)).square().sum(1)


def _se_error(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    diff = z - onehot(y, z)  # (B, K)
    return 0.5 * diff.square().sum(1).mean(), diff.div_(len(y))


class Loss(NamedTuple):
    """An output loss: ``name`` (as options and run directories spell it), ``label`` (axis and column text),
    ``per_example(z, y)`` (B,) and ``error(z, y)``: the batch mean and its gradient ∂ℓ̄/∂z (B, K), 1/B included."""

    name: str
    label: str
    per_example: Callable[[Tensor, Tensor], Tensor]
    error: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

    def value(self, z: Tensor, y: Tensor) -> Tensor:
        """The batch-mean loss (scalar)."""
        return self.per_example(z, y).mean()


LOSSES: dict[str, Loss] = {
    "ce": Loss("ce", "cross-entropy (nats)", _ce_per_example, _ce_error),
    "se": Loss("se", "squared error ½‖z − onehot(y)‖²", _se_per_example, _se_error),
}


def get(name: str) -> Loss:
    """The loss called ``name``; anything else is a :class:`BioPropError` listing the known names."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise BioPropError(f"unknown output loss {name!r}; known: {', '.join(LOSSES)}") from None
