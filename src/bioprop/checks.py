"""Checks shared by the rules, the trainer and the CLI: non-finite tensors named, malformed batches refused.

Everything here raises :class:`~bioprop.errors.BioPropError` (or returns what it found) *before* any work is
done, so that a bad input is never reported as a divergence and no hyperparameter is blamed for it.

A batch is ``x`` of shape (B, ...) in the network's dtype and on its device, and ``y`` of shape (B,), int64 class
indices in [0, n_classes). :func:`check_batch` checks what needs no network, :func:`fit_input` what needs one (it
runs the network once on one example, so a rule caches its answer per input shape), :func:`check_labels` and
:func:`check_finite_input` the values. Each costs a few tensor operations (:func:`all_finite` reads a sum, not an
elementwise test, unless the sum is not finite).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from bioprop.errors import BioPropError


def first_nonfinite(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """The name of the first tensor in ``named`` with a NaN or infinite entry, else None."""
    for name, tensor in named:
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry of a floating-point tensor is finite. Reads the sum (a NaN or ±inf entry makes it NaN or
    ±inf); only when the sum is not finite (which a huge but finite tensor can also cause) is every entry tested."""
    tensor = tensor.detach()  # a float() of a tensor that requires grad would warn
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


def time_major(net: nn.Module) -> bool:
    """Whether ``net`` takes time-major sequences x (T, B, C) and returns the readout at every step (T, B, K): the
    recurrent networks (:class:`bioprop.nets.recurrent.RecurrentNet`, whose class says ``time_major = True``)."""
    return bool(getattr(net, "time_major", False))


def check_batch(x: Any, y: Any, inputs_only: bool = False, sequence: bool = False) -> None:
    """Refuse a batch whose types, shapes or label dtype are wrong, before any work: ``x`` must be a tensor with a
    batch dimension, ``y`` a 1-D int64 tensor of the same length on the same device, and the batch not empty. With
    ``inputs_only`` (a prediction), ``y`` is not looked at. With ``sequence`` (a recurrent network) ``x`` is
    time-major (T, B, C) and ``y`` either (T, B) int64 labels, −1 where a step has no target, every example with at
    least one target, or (T, B, K) float targets (:mod:`bioprop.losses`)."""
    if not isinstance(x, Tensor):
        shape = "(T, B, C)" if sequence else "(B, ...)"
        raise BioPropError(f"input x must be a torch.Tensor of shape {shape}, not {type(x).__name__}")
    if not inputs_only and not isinstance(y, Tensor):
        raise BioPropError(f"labels y must be a torch.Tensor of class indices, not {type(y).__name__}")
    if sequence:
        _check_sequence(x, None if inputs_only else y)
        return
    if x.dim() < 2:
        raise BioPropError(f"input x of shape {_shape(x)} has no batch dimension; expected (B, features...)")
    if inputs_only:
        if len(x) == 0:
            raise BioPropError("empty batch: x has no examples")
        return
    if y.dim() != 1:
        raise BioPropError(f"labels y must be 1-D, shape (B,), not {_shape(y)}")
    if y.dtype != torch.int64:
        raise BioPropError(f"labels y must be int64 class indices (torch.long), not {y.dtype}")
    if len(x) != len(y):
        raise BioPropError(f"input x has {len(x)} examples but labels y has {len(y)}")
    if len(x) == 0:
        raise BioPropError("empty batch: x and y have no examples")
    if y.device != x.device:
        raise BioPropError(f"labels y are on {y.device} but input x is on {x.device}")


def _check_sequence(x: Tensor, y: Tensor | None) -> None:
    """:func:`check_batch` for a time-major sequence batch."""
    if x.dim() != 3:
        raise BioPropError(f"input x of shape {_shape(x)} is not a time-major sequence batch (T, B, C): a recurrent "
                           "network takes one")  # fmt: skip
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise BioPropError(f"empty batch: x of shape {_shape(x)} has no time steps or no examples")
    if y is None:
        return
    if y.device != x.device:
        raise BioPropError(f"labels y are on {y.device} but input x is on {x.device}")
    if y.is_floating_point():
        if y.dim() != 3 or y.shape[:2] != x.shape[:2]:
            raise BioPropError(f"float targets y of shape {_shape(y)} do not match x {_shape(x)}: expected "
                               f"({x.shape[0]}, {x.shape[1]}, K)")  # fmt: skip
        return
    if y.dtype != torch.int64 or y.shape != x.shape[:2]:
        flipped = y.shape == x.shape[:2][::-1] and x.shape[0] != x.shape[1]
        hint = ("; x and y look batch-major (B, T, ...): the rules take time-major sequences, x.transpose(0, 1) and "
                "y.transpose(0, 1) (a Dataset stores them batch-major)") if flipped else ""  # fmt: skip
        raise BioPropError(f"sequence labels y must be int64 of shape (T, B) = {tuple(x.shape[:2])}, −1 where a step "
                           f"has no target; got {y.dtype} of shape {_shape(y)}{hint}")  # fmt: skip
    empty = (y == -1).all(0)  # a label out of range is check_labels' to name, not a missing target
    if bool(empty.any()):
        raise BioPropError(f"example {int(empty.nonzero()[0])} of the batch has no target at any step (all labels −1)")


def check_labels(y: Tensor, n_classes: int) -> None:
    """Refuse labels outside [0, n_classes), naming the first bad value; sequence labels (T, B) may also be −1 (no
    target at that step); float targets (regression) must have ``n_classes`` entries per step and be finite."""
    if y.is_floating_point():
        if y.shape[-1] != n_classes:
            raise BioPropError(f"targets y have {y.shape[-1]} entries per step; the network has {n_classes} outputs")
        if not all_finite(y):
            raise BioPropError("targets y have non-finite entries (NaN or inf)")
        return
    low, high = (int(v) for v in torch.aminmax(y))
    lowest = -1 if y.dim() == 2 else 0
    if low < lowest or high >= n_classes:
        bad = low if low < lowest else high
        raise BioPropError(f"label {bad} in y is out of range: the network has {n_classes} outputs, 0..{n_classes - 1}")


MAX_INDEX = 2**31 - 1  # positions in a training set


def check_index(index: Any, batch: int) -> None:
    """Refuse example indices that are not a 1-D int64 tensor of ``batch`` distinct non-negative entries."""
    if not isinstance(index, Tensor):
        raise BioPropError(f"index must be a tensor of example indices, not {type(index).__name__}")
    if index.dtype != torch.int64 or index.dim() != 1 or len(index) != batch:
        raise BioPropError(f"index must be int64 of shape ({batch},), one per example; got {index.dtype} of shape "
                           f"{tuple(index.shape)}")  # fmt: skip
    if batch and int(index.min()) < 0:
        raise BioPropError(f"index {int(index.min())} is negative: indices are positions in the training set")
    if batch and int(index.max()) > MAX_INDEX:
        raise BioPropError(f"index {int(index.max())} is beyond any training set (at most {MAX_INDEX}): indices are "
                           "positions in the training set")  # fmt: skip
    if len(torch.unique(index)) != batch:
        raise BioPropError("index has repeated entries: each example of a batch needs its own position")


def check_finite_input(x: Tensor) -> None:
    if not all_finite(x):
        raise BioPropError("input x has non-finite entries (NaN or inf)")


#: The dtypes the rules compute in (half precision would lose the small differences several rules rely on).
DTYPES = (torch.float32, torch.float64)


def network_dtype(net: nn.Module) -> tuple[torch.dtype, torch.device] | None:
    """The dtype and device of the network's floating-point parameters (None if it has none). A
    :class:`BioPropError` names a layer whose parameters are not initialised yet (a lazy module), a network that
    mixes dtypes or devices, and a dtype other than float32 and float64."""
    found: tuple[str, Tensor] | None = None
    for name, param in net.named_parameters():
        if nn.parameter.is_lazy(param):
            path = name.rpartition(".")[0]
            kind = type(net.get_submodule(path)).__name__
            raise BioPropError(
                f"layer {path or '(the network itself)'} ({kind}) has uninitialised parameters (a lazy module); run "
                "the network once, net(x), to initialise it"
            )
        if not param.is_floating_point():
            continue
        if found is None:
            found = (name, param)
        elif (param.dtype, param.device) != (found[1].dtype, found[1].device):
            first, other = found
            raise BioPropError(
                f"the network mixes parameter types: {first!r} is {other.dtype} on {other.device}, {name!r} is "
                f"{param.dtype} on {param.device}; convert the whole network (net.to(...))"
            )
    if found is not None and found[1].dtype not in DTYPES:
        raise BioPropError(
            f"the network computes in {found[1].dtype}; the rules support torch.float32 and torch.float64: convert "
            "it (net.float() or net.double())"
        )
    return None if found is None else (found[1].dtype, found[1].device)


def fit_input(net: nn.Module, x: Tensor) -> int:
    """Check that ``x`` (B, ...), or (T, B, C) for a :func:`time_major` network, has the network's dtype and device
    and a shape the network accepts, by running it on one example (in eval mode, without autograd, on a copy:
    nothing of the network or of ``x`` changes); returns the number of outputs (classes). A rule calls this once
    per input shape."""
    kind = network_dtype(net)
    if kind is None:
        raise BioPropError("the network has no floating-point parameters")
    dtype, device = kind
    if x.dtype != dtype:
        raise BioPropError(f"input x is {x.dtype} but the network computes in {dtype}; convert x (x.to({dtype}))")
    if x.device != device:
        raise BioPropError(f"input x is on {x.device} but the network is on {device}; move x (x.to({str(device)!r}))")
    sequence = time_major(net)
    modes = [(module, module.training) for module in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            out = net(x[:, :1].clone() if sequence else x[:1].clone())
    except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
        said = str(exc).strip().splitlines()
        reason = said[0] if said else type(exc).__name__
        raise BioPropError(f"input x of shape {_shape(x)} does not fit the network (run on its first example): {reason}"
                           ) from None  # fmt: skip
    finally:
        for module, training in modes:
            module.training = training
    if not isinstance(out, Tensor) or out.dim() != (3 if sequence else 2):
        got = _shape(out) if isinstance(out, Tensor) else type(out).__name__
        need = "a readout at every step (T, B, K)" if sequence else "logits (B, n_classes)"
        raise BioPropError(f"the network's output for one example is {got}; the rules need {need}")
    return out.shape[-1]
