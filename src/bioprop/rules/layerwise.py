"""A backward pass written out layer by layer, with the feedback weights as an argument.

The feedback-alignment family (and any rule that only changes what carries errors backwards) shares this walk:
a forward pass that keeps every layer's input, then a backward pass in which parameterless layers (activations,
pooling, flatten) are differentiated exactly and each parameterised layer l (Linear, Conv2d) gets

.. math::
    ∂W_l = δ_l h_{l-1}^T, \\quad ∂b_l = Σ_batch δ_l, \\quad g_{l-1} = \\text{feedback}_l(δ_l)

where δ_l is the error at the layer's output and ``feedback_l`` is what the rule puts in place of W_lᵀ (given as a
tensor of W_l's shape, standing where W_l stands: backprop itself is ``feedback = W``). Plain functions over tensors
and modules, no rule state: :mod:`bioprop.rules.feedback_alignment` and :mod:`bioprop.rules.predictive_coding` build
on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def forward_cached(
    layers: Sequence[nn.Module], x: Tensor, masks: dict[int, Tensor] | None = None
) -> tuple[list[Tensor], dict[int, Tensor]]:
    """``acts[0] = x`` (B, ...) and ``acts[i+1] = layers[i](acts[i])`` (``len(layers) + 1`` tensors, the last the
    network's output), computed without an autograd graph, and what the backward pass needs of some layers (keyed
    by layer index): a max-pooling layer's argmax indices, so that it need not pool again, and a training-mode
    dropout layer's scaled mask m (its output is ``m * input``).

    A dropout mask is drawn by the layer itself (``layer(ones)``), so it takes the same random numbers as the layer
    in ``net(x)``; ``masks`` (from an earlier call on the same batch) gives masks to reuse instead, so that one draw
    serves every pass of an inner loop. ``x`` is never written (in-place layers get a copy)."""
    acts, saved = [x], {}
    with torch.no_grad():
        for index, layer in enumerate(layers):
            h = acts[-1]
            if isinstance(layer, nn.MaxPool2d):
                out, saved[index] = F.max_pool2d(
                    h, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    ceil_mode=layer.ceil_mode, return_indices=True,
                )  # fmt: skip
                acts.append(out)
                continue
            if isinstance(layer, nn.Dropout) and layer.training:
                mask = masks[index] if masks is not None and index in masks else layer(torch.ones_like(h))
                saved[index] = mask
                acts.append(h * mask)
                continue
            # An in-place layer would overwrite the cached input its derivative needs.
            acts.append(layer(h.clone() if getattr(layer, "inplace", False) else h))
    return acts, saved


def through_parameterless(
    layer: nn.Module, h_in: Tensor, h_out: Tensor, grad_out: Tensor, saved: Tensor | None = None
) -> Tensor:
    """The exact vector-Jacobian product of a parameterless layer: grad_out (shape of h_out) → shape of h_in.
    ``saved`` is what :func:`forward_cached` kept for the layer: a max-pooling layer's argmax indices, a
    training-mode dropout layer's mask."""
    # The fused kernels autograd itself uses: one pass, no boolean mask or temporaries.
    if isinstance(layer, nn.ReLU):
        return torch.ops.aten.threshold_backward(grad_out, h_out, 0)  # grad_out where h_out > 0, else 0
    if isinstance(layer, nn.Tanh):
        return torch.ops.aten.tanh_backward(grad_out, h_out)  # grad_out * (1 - h_out²)
    if isinstance(layer, nn.Sigmoid):
        return torch.ops.aten.sigmoid_backward(grad_out, h_out)  # grad_out * h_out * (1 - h_out)
    if isinstance(layer, nn.GELU):
        return torch.ops.aten.gelu_backward(grad_out, h_in, approximate=layer.approximate)
    if isinstance(layer, nn.SiLU):
        return torch.ops.aten.silu_backward(grad_out, h_in)
    if isinstance(layer, nn.Softplus):
        return torch.ops.aten.softplus_backward(grad_out, h_in, layer.beta, layer.threshold)
    if isinstance(layer, nn.ELU):
        return torch.ops.aten.elu_backward(grad_out, layer.alpha, 1, 1, False, h_in)
    if isinstance(layer, nn.Hardtanh):
        return torch.ops.aten.hardtanh_backward(grad_out, h_in, layer.min_val, layer.max_val)
    if isinstance(layer, nn.LeakyReLU):
        return torch.ops.aten.leaky_relu_backward(grad_out, h_in, layer.negative_slope, False)
    if isinstance(layer, nn.MaxPool2d) and saved is not None:
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, h_in, layer.kernel_size, layer.stride or layer.kernel_size, layer.padding, layer.dilation,
            layer.ceil_mode, saved,
        )  # fmt: skip
    if isinstance(layer, nn.Flatten):
        return grad_out.reshape(h_in.shape)
    if isinstance(layer, nn.Identity) or (isinstance(layer, nn.Dropout) and not layer.training):
        return grad_out
    if isinstance(layer, nn.Dropout):
        if saved is None:
            raise ValueError("a training-mode dropout layer needs the mask forward_cached drew")
        return grad_out * saved  # the forward pass's mask: redrawing it would send error to dropped units
    # Other activations and pooling: their local derivative, by autograd over this one layer only.
    with torch.enable_grad():
        leaf = h_in.detach().requires_grad_(True)
        (grad_in,) = torch.autograd.grad(layer(leaf), leaf, grad_out)
    return grad_in


def layer_backward(
    layer: nn.Module, h_in: Tensor, delta: Tensor, feedback: Tensor | None
) -> tuple[list[Tensor], Tensor | None]:
    """For a Linear or Conv2d layer with output error δ: its parameter gradients [∂W, ∂b] (∂b only with a bias; the
    order of :func:`bioprop.nets.layer_parameters`)
    and, when ``feedback`` is given, δ carried to the layer's input through ``feedback``, a tensor of the weight's
    shape standing where the weight stands in backprop (backprop itself is ``feedback = W``)."""
    if isinstance(layer, nn.Linear):
        delta2d = delta.reshape(-1, delta.shape[-1])  # (B, out)
        grads = [delta2d.T @ h_in.reshape(-1, h_in.shape[-1])]  # (out, in)
        if layer.bias is not None:
            grads.append(delta2d.sum(0))
        return grads, None if feedback is None else delta @ feedback  # (B, out) @ (out, in) → (B, in)
    stride, padding, dilation, groups = conv_geometry(layer)
    # One fused call, as autograd makes for a convolution: the input error through `feedback`, and the weight and
    # bias gradients (which do not depend on the weight).
    grad_in, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        delta, h_in, layer.weight if feedback is None else feedback,
        None if layer.bias is None else [layer.bias.shape[0]],
        stride, padding, dilation, False, [0, 0], groups,
        [feedback is not None, True, layer.bias is not None],
    )  # fmt: skip
    return [grad_weight] if layer.bias is None else [grad_weight, grad_bias], grad_in


def conv_geometry(layer: nn.Conv2d) -> tuple:
    """stride, padding, dilation, groups (integer zero padding: :func:`bioprop.nets.walk` refuses the rest)."""
    return layer.stride, layer.padding, layer.dilation, layer.groups


def parameterised_indices(layers: Sequence[nn.Module]) -> list[int]:
    """The positions of the Linear and Conv2d layers in ``layers``, ascending (a module used twice appears twice)."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, (nn.Linear, nn.Conv2d))]
