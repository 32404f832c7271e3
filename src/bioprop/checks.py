"""Checks shared by the rules, the trainer and the CLI: non-finite tensors named, malformed batches refused.

Everything here raises :class:`~bioprop.errors.BioPropError` (or returns what it found) *before* any work is
done, so that a bad input is never reported as a divergence and no hyperparameter is blamed for it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def first_nonfinite(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """The name of the first tensor in ``named`` with a NaN or infinite entry, else None."""
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
