"""The target-propagation family: each layer learns towards a target activity, sent down by learned feedback maps.

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

Feedback training. In :meth:`~bioprop.rules.base.Rule.backward` (where the rule's state advances), after the forward
update is computed with the feedback as it stands, ``feedback_iterations`` plain SGD steps of size ``feedback_lr`` on
Σ_k L_k (L^inv or L^rec, mean over the batch) move the feedback weights, each iteration with fresh noise, the
forward weights held fixed; ``feedback_optimizer=adam`` takes Adam steps instead (:func:`adam_step`; Meulemans et
al. train their feedback weights with Adam), its moments kept in the rule's state and checkpoint. ``grads``
computes the same forward update and trains nothing. Feedback pre-training: the
first ``pretrain_batches`` calls of ``backward`` (counted by the rule's step count) train only the feedback, and the
forward update of those steps is zero, in ``grads`` and ``backward`` alike, so the optimizer moves no forward weight
(momentum starts from zero; weight decay still applies); the update angles probed then are NaN. The default, 20
batches, is under one epoch of digits (23 batches of 64) and 2 % of one of Fashion-MNIST, so a short run is not
delayed. Measured on digits (mlp:256x256, tanh, default options, forward weights fixed, each batch measured before
the feedback trains on it), dtp's reconstruction error of the first hidden layer falls from 0.29 at the first batch to
0.079 at the 20th (0.047 at the 50th, 0.024 at the 200th). ddtp's direct feedback starts as random feedback, which
carries a useful signal from the start (as in direct feedback alignment); its error falls from 1.0 to 0.98 in 200
batches, near its floor of about 1 − 10/256 ≈ 0.96 (below). Longer runs may set pretrain_batches to a few hundred
(Meulemans et al. pre-train ddtp's feedback for several epochs). A run of no more batches than ``pretrain_batches``
trains no forward weight at all: :meth:`TargetProp.plan_warnings` says so before its first step.

State and randomness. The feedback weights V_k (n_k × n_{k+1} for dtp, n_k × K for ddtp) are drawn once at create,
uniform Xavier (:func:`~bioprop.rules.feedback_alignment.draw_feedback`) on the CPU in float64 from a generator seeded
with ``seed``, layer by layer; c_k starts at 0. The noise of step s is drawn from :meth:`Rule.generator` (``seed``,
s, one stream) on the CPU in float32 (five times faster than float64; then converted), so ``grads`` and ``backward``
of one step draw the same, nothing draws from the global generator and the results do not depend on the device.
:meth:`TargetProp.state_dict` holds the step count and ``feedback_weight.K``, ``feedback_bias.K`` (K: 0-based hidden
layer); a resume continues bit-identically. The feedback follows the network's dtype and device when it changes
after create.

Diagnostics: per hidden layer, the reconstruction error of the feedback path (the feedback loss the layer's g_k
minimises, 2 L_k / n_k, i.e. the squared error per unit: for dtp in squared activity units; for ddtp relative to σ²,
1 being what a feedback that reconstructs nothing of the noise leaves, and no less than about 1 − K/n_k even for the
best feedback, since the noise reaches the output through only K dimensions), averaged over an epoch's ``backward``
calls and measured on each batch before the feedback trains on it (data the feedback has not yet fitted). The trace
``reconstruction`` is the same error, averaged over hidden layers, at each feedback iteration of a step.

Networks: an MLP with one activation throughout (the layer that does not fit is named at create); shared modules
and tied weights are allowed (a module's update is the sum over its positions, each position has its own g_k); a
frozen layer still carries targets and gets no update. A divergence of the feedback (a non-finite reconstruction
error) is an :class:`~bioprop.rules.base.Unstable` naming ``feedback_lr``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.errors import BioPropError
from bioprop.nets import ACTIVATIONS, activation
from bioprop.rules.base import (
    Diagnostic,
    Entry,
    FigureSpec,
    Options,
    Rule,
    Trace,
    Unstable,
    Update,
    add_grads,
    make_card,
    option,
    register,
)
from bioprop.rules.feedback_alignment import draw_feedback
from bioprop.rules.mlp_settling import MLP, loss_gradient, mlp_parts, mlp_tensors
from bioprop.rules.options import count, non_negative, output_loss, positive, seed_option

LEE = "Lee, Zhang, Fischer & Bengio 2015, ECML PKDD (arXiv:1412.7525)"
MEULEMANS = "Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, NeurIPS (arXiv:2006.14331)"
FEEDBACKS = ("difference", "direct")
#: Bounds of the work a step does: feedback iterations per batch, pre-training batches.
MAX_ITERATIONS = 10_000
MAX_PRETRAIN = 10_000_000
#: The stream of :meth:`Rule.generator` the feedback training's noise comes from.
NOISE = 0
FEEDBACK_OPTIMIZERS = ("sgd", "adam")
#: Where dtp's targets start: the output (every layer learns from a target) or the last hidden layer (Lee et al.).
FIRST_TARGETS = ("output", "hidden")
#: Adam's β₁, β₂ and ε for the feedback weights (Kingma & Ba 2015, Algorithm 1, their defaults).
ADAM = (0.9, 0.999, 1e-8)

Act = nn.Module


# ------------------------------------------------------------------------------------------------ the functional core


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


# ---------------------------------------------------------------------------------------------------------- the rule


@dataclasses.dataclass(frozen=True)
class TargetPropOptions(Options):
    """Options of the target-propagation family (``feedback`` is fixed by each rule's name)."""

    feedback: str = option("difference", "feedback maps: difference (dtp, layer to layer) or direct (ddtp, from the "
                           "output to each hidden layer)", choices=FEEDBACKS)  # fmt: skip
    target_lr: float = positive(0.1, "η̂ of the output target t_L = h_L − η̂ ∂ℓ/∂h_L (the forward update is divided "
                                "by it)")  # fmt: skip
    feedback_lr: float = positive(0.05, "step size of the feedback weights' SGD or Adam steps")
    feedback_optimizer: str = option("sgd", "sgd (plain steps of feedback_lr) or adam (Adam, β₁ 0.9, β₂ 0.999, "
                                     "ε 1e-8, its moments kept in the rule's state)",
                                     choices=FEEDBACK_OPTIMIZERS)  # fmt: skip
    first_target: str = option("output", "dtp only: where the targets start: output (t_L, every layer learns from "
                               "a target, Meulemans et al.'s DTP) or hidden (t_{L−1} = h_{L−1} − η̂ W_Lᵀ ∂ℓ/∂h_L, "
                               "Lee et al.'s Algorithm 1: the top hidden layer gets the gradient through W_Lᵀ)",
                               choices=FIRST_TARGETS)  # fmt: skip
    feedback_iterations: int = count(1, "feedback steps (SGD or Adam) per batch, each with fresh noise", MAX_ITERATIONS)
    noise: float = non_negative(0.1, "σ of the Gaussian noise on the activities in feedback training (ddtp: > 0)")
    pretrain_batches: int = non_negative(20, "first backward calls that train only the feedback (zero forward update)",
                                         int, MAX_PRETRAIN)  # fmt: skip
    feedback_activation: str = option("auto", "ψ in g(h) = ψ(V h + c): auto is the net's activation for dtp, identity "
                                      "for ddtp (DDTP-linear)", choices=("auto", *ACTIVATIONS))  # fmt: skip
    seed: int = seed_option("seed of the feedback weights (drawn once) and of the noise (with the step count)")
    output: str = output_loss()


class Step(NamedTuple):
    """What a training step leads to (``Update.state``): the trained feedback and, per hidden layer, the
    reconstruction error per unit on the batch before the feedback trained on it."""

    feedback: Feedback
    errors: list[float]
    moments: Moments | None = None


CARD_DTP = make_card(
    linear=(True, "targets travel down through the learned nonlinear maps g_l, not a linear backward pass"),
    derivatives=(False, "targets travel without derivatives; each local update multiplies by the layer's own φ'(a_l)"),
    weight_transport=(
        True,
        "g_l has weights of its own, learned to invert f_l on noisy activities, never W_lᵀ; that "
        "training needs f_l applied to corrupted activities (first_target=hidden, Lee et al.'s own first target, "
        "sends the gradient through the readout's W_Lᵀ to the top hidden layer)",
    ),  # fmt: skip
    spikes=(False, "real-valued activities and targets"),
    clock=(False, "a forward pass, a target pass down the feedback path and a noisy feedback-training phase alternate"),
    targets=(False, "the output target needs the loss gradient ∂ℓ/∂h_L of a supervised target"),
)
CARD_DDTP = make_card(
    linear=(
        False,
        "with the default identity ψ (DDTP-linear) each layer's target shift is a linear map V_l(t_L − h_L) "
        "of the output's; feedback_activation=tanh makes it nonlinear",
    ),  # fmt: skip
    derivatives=(False, "targets travel without derivatives; each local update multiplies by the layer's own φ'(a_l)"),
    weight_transport=(
        True,
        "direct feedback V_l of its own, learned by the difference reconstruction loss, never Wᵀ; "
        "that training needs the forward path from each layer to the output on corrupted activities",
    ),
    spikes=(False, "real-valued activities and targets"),
    clock=(False, "a forward pass, a broadcast of the output target and a noisy feedback-training phase alternate"),
    targets=(False, "the output target needs the loss gradient ∂ℓ/∂h_L of a supervised target"),
)
LAYER = r"_l(?P<layer>\d+)"


@register("ddtp", family="target propagation", paper=MEULEMANS, card=CARD_DDTP, feedback="direct",
          summary="direct learned feedback from the output, difference reconstruction loss; first pretrain_batches "
                  "steps train only the feedback")  # fmt: skip
@register("dtp", family="target propagation", paper=LEE, card=CARD_DTP, feedback="difference",
          summary="difference-corrected targets through learned layer inverses; first pretrain_batches steps train "
                  "only the feedback")  # fmt: skip
class TargetProp(Rule):
    """Difference and direct difference target propagation; equations, state and randomness in the module
    docstring. Raises :class:`BioPropError` at create for a network that is not an MLP with one activation (naming
    the layer) and, for ddtp, ``noise=0`` (the DRL divides by σ²)."""

    Options = TargetPropOptions
    opts: TargetPropOptions
    activation = "tanh"  # Lee et al. and Meulemans et al. train tanh networks; the feedback maps into their range
    trace_specs = (Trace("reconstruction", "reconstruction error per unit (mean over hidden layers)",
                         steps="feedback iteration"),)  # fmt: skip
    diagnostic_specs = (Diagnostic(f"reconstruction_error{LAYER}", "hidden layer {layer}"),)
    figures = (FigureSpec("reconstruction.png", "Reconstruction error of the feedback path", diagnostics=(0,),
                          ylabel="reconstruction error per unit"),)  # fmt: skip

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        self.direct = self.opts.feedback == "direct"
        if self.direct and self.opts.noise == 0:
            raise BioPropError(f"rule {self.name}: option noise={self.opts.noise!r} must be positive (the difference "
                               "reconstruction loss divides by σ²)")  # fmt: skip
        if self.direct and self.opts.first_target != "output":
            raise BioPropError(f"rule {self.name}: option first_target={self.opts.first_target!r} is dtp's: ddtp's "
                               "direct feedback reads the output target (first_target=output)")  # fmt: skip
        linears, self.phi = mlp_parts(net, self.name)
        self.linears = [layer.module for layer in linears]
        self.from_hidden = self.opts.first_target == "hidden"
        wanted = self.opts.feedback_activation
        self.psi = (nn.Identity() if self.direct else self.phi) if wanted == "auto" else activation(wanted)
        sizes = [m.out_features for m in self.linears]
        generator, like = torch.Generator().manual_seed(self.opts.seed), self.linears[0].weight
        weights, biases = [], []
        # One map per hidden layer: from layer k+1 (dtp) or the output (ddtp); none for the top hidden layer when its
        # target comes from the gradient (first_target=hidden).
        for k in range(len(sizes) - 1 - (self.from_hidden and len(sizes) > 1)):
            shape = torch.Size((sizes[k], sizes[-1] if self.direct else sizes[k + 1]))
            weights.append(draw_feedback(shape, "xavier", generator).to(like))
            biases.append(torch.zeros(sizes[k], dtype=torch.float64).to(like))
        self.feedback = Feedback(weights, biases, self.psi)
        zeros = [torch.zeros_like(t) for t in (*weights, *biases)]
        self.moments = Moments(zeros, [z.clone() for z in zeros], 0) if self.opts.feedback_optimizer == "adam" else None
        self._error_sums = [0.0] * len(weights)
        self._error_count = 0

    # ------------------------------------------------------------------------------------------- the targets

    def current_feedback(self) -> Feedback:
        """The feedback in the network's dtype and on its device (converted copies when the net has moved since
        they were last adopted; the rule's own tensors are not changed)."""
        like, fb = self.linears[0].weight, self.feedback
        if not fb.weights or (fb.weights[0].dtype == like.dtype and fb.weights[0].device == like.device):
            return fb
        return Feedback([w.to(like) for w in fb.weights], [c.to(like) for c in fb.biases], fb.psi)

    def propagate(self, mlp: MLP, feedback: Feedback, x: Tensor, y: Tensor) -> tuple[Targets, Tensor]:
        """The forward pass, the output target and the targets sent down the feedback (module docstring), with the
        batch-mean output loss. Pure."""
        hs, pre = [x.reshape(len(x), -1)], []
        for i in range(len(mlp.weights)):
            a, h = layer_forward(mlp, i, hs[-1])
            pre.append(a)
            hs.append(h)
        h_out = hs[-1]
        loss = self.loss.value(h_out, y)
        grad_out = loss_gradient(self.loss, h_out, y)
        targets = [output_target(h_out, grad_out, self.opts.target_lr)]
        top = len(mlp.weights) - 1  # the top hidden layer (1-based); 0 without one
        if self.from_hidden and top > 0:
            targets.insert(0, hidden_first_target(hs[top], grad_out, mlp.weights[top], self.opts.target_lr))
            top -= 1
        for k in range(top, 0, -1):  # hidden layer k (1-based), top down

            def g(v: Tensor, k: int = k) -> Tensor:
                return feedback_map(feedback.weights[k - 1], feedback.biases[k - 1], feedback.psi, v)

            above = (targets[-1], h_out) if self.direct else (targets[0], hs[k + 1])
            targets.insert(0, difference_target(hs[k], g, *above))
        return Targets(hs, pre, targets), loss

    @torch.no_grad()
    def targets(self, x: Tensor, y: Tensor) -> Targets:
        """The activities, pre-activations and targets of every layer for the batch (``x`` (B, ...), ``y`` (B,)),
        from the feedback as it stands. Pure; checks the batch as :meth:`grads` does."""
        x, _ = self.check_batch(x, y)
        return self.propagate(mlp_tensors(self.linears, self.phi), self.current_feedback(), x, y)[0]

    # ------------------------------------------------------------------------------------------- the updates

    @torch.no_grad()
    def forward_update(self, x: Tensor, y: Tensor) -> tuple[Update, Targets, MLP]:
        """The forward update of the step (zero during feedback pre-training), its targets and the MLP's tensors."""
        mlp = mlp_tensors(self.linears, self.phi)
        found, loss = self.propagate(mlp, self.current_feedback(), x, y)
        scale = 1.0 / (len(x) * self.opts.target_lr)
        pretraining = self.step < self.opts.pretrain_batches
        grads: dict[str, Tensor] = {}
        last = len(self.linears) - 1
        for i, layer in enumerate(self.linears):
            if pretraining:
                values = [torch.zeros_like(p) for p in (layer.weight, layer.bias) if p is not None]
            else:
                phi = None if i == last else self.phi
                dw, db = local_update(found.activities[i], found.pre[i], found.activities[i + 1], found.targets[i],
                                      phi, scale)  # fmt: skip
                values = [dw] if layer.bias is None else [dw, db]
            add_grads(grads, [self.param_name(p) for p in (layer.weight, layer.bias) if p is not None], values)
        if not bool(torch.isfinite(sum(t.sum() for t in found.targets))):
            raise Unstable(self.name, "a target became non-finite", f"lower target_lr (now {self.opts.target_lr:g})",
                           named=("target_lr",))  # fmt: skip
        return Update(grads, loss, found.activities[-1]), found, mlp

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        return self.forward_update(x, y)[0]

    def feedback_losses(self, mlp: MLP, feedback: Feedback, found: Targets, noise: list[Tensor]) -> list[Tensor]:
        """Each hidden layer's feedback loss (L^inv_k for dtp, L^rec_k for ddtp) with the noise ``noise[k]``."""
        hs, out = found.activities, []
        for k in range(1, len(feedback.weights) + 1):
            w, c = feedback.weights[k - 1], feedback.biases[k - 1]
            if self.direct:
                out.append(difference_reconstruction_loss(mlp, w, c, feedback.psi, k, hs[k], hs[-1], noise[k - 1],
                                                          self.opts.noise))  # fmt: skip
            else:
                out.append(inverse_loss(mlp, w, c, feedback.psi, k, hs[k], noise[k - 1]))
        return out

    def train_feedback(self, mlp: MLP, found: Targets) -> tuple[Feedback, list[float], list[float], Moments | None]:
        """``feedback_iterations`` SGD or Adam (:func:`adam_step`) steps on Σ_k L_k from the current feedback, the
        noise from this step's generator (drawn in float32 on the CPU, one draw per iteration for all hidden layers):
        the trained feedback, each hidden layer's error per unit before the first step, the mean error over layers
        before each step and Adam's new moments (None with SGD). Changes no state; one synchronisation with the
        device per call."""
        o, like, current = self.opts, self.linears[0].weight, self.current_feedback()
        params = [t.clone() for t in (*current.weights, *current.biases)]
        moments = None if self.moments is None else Moments([m.to(like) for m in self.moments.first],
                                                            [v.to(like) for v in self.moments.second],
                                                            self.moments.steps)  # fmt: skip
        n = len(current.weights)
        sizes = [h.shape[1] for h in found.activities[1 : n + 1]]
        generator = self.generator(NOISE)
        history = []
        for _ in range(o.feedback_iterations):
            drawn = torch.randn((len(found.activities[0]), sum(sizes)), generator=generator).mul_(o.noise).to(like)
            noise = list(drawn.split(sizes, dim=1))
            with torch.enable_grad():
                params = [p.detach().requires_grad_(True) for p in params]
                losses = self.feedback_losses(mlp, Feedback(params[:n], params[n:], current.psi), found, noise)
                grads = torch.autograd.grad(sum(losses), params)
            history.append(torch.stack(losses).detach())
            if moments is None:
                params = [(p - o.feedback_lr * g).detach() for p, g in zip(params, grads, strict=True)]
                continue
            t = moments.steps + 1
            stepped = [adam_step(p.detach(), g, m, v, t, o.feedback_lr)
                       for p, g, m, v in zip(params, grads, moments.first, moments.second, strict=True)]  # fmt: skip
            params = [new for new, _, _ in stepped]
            moments = Moments([m for _, m, _ in stepped], [v for _, _, v in stepped], t)
        errors = torch.stack(history) * torch.tensor([2.0 / size for size in sizes]).to(like)  # per unit
        if not bool(torch.isfinite(errors.sum() + sum(p.sum() for p in params))):
            bad = [i for i, row in enumerate(errors.tolist()) if not all(map(math.isfinite, row))]
            where = f"at feedback iteration {bad[0] + 1}" if bad else "after its last feedback iteration"
            raise Unstable(self.name, f"the feedback's reconstruction error became non-finite {where} of step "
                           f"{self.step + 1}", f"lower feedback_lr (now {o.feedback_lr:g}) or noise (now {o.noise:g})",
                           named=("feedback_lr", "noise"))  # fmt: skip
        rows = errors.tolist()
        return Feedback(params[:n], params[n:], current.psi), rows[0], [sum(row) / n for row in rows], moments

    def train_update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """The forward update (as :meth:`update`) and, in ``Update.state``, the feedback after this step's training
        (a :class:`Step`); the trace ``reconstruction`` per feedback iteration."""
        update, found, mlp = self.forward_update(x, y)
        if not self.feedback.weights:  # no hidden layer: nothing to feed back to
            return update
        feedback, first, trace, moments = self.train_feedback(mlp, found)
        traces = {"reconstruction": torch.tensor(trace, dtype=torch.float64)}
        return update._replace(traces=traces, state=Step(feedback, first, moments))

    def commit(self, update: Update) -> None:
        """Adopt the trained feedback and count its reconstruction errors into the epoch's means."""
        step: Step | None = update.state
        if step is None:
            return
        self.feedback = step.feedback
        if step.moments is not None:
            self.moments = step.moments
        for k, error in enumerate(step.errors):
            self._error_sums[k] += error
        self._error_count += 1

    def plan_warnings(self, steps: int) -> list[str]:
        """One line when the feedback pre-training lasts the whole run: the forward update of step s (0-based, the
        step count) is zero while s < ``pretrain_batches``, so a run whose steps end at step count
        ``self.step + steps`` ≤ ``pretrain_batches`` never moves a forward weight."""
        total, pretrain = self.step + steps, self.opts.pretrain_batches
        if steps < 1 or total > pretrain:
            return []
        return [f"rule {self.name}: pretrain_batches={pretrain} ≥ the run's {total} batches: the forward weights will "
                "not be trained (only the feedback is); lower pretrain_batches or train longer"]  # fmt: skip

    def diagnostics(self) -> dict[str, float]:
        """Per hidden layer k (1-based), ``reconstruction_error_lk``: the mean over the epoch's ``backward`` calls of
        its reconstruction error per unit, measured before each batch's feedback training. Starts the next epoch's
        means."""
        out: dict[str, float] = {}
        if self._error_count:
            out = {f"reconstruction_error_l{k + 1}": total / self._error_count for k, total in
                   enumerate(self._error_sums)}  # fmt: skip
        self._error_sums, self._error_count = [0.0] * len(self._error_sums), 0
        return out

    # ------------------------------------------------------------------------------------------- the state

    def state_dict(self) -> dict[str, Tensor]:
        """The step count (``super()``) and the feedback, ``feedback_weight.K`` and ``feedback_bias.K`` (K: 0-based
        hidden layer)."""
        state = super().state_dict()
        for k, (w, c) in enumerate(zip(self.feedback.weights, self.feedback.biases, strict=True)):
            state[f"feedback_weight.{k}"], state[f"feedback_bias.{k}"] = w, c
        if self.moments is not None:  # Adam's moments, in the order of (weights, biases), and its step count
            for i, (m, v) in enumerate(zip(self.moments.first, self.moments.second, strict=True)):
                state[f"feedback_adam_m.{i}"], state[f"feedback_adam_v.{i}"] = m, v
            state["feedback_adam_steps"] = torch.tensor(self.moments.steps, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors. A missing feedback tensor, one of another shape than this network's,
        or an unexpected key is a :class:`BioPropError`, and nothing changes then."""
        state = dict(state)
        loaded: dict[str, list[Tensor]] = {"feedback_weight": [], "feedback_bias": []}
        for field, mine in (("feedback_weight", self.feedback.weights), ("feedback_bias", self.feedback.biases)):
            for k, tensor in enumerate(mine):
                key = f"{field}.{k}"
                if key not in state:
                    raise BioPropError(f"rule {self.name}: checkpoint lacks {key!r}")
                found = state.pop(key)
                if found.shape != tensor.shape:
                    raise BioPropError(f"rule {self.name}: checkpoint's {key} is of shape {tuple(found.shape)}, not "
                                       f"{tuple(tensor.shape)}")  # fmt: skip
                loaded[field].append(found.clone())
        moments = None
        if self.moments is not None:
            first, second = [], []
            for i, mine in enumerate(self.moments.first):
                for key, into in ((f"feedback_adam_m.{i}", first), (f"feedback_adam_v.{i}", second)):
                    if key not in state or state[key].shape != mine.shape:
                        raise BioPropError(f"rule {self.name}: checkpoint lacks {key!r} of shape {tuple(mine.shape)} "
                                           "(feedback_optimizer=adam)")  # fmt: skip
                    into.append(state.pop(key).clone())
            if "feedback_adam_steps" not in state:
                raise BioPropError(f"rule {self.name}: checkpoint lacks 'feedback_adam_steps' "
                                   "(feedback_optimizer=adam)")  # fmt: skip
            moments = Moments(first, second, int(state.pop("feedback_adam_steps")))
        super().load_state_dict(state)
        self.feedback = Feedback(loaded["feedback_weight"], loaded["feedback_bias"], self.psi)
        if moments is not None:
            self.moments = moments
