"""Predictive coding's defining equations, as plain functions over tensors.

Whittington & Bogacz 2017 (Neural Comput. 29:1229, section 2.2 and Fig. 2; the review Whittington & Bogacz 2019,
Trends Cogn. Sci., Box 3). Value nodes x_l sit at the output of every parameterised layer (Linear, Conv2d); the
parameterless layers after it (activation, pooling, flatten, dropout) make φ_l. With x_0 the clamped input and
W_l, b_l layer l's parameters, l = 1..L:

.. math::
    μ_l = W_l φ_{l-1}(x_{l-1}) + b_l                         \\text{(the prediction of layer } l\\text{)}

    ε_l = x_l - μ_l \\quad (l < L), \\qquad ε_L = -β \\, ∂\\ell(μ_L, y) / ∂μ_L      \\text{(error nodes)}

    F = \\sum_{l<L} ½‖ε_l‖^2 + β \\, \\ell(μ_L, y)              \\text{(the energy)}

    dx_l/dt = -ε_l + J_{φ_l}(x_l)^T W_{l+1}^T ε_{l+1} = -∂F/∂x_l     \\text{(value nodes, Euler step γ)}

    ΔW_l ∝ ε_l φ_{l-1}(x_{l-1})^T, \\quad Δb_l ∝ ε_l = -∂F/∂θ_l        \\text{(Hebbian weight change)}

The output loss ℓ is the run's (:mod:`bioprop.losses`); β is the output precision (π_L in the 2017 paper). With
squared error and β = 1 the output error is that of an output node hard-clamped to the target, x_L = onehot(y).
Each function below states one of these equations for a batch (rows are samples; a batch's energy is the *sum* of
the per-sample energies, so γ means the same for any batch size). The loops that run them are in
:mod:`bioprop.rules.pc_inference`. (Equation numbers are not given: the paper's are not reproduced here.)

Shapes: ``x``, ``mu``, ``error`` (N, *shape_l) for layer l's output; ``a`` (N, *shape_{l-1}) the presynaptic
activity φ_{l-1}(x_{l-1}); a Linear layer's W (out, in), a Conv2d layer's (out, in/groups, kh, kw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import layer_parameters
from bioprop.nets import layers as walk_layers
from bioprop.rules.layerwise import conv_geometry, forward_cached, through_parameterless

# ------------------------------------------------------------------------------------------ the network's pieces


@dataclass
class Block:
    """A parameterised layer and the parameterless layers after it (φ_l); ``names`` of its weight and bias."""

    layer: nn.Linear | nn.Conv2d
    after: list[nn.Module]
    names: list[str]


def split_blocks(net: nn.Module, rule: str) -> tuple[list[nn.Module], list[Block]]:
    """The parameterless layers before the first parameterised one, then one :class:`Block` per parameterised
    layer. The network must end with a parameterised layer (its output is the prediction μ_L); a
    :class:`BioPropError` says so otherwise. A module used at several positions is a block at each (its
    parameters' updates add up)."""
    names = {id(p): n for n, p in net.named_parameters()}
    before: list[nn.Module] = []
    blocks: list[Block] = []
    for layer in walk_layers(net, rule):
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            blocks.append(Block(layer, [], [names[id(p)] for p in layer_parameters(layer)]))
        elif blocks:
            blocks[-1].after.append(layer)
        else:
            before.append(layer)
    if not blocks:
        raise BioPropError(f"rule {rule}: predictive coding needs a network with at least one Linear or Conv2d layer")
    if blocks[-1].after:
        kind = type(blocks[-1].after[0]).__name__
        raise BioPropError(f"rule {rule}: predictive coding needs the network to end with its output layer, not {kind}")
    return before, blocks


class Weights(NamedTuple):
    """One layer's parameters as inference reads them (detached): ``weight`` W, ``bias`` b or None, ``weight_t`` Wᵀ
    (in, out) of a Linear layer (None for Conv2d), and ``layer``, the module, for a convolution's geometry."""

    layer: nn.Module
    weight: Tensor
    bias: Tensor | None
    weight_t: Tensor | None


def weights_of(layer: nn.Module, transposed: bool = True) -> Weights:
    """:class:`Weights` of ``layer``'s parameters; with ``transposed`` a Linear layer's Wᵀ is copied into contiguous
    memory (a product a Wᵀ made at every step then reads it row by row), else it is a view of W."""
    weight, *bias = (p.detach() for p in layer_parameters(layer))
    if not isinstance(layer, nn.Linear):
        return Weights(layer, weight, bias[0] if bias else None, None)
    return Weights(layer, weight, bias[0] if bias else None, weight.t().contiguous() if transposed else weight.t())


# ------------------------------------------------------------------------------------------------- φ_l and J_φᵀ

#: Elementwise activations whose derivative ATen computes from the output φ(x) in one fused call.
_FROM_OUTPUT = {
    nn.Tanh: torch.ops.aten.tanh_backward,  # g (1 − φ²)
    nn.Sigmoid: torch.ops.aten.sigmoid_backward,  # g φ (1 − φ)
}
_ELEMENTWISE = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.GELU, nn.SiLU, nn.Softplus, nn.ELU, nn.LeakyReLU, nn.Hardtanh)
#: Up to this many elements, the exact GELU and its derivative are computed together from one erfc (6 small
#: operations); above it ATen's two kernels (gelu, gelu_backward) are faster.
GELU_TOGETHER = 32_768
_SQRT_HALF, _INV_SQRT_2PI = math.sqrt(0.5), 1.0 / math.sqrt(2.0 * math.pi)


def gelu_and_slope(x: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The exact GELU φ(x) = x Φ(x) (Hendrycks & Gimpel 2016) and twice its derivative,
    2φ'(x) = 2Φ(x) + 2x e^{−x²/2}/√(2π), Φ the standard normal CDF, in 6 small operations: 2Φ(x) = erfc(−x/√2)
    (one erfc, no erf + 1), and the factor 2 saves another (:meth:`Chain.vjp_add` halves it); φ(x) is written
    into ``out`` when given."""
    zero = _zero(x)  # broadcast: addcmul(0, a, b, value=v) is v·a·b in one operation
    if torch.compiler.is_compiling():  # the same 2Φ(x) = 1 + erf(x/√2): inductor fuses erf, not an in-place erfc
        twice_cdf = torch.erf(x * _SQRT_HALF).add_(1.0)
    else:
        twice_cdf = torch.mul(x, -_SQRT_HALF).erfc_()  # 2Φ(x), one operation fewer in eager mode
    bell = torch.addcmul(zero, x, x, value=-0.5).exp_()  # e^{−x²/2}
    slope = torch.addcmul(twice_cdf, x, bell, value=2 * _INV_SQRT_2PI)
    return torch.addcmul(zero, x, twice_cdf, value=0.5, out=out), slope


_ZEROS: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _zero(x: Tensor) -> Tensor:
    """A 0-d zero of ``x``'s dtype and device, made once (never written: it only broadcasts)."""
    key = (x.dtype, x.device)
    zero = _ZEROS.get(key)
    if zero is None:
        zero = _ZEROS[key] = x.new_zeros(())
    return zero


class Chain:
    """φ_l, the parameterless layers after layer l, and its vector-Jacobian product J_φ(x)ᵀ g.

    ``forward(x, saved)`` returns φ(x) and what the product needs (a max-pooling layer's indices, a dropout layer's
    mask: :func:`~bioprop.rules.layerwise.forward_cached`; the slope φ'(x) of an exact GELU); pass the ``saved`` of
    the feedforward pass (:meth:`masks`) to later calls, so that a dropout mask drawn there serves every inference
    step. ``vjp_add(base, g, x, a, saved)`` is base + J_φ(x)ᵀ g for ``a`` = φ(x), fused where it can be. A chain of
    one elementwise activation (or none) is run by direct calls, the common case that every inference step pays
    for; anything else by the layer-by-layer walk."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        single = layers[0] if len(layers) == 1 else None
        fast = isinstance(single, _ELEMENTWISE) and not getattr(single, "inplace", False)
        self.single = single if fast else None
        self.gelu = isinstance(single, nn.GELU) and single.approximate == "none"
        self.identity = all(isinstance(m, nn.Identity) for m in layers)  # also no layer at all
        #: φ acts on each element alone, so it runs on several layers' values stacked into one tensor.
        self.elementwise = self.identity or self.single is not None

    def stacks_with(self, other: Chain) -> bool:
        """Whether the two chains compute the same elementwise φ (same activation and settings, or none)."""
        if not (self.elementwise and other.elementwise):
            return False
        if self.identity or other.identity:
            return self.identity and other.identity
        return type(self.single) is type(other.single) and self.single.extra_repr() == other.single.extra_repr()

    def forward(
        self, x: Tensor, saved: Any = None, slope: bool = True, out: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """φ(x) and what J_φ(x) needs; ``slope=False``: φ(x) only where the product will not be taken (and the
        masks a dropout layer draws). φ(x) may be written into ``out`` (a buffer of x's shape), or be x itself."""
        if self.identity:
            return x, None
        if self.gelu and x.numel() <= GELU_TOGETHER:  # cheaper than ATen's gelu alone, slope or not
            value, twice_slope = gelu_and_slope(x, out)
            return value, twice_slope if slope else None
        if self.single is not None:
            return self.single(x), None
        acts, pool = forward_cached(self.layers, x, saved)
        return acts[-1], (acts, pool)

    def vjp_add(self, base: Tensor, g: Tensor, x: Tensor, a: Tensor, saved: Any) -> Tensor:
        if self.identity:
            return g.add_(base)
        layer = self.single
        if layer is None:
            acts, pool = saved
            for index in range(len(self.layers) - 1, -1, -1):
                g = through_parameterless(self.layers[index], acts[index], acts[index + 1], g, pool.get(index))
            return g.add(base)  # g may be a view of an input
        if isinstance(saved, Tensor):  # twice the slope, from gelu_and_slope
            return torch.addcmul(base, saved, g, value=0.5)
        backward = _FROM_OUTPUT.get(type(layer))
        if backward is not None:
            return backward(g, a).add_(base)
        if isinstance(layer, nn.ReLU):
            return torch.ops.aten.threshold_backward(g, a, 0).add_(base)
        return through_parameterless(layer, x, a, g).add_(base)

    def masks(self, saved: Any) -> dict[int, Tensor] | None:
        """The dropout masks (and pooling indices) a feedforward pass drew, to reuse at every step."""
        return saved[1] if isinstance(saved, tuple) else None


# ---------------------------------------------------------------------------------------------- the equations


def prediction(w: Weights, a: Tensor, out: Tensor | None = None) -> Tensor:
    """μ_l = W_l a + b_l, a = φ_{l-1}(x_{l-1}) (N, in) or (N, C, H, W): one addmm for a Linear layer, a convolution
    for a Conv2d layer; written into ``out`` when given."""
    if w.weight_t is not None and a.dim() == 2:
        if w.bias is None:
            return torch.mm(a, w.weight_t, out=out)
        return torch.addmm(w.bias, a, w.weight_t, out=out)
    if w.weight_t is not None:
        mu = F.linear(a, w.weight, w.bias)
    else:
        layer = w.layer
        mu = F.conv2d(a, w.weight, w.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return mu if out is None else out.copy_(mu)


def prediction_error(x: Tensor, mu: Tensor, out: Tensor | None = None) -> Tensor:
    """The error node ε_l = x_l − μ_l (written into ``out`` when given)."""
    return torch.sub(x, mu, out=out)


def top_down(w: Weights, error: Tensor, a: Tensor, out: Tensor | None = None) -> Tensor:
    """W_{l+1}ᵀ ε_{l+1}: the error of the layer above carried to its input (shape of ``a``): a matrix product, or a
    transposed convolution; written into ``out`` when given, else a fresh tensor (the caller may write it)."""
    if w.weight_t is not None and error.dim() == 2:
        return torch.mm(error, w.weight, out=out)
    if w.weight_t is not None:
        down = error @ w.weight
    else:
        stride, padding, dilation, groups = conv_geometry(w.layer)
        down = torch.ops.aten.convolution_backward(
            error, a, w.weight, None, stride, padding, dilation, False, [0, 0], groups, [True, False, False]
        )[0]
    return down if out is None else out.copy_(down)


def relax(x: Tensor, drive: Tensor, gamma: float) -> None:
    """One Euler step of the value dynamics, in place: x_l ← x_l + γ (−ε_l + J_φᵀ W_{l+1}ᵀ ε_{l+1}), given
    ``drive`` = μ_l + J_φᵀ W_{l+1}ᵀ ε_{l+1} (:meth:`Chain.vjp_add`): since −ε_l = μ_l − x_l, the step is the
    interpolation x_l + γ (drive − x_l), one fused operation."""
    x.lerp_(drive, gamma)


def weight_change(w: Weights, error: Tensor, a: Tensor, scale: float | Tensor) -> list[Tensor]:
    """The Hebbian weight change, as a descent direction: [εᵀ a, Σ_n ε] · ``scale`` for W and b (b only with a
    bias), summed over the batch; ``scale`` a number or an (N, 1) column (per-sample precisions). With
    scale = −1/(βN) it is ∂F/∂θ ÷ β averaged over the batch, on the scale of the loss gradient."""
    error = error * (scale if isinstance(scale, float) else scale.view(-1, *([1] * (error.dim() - 1))))
    if w.weight_t is not None:
        error2d, a2d = error.reshape(-1, error.shape[-1]), a.reshape(-1, a.shape[-1])
        return [error2d.t() @ a2d] + ([error2d.sum(0)] if w.bias is not None else [])
    stride, padding, dilation, groups = conv_geometry(w.layer)
    _, grad_w, grad_b = torch.ops.aten.convolution_backward(
        error, a, w.weight, None if w.bias is None else [w.bias.shape[0]], stride, padding, dilation, False,
        [0, 0], groups, [False, True, w.bias is not None],
    )  # fmt: skip
    return [grad_w] if w.bias is None else [grad_w, grad_b]


# ------------------------------------------------------------------------------------------ the output energy


class Output(NamedTuple):
    """The output term of F for one batch: the run's ``loss`` ℓ, the labels ``y`` (N,), ``target`` β · onehot(y)
    (N, K), ``beta``, a number or an (N, 1) column of signed precisions (centred nudging), and ``target_t`` the
    target transposed (K, N), contiguous (:func:`output_error` takes cross-entropy's softmax in that layout)."""

    loss: losses.Loss
    y: Tensor
    target: Tensor
    beta: float | Tensor
    target_t: Tensor


def output_of(loss: losses.Loss, y: Tensor, like: Tensor, beta: float | Tensor) -> Output:
    """:class:`Output` for labels ``y`` and a prediction shaped and typed ``like`` (N, K)."""
    target = losses.onehot(y, like) * beta
    return Output(loss, y, target, beta, target.t().contiguous())


def output_error(out: Output, mu: Tensor) -> tuple[Tensor, Tensor]:
    """ε_L = −β ∂ℓ(μ_L, y)/∂μ_L per sample (N, K), and what :func:`output_energy` needs for the batch's output
    energy Σ_n β_n ℓ_n (ε_L itself for squared error, μ_L otherwise): the energy of every step is computed once,
    after the inference, from the list of them.

    The definition is the loss's own gradient, ``loss.error`` (:mod:`bioprop.losses`,
    :func:`output_error_by_definition`); squared error and cross-entropy are written out in closed form, the same
    numbers in fewer operations (a test checks them against the definition):

    - se: ε_L = β (onehot − μ_L); β ℓ = ‖ε_L‖² / (2β);
    - ce: ε_L = β (onehot − softmax μ_L); β ℓ = −β onehot · log softmax μ_L. The softmax is taken over the first
      dimension of μ_Lᵀ (K, N), vectorised across the batch (ATen's softmax over a short last dimension, K = 10,
      costs 8 times more); ε_L is returned as the (N, K) view of the (K, N) result."""
    beta, target = out.beta, out.target
    scalar = isinstance(beta, float)
    if out.loss is losses.LOSSES["se"]:
        error = torch.sub(target, mu, alpha=beta) if scalar else torch.addcmul(target, beta, mu, value=-1.0)
        return error, error
    if out.loss is losses.LOSSES["ce"] and mu.dim() == 2:
        p = torch.softmax(_columns(mu), dim=0)  # (K, N)
        if scalar:
            return torch.sub(out.target_t, p, alpha=beta).t(), mu
        return torch.addcmul(out.target_t, beta.view(1, -1), p, value=-1.0).t(), mu
    return output_error_by_definition(out, mu)[0], mu


def _columns(mu: Tensor) -> Tensor:
    """μ_Lᵀ (K, N), contiguous: a view when μ_L is itself the transpose of a contiguous (K, N) tensor."""
    mu_t = mu.t()
    return mu_t if mu_t.is_contiguous() else mu_t.contiguous()


def output_shift(out: Output, w: Weights) -> Tensor | None:
    """β (onehot − b_L) (N, K) when the output error of a Linear output layer with fixed weights is one addmm
    (squared error and a number β: ε_L = β (onehot − b_L) − β a W_Lᵀ, :func:`output_error_of`); else None."""
    if out.loss is not losses.LOSSES["se"] or not isinstance(out.beta, float) or w.weight_t is None:
        return None
    return out.target if w.bias is None else torch.sub(out.target, w.bias, alpha=out.beta)


def output_error_of(out: Output, w: Weights, a: Tensor, shift: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`output_error` at μ_L = W_L a + b_L; with the ``shift`` of :func:`output_shift`, in one addmm."""
    if shift is not None and a.dim() == 2:
        error = torch.addmm(shift, a, w.weight_t, alpha=-out.beta)
        return error, error
    if out.loss is losses.LOSSES["ce"] and w.weight_t is not None and a.dim() == 2:  # μ_Lᵀ = W_L aᵀ + b_L, (K, N)
        mu_t = torch.mm(w.weight, a.t()) if w.bias is None else torch.addmm(w.bias.view(-1, 1), w.weight, a.t())
        return output_error(out, mu_t.t())
    return output_error(out, prediction(w, a))


def output_error_by_definition(out: Output, mu: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`output_error` from the loss's definition: ε_L = −β N · ``loss.error`` (which includes 1/N) and
    the output energy Σ_n β_n ℓ_n."""
    _, grad = out.loss.error(mu, out.y)  # (N, K), 1/N included
    beta = out.beta if isinstance(out.beta, float) else out.beta.view(-1, 1)
    energy = out.loss.per_example(mu, out.y).unsqueeze(1) * beta
    return grad * (-len(mu)) * beta, energy.sum()


def output_energy(out: Output, kept: list[Tensor]) -> Tensor:
    """Σ_n β_n ℓ_n (one per step, shape (len(kept),)) from what :func:`output_error` returned at each step."""
    if out.loss is losses.LOSSES["se"]:  # ‖ε_L‖² / (2β), β a number or a column
        return (torch.stack(kept).square() / out.beta).sum((1, 2)) * 0.5
    if out.loss is losses.LOSSES["ce"] and kept[0].dim() == 2:  # −Σ β onehot · log softmax μ_L, in (K, N) layout
        columns = torch.stack([mu.t() for mu in kept])  # (S, K, N)
        return -(torch.log_softmax(columns, dim=1) * out.target_t).sum((1, 2))
    return torch.stack([output_error_by_definition(out, mu)[1] for mu in kept])
