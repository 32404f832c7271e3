"""The target-propagation family's equations as plain functions over tensors; the rules ``dtp`` and ``ddtp`` that
drive them, their options, the feedback's training and its state are in :mod:`bioprop.rules.target_prop`.

An MLP (:mod:`bioprop.rules.mlp_settling`: Flatten, Linear, φ, ..., Linear) computes h_0 = x, a_l = W_l h_{l−1} + b_l,
h_l = φ(a_l) for the hidden layers l = 1 … L−1 and the logits h_L = a_L. For the run's output loss ℓ
(:mod:`bioprop.losses`, per example), both rules set the output target (Meulemans et al. 2020, who train every layer
from a target)

    t_L = h_L − η̂ ∂ℓ/∂h_L                                   (η̂: ``target_lr``)

and send it down through feedback maps g_k(h) = ψ(V_k h + c_k) that the rule owns (ψ: ``feedback_activation``).
``dtp`` with ``first_target=hidden`` starts as Lee et al.'s Algorithm 1 and their code do: the first target is the
top hidden layer's, t_{L−1} = h_{L−1} − η̂ W_Lᵀ ∂ℓ/∂h_L (:func:`hidden_first_target`: the loss gradient through the
readout, so that layer's update is backprop's and the readout's weights are transported there), and the targets go
down from it; the readout learns from t_L as before (the loss gradient itself, as in their code) and the top hidden
layer needs no feedback map.

- ``dtp``, difference target propagation (Lee, Zhang, Fischer & Bengio 2015, ECML PKDD, Algorithm 1): g_k maps layer
  k+1's activity to layer k's, and t_k = h_k + g_k(t_{k+1}) − g_k(h_{k+1}) (:func:`difference_target`). g_k is
  trained to invert the forward layer on noise-corrupted activities, L^inv_k = ½‖g_k(f_{k+1}(h_k + ε)) − (h_k + ε)‖²,
  ε ~ N(0, σ²I) (:func:`inverse_loss`).
- ``ddtp``, direct difference target propagation (Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, NeurIPS,
  "A theoretical framework for target propagation", DDTP): g_k maps the output straight to layer k, and
  t_k = h_k + g_k(t_L) − g_k(h_L) (:func:`difference_target` with the output in place of layer k+1). g_k is trained
  with the difference reconstruction loss (DRL),
  L^rec_k = 1/(2σ²) ‖g_k(f_{k→L}(h_k + ε)) − g_k(h_L) + h_k − (h_k + ε)‖², f_{k→L} the forward path from layer k to
  the output (:func:`difference_reconstruction_loss`); its minimiser makes the target differences approximate
  Gauss-Newton targets in non-invertible networks. The paper's optional damping term is left out (λ = 0), as in the
  authors' DDTP layers. With the default ψ = identity this is their DDTP-linear, t_k − h_k = V_k (t_L − h_L).

Forward update. Each layer descends its own local loss ½‖h_l − t_l‖², the target held fixed and the layer's input
h_{l−1} taken as given (:func:`local_update`): ∂W_l = δ_l h_{l−1}ᵀ, ∂b_l = Σ_batch δ_l with
δ_l = (h_l − t_l) ⊙ φ'(a_l) / (B η̂), the batch mean divided by η̂. The division (the authors' ``normalize_lr``) makes
the scale of the update independent of η̂ to first order, so that one optimizer learning rate serves bp and these
rules: the output layer's update is then exactly backprop's, and on an invertible network with exact inverses
(g_k = f_{k+1}⁻¹) the hidden targets are the Gauss-Newton targets t_k − h_k = J_{f_{k+1}}⁻¹ (t_{k+1} − h_{k+1}) to
first order (Meulemans et al. 2020, their Gauss-Newton analysis). φ' is the layer's own derivative, computed where
the layer is; no derivative travels along the feedback path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.losses import Loss
from bioprop.rules.mlp_settling import MLP, Act, loss_gradient

#: Adam's β₁, β₂ and ε for the feedback weights (Kingma & Ba 2015, Algorithm 1, their defaults).
ADAM = (0.9, 0.999, 1e-8)


class Feedback(NamedTuple):
    """The feedback maps g_k(h) = ψ(V_k h + c_k), one per hidden layer k (0-based): ``weights[k]`` V_k (n_k, n_in),
    ``biases[k]`` c_k (n_k,), and ψ, ``psi``."""

    weights: list[Tensor]
    biases: list[Tensor]
    psi: Act


class Moments(NamedTuple):
    """Adam's state for the feedback weights (``feedback_optimizer=adam``): the first and second moment estimates,
    one tensor per feedback tensor (weights, then biases), and the number of Adam steps taken."""

    first: list[Tensor]
    second: list[Tensor]
    steps: int


def adam_step(param: Tensor, grad: Tensor, first: Tensor, second: Tensor, t: int, lr: float) -> tuple[Tensor, ...]:
    """One Adam step (Kingma & Ba 2015, Algorithm 1) of step size ``lr`` at step ``t`` (1-based) with :data:`ADAM`:
    m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g², θ ← θ − lr m̂ / (√v̂ + ε) with m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ).
    Returns (θ, m, v), new tensors."""
    beta_1, beta_2, eps = ADAM
    first = beta_1 * first + (1 - beta_1) * grad
    second = beta_2 * second + (1 - beta_2) * grad.square()
    step = lr * (first / (1 - beta_1**t)) / ((second / (1 - beta_2**t)).sqrt() + eps)
    return param - step, first, second


class Targets(NamedTuple):
    """A batch's activities h_0 … h_L (``activities[0]`` is the flattened input), pre-activations a_1 … a_L
    (``pre[l−1]`` is a_l) and targets t_1 … t_L (``targets[l−1]`` is t_l), each (B, n_l)."""

    activities: list[Tensor]
    pre: list[Tensor]
    targets: list[Tensor]


def layer_forward(mlp: MLP, i: int, h: Tensor) -> tuple[Tensor, Tensor]:
    """Layer l = i + 1 of the MLP on its input h_{l−1} = ``h`` (B, n_{l−1}): (a_l, h_l) with a_l = W_l h_{l−1} + b_l and
    h_l = φ(a_l), or h_L = a_L for the readout."""
    a = F.linear(h, mlp.weights[i], mlp.biases[i])
    return a, (a if i == len(mlp.weights) - 1 else mlp.phi(a))


def forward_from(mlp: MLP, k: int, h: Tensor) -> Tensor:
    """f_{k→L}: the output h_L (B, K) the layers above layer k compute from its activity h_k = ``h`` (B, n_k);
    f_{k+1} alone is ``layer_forward(mlp, k, h)``."""
    for i in range(k, len(mlp.weights)):
        h = layer_forward(mlp, i, h)[1]
    return h


def feedback_map(weight: Tensor, bias: Tensor, psi: Act, h: Tensor) -> Tensor:
    """g(h) = ψ(V h + c) (Lee et al. 2015, g_i(h_i) = s̄_i(V_i h_i + c_i)) for h (B, n_in), V (n_out, n_in),
    c (n_out,): (B, n_out)."""
    return psi(F.linear(h, weight, bias))


def output_target(h_out: Tensor, grad: Tensor, target_lr: float) -> Tensor:
    """The output target t_L = h_L − η̂ ∂ℓ/∂h_L (Meulemans et al. 2020): ``h_out`` h_L (B, K), ``grad`` the
    per-example loss gradient ∂ℓ/∂h_L (B, K), η̂ = ``target_lr`` > 0."""
    return h_out - target_lr * grad


def hidden_first_target(h: Tensor, grad_out: Tensor, readout: Tensor, target_lr: float) -> Tensor:
    """Lee et al.'s first target, at the last hidden layer: t_{L−1} = h_{L−1} − η̂ ∂ℓ/∂h_{L−1} with
    ∂ℓ/∂h_{L−1} = W_Lᵀ ∂ℓ/∂h_L through the linear readout (Lee, Zhang, Fischer & Bengio 2015, Algorithm 1, "making
    the first target"; their code trains the readout on the loss itself). ``h`` h_{L−1} (B, n_{L−1}), ``grad_out``
    ∂ℓ/∂h_L (B, K), ``readout`` W_L (K, n_{L−1}), η̂ = ``target_lr`` > 0."""
    return h - target_lr * grad_out @ readout


def difference_target(h: Tensor, g: Any, target_above: Tensor, h_above: Tensor) -> Tensor:
    """Difference target propagation (Lee et al. 2015, Algorithm 1): t_k = h_k + g(t_above) − g(h_above)
    for layer k's activity h_k = ``h`` (B, n_k), the feedback map ``g`` (a callable, (B, m) → (B, n_k)), and the
    target and activity of what g reads, (B, m): layer k+1 for dtp, the output for ddtp (Meulemans et al. 2020,
    DDTP, t_k = h_k + g_k(t_L) − g_k(h_L)). The correction − g(h_above) + h_k makes t_k = h_k when t_above = h_above,
    whatever the reconstruction error of g."""
    return h + g(target_above) - g(h_above)


def propagate(mlp: MLP, feedback: Feedback, x: Tensor, y: Tensor, loss_fn: Loss, target_lr: float, from_hidden: bool,
              direct: bool) -> tuple[Targets, Tensor]:  # fmt: skip
    """The forward pass, the output target and the targets sent down the feedback (module docstring), with the
    batch-mean output loss ``loss_fn`` (the run's); η̂ = ``target_lr``, ``from_hidden`` for dtp's
    ``first_target=hidden``, ``direct`` for ddtp's feedback from the output. Pure."""
    hs, pre = [x.reshape(len(x), -1)], []
    for i in range(len(mlp.weights)):
        a, h = layer_forward(mlp, i, hs[-1])
        pre.append(a)
        hs.append(h)
    h_out = hs[-1]
    loss = loss_fn.value(h_out, y)
    grad_out = loss_gradient(loss_fn, h_out, y)
    targets = [output_target(h_out, grad_out, target_lr)]
    top = len(mlp.weights) - 1  # the top hidden layer (1-based); 0 without one
    if from_hidden and top > 0:
        targets.insert(0, hidden_first_target(hs[top], grad_out, mlp.weights[top], target_lr))
        top -= 1
    for k in range(top, 0, -1):  # hidden layer k (1-based), top down

        def g(v: Tensor, k: int = k) -> Tensor:
            return feedback_map(feedback.weights[k - 1], feedback.biases[k - 1], feedback.psi, v)

        above = (targets[-1], h_out) if direct else (targets[0], hs[k + 1])
        targets.insert(0, difference_target(hs[k], g, *above))
    return Targets(hs, pre, targets), loss


def local_update(
    h_in: Tensor, a: Tensor, h: Tensor, target: Tensor, phi: Act | None, scale: float
) -> tuple[Tensor, Tensor]:
    """The descent direction of layer l's local loss ``scale`` · Σ_batch ½‖h_l − t_l‖² (Lee et al. 2015, Algorithm 1:
    L_l = ‖f_l(h_{l−1}) − t_l‖², its own parameters only, t_l and h_{l−1} held fixed), for W_l (n_l, n_{l−1}) and b_l:
    (δᵀ h_{l−1}, Σ_batch δ) with δ = scale · (h_l − t_l) ⊙ φ'(a_l). ``h_in`` h_{l−1} (B, n_{l−1}), ``a`` a_l and ``h``
    h_l = φ(a_l), ``target`` t_l (B, n_l); ``phi`` None for the linear readout (φ' = 1)."""
    delta = times_derivative(phi, a, h, (h - target) * scale) if phi is not None else (h - target) * scale
    return delta.T @ h_in, delta.sum(0)


def times_derivative(phi: Act, a: Tensor, h: Tensor, v: Tensor) -> Tensor:
    """v ⊙ φ'(a) for the elementwise activation ``phi`` at ``a`` (B, n) with h = φ(a): in closed form for tanh
    (1 − h²), the logistic sigmoid (h(1 − h)), relu (a > 0) and the identity, else the vector-Jacobian product of
    ``phi`` by autograd (the same numbers, slower)."""
    kind = type(phi)
    if kind is nn.Tanh:
        return v * (1 - h * h)
    if kind is nn.Sigmoid:
        return v * h * (1 - h)
    if kind is nn.ReLU:
        return v * (a > 0).to(v.dtype)
    if kind is nn.Identity:
        return v
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        return torch.autograd.grad(phi(a), a, grad_outputs=v)[0]


def inverse_loss(mlp: MLP, weight: Tensor, bias: Tensor, psi: Act, k: int, h: Tensor, noise: Tensor) -> Tensor:
    """DTP's feedback loss for hidden layer k (1-based; Lee et al. 2015, Algorithm 1):
    L^inv_k = ½ mean_batch ‖g_k(f_{k+1}(h_k + ε)) − (h_k + ε)‖², with g_k = (``weight``, ``bias``, ``psi``), h_k = ``h``
    (B, n_k) and ε = ``noise`` (B, n_k). A scalar, differentiable in the feedback parameters."""
    corrupted = h + noise
    reconstructed = feedback_map(weight, bias, psi, layer_forward(mlp, k, corrupted)[1])
    return 0.5 * (reconstructed - corrupted).square().sum(1).mean()


def difference_reconstruction_loss(
    mlp: MLP, weight: Tensor, bias: Tensor, psi: Act, k: int, h: Tensor, h_out: Tensor, noise: Tensor, sigma: float
) -> Tensor:
    """DDTP's difference reconstruction loss for hidden layer k (1-based; Meulemans et al. 2020, the DRL,
    damping λ = 0): L^rec_k = 1/(2σ²) mean_batch ‖g_k(f_{k→L}(h_k + ε)) − g_k(h_L) + h_k − (h_k + ε)‖², with
    g_k = (``weight``, ``bias``, ``psi``), h_k = ``h`` (B, n_k), h_L = ``h_out`` (B, K), ε = ``noise`` (B, n_k) of
    standard deviation σ = ``sigma`` > 0. A scalar, differentiable in the feedback parameters."""
    corrupted = h + noise
    reconstructed = difference_target(h, lambda v: feedback_map(weight, bias, psi, v), forward_from(mlp, k, corrupted),
                                      h_out)  # fmt: skip
    return (reconstructed - corrupted).square().sum(1).mean() / (2 * sigma**2)


def feedback_losses(mlp: MLP, feedback: Feedback, found: Targets, noise: list[Tensor], direct: bool,
                    sigma: float) -> list[Tensor]:  # fmt: skip
    """Each hidden layer's feedback loss (L^inv_k for dtp, L^rec_k for ddtp: ``direct``) with the noise ``noise[k]``
    of standard deviation σ = ``sigma``."""
    hs, out = found.activities, []
    for k in range(1, len(feedback.weights) + 1):
        w, c = feedback.weights[k - 1], feedback.biases[k - 1]
        if direct:
            out.append(difference_reconstruction_loss(mlp, w, c, feedback.psi, k, hs[k], hs[-1], noise[k - 1], sigma))
        else:
            out.append(inverse_loss(mlp, w, c, feedback.psi, k, hs[k], noise[k - 1]))
    return out
