"""Incremental predictive coding's weight steps (Salvatori et al. 2024, ICLR), for :mod:`bioprop.rules.pc_inference`.

At every inference step t < T, after the errors, every weight steps down F: θ_{t+1} = θ_0 − η Σ_{s≤t} ∂F/∂θ(s) ÷ (βN)
(:class:`Sums`). The first layer's steps fold when its input is the clamped h_0 (:func:`gram`; the derivation is in
:mod:`bioprop.rules.pc_inference`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bioprop.rules.pc_equations import Block, Weights, weight_change


def gram(blocks: list[Block], h0: Tensor, frozen: frozenset[str]) -> Tensor | None:
    """K = h_0 h_0ᵀ + 1 1ᵀ (N, N) (a frozen weight or bias leaves its term out) when the first layer's weight steps
    fold: a Linear layer on a 2-D clamped input, with N < n_0, a layer above it, and parameters no other layer uses;
    else None."""
    layer = blocks[0].layer
    if not isinstance(layer, nn.Linear) or h0.dim() != 2 or len(h0) >= layer.in_features or len(blocks) < 2:
        return None
    if any(name in block.names for block in blocks[1:] for name in blocks[0].names):
        return None
    weight_name, *bias_name = blocks[0].names
    kernel = h0 @ h0.t() if weight_name not in frozen else h0.new_zeros(len(h0), len(h0))
    if bias_name and bias_name[0] not in frozen:
        kernel += 1.0
    return kernel


def accumulate(total: Tensor, error: Tensor, scale: float | Tensor) -> None:
    """total += scale · error, ``scale`` a number or an (N, 1) column."""
    if isinstance(scale, float):
        total.add_(error, alpha=scale)
    else:
        total.addcmul_(error, scale.view(-1, *([1] * (error.dim() - 1))))


class Sums:
    """Σ_{s≤t} ∂F/∂θ(s) ÷ (βN) per parameter (by name: a module used at several positions, or a weight two layers
    share, sums its positions, so that it moves as one) and the moved weights θ_0 − η Σ. A Linear layer's weight
    sum is kept transposed, (in, out), the layout its moved Wᵀ is read in; the blocks of the module ``skip`` have
    their steps folded instead."""

    def __init__(self, blocks: list[Block], start: list[Weights], frozen: frozenset[str], skip: Any) -> None:
        self.blocks, self.frozen = blocks, frozen
        self.start: dict[str, Tensor] = {}  # θ_0, a Linear weight as Wᵀ
        for block, w in zip(blocks, start, strict=True):
            if block.layer is not skip:
                values = [w.weight_t if w.weight_t is not None else w.weight] + ([w.bias] if w.bias is not None else [])
                self.start.update(zip(block.names, values, strict=True))
        self.sums = {name: torch.zeros_like(value) for name, value in self.start.items()}

    def add(self, weights: list[Weights], errors: list[Tensor], inputs: list[Tensor], scale: float | Tensor) -> None:
        """Add this step's ∂F/∂θ ÷ (βN) of every layer (errors and inputs per layer, bottom to top)."""
        for block, w, error, a in zip(self.blocks, weights, errors, inputs, strict=True):
            if block.names[0] not in self.sums:
                continue
            sums = [self.sums[name] for name in block.names]
            if w.weight_t is not None and a.dim() == 2:  # Σ aᵀ(scale ε), transposed, in one fused product
                if not isinstance(scale, float):
                    error, scale = error * scale, 1.0
                sums[0].addmm_(a.t(), error, alpha=scale)
                if len(sums) > 1:
                    sums[1].add_(error.sum(0), alpha=scale)
                continue
            grads = weight_change(w, error, a, scale)
            if w.weight_t is not None:
                grads[0] = grads[0].t()
            for total, grad in zip(sums, grads, strict=True):
                total.add_(grad)

    def moved(self, eta: float, weights: list[Weights]) -> list[Weights]:
        """θ_{t+1} = θ_0 − η Σ_{s≤t} ∂F/∂θ(s) ÷ (βN) for every summed parameter (frozen ones stay)."""
        new = {name: value if name in self.frozen else torch.add(value, self.sums[name], alpha=-eta)
               for name, value in self.start.items()}  # fmt: skip
        result = []
        for block, w in zip(self.blocks, weights, strict=True):
            if block.names[0] not in new:
                result.append(w)
                continue
            first, bias = new[block.names[0]], new[block.names[1]] if len(block.names) > 1 else None
            linear = w.weight_t is not None
            result.append(Weights(block.layer, first.t() if linear else first, bias, first if linear else None))
        return result

    def updates(self) -> dict[str, Tensor]:
        """The summed descent directions keyed by parameter name, in each parameter's own layout."""
        transposed = {b.names[0] for b in self.blocks if isinstance(b.layer, nn.Linear)}
        return {name: total.t().contiguous() if name in transposed else total for name, total in self.sums.items()}
