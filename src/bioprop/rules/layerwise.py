"""A backward pass written out layer by layer, with the feedback weights as an argument.

The feedback-alignment family (and any rule that only changes what carries errors backwards) shares this walk:
a forward pass that keeps every layer's input, then a backward pass in which parameterless layers (activations,
pooling, flatten) are differentiated exactly and each parameterised layer l (Linear, Conv2d) gets

.. math::
    ∂W_l = δ_l h_{l-1}^T, \\quad ∂b_l = Σ_batch δ_l, \\quad g_{l-1} = \\text{feedback}_l(δ_l)

where δ_l is the error at the layer's output and ``feedback_l`` is what the rule puts in place of W_lᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_input, conv2d_weight

from bioprop.errors import BioPropError


def forward_cached(layers: Sequence[nn.Module], x: Tensor) -> list[Tensor]:
    """``acts[0] = x`` and ``acts[i+1] = layers[i](acts[i])``, computed without an autograd graph."""
    acts = [x]
    with torch.no_grad():
        for layer in layers:
            # An in-place layer would overwrite the cached input its derivative needs.
            inputs = acts[-1].clone() if getattr(layer, "inplace", False) else acts[-1]
            acts.append(layer(inputs))
    return acts


def through_parameterless(layer: nn.Module, h_in: Tensor, h_out: Tensor, grad_out: Tensor) -> Tensor:
    """The exact vector-Jacobian product of a parameterless layer: grad_out (shape of h_out) → shape of h_in."""
    if isinstance(layer, nn.ReLU):
        return grad_out * (h_out > 0)
    if isinstance(layer, nn.Tanh):
        return grad_out * (1 - h_out * h_out)
    if isinstance(layer, nn.Sigmoid):
        return grad_out * h_out * (1 - h_out)
    if isinstance(layer, nn.Flatten):
        return grad_out.reshape(h_in.shape)
    if isinstance(layer, nn.Identity) or (isinstance(layer, nn.Dropout) and not layer.training):
        return grad_out
    if isinstance(layer, nn.Dropout):
        # The forward pass's mask, read off its output: redrawing it here would send error to dropped units.
        # (An input that was exactly 0 counts as dropped; it carries no weight gradient either way.)
        return grad_out * (h_out != 0) / (1 - layer.p)
    # Other activations and pooling: their local derivative, by autograd over this one layer only.
    with torch.enable_grad():
        leaf = h_in.detach().requires_grad_(True)
        (grad_in,) = torch.autograd.grad(layer(leaf), leaf, grad_out)
    return grad_in


def weight_grads(layer: nn.Module, h_in: Tensor, delta: Tensor) -> list[Tensor]:
    """[∂W, ∂b] (∂b only when the layer has a bias) of a Linear or Conv2d layer from its output error δ."""
    if isinstance(layer, nn.Linear):
        grads = [delta.reshape(-1, delta.shape[-1]).T @ h_in.reshape(-1, h_in.shape[-1])]  # (out, in)
        bias_dims: tuple[int, ...] = tuple(range(delta.dim() - 1))
    else:
        stride, padding, dilation, groups = conv_geometry(layer)
        grads = [conv2d_weight(h_in, layer.weight.shape, delta, stride, padding, dilation, groups)]
        bias_dims = (0, 2, 3)
    if layer.bias is not None:
        grads.append(delta.sum(bias_dims))
    return grads


def feed_back(layer: nn.Module, feedback: Tensor, h_in: Tensor, delta: Tensor) -> Tensor:
    """Carry δ (layer output error) to the layer's input through ``feedback``, a tensor of the weight's shape
    standing where the weight would stand in backprop (backprop itself is ``feedback = W``)."""
    if isinstance(layer, nn.Linear):
        return delta @ feedback  # (B, out) @ (out, in) → (B, in)
    stride, padding, dilation, groups = conv_geometry(layer)
    return conv2d_input(h_in.shape, feedback, delta, stride, padding, dilation, groups)


def conv_geometry(layer: nn.Conv2d) -> tuple:
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise BioPropError(
            f"Conv2d with padding={layer.padding!r}, padding_mode={layer.padding_mode!r} is not supported by the "
            "layer-wise rules; use integer zero padding"
        )
    return layer.stride, layer.padding, layer.dilation, layer.groups


def parameterised_indices(layers: Sequence[nn.Module]) -> list[int]:
    return [i for i, layer in enumerate(layers) if isinstance(layer, (nn.Linear, nn.Conv2d))]
