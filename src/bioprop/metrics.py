"""Metrics: the angle between a rule's update and the exact gradient, accuracy and loss."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def angle_deg(a: Tensor, b: Tensor) -> float:
    """Angle in degrees between two tensors seen as flat vectors; NaN if either is zero."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    a_norm, b_norm = a.norm(), b.norm()
    if a_norm == 0 or b_norm == 0:
        return math.nan
    a, b = a / a_norm, b / b_norm
    # 2·atan2(‖â−b̂‖, ‖â+b̂‖) stays exact near 0° and 180°, where acos(â·b̂) loses about 1e-6°.
    return math.degrees(2 * math.atan2(float((a - b).norm()), float((a + b).norm())))


def update_angles(rule, probes: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Per parameter tensor: the mean over ``probes`` (held-out batches) of the angle in degrees between the
    rule's update ``rule.grads`` and ``rule.reference_grads``. Leaves ``.grad`` untouched. Both start from the same
    random state, so a stochastic layer (dropout) draws one mask per probe batch that serves both."""
    sums: dict[str, list[float]] = {}
    for x, y in probes:
        with same_draws(x):
            update = rule.grads(x, y).grads
        reference = rule.reference_grads(x, y)
        for name, exact in reference.items():
            sums.setdefault(name, []).append(angle_deg(update[name], exact))
    return {name: sum(values) / len(values) for name, values in sums.items()}


def same_draws(x: object) -> contextlib.AbstractContextManager:
    """A context whose random draws (global generator of the CPU, and of ``x``'s GPU) are undone at its end, so that
    the next computation draws the same numbers."""
    device = getattr(x, "device", None)
    devices = [device] if device is not None and device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


@torch.no_grad()
def evaluate(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Batch-mean cross-entropy and accuracy (a fraction) of ``net`` on ``(x, y)``, in chunks of ``batch_size``."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = net(x[start : start + batch_size])
        target = y[start : start + batch_size]
        total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return total_loss / len(x), correct / len(x)
