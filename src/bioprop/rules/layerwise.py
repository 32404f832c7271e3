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
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.errors import BioPropError


def forward_cached(layers: Sequence[nn.Module], x: Tensor) -> tuple[list[Tensor], dict[int, Tensor]]:
    """``acts[0] = x`` and ``acts[i+1] = layers[i](acts[i])``, computed without an autograd graph, and the argmax
    indices of every max-pooling layer (keyed by layer index), so its backward pass need not pool again."""
    acts, pool_indices = [x], {}
    with torch.no_grad():
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d) and not layer.return_indices:
                out, pool_indices[index] = F.max_pool2d(
                    acts[-1], layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                    ceil_mode=layer.ceil_mode, return_indices=True,
                )  # fmt: skip
                acts.append(out)
                continue
            # An in-place layer would overwrite the cached input its derivative needs.
            inputs = acts[-1].clone() if getattr(layer, "inplace", False) else acts[-1]
            acts.append(layer(inputs))
    return acts, pool_indices


def through_parameterless(
    layer: nn.Module, h_in: Tensor, h_out: Tensor, grad_out: Tensor, pool_indices: Tensor | None = None
) -> Tensor:
    """The exact vector-Jacobian product of a parameterless layer: grad_out (shape of h_out) → shape of h_in.
    ``pool_indices`` are a max-pooling layer's argmax indices from :func:`forward_cached`."""
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
    if isinstance(layer, nn.MaxPool2d) and pool_indices is not None:
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, h_in, layer.kernel_size, layer.stride or layer.kernel_size, layer.padding, layer.dilation,
            layer.ceil_mode, pool_indices,
        )  # fmt: skip
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


def layer_backward(
    layer: nn.Module, h_in: Tensor, delta: Tensor, feedback: Tensor | None
) -> tuple[list[Tensor], Tensor | None]:
    """For a Linear or Conv2d layer with output error δ: its parameter gradients [∂W, ∂b] (∂b only with a bias)
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
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise BioPropError(
            f"Conv2d with padding={layer.padding!r}, padding_mode={layer.padding_mode!r} is not supported by the "
            "layer-wise rules; use integer zero padding"
        )
    return layer.stride, layer.padding, layer.dilation, layer.groups


def parameterised_indices(layers: Sequence[nn.Module]) -> list[int]:
    return [i for i, layer in enumerate(layers) if isinstance(layer, (nn.Linear, nn.Conv2d))]
