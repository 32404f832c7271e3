"""The update a rule returns (:class:`Update`) and the functions that make one from parts: backprop's
(:func:`backprop_update`), that of the network's own plastic modules (:func:`local_grads`) and the sum over the
positions of a shared module (:func:`add_grads`). :mod:`bioprop.rules.base` re-exports them: the rules import them
from there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bioprop import losses


class Update(NamedTuple):
    grads: dict[str, Tensor]  # descent direction, keyed like net.named_parameters()
    loss: Tensor  # scalar, batch-mean, of the run's output loss (Rule.loss)
    prediction: Tensor  # (B, n_classes) the output the loss was measured on
    traces: dict[str, Tensor] | None = None  # per inner step, e.g. the energy at each inference step
    state: Any = None  # the rule's state after this step (persistent particles, ...): adopted by backward only


def backprop_update(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: losses.Loss = losses.LOSSES["ce"],
    predict: Callable[[Tensor], Tensor] | None = None,
) -> Update:
    """Autograd's gradient of the batch-mean output loss (:mod:`bioprop.losses`, cross-entropy by default) of
    ``predict(x)`` (B, n_classes; ``net(x)`` by default, or a rule's prediction path such as an energy net's free
    phase) for the trainable parameters of ``net``, keyed like ``net.named_parameters()`` (zeros for a parameter
    the prediction does not use); leaves ``.grad`` untouched. Backprop's update, and the reference gradient of
    every rule that approximates it."""
    named = {n: p for n, p in net.named_parameters() if p.requires_grad}
    with torch.enable_grad():
        prediction = (net if predict is None else predict)(x)
        loss = loss_fn.value(prediction, y)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True) if named else ()
    update = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), grads, strict=True)}
    return Update(update, loss.detach(), prediction.detach())


def local_grads(net: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The hook through which a network's own plastic modules learn under any rule: every module of ``net`` with a
    method ``local_grads(inputs, output) -> dict[str, Tensor]`` (e.g. the lateral inhibition of
    :mod:`bioprop.nets.lateral`, whose weights follow an anti-Hebbian rule, not the loss) is handed the inputs and
    output of each of its calls in one forward pass of ``x`` (B, ...), run here without autograd, with the global
    random state and the network's buffers (running statistics) restored after it. Its entries (descent directions,
    keyed by its own parameter names) come back keyed like ``net.named_parameters()``, summed over the module's
    calls. Pure; ``{}`` (and no forward pass) when no module has the method. A rule whose layer-wise walk cannot
    carry such a module refuses it at create."""
    plastic = {id(m): path for path, m in net.named_modules() if callable(getattr(m, "local_grads", None))}
    if not plastic:
        return {}
    seen: list[tuple[str, nn.Module, tuple, Tensor]] = []

    def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        seen.append((plastic[id(module)], module, inputs, output))

    handles = [m.register_forward_hook(record) for m in net.modules() if id(m) in plastic]
    devices = [x.device] if x.device.type == "cuda" else []
    buffers = [(buffer, buffer.clone()) for buffer in net.buffers()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            net(x)
            grads: dict[str, Tensor] = {}
            for path, module, inputs, output in seen:
                found = module.local_grads(inputs, output)
                add_grads(grads, [f"{path}.{key}" if path else key for key in found], list(found.values()))
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, kept in buffers:
                buffer.copy_(kept)
    return grads


def add_grads(grads: dict[str, Tensor], names: list[str], values: list[Tensor]) -> None:
    """``grads[name] += value`` for each pair, starting absent names at ``value``: a module used at several
    positions (shared weights) gets the sum of its positions' terms."""
    for name, value in zip(names, values, strict=True):
        grads[name] = grads[name] + value if name in grads else value
