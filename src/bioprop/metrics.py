"""Metrics: the angle between a rule's update and the exact gradient, accuracy and loss.

:func:`update_angles` and :func:`evaluate` check their arguments first and raise
:class:`~bioprop.errors.BioPropError` naming the problem before any work (:mod:`bioprop.checks`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from bioprop import checks, losses
from bioprop.errors import BioPropError


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
    """Per parameter tensor: the mean over ``probes`` (held-out batches, an iterable of ``(x, y)`` pairs with x of
    shape (B, ...) and y (B,) int64, or sequences as a recurrent network takes them, uint8 spike trains converted) of
    the angle in degrees between the rule's update ``rule.grads`` and ``rule.reference_grads``. Leaves ``.grad`` and
    the global random state untouched: both start from the same random state, so a stochastic layer (dropout) draws
    one mask per probe batch that serves both, and it is restored after. Parameters the network's own plasticity
    learns (:func:`plastic_parameters`, e.g. lateral inhibition) follow no loss, so they have no angle: left out.

    Raises :class:`BioPropError` before any work if ``rule`` is not a rule (from ``bioprop.rules.create``), if
    ``probes`` is not an iterable of ``(x, y)`` pairs (a single pair must be wrapped, ``[(x, y)]``) or is empty,
    or if a batch is malformed (see :meth:`bioprop.rules.Rule.check_batch`)."""
    from bioprop.rules.base import Rule  # here: the rules import this module

    if not isinstance(rule, Rule):
        raise BioPropError(f"update_angles needs a rule from bioprop.rules.create(...), not {type(rule).__name__}")
    probes = [(spikes_as_float(rule.net, x), y) for x, y in probe_batches(probes)]
    for x, y in probes:
        rule.check_batch(x, y)
    sums: dict[str, list[float]] = {}
    local = plastic_parameters(rule.net)
    for x, y in probes:
        with same_draws(x):
            update = rule.grads(x, y).grads
        with same_draws(x):
            reference = rule.reference_grads(x, y)
        for name, exact in reference.items():
            if name not in local:
                sums.setdefault(name, []).append(angle_deg(update[name], exact))
    return {name: sum(values) / len(values) for name, values in sums.items()}


def plastic_parameters(net: object) -> set[str]:
    """Names (as in ``net.named_parameters()``) of the parameters of modules that learn by a rule of their own, a
    ``local_grads`` method (:func:`bioprop.rules.base.local_grads`)."""
    if not isinstance(net, torch.nn.Module):
        return set()
    return {f"{path}.{name}" if path else name for path, module in net.named_modules()
            if callable(getattr(module, "local_grads", None)) for name, _ in module.named_parameters()}  # fmt: skip


def spikes_as_float(net: object, x: object) -> object:
    """x in the network's dtype when it is a recurrent network's uint8 spike train (stored as 0/1 bytes by
    :mod:`bioprop.data`); anything else as it is (checked by the caller)."""
    kind = checks.network_dtype(net)
    if isinstance(x, Tensor) and x.dtype == torch.uint8 and checks.time_major(net) and kind is not None:
        return x.to(kind[0])
    return x


def probe_batches(probes: object) -> list[tuple[Tensor, Tensor]]:
    """``probes`` as a list of ``(x, y)`` pairs; anything else is a :class:`BioPropError` saying what it is."""
    if isinstance(probes, Tensor) or not isinstance(probes, Iterable):
        raise BioPropError(f"probes must be a list of (x, y) batches, not {type(probes).__name__}")
    if isinstance(probes, tuple) and len(probes) == 2 and all(isinstance(part, Tensor) for part in probes):
        raise BioPropError("probes must be a list of (x, y) batches, not a single (x, y) pair: wrap it, [(x, y)]")
    found = list(probes)
    if not found:
        raise BioPropError("no probe batches: give at least one (x, y) batch")
    for index, pair in enumerate(found):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            length = f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else ""
            raise BioPropError(f"probe batch {index} is a {type(pair).__name__}{length}, not an (x, y) pair")
    return [tuple(pair) for pair in found]


def same_draws(x: object) -> contextlib.AbstractContextManager:
    """A context whose random draws (global generator of the CPU, and of ``x``'s GPU) are undone at its end, so that
    the next computation draws the same numbers."""
    device = getattr(x, "device", None)
    devices = [device] if device is not None and device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


@torch.no_grad()
def evaluate(
    model: object, x: Tensor, y: Tensor, batch_size: int = 1000, loss: str | None = None
) -> tuple[float, float]:
    """Mean output loss per example and accuracy (a fraction) on ``x`` (N, ...) with labels ``y`` (N,) int64, in
    chunks of ``batch_size`` examples. For a recurrent network x is time-major (T, N, C) (uint8 spike trains are
    converted to the network's dtype) and y (T, N) labels, −1 at steps without a target, or (T, N, K) float
    targets; accuracy is :func:`sequence_correct`'s, NaN for float targets (regression has no classes).
    ``model`` is a rule (from ``bioprop.rules.create``: its prediction path
    :meth:`~bioprop.rules.Rule.predict` and its output loss, the run's one loss) or a network (``net(x)`` and
    ``loss``, a name of :mod:`bioprop.losses`, cross-entropy by default).

    Raises :class:`BioPropError` before any work for a ``model`` that is neither, a ``loss`` given with a rule (the
    rule's own is used) or unknown, a ``batch_size`` that is not a positive integer, and a malformed ``(x, y)``
    (:func:`bioprop.checks.check_batch`: not tensors, labels not 1-D int64, lengths that differ, no examples; x of a
    dtype, device or shape the network does not accept; labels outside the network's outputs)."""
    from bioprop.rules.base import Rule  # here: the rules import this module

    if isinstance(model, Rule):
        if loss is not None:
            raise BioPropError(f"evaluate: a rule measures its own output loss ({model.loss.name}); leave loss unset")
        net, predict, loss_fn = model.net, model.predict, model.loss
    elif isinstance(model, nn.Module):
        net, predict, loss_fn = model, model, losses.get("ce" if loss is None else loss)
    else:
        raise BioPropError(f"evaluate needs a rule or a torch.nn.Module, not {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BioPropError(f"batch_size must be a positive integer, not {batch_size!r}")
    sequence = checks.time_major(net)
    x = spikes_as_float(net, x)
    checks.check_batch(x, y, sequence=sequence)
    checks.check_labels(y, checks.fit_input(net, x))
    total_loss, correct, n = 0.0, 0, x.shape[1] if sequence else len(x)
    for start in range(0, n, batch_size):
        if sequence:
            chunk = slice(start, start + batch_size)
            output, target = predict(x[:, chunk].contiguous()), y[:, chunk]
            correct += sequence_correct(output, target)
        else:
            output, target = predict(x[start : start + batch_size]), y[start : start + batch_size]
            correct += int((output.argmax(1) == target).sum())
        total_loss += float(loss_fn.per_example(output, target).sum())
    accuracy = math.nan if sequence and y.is_floating_point() else correct / n
    return total_loss / n, accuracy


def sequence_correct(z: Tensor, y: Tensor) -> int:
    """How many examples of a sequence batch are classified right: the class whose readout z (T, B, K), summed over
    an example's counted steps (labels y (T, B) ≥ 0), is largest, against the label of its last counted step (the
    tasks give one label per example). Float targets (regression) have no classes: 0."""
    if y.is_floating_point():
        return 0
    counted = y >= 0
    decision = (z * counted.unsqueeze(2)).sum(0).argmax(1)  # (B,)
    last = (counted.cumsum(0) == counted.sum(0)) & counted  # the last counted step, one per example
    label = (y * last).sum(0)
    return int((decision == label).sum())
