"""Backprop through time and its truncation: the reference gradient of every temporal rule, and the baseline
Lillicrap & Santoro 2019 measure biological alternatives against.

- ``bptt`` (Werbos 1990; for spiking networks with the surrogate derivative ψ of
  :func:`bioprop.nets.recurrent.spike`, Bellec et al. 2018/2020): autograd through the whole sequence of the run's
  sequence loss (:mod:`bioprop.losses`); memory grows linearly with T.
- ``tbptt`` (truncated BPTT, Williams & Peng 1990, the k₁ = k₂ = k variant): the sequence is run in windows of
  ``truncation`` k steps; the state entering a window is detached, so credit flows back at most k steps, and each
  window's part of the loss is backpropagated before the next window runs (memory O(k)):

  .. math::
      \\hat g = \\sum_w \\sum_{t ∈ w} (∂E/∂y^t)^T \\, ∂y^t/∂θ |_{\\text{within } w}

  With k ≥ T it is BPTT exactly. A truncation longer than the sequence is a stated behaviour, not an error: the
  whole sequence is one window (the update is then BPTT's).

Shapes: x (T, B, C) time-major, y (T, B) labels (−1: no target) or (T, B, K) float targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioprop import losses
from bioprop.rules.backprop import Backprop, BackpropOptions
from bioprop.rules.base import Rule, Update, make_card, register
from bioprop.rules.options import count

BPTT_CARD = make_card(
    linear=(False, "errors flow through a purely linear backward pass"),
    derivatives=(False, "the backward pass multiplies by the exact (surrogate) derivatives"),
    weight_transport=(False, "the backward pass uses the transposed forward and recurrent weights"),
    spikes=(False, "real-valued errors through a surrogate derivative of the spikes"),
    clock=(False, "a backward sweep through the whole sequence follows its forward sweep"),
    targets=(False, "needs a supervised target at the readout"),
)
TBPTT_CARD = make_card(
    linear=(False, "errors flow through a purely linear backward pass"),
    derivatives=(False, "the backward pass multiplies by the exact (surrogate) derivatives"),
    weight_transport=(False, "the backward pass uses the transposed forward and recurrent weights"),
    spikes=(False, "real-valued errors through a surrogate derivative of the spikes"),
    clock=(False, "a backward sweep over each window of k steps follows its forward sweep"),
    targets=(False, "needs a supervised target at the readout"),
)

MAX_TRUNCATION = 1_000_000


@register("bptt", family="temporal", paper="Werbos 1990; Bellec et al. 2018", summary="backprop through time",
          card=BPTT_CARD)  # fmt: skip
class BPTT(Backprop):
    """Backprop through time: :class:`~bioprop.rules.backprop.Backprop` on a recurrent network (time-major
    sequences, the sequence loss); its update equals :meth:`reference_grads`."""

    networks = frozenset({"recurrent"})


@dataclass(frozen=True)
class TBPTTOptions(BackpropOptions):
    truncation: int = count(20, "k: the steps credit flows back; the sequence runs in windows of k steps",
                            MAX_TRUNCATION)  # fmt: skip


def truncated_bptt(net: Any, x: Tensor, y: Tensor, loss: losses.Loss, k: int) -> tuple[dict[str, Tensor], Tensor]:
    """The tbptt update (module docstring): gradients keyed like ``net.named_parameters()`` and the readout
    (T, B, K). ∂E/∂y^t is the sequence loss's exact per-step error (its normalisation over the whole sequence), so
    the windows' contributions add up to BPTT's gradient when k ≥ T."""
    named = {n: p for n, p in net.named_parameters() if p.requires_grad}
    grads = {n: torch.zeros_like(p) for n, p in named.items()}
    weights = losses.step_weights(y, x) * x.shape[1]  # (T, B, 1)
    state, outputs = None, []
    for start in range(0, x.shape[0], k):
        window = slice(start, start + k)
        with torch.enable_grad():
            out, state = net.unroll(x[window], state)
            with torch.no_grad():
                labels = y[window] if y.is_floating_point() else y[window].clamp_min(0)
                error = torch.stack([loss.error(o, t)[1] for o, t in zip(out, labels, strict=True)]) * weights[window]
            found = torch.autograd.grad((out * error).sum(), list(named.values()), allow_unused=True)
        for name, g in zip(named, found, strict=True):
            if g is not None:
                grads[name] += g
        state = type(state)(*(part.detach() for part in state))
        outputs.append(out.detach())
    return grads, torch.cat(outputs)


@register("tbptt", family="temporal", paper="Williams & Peng 1990", summary="truncated backprop through time",
          card=TBPTT_CARD)  # fmt: skip
class TBPTT(Rule):
    """Truncated BPTT with windows of ``truncation`` steps (module docstring)."""

    Options = TBPTTOptions
    networks = frozenset({"recurrent"})
    opts: TBPTTOptions

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        grads, outputs = truncated_bptt(self.net, x, y, self.loss, self.opts.truncation)
        return Update(grads, self.loss.value(outputs, y), outputs)
