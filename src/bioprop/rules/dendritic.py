"""Dendritic error rules: errors held in the apical dendrite of pyramidal neurons instead of in error neurons.

``dendritic``: the dendritic error model in rate form (Whittington & Bogacz 2019, Trends Cogn. Sci. 23(3):235,
Box 4). With x_l the somatic potential of layer l (x_0 the clamped input, φ(x_0) read as x_0 since the network's
first Linear takes the raw input) and W_l mapping layer l−1 to l:

.. math::
    \\dot x_l = -x_l + v_{B,l} + φ'(x_l) ⊙ v_{A,l}, \\qquad v_{B,l} = W_l φ(x_{l-1}) + b_l,
    \\qquad v_{A,l} = W_{l+1}^T x_{l+1} - W_{l+1}^T (W_{l+1} φ(x_l) + b_{l+1})

(basal feedforward input; apical top-down input minus the lateral inhibition of interneurons that predict the
layer above). The output layer's value is the feedforward prediction μ_L = v_{B,L} nudged by the target with
output precision β, x_L = μ_L + ε_L with ε_L = −β ∂loss/∂μ_L (loss ``se`` ½‖μ_L − onehot‖² or ``ce``), recomputed
from x_{L−1} at every step. Regrouped, v_{B,l} + φ' ⊙ v_{A,l} − x_l = −δ_l + φ'(x_l) ⊙ W_{l+1}^T δ_{l+1} with
δ_l = x_l − μ_l: predictive coding's value dynamics, −∂F/∂x_l for F = Σ_l ½‖x_l − μ_l‖² + β loss(μ_L). Settled by
Euler steps of size dt from the feedforward pass until max|ẋ| < tol; at the steady state the error is read from
the apical compartment, δ_l = φ'(x_l) ⊙ v_{A,l} (= x_l − v_{B,l}), and ∂W_l = −δ_l φ(x_{l−1})^T / (β B),
∂b_l = −Σ_batch δ_l / (β B): backprop's gradient as β → 0.

``dendritic`` needs a smooth activation, and chooses tanh (:attr:`Dendritic.activation`, what ``--activation auto``
should stand for with this rule). Where φ' jumps (ReLU, leaky ReLU, the hard tanh and hard sigmoid at their kinks),
ẋ_l can point towards the kink from both sides without vanishing there, so the value chatters across it and no
steady state exists, whatever dt and max_steps: on digits with mlp:256, ReLU fails the first batch, tanh, GELU,
ELU and softplus reach 94 % in 5 epochs. A small network may still settle, so such an activation is not refused;
a settling that fails with one names its layer as the first suspect.

Both take an MLP, Flatten (optional), Linear, φ, ..., Linear, with one activation throughout; a Linear layer without
a bias is a zero bias that is not updated; an in-place activation is used as its out-of-place copy. ``dendritic``
sums the terms of a Linear used at several positions (F depends on its weight through each); ``microcircuit``
refuses shared weights (each layer has interneurons of its own). Step budgets: ``max_steps`` and ``steps`` at most
100 000, ``sweeps`` 10 000, ``prepare_steps`` 100 000.

``microcircuit``: Sacramento, Costa, Bengio & Senn 2018, NeurIPS, "Dendritic cortical microcircuits approximate
the backpropagation algorithm" (Eqs. 1–8). Pyramidal neurons of layer k (basal, apical, somatic compartments),
one interneuron per pyramidal neuron of layer k+1 in each hidden layer:

.. math::
    \\dot u_k = -g_l u_k + g_B (v_{B,k} - u_k) + g_A (v_{A,k} - u_k) + σ ξ, \\quad
    v_{B,k} = W^{up}_k φ(u_{k-1}), \\quad v_{A,k} = W^{down}_k φ(u_{k+1}) + W^{pi}_k φ(u^I_k)

    \\dot u^I_k = -g_l u^I_k + g_D (v_{I,k} - u^I_k) + g_{som} (u_{k+1} - u^I_k), \\quad v_{I,k} = W^{ip}_k φ(u_k)

The output layer N has g_A = 0 and a teaching current g_som (u_tgt − u_N). Plasticity, with
v̂_B = g_B v_B / (g_l + g_B + g_A) and v̂_I = g_D v_I / (g_l + g_D):
ΔW^up ∝ (φ(u_k) − φ(v̂_{B,k})) φ(u_{k−1})^T, ΔW^ip ∝ (φ(u^I) − φ(v̂_I)) φ(u_k)^T, ΔW^pi ∝ −v_A φ(u^I)^T.

Implementation choices (documented, not the paper's):

- Folding. The network's Linear layers hold the attenuated weights W̃_k = c_k W^up_k (and biases), with
  c_k = g_B/(g_l+g_B+g_A) for hidden layers and g_B/(g_l+g_B) for the output, so Linear_k(φ(u_{k−1})) = v̂_{B,k}
  and ``net(x)`` is exactly the microcircuit's output without a target in the self-predicting state (v_A = 0):
  test-time prediction is the feedforward pass. Likewise the rule stores Ŵ^ip = g_D/(g_l+g_D) W^ip (and a bias),
  so v̂_I = Ŵ^ip φ(u_k) + b^ip; the self-predicting state is Ŵ^ip = W̃_{k+1}, b^ip = b̃_{k+1}, W^pi = −W^down.
- The output layer is linear (the net's logits are u_N), so φ_N is the identity, and so is the rate of the
  interneurons that mirror it: an interneuron's rate function is that of the pyramidal neuron it predicts.
- Target: ``se`` u_tgt = onehot; ``ce`` u_tgt = v̂_N − (softmax(v̂_N) − onehot), so that u_N − v̂_N is −λ times the
  cross-entropy's gradient, λ = g_som/(g_l+g_B+g_som).
- ``steady`` mode solves the noiseless steady state, u_k = v̂_{B,k} + a v_{A,k} (a = g_A/(g_l+g_B+g_A)),
  u_N = v̂_N + λ(u_tgt − v̂_N), u^I_k = v̂_{I,k} + m (u_{k+1} − v̂_{I,k}) (m = g_som/(g_l+g_D+g_som)), by Jacobi
  sweeps from the feedforward pass until max|Δu| < tol; ``dynamic`` Euler-integrates the equations above with
  dt and noise σ for ``steps`` steps. Plasticity is applied at the end, on the settled potentials.
- ``normalize``: W̃_k's update is divided by the attenuation the error suffers on its way down, s_N = λ and
  s_k = s_{k+1}·a(1−m), so that with W^down = W̃^T it matches backprop's scale and one learning rate serves all
  layers (a layer-specific plasticity rate). The interneuron rates are normalised LMS: Ŵ^ip's rate is divided by
  m and by the presynaptic power mean‖φ(u_k)‖² + 1, W^pi's by mean‖φ(u^I)‖² + 1.
- ``feedback=learned``: W^down learns Kolen–Pollack style (Akrout et al. 2019, NeurIPS): the feedback synapse
  sees the forward synapse's pre/post product, ΔW^down_k = −η_down (∂W̃_{k+1}^T + decay W^down_k), so with weight
  decay on both W^down → W̃^T. bioprop's optimizer (momentum, Adam) applies W̃'s update, so the match is
  approximate; the diagnostics report the angle.
- ``baseline=free`` (not in the paper): W^up's postsynaptic term is φ(u_k) − φ(v̂_B,k + a v_A,k^free), i.e. the
  apical input's change caused by the target, v_A,k^free settled without a target (a second settling per batch;
  the basal v̂_B,k stays the nudged state's, as in the paper's rule). An imperfect self-predicting state
  leaves an apical residual v_A^free ≠ 0 that the paper's φ(u) − φ(v̂_B) learns as if it were error; with the
  output error attenuated by λ a(1−m) per layer it can swamp the true signal, and the free baseline cancels it.

The plasticity divides by m and, with ``normalize``, by s_1: conductances that make either smaller than the
network's dtype can divide by (its smallest normal number, e.g. g_l=1e308) are refused by ``rules.create``. A
settling that fails is a :class:`DivergenceError` naming a non-finite weight or synapse first, then the options
the user set, then g_a (and ``prepare_lr`` after the self-predicting phase's first step, or the learning rate).
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.errors import BioPropError, DivergenceError
from bioprop.metrics import angle_deg
from bioprop.nets import ACTIVATIONS, Layer, layer_parameters, walk
from bioprop.rules.base import (
    Entry,
    Option,
    Rule,
    Unstable,
    Update,
    add_grads,
    backprop_update,
    make_card,
    register,
)
from bioprop.rules.feedback_alignment import draw_feedback
from bioprop.rules.layerwise import through_parameterless

Act = nn.Module  # an elementwise activation module

# Bounds of the step budgets (per batch; the self-predicting phase once per run): beyond them a run would work for
# hours without a word, so a larger value is refused.
MAX_STEPS = 100_000
MAX_SWEEPS = 10_000
MAX_PREPARE = 100_000
MAX_PREPARE_BATCH = 65_536


def mlp_parts(net: nn.Module, rule: str) -> tuple[list[Layer], Act]:
    """The Linear layers of an MLP (Flatten, Linear, φ, ..., Linear) with their paths, and its activation (a copy
    that does not work in place: the rules keep both a potential and its rate); anything else is a
    :class:`BioPropError` naming the first layer that does not fit."""
    found = walk(net, rule)
    if found and isinstance(found[0].module, nn.Flatten):
        found = found[1:]
    if not found:
        raise BioPropError(f"rule {rule} needs an MLP (Flatten, Linear, activation, ..., Linear); found no layers")
    activations = tuple(ACTIVATIONS.values())
    for position, (path, module) in enumerate(found):
        if not isinstance(module, nn.Linear if position % 2 == 0 else activations):
            raise BioPropError(
                f"rule {rule}: layer {path} ({type(module).__name__}) is not supported: the rule needs an MLP "
                "(Flatten, Linear, activation, ..., Linear)"
            )
    if len(found) % 2 == 0:
        raise BioPropError(f"rule {rule} needs an MLP that ends with a Linear readout, not an activation")
    phis = [not_in_place(layer.module) for layer in found[1::2]]
    for layer, phi in zip(found[3::2], phis[1:], strict=True):
        if repr(phi) != repr(phis[0]):
            raise BioPropError(
                f"rule {rule}: layer {layer.path} ({type(layer.module).__name__}) differs from layer {found[1].path}; "
                "the rule needs one activation throughout the MLP"
            )
    return found[0::2], (phis[0] if phis else nn.Identity())


def not_in_place(layer: Act) -> Act:
    """``layer``, or a copy of it with ``inplace=False``."""
    if not getattr(layer, "inplace", False):
        return layer
    layer = copy.deepcopy(layer)
    layer.inplace = False
    return layer


def weights_and_biases(linears: list[nn.Linear]) -> tuple[list[Tensor], list[Tensor]]:
    """The layers' weights and biases, detached; a layer without a bias has zeros there (and gets no bias update)."""
    weights = [m.weight.detach() for m in linears]
    biases = [w.new_zeros(len(w)) if m.bias is None else m.bias.detach() for m, w in zip(linears, weights, strict=True)]
    return weights, biases


def onehot(y: Tensor, like: Tensor) -> Tensor:
    return torch.zeros_like(like).scatter_(1, y.unsqueeze(1), 1.0)


def output_loss_grad(mu: Tensor, y: Tensor, output: str) -> Tensor:
    """∂loss/∂μ per example, (B, K): ``se`` μ − onehot; ``ce`` softmax(μ) − onehot."""
    return (mu if output == "se" else torch.softmax(mu, dim=1)) - onehot(y, mu)


# -------------------------------------------------------------------------------------------------- dendritic


class Dendrites(NamedTuple):
    """Per hidden layer l = 1..L−1: basal v_B,l, apical v_A,l and the right-hand side ẋ_l, each (B, n_l)."""

    basal: list[Tensor]
    apical: list[Tensor]
    rhs: list[Tensor]


def dendritic_rhs(
    weights: list[Tensor],
    biases: list[Tensor],
    x0: Tensor,
    xs: list[Tensor],
    y: Tensor,
    phi: Act,
    beta: float,
    output: str,
) -> Dendrites:
    """The Box 4 right-hand side for hidden values ``xs`` = [x_1, ..., x_{L−1}] (each (B, n_l)); ``weights[l]`` is
    W_{l+1} (out, in). The output value x_L = μ_L − β ∂loss/∂μ_L follows x_{L−1}."""
    rates = [x0] + [phi(x) for x in xs]  # φ(x_0) read as x_0
    basal = [r @ w.T + b for r, w, b in zip(rates, weights, biases, strict=True)]  # v_B,l = μ_l, l = 1..L
    top = basal[-1] - beta * output_loss_grad(basal[-1], y, output)  # x_L
    values = [*xs, top]
    apical, rhs = [], []
    for i, x in enumerate(xs):  # x is x_{i+1}; the layer above is values[i + 1], its weight weights[i + 1]
        w = weights[i + 1]
        v_a = values[i + 1] @ w - basal[i + 1] @ w  # top-down input minus interneuron inhibition
        apical.append(v_a)
        rhs.append(-x + basal[i] + through_parameterless(phi, x, rates[i + 1], v_a))  # φ'(x) ⊙ v_A
    return Dendrites(basal[:-1], apical, rhs)


def steady_reached(
    residual: float, step: int, cfg: dict[str, Any], rule: str, budget: str, unstable: str, slow: str
) -> bool:
    """True once ``residual`` (max|ẋ|, or max|Δu| between sweeps) is below ``cfg["tol"]``. A non-finite residual or
    a spent step budget ``cfg[budget]`` is an :class:`Unstable` advising the settings that usually cause it
    (``unstable`` for the first, ``slow`` for the second)."""
    if not math.isfinite(residual):
        unit = "sweep" if budget == "sweeps" else "step"
        raise Unstable(rule, f"the state became non-finite at {unit} {step}", unstable)
    if residual < cfg["tol"]:
        return True
    if step == cfg[budget]:
        raise Unstable(rule, f"no steady state within {budget}={cfg[budget]} (residual {residual:.1e} > tol "
                       f"{cfg['tol']:g})", slow, named=(budget, "tol"))  # fmt: skip
    return False


SETTLE_ADVICE = "raise max_steps or lower dt"


def settle(
    weights: list[Tensor],
    biases: list[Tensor],
    x0: Tensor,
    y: Tensor,
    phi: Act,
    cfg: dict[str, Any],
    slow: str = SETTLE_ADVICE,
) -> tuple[list[Tensor], Dendrites, Tensor]:
    """Euler steps from the feedforward pass to the steady state; returns the hidden values, their dendrites
    and the residual max|ẋ| per step (padded with its final value to max_steps + 1 entries). ``slow`` is the advice
    of the :class:`Unstable` raised when max_steps run out."""
    xs, h = [], x0
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        xs.append(h @ w.T + b)
        h = phi(xs[-1])
    residuals, unstable = [], f"lower dt (now {cfg['dt']:g})"
    for step in range(cfg["max_steps"] + 1):
        d = dendritic_rhs(weights, biases, x0, xs, y, phi, cfg["beta"], cfg["output"])
        residual = max((float(r.abs().max()) for r in d.rhs), default=0.0)
        residuals.append(residual)
        if steady_reached(residual, step, cfg, "dendritic", "max_steps", unstable, slow):
            break
        xs = [x + cfg["dt"] * r for x, r in zip(xs, d.rhs, strict=True)]
    trace = torch.tensor(residuals + [residuals[-1]] * (cfg["max_steps"] + 1 - len(residuals)), dtype=torch.float64)
    return xs, d, trace


CARD_DENDRITIC = make_card(
    linear=(False, "the apical error is linear in the layer above's error; only the φ' gate is nonlinear"),
    derivatives=(False, "the apical input is gated by φ'(x_l), the exact derivative"),
    weight_transport=(False, "top-down and interneuron synapses are W_{l+1}ᵀ, the transposed forward weights"),
    spikes=(False, "real-valued rates and potentials"),
    clock=(True, "one continuous relaxation: no separate backward phase, errors live in apical dendrites"),
    targets=(False, "needs a supervised target nudging the output"),
)
CARD_MICROCIRCUIT = make_card(
    linear=(True, "errors pass through the nonlinear rates φ(u) of pyramidal neurons and interneurons"),
    derivatives=(True, "the plasticity uses φ(u) − φ(v̂_B), a difference of rates, not φ'"),
    weight_transport=(True, "W^down is fixed random (or learned by a local rule), never a copy of W^upᵀ"),
    spikes=(False, "real-valued rates and potentials"),
    clock=(
        True,
        "one continuous dynamics with plasticity on, no backward phase (the default baseline=free "
        "compares with a settling without target, a second phase; baseline=none has none)",
    ),
    targets=(False, "needs a teaching current at the output layer"),
)
WHITTINGTON = "Whittington & Bogacz 2019, Trends Cogn. Sci. 23(3):235, Box 4"
SACRAMENTO = "Sacramento, Costa, Bengio & Senn 2018, NeurIPS"


def has_kink(layer: nn.Module) -> bool:
    """Whether the activation ``layer``'s derivative jumps somewhere: ReLU, leaky ReLU, hard tanh and hard sigmoid
    (at their kinks), ELU with α ≠ 1 (at 0)."""
    return isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.Hardtanh)) or (isinstance(layer, nn.ELU) and layer.alpha != 1)


def _positive(v: float) -> bool:
    return v > 0


def _pos(default: float, help: str) -> Option:
    return Option(default, help, type=float, check=_positive, check_says="must be positive")


def _count(default: int, help: str, maximum: int) -> Option:
    return Option(default, help, type=int, check=lambda v: v >= 1, check_says="must be at least 1", maximum=maximum)


def _nonneg(default: float, help: str, kind: type = float, maximum: int | None = None) -> Option:
    return Option(default, help, type=kind, check=lambda v: v >= 0, check_says="must be non-negative", maximum=maximum)


def _rate(default: float, help: str) -> Option:
    """A normalised-LMS rate: stable in [0, 2)."""
    return Option(default, help, type=float, check=lambda v: 0 <= v < 2, check_says="must be in [0, 2)")


@register("dendritic", family="dendritic", paper=WHITTINGTON, summary="apical-dendrite errors, PC regrouped",
          card=CARD_DENDRITIC)  # fmt: skip
class Dendritic(Rule):
    """The dendritic error model (rate form); equations in the module docstring."""

    activation = "tanh"  # needs a smooth φ (module docstring): the hidden activation `--activation auto` picks
    options = {
        "output": Option("ce", "output loss nudging the output", choices=("ce", "se")),
        "beta": _pos(0.1, "output precision β: how far the target nudges the output"),
        "dt": _pos(
            0.5,
            "Euler step of the value dynamics (needs a smooth activation, e.g. tanh: with ReLU's kink "
            "no dt and no max_steps reach a steady state)",
        ),
        "tol": _pos(1e-5, "steady state when max|ẋ| falls below this"),
        "max_steps": _count(200, "Euler step budget", MAX_STEPS),
    }

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        linears, self.phi = mlp_parts(net, self.name)
        self.linears = [layer.module for layer in linears]
        kink = next((layer for layer in walk(net, self.name) if has_kink(layer.module)), None)
        self.slow = SETTLE_ADVICE
        if kink is not None:  # the likelier cause of a settling that does not end: name it first
            self.slow = (f"layer {kink.path} ({type(kink.module).__name__}) has a kink where φ' jumps, and there the "
                         f"dynamics may have no steady state whatever dt and max_steps: use a smooth activation such "
                         f"as {self.activation} (this rule's choice); else {SETTLE_ADVICE}")  # fmt: skip

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        x0 = x.reshape(len(x), -1)
        weights, biases = weights_and_biases(self.linears)
        xs, d, trace = settle(weights, biases, x0, y, self.phi, self.config, self.slow)
        beta, n = self.config["beta"], len(x)
        rates = [x0] + [self.phi(v) for v in xs]
        mu_top = rates[-1] @ weights[-1].T + biases[-1]
        # δ_l = φ'(x_l) ⊙ v_A,l, the error read from the apical compartment
        errors = [through_parameterless(self.phi, v, r, a) for v, r, a in zip(xs, rates[1:], d.apical, strict=True)]
        errors.append(-beta * output_loss_grad(mu_top, y, self.config["output"]))  # ε_L
        grads: dict[str, Tensor] = {}  # a layer used at several positions: its terms add up
        for layer, delta, r in zip(self.linears, errors, rates, strict=True):
            params = layer_parameters(layer)
            values = [-(delta.T @ r) / (beta * n), -delta.sum(0) / (beta * n)][: len(params)]
            add_grads(grads, [self.param_name(p) for p in params], values)
        prediction = self.net(x)
        return Update(grads, F.cross_entropy(prediction, y), prediction, traces={"residual": trace})

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return backprop_update(self.net, x, y, self.loss).grads


# ----------------------------------------------------------------------------------------------- microcircuit


class Conductances(NamedTuple):
    g_l: float
    g_b: float
    g_a: float
    g_d: float
    g_som: float

    @property
    def a(self) -> float:  # apical share of a hidden soma at rest: u = v̂_B + a v_A
        return self.g_a / (self.g_l + self.g_b + self.g_a)

    @property
    def lam(self) -> float:  # teaching share of the output soma: u_N = v̂_N + λ (u_tgt − v̂_N)
        return self.g_som / (self.g_l + self.g_b + self.g_som)

    @property
    def m(self) -> float:  # nudging share of an interneuron: u^I = v̂_I + m (u_{k+1} − v̂_I)
        return self.g_som / (self.g_l + self.g_d + self.g_som)


class Circuit(NamedTuple):
    """The rule's synapses, per hidden layer k: Ŵ^ip (n_{k+1}, n_k), b^ip (n_{k+1}), W^pi and W^down (n_k, n_{k+1})."""

    w_ip: list[Tensor]
    b_ip: list[Tensor]
    w_pi: list[Tensor]
    w_down: list[Tensor]


class Potentials(NamedTuple):
    """Somatic potentials: pyramidal u_1..u_N, each (B, n_k), and interneurons u^I_1..u^I_{N−1}, (B, n_{k+1})."""

    u: list[Tensor]
    u_i: list[Tensor]


def rate(phi: Act, k: int, n_layers: int, u: Tensor) -> Tensor:
    """φ_k(u): the activation for hidden layers (k < N), the identity for the linear output layer N (1-based)."""
    return u if k == n_layers else phi(u)


def drives(
    weights: list[Tensor], biases: list[Tensor], c: Circuit, x0: Tensor, p: Potentials, phi: Act, first: Tensor
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Attenuated basal potentials v̂_B,k (k = 1..N), apical v_A,k and interneuron dendritic v̂_I,k (k < N);
    ``first`` is v̂_B,1, which depends on the clamped input only."""
    n = len(weights)
    rates = [x0] + [rate(phi, k + 1, n, u) for k, u in enumerate(p.u)]
    basal = [first] + [r @ w.T + b for r, w, b in zip(rates[1:-1], weights[1:], biases[1:], strict=True)]
    apical, inter = [], []
    for k in range(n - 1):  # hidden layer k+1 (1-based)
        r_inter = rate(phi, k + 2, n, p.u_i[k])  # interneurons fire like the layer they mirror
        apical.append(rates[k + 2] @ c.w_down[k].T + r_inter @ c.w_pi[k].T)
        inter.append(rates[k + 1] @ c.w_ip[k].T + c.b_ip[k])
    return basal, apical, inter


def teacher(v_top: Tensor, y: Tensor | None, output: str) -> Tensor | None:
    """u_tgt: ``se`` onehot; ``ce`` v̂_N − (softmax(v̂_N) − onehot); None without a target."""
    if y is None:
        return None
    return onehot(y, v_top) if output == "se" else v_top - output_loss_grad(v_top, y, "ce")


def steady_sweep(
    weights: list[Tensor],
    biases: list[Tensor],
    c: Circuit,
    p: Potentials,
    y: Tensor | None,
    phi: Act,
    g: Conductances,
    output: str,
    first: Tensor,
) -> Potentials:
    """One Gauss–Seidel sweep, bottom-up, of the noiseless steady-state equations (module docstring):
    u_k = v̂_B,k + a v_A,k from the new u_{k−1} and the old u_{k+1}, u^I_k; then u^I_{k−1} from the new u_{k−1}, u_k;
    u_N = v̂_N + λ (u_tgt − v̂_N)."""
    n = len(weights)
    u, u_i = list(p.u), list(p.u_i)
    for k in range(n):  # layer k+1 (1-based)
        basal = first if k == 0 else rate(phi, k, n, u[k - 1]) @ weights[k].T + biases[k]
        if k < n - 1:
            above, inter = rate(phi, k + 2, n, u[k + 1]), rate(phi, k + 2, n, u_i[k])
            u[k] = basal + g.a * (above @ c.w_down[k].T + inter @ c.w_pi[k].T)
        else:
            target = teacher(basal, y, output)
            u[k] = basal if target is None else basal + g.lam * (target - basal)
        if k > 0:
            v_i = rate(phi, k, n, u[k - 1]) @ c.w_ip[k - 1].T + c.b_ip[k - 1]
            u_i[k - 1] = v_i + g.m * (u[k] - v_i)
    return Potentials(u, u_i)


def euler_step(
    weights: list[Tensor],
    biases: list[Tensor],
    c: Circuit,
    x0: Tensor,
    p: Potentials,
    y: Tensor | None,
    phi: Act,
    g: Conductances,
    output: str,
    dt: float,
    noise: float,
    generator: torch.Generator | None,
    first: Tensor,
) -> Potentials:
    """One Euler step of the full dynamics, in folded form: g_B(v_B − u) = (g_l+g_B+g_A) v̂_B − g_B u for hidden
    layers (g_A = 0 at the output) and g_D(v_I − u^I) = (g_l+g_D) v̂_I − g_D u^I."""
    basal, apical, inter = drives(weights, biases, c, x0, p, phi, first)
    hidden_total, top_total = g.g_l + g.g_b + g.g_a, g.g_l + g.g_b
    du = [-g.g_l * u + hidden_total * v - g.g_b * u + g.g_a * (a - u)
          for u, v, a in zip(p.u[:-1], basal[:-1], apical, strict=True)]  # fmt: skip
    u_n, v_n = p.u[-1], basal[-1]
    target = teacher(v_n, y, output)
    top = -g.g_l * u_n + top_total * v_n - g.g_b * u_n
    du.append(top if target is None else top + g.g_som * (target - u_n))
    du_i = [-g.g_l * ui + (g.g_l + g.g_d) * v - g.g_d * ui + g.g_som * (above - ui)
            for ui, v, above in zip(p.u_i, inter, p.u[1:], strict=True)]  # fmt: skip
    if noise > 0:
        du = [d + noise * torch.randn(d.shape, generator=generator, dtype=d.dtype).to(d.device) / math.sqrt(dt)
              for d in du]  # fmt: skip
    return Potentials([u + dt * d for u, d in zip(p.u, du, strict=True)],
                      [u + dt * d for u, d in zip(p.u_i, du_i, strict=True)])  # fmt: skip


def feedforward(weights: list[Tensor], biases: list[Tensor], c: Circuit, phi: Act, first: Tensor) -> Potentials:
    """The state without apical input: u_k = v̂_B,k layer by layer (u_1 = ``first``), interneurons at v̂_I,k."""
    u = [first]
    for k, (w, b) in enumerate(zip(weights[1:], biases[1:], strict=True)):
        u.append(rate(phi, k + 1, len(weights), u[-1]) @ w.T + b)
    n = len(weights)
    inter = [rate(phi, k + 1, n, u[k]) @ w.T + b for k, (w, b) in enumerate(zip(c.w_ip, c.b_ip, strict=True))]
    return Potentials(u, inter)


def max_change(a: Potentials, b: Potentials) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.u + a.u_i, b.u + b.u_i, strict=True))


class Settled(NamedTuple):
    potentials: Potentials
    basal: list[Tensor]  # v̂_B,k at the settled state
    apical: list[Tensor]
    inter: list[Tensor]


def settle_circuit(
    weights: list[Tensor],
    biases: list[Tensor],
    c: Circuit,
    x0: Tensor,
    y: Tensor | None,
    phi: Act,
    cfg: dict[str, Any],
    generator: torch.Generator | None = None,
) -> Settled:
    """The settled microcircuit: ``steady`` sweeps to max|Δu| < tol, or ``dynamic`` Euler integration."""
    g, output = conductances(cfg), cfg["output"]
    first = x0 @ weights[0].T + biases[0]  # v̂_B,1: the clamped input's drive, computed once
    p = feedforward(weights, biases, c, phi, first)
    if cfg["mode"] == "dynamic":
        for _ in range(cfg["steps"]):
            p = euler_step(weights, biases, c, x0, p, y, phi, g, output, cfg["dt"], cfg["noise"], generator, first)
        if not all(bool(torch.isfinite(t).all()) for t in p.u + p.u_i):
            dt = f"lower dt (now {cfg['dt']:g})"
            raise Unstable("microcircuit", "the dynamics diverged (non-finite potentials)", dt)
    else:
        unstable = f"lower g_a (now {cfg['g_a']:g})"
        slow = f"raise sweeps or {unstable}"
        for sweep in range(cfg["sweeps"] + 1):
            new = steady_sweep(weights, biases, c, p, y, phi, g, output, first)
            change, p = max_change(new, p), new
            if steady_reached(change, sweep, cfg, "microcircuit", "sweeps", unstable, slow):
                break
    return Settled(p, *drives(weights, biases, c, x0, p, phi, first))


def conductances(cfg: dict[str, Any]) -> Conductances:
    return Conductances(cfg["g_l"], cfg["g_b"], cfg["g_a"], cfg["g_d"], cfg["g_som"])


def error_scales(g: Conductances, n_layers: int) -> list[float]:
    """s_k, the attenuation of the output error on its way down to layer k: s_N = λ, s_k = s_{k+1} a (1 − m)."""
    scales = [g.lam]
    for _ in range(n_layers - 1):
        scales.insert(0, scales[0] * g.a * (1 - g.m))
    return scales


class Plasticity(NamedTuple):
    """Descent directions for the net's W̃_k, b̃_k (pairs, k = 1..N) and increments of the rule's synapses."""

    forward: list[tuple[Tensor, Tensor]]
    circuit: Circuit  # increments, same shapes as the Circuit


def plasticity(
    weights: list[Tensor],
    c: Circuit,
    x0: Tensor,
    s: Settled,
    phi: Act,
    cfg: dict[str, Any],
    target: bool,
    free: Settled | None = None,
) -> Plasticity:
    """The plasticity rules at the settled state (module docstring), batch means; with ``target`` False only the
    interneuron synapses learn (W^up's and W^down's increments are then zero). With ``free`` (the settled state
    without a target, option ``baseline=free``) W^up's postsynaptic term is φ(u_k) − φ(v̂_B,k + a v_A,k^free)."""
    g, n, batch = conductances(cfg), len(weights), len(x0)
    u, u_i = s.potentials
    rates = [x0] + [rate(phi, k + 1, n, v) for k, v in enumerate(u)]
    scales = error_scales(g, n) if cfg["normalize"] else [1.0] * n
    forward = []
    for k in range(n):
        reference = s.basal[k] if free is None or k == n - 1 else s.basal[k] + g.a * free.apical[k]
        post = rates[k + 1] - rate(phi, k + 1, n, reference)  # φ(u_k) − φ(v̂_B,k [+ a v_A,k^free]), (B, n_k)
        forward.append((-(post.T @ rates[k]) / (batch * scales[k]), -post.sum(0) / (batch * scales[k])))
    d_ip, d_bip, d_pi, d_down = [], [], [], []
    for k in range(n - 1):
        r_inter = rate(phi, k + 2, n, u_i[k])
        post = r_inter - rate(phi, k + 2, n, s.inter[k])  # φ(u^I) − φ(v̂_I), (B, n_{k+1})
        power = float((rates[k + 1] ** 2).sum(1).mean()) + 1.0
        step = cfg["lr_ip"] / (g.m * power * batch)
        d_ip.append(step * post.T @ rates[k + 1])
        d_bip.append(step * post.sum(0))
        power = float((r_inter**2).sum(1).mean()) + 1.0
        d_pi.append(-cfg["lr_pi"] / (power * batch) * s.apical[k].T @ r_inter)
        if cfg["feedback"] == "learned" and target:  # Kolen–Pollack: the transposed forward update, plus decay
            d_down.append(-cfg["lr_down"] * (forward[k + 1][0].T + cfg["decay_down"] * c.w_down[k]))
        else:
            d_down.append(torch.zeros_like(c.w_down[k]))
    if not target:
        forward = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in forward]
    return Plasticity(forward, Circuit(d_ip, d_bip, d_pi, d_down))


@register("microcircuit", family="dendritic", paper=SACRAMENTO,
          summary="pyramidal-interneuron microcircuit, apical errors", card=CARD_MICROCIRCUIT)  # fmt: skip
class Microcircuit(Rule):
    """Sacramento et al.'s dendritic cortical microcircuit; equations and choices in the module docstring."""

    options = {
        "mode": Option("steady", "steady-state sweeps (training) or Euler dynamics", choices=("steady", "dynamic")),
        "output": Option("ce", "target: se onehot, ce prediction moved against the CE gradient", choices=("ce", "se")),
        "feedback": Option("fixed", "W^down fixed random or learned (Kolen–Pollack)", choices=("fixed", "learned")),
        "g_l": _pos(0.1, "leak conductance g_l"),
        "g_b": _pos(1.0, "basal conductance g_B"),
        "g_a": _pos(0.8, "apical conductance g_A"),
        "g_d": _pos(1.0, "interneuron dendritic conductance g_D"),
        "g_som": _pos(0.1, "somatic nudging conductance g_som (teacher and interneurons)"),
        "sweeps": _count(50, "steady mode: fixed-point sweep budget", MAX_SWEEPS),
        "tol": _pos(1e-4, "steady mode: converged when max|Δu| between sweeps falls below this"),
        "dt": _pos(0.1, "dynamic mode: Euler step"),
        "steps": _count(300, "dynamic mode: Euler steps per pattern", MAX_STEPS),
        "noise": _nonneg(0.0, "dynamic mode: somatic noise σ"),
        "baseline": Option(
            "free",
            "W^up's error: none, φ(u) − φ(v̂_B) (the paper); free, minus the apical input without target",
            choices=("none", "free"),
        ),
        "normalize": Option(True, "divide W^up's update by the error's attenuation s_k (one lr for all layers)"),
        "lr_ip": _rate(0.05, "normalised rate of Ŵ^ip (interneuron ← pyramidal) during training"),
        "lr_pi": _rate(0.05, "normalised rate of W^pi (pyramidal apical ← interneuron) during training"),
        "prepare_lr": _rate(1.0, "self-predicting phase: normalised rate of Ŵ^ip and W^pi"),
        "lr_down": _nonneg(0.01, "feedback=learned: rate of W^down"),
        "decay_down": _nonneg(0.01, "feedback=learned: weight decay of W^down"),
        "prepare_steps": _nonneg(1000, "self-predicting phase: steps on random inputs (0: none)", int, MAX_PREPARE),
        "prepare_batch": _count(64, "self-predicting phase: random inputs per step", MAX_PREPARE_BATCH),
        "init_scale": _pos(1.0, "factor on the random initial W^down, W^pi and Ŵ^ip"),
        "seed": Option(0, "seed of the rule's generator (initial synapses, random inputs, noise)", type=int),
    }

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        linears, self.phi = mlp_parts(net, self.name)
        if len(linears) < 2:
            raise BioPropError(f"rule {self.name} needs at least one hidden layer (e.g. --arch mlp:500)")
        owner: dict[int, str] = {}
        for path, layer in linears:
            for param in layer_parameters(layer):
                if id(param) in owner:
                    raise BioPropError(
                        f"rule {self.name}: layer {path} (Linear) shares its weights with layer {owner[id(param)]}; "
                        "the microcircuit needs its own interneurons for each layer: shared weights are not supported"
                    )
                owner[id(param)] = path
        self.linears = [layer.module for layer in linears]
        self.check_conductances()
        self.generator = torch.Generator().manual_seed(self.config["seed"])
        like, scale = self.linears[0].weight, self.config["init_scale"]

        def draw(shape: tuple[int, ...]) -> Tensor:
            return (draw_feedback(torch.Size(shape), "xavier", self.generator) * scale).to(like)

        sizes = [m.out_features for m in self.linears]
        self.circuit = Circuit(
            [draw((sizes[k + 1], sizes[k])) for k in range(len(sizes) - 1)],
            [torch.zeros(sizes[k + 1]).to(like) for k in range(len(sizes) - 1)],
            [draw((sizes[k], sizes[k + 1])) for k in range(len(sizes) - 1)],
            [draw((sizes[k], sizes[k + 1])) for k in range(len(sizes) - 1)],
        )
        self._apical_sums: list[float] = [0.0] * (len(sizes) - 1)
        self._apical_count = 0
        self._last_x: Tensor | None = None

    def check_conductances(self) -> None:
        """Refuse conductances that make a divisor of the plasticity, m (the interneurons' normalised rate) or, with
        ``normalize``, the error's attenuation s_1 to the first layer, smaller than the network's dtype can divide
        by (its smallest normal number): every update would overflow."""
        g, dtype = conductances(self.config), self.linears[0].weight.dtype
        divisors = {"m = g_som/(g_l+g_d+g_som)": g.m}
        if self.config["normalize"]:
            divisors["the attenuation s_1 = λ (a(1−m))^(N−1)"] = error_scales(g, len(self.linears))[0]
        for what, value in divisors.items():
            if not value >= torch.finfo(dtype).tiny:
                said = ", ".join(f"{key}={getattr(g, key):g}" for key in Conductances._fields)
                raise BioPropError(
                    f"rule {self.name}: the conductances {said} give {what} = {value:.3g}, too small to divide by in "
                    f"{dtype}; bring them closer to their defaults"
                )

    def weights(self) -> tuple[list[Tensor], list[Tensor]]:
        """The net's W̃_k and b̃_k (zeros without a bias); the rule's own synapses follow the net's dtype and device."""
        weights, biases = weights_and_biases(self.linears)
        like = weights[0]
        if self.circuit.w_ip[0].dtype != like.dtype or self.circuit.w_ip[0].device != like.device:
            self.circuit = Circuit(*[[t.to(like) for t in tensors] for tensors in self.circuit])
        return weights, biases

    def settle(self, x: Tensor, y: Tensor | None) -> Settled:
        """The settled microcircuit for inputs ``x`` (B, ...) and labels ``y`` (B,) or None (no target)."""
        weights, biases = self.weights()
        return settle_circuit(weights, biases, self.circuit, x.reshape(len(x), -1), y, self.phi, self.config,
                              self.generator)  # fmt: skip

    @torch.no_grad()
    def learn(
        self, x: Tensor, y: Tensor | None, rates: dict[str, float] | None = None
    ) -> tuple[Update, Plasticity, Settled]:
        """The settled circuit and its plasticity; ``rates`` overrides the interneuron learning rates (the
        self-predicting phase, which advises its own settings when the settling fails; training adds the learning
        rate to the advice)."""
        weights, _ = self.weights()
        try:
            settled = self.settle(x, y)
            free = self.settle(x, None) if y is not None and self.config["baseline"] == "free" else None
        except Unstable as exc:
            if rates:
                raise
            raise Unstable(self.name, exc.what, f"{exc.advice} or the learning rate", exc.named) from None
        x0 = x.reshape(len(x), -1)
        cfg = {**self.config, **rates} if rates else self.config
        change = plasticity(weights, self.circuit, x0, settled, self.phi, cfg, y is not None, free)
        grads: dict[str, Tensor] = {}
        for layer, (dw, db) in zip(self.linears, change.forward, strict=True):
            grads[self.param_name(layer.weight)] = dw
            if layer.bias is not None:
                grads[self.param_name(layer.bias)] = db
        prediction = self.net(x)
        loss = F.cross_entropy(prediction, y) if y is not None else prediction.new_zeros(())
        return Update(grads, loss, prediction), change, settled

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        return self.learn(x, y)[0]

    def apply(self, change: Circuit) -> None:
        for mine, delta in zip(self.circuit, change, strict=True):
            for tensor, d in zip(mine, delta, strict=True):
                tensor.add_(d)

    def train_update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """The update, and the interneuron synapses' own plasticity applied (and the apical norms recorded)."""
        update, change, settled = self.learn(x, y)
        self.apply(change.circuit)
        for k, v_a in enumerate(settled.apical):
            self._apical_sums[k] += float(v_a.norm(dim=1).mean())
        self._apical_count += 1
        self._last_x = x
        return update

    @torch.no_grad()
    def prepare(self) -> dict[str, list[float]]:
        """The self-predicting phase: random inputs N(0, 1), no target; only Ŵ^ip, b^ip and W^pi learn. Trace:
        mean ‖v_A‖ (over examples and hidden layers) without a target, every step."""
        steps, batch = self.config["prepare_steps"], self.config["prepare_batch"]
        like, rate = self.linears[0].weight, self.config["prepare_lr"]
        norms = []
        for step in range(steps):
            x = torch.randn((batch, self.linears[0].in_features), generator=self.generator, dtype=torch.float64)
            try:
                _, change, settled = self.learn(x.to(like), None, {"lr_ip": rate, "lr_pi": rate})
            except DivergenceError as exc:
                if isinstance(exc, Unstable):  # the phase's own plasticity is a suspect once it has taken a step
                    more = f" or prepare_lr (now {rate:g})" if step else ""
                    where = f"{exc.what}, in step {step + 1} of the self-predicting phase"
                    exc = Unstable(self.name, where, exc.advice + more, exc.named)
                raise self.explain(exc) from None  # a non-finite weight, not the settings, if there is one
            norms.append(sum(float(a.norm(dim=1).mean()) for a in settled.apical) / len(settled.apical))
            self.apply(change.circuit)
        return {"apical_norm": norms} if norms else {}

    @torch.no_grad()
    def apical_norms(self, x: Tensor, y: Tensor | None = None) -> list[float]:
        """Mean ‖v_A,k‖ per hidden layer for inputs ``x`` (with the target when ``y`` is given)."""
        return [float(a.norm(dim=1).mean()) for a in self.settle(x, y).apical]

    def diagnostics(self) -> dict[str, float]:
        """Per hidden layer k: mean ‖v_A‖ with the target over the epoch's steps (``apical_norm_lk``) and without
        it on the last batch (``apical_norm_free_lk``); angles W^pi vs −W^down and Ŵ^ip vs W̃_{k+1}; with learned
        feedback, W^down vs W̃_{k+1}^T."""
        out: dict[str, float] = {}
        if self._apical_count:
            for k, total in enumerate(self._apical_sums):
                out[f"apical_norm_l{k + 1}"] = total / self._apical_count
        if self._last_x is not None:
            generator_state = self.generator.get_state()  # noise draws here must not change the trajectory
            for k, value in enumerate(self.apical_norms(self._last_x)):
                out[f"apical_norm_free_l{k + 1}"] = value
            self.generator.set_state(generator_state)
        for k in range(len(self.circuit.w_pi)):
            out[f"w_pi_down_angle_deg_l{k + 1}"] = angle_deg(self.circuit.w_pi[k], -self.circuit.w_down[k])
            out[f"w_ip_up_angle_deg_l{k + 1}"] = angle_deg(self.circuit.w_ip[k], self.linears[k + 1].weight)
            if self.config["feedback"] == "learned":
                out[f"w_down_up_angle_deg_l{k + 1}"] = angle_deg(self.circuit.w_down[k], self.linears[k + 1].weight.T)
        self._apical_sums, self._apical_count = [0.0] * len(self._apical_sums), 0
        return out

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return backprop_update(self.net, x, y, self.loss).grads

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"{field}.{k}": t for field, ts in zip(Circuit._fields, self.circuit, strict=True)
                 for k, t in enumerate(ts)}  # fmt: skip
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.generator.set_state(state.pop("generator"))
        fields = []
        for field, mine in zip(Circuit._fields, self.circuit, strict=True):
            try:
                fields.append([state.pop(f"{field}.{k}").to(t).clone() for k, t in enumerate(mine)])
            except KeyError as missing:
                raise BioPropError(f"rule {self.name}: checkpoint lacks {missing}") from None
        if state:
            raise BioPropError(f"rule {self.name}: unexpected state {sorted(state)[0]!r} in checkpoint")
        self.circuit = Circuit(*fields)
