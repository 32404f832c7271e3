"""The output losses a run can train and be measured with: one per run (a rule's ``output`` option).

Every loss ℓ(z, y) compares the network's output z (B, K) with integer class labels y (B,) and is averaged over the
batch. :func:`get` refuses an unknown name with the known ones; nothing falls through to a default.

- ``ce``: cross-entropy of softmax(z), ℓ = −log softmax(z)_y, in nats; ∂ℓ/∂z = softmax(z) − onehot(y).
- ``se``: squared error against the one-hot target, ℓ = ½‖z − onehot(y)‖² summed over classes;
  ∂ℓ/∂z = z − onehot(y). The loss of the energy-based and predictive-coding papers (Scellier & Bengio 2017, eq. 2;
  Whittington & Bogacz 2017, eq. 7). With float targets y (same shape as z) it is ½‖z − y‖² (regression).

**Sequences** (recurrent networks, time-major): z (T, B, K) is the readout at every step and y either (T, B) int64
labels, −1 at the steps that carry no target (e.g. all but the decision window of cue accumulation), or (T, B, K)
float targets at every step (se only). An example's loss is the mean of the per-step loss over its n_b counted
steps, ℓ_b = (1/n_b) Σ_{t counted} ℓ(z_t, y_t), and the batch's the mean over examples (Bellec et al. 2020 average
the cross-entropy over the decision window); ``error`` is ∂ℓ̄/∂z (T, B, K), zero at uncounted steps: the output
error from which a temporal rule's learning signal is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bioprop.errors import BioPropError


def onehot(y: Tensor, like: Tensor) -> Tensor:
    """The one-hot targets of labels ``y`` (B,) or (T, B) with the shape (B, K) or (T, B, K), dtype and device of
    ``like``. The labels are
    not range-checked here (the rules check every batch first): ``F.one_hot`` would, with a synchronising min/max
    on every call."""
    index = y.to(like.device).unsqueeze(-1)
    if y.dim() == 2:  # sequence labels (T, B); −1 (no target) gives a zero row
        return torch.zeros_like(like).scatter_(-1, index.clamp_min(0), 1.0) * (index >= 0)
    return torch.zeros_like(like).scatter_(1, index, 1.0)


def counted_steps(y: Tensor) -> Tensor:
    """The steps of a sequence's targets ``y`` ((T, B) labels or (T, B, K) floats) that carry one: (T, B) bool."""
    return y >= 0 if not y.is_floating_point() else torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)


def step_weights(y: Tensor, like: Tensor) -> Tensor:
    """w_tb = 1/(n_b B) at counted steps, 0 elsewhere (T, B, 1): Σ_tb w_tb ℓ_tb is the batch-mean sequence loss."""
    counted = counted_steps(y).to(like.dtype)
    return (counted / (counted.sum(0).clamp_min(1) * counted.shape[1])).unsqueeze(2)


def _sequence(per_step: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A per-example loss that also takes sequences (z (T, B, K)): the mean of ``per_step`` over each example's
    counted steps, (B,)."""

    def per_example(z: Tensor, y: Tensor) -> Tensor:
        if z.dim() != 3:
            return per_step(z, y)
        steps, batch, classes = z.shape
        labels = y if y.is_floating_point() else y.clamp_min(0)  # an uncounted step's label, any valid one
        flat_y = labels.reshape(steps * batch, *y.shape[2:])
        losses = per_step(z.reshape(steps * batch, classes), flat_y).view(steps, batch)
        counted = counted_steps(y)
        return (losses * counted).sum(0) / counted.sum(0).clamp_min(1)

    return per_example


def _ce_per_example(z: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(z, y, reduction="none")


def _ce_error(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if z.dim() == 3:  # softmax(z_t) − onehot(y_t), weighted by the counted steps
        weights = step_weights(y, z)
        log_p = torch.log_softmax(z, dim=2)
        loss = -(log_p.gather(2, y.clamp_min(0).unsqueeze(2)) * weights).sum()
        return loss, (log_p.exp() - onehot(y, z)) * weights
    log_p = torch.log_softmax(z, dim=1)  # one softmax pass serves the loss and its gradient
    loss = F.nll_loss(log_p, y)
    error = log_p.exp()  # (B, K)
    error.scatter_add_(1, y.unsqueeze(1), error.new_full((len(y), 1), -1.0))
    return loss, error.div_(len(y))


def _target(y: Tensor, z: Tensor) -> Tensor:
    """The squared error's target: float targets as they are, labels one-hot (−1, no target, as zeros)."""
    return y.to(z.dtype) if y.is_floating_point() else onehot(y, z)


def _se_per_example(z: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (z - _target(y, z)).square().sum(-1)


def _se_error(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    diff = z - _target(y, z)  # (B, K) or (T, B, K)
    if z.dim() == 3:
        weighted = diff * step_weights(y, z)
        return 0.5 * (weighted * diff).sum(), weighted
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
    "ce": Loss("ce", "cross-entropy (nats)", _sequence(_ce_per_example), _ce_error),
    "se": Loss(
        "se", "squared error ½‖z − target‖² (target onehot(y) for labels)", _sequence(_se_per_example), _se_error
    ),
}


def get(name: str) -> Loss:
    """The loss called ``name``; anything else is a :class:`BioPropError` listing the known names."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise BioPropError(f"unknown output loss {name!r}; known: {', '.join(LOSSES)}") from None
