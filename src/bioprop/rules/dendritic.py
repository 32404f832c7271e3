"""The dendritic error model: errors held in the apical dendrite of pyramidal neurons instead of in error neurons.

``dendritic``: the dendritic error model in rate form (Whittington & Bogacz 2019, Trends Cogn. Sci. 23(3):235,
Box 4). With x_l the somatic potential of layer l (x_0 the clamped input, φ(x_0) read as x_0 since the network's
first Linear takes the raw input) and W_l mapping layer l−1 to l:

.. math::
    \\dot x_l = -x_l + v_{B,l} + φ'(x_l) ⊙ v_{A,l}, \\qquad v_{B,l} = W_l φ(x_{l-1}) + b_l,
    \\qquad v_{A,l} = W_{l+1}^T x_{l+1} - W_{l+1}^T (W_{l+1} φ(x_l) + b_{l+1})

(basal feedforward input; apical top-down input minus the lateral inhibition of interneurons that predict the
layer above). The output layer's value is the feedforward prediction μ_L = v_{B,L} nudged by the target with
output precision β, x_L = μ_L + ε_L with ε_L = −β ∂ℓ/∂μ_L (ℓ the run's output loss, :mod:`bioprop.losses`: ``se``
½‖μ_L − onehot‖² or ``ce``), recomputed from x_{L−1} at every step. Regrouped, v_{B,l} + φ' ⊙ v_{A,l} − x_l =
−δ_l + φ'(x_l) ⊙ W_{l+1}^T δ_{l+1} with δ_l = x_l − μ_l: predictive coding's value dynamics, −∂F/∂x_l for
F = Σ_l ½‖x_l − μ_l‖² + β ℓ(μ_L). Settled by Euler steps of size dt from the feedforward pass until
max|ẋ| < tol; at the steady state the error is read from the apical compartment, δ_l = φ'(x_l) ⊙ v_{A,l}
(= x_l − v_{B,l}), and ∂W_l = −δ_l φ(x_{l−1})^T / (β B), ∂b_l = −Σ_batch δ_l / (β B): backprop's gradient as
β → 0. The loss reported (``Update.loss``) is the run's output loss of ``net(x)``, the batch mean.

``dendritic`` needs a smooth activation, and chooses tanh (:attr:`Dendritic.activation`, what ``--activation auto``
should stand for with this rule). Where φ' jumps (ReLU, leaky ReLU, the hard tanh and hard sigmoid at their kinks),
ẋ_l can point towards the kink from both sides without vanishing there, so the value chatters across it and no
steady state exists, whatever dt and max_steps: on digits with mlp:256, ReLU fails the first batch, tanh, GELU,
ELU and softplus reach 94 % in 5 epochs. A small network may still settle, so such an activation is not refused;
a settling that fails with one names its layer as the first suspect.

It takes an MLP (:mod:`bioprop.rules.mlp_settling`) and sums the terms of a Linear used at several positions (F
depends on its weight through each). ``max_steps`` is at most 100 000. The rule has no state of its own: ``grads``
and ``backward`` compute the same update. The family's second rule, Sacramento et al.'s microcircuit, is in
:mod:`bioprop.rules.microcircuit`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bioprop import losses
from bioprop.losses import Loss
from bioprop.nets import layer_parameters, walk
from bioprop.rules.base import (
    Entry,
    FigureSpec,
    Options,
    Rule,
    Trace,
    Update,
    add_grads,
    make_card,
    option,
    register,
)
from bioprop.rules.layerwise import through_parameterless
from bioprop.rules.mlp_settling import (
    MAX_STEPS,
    MLP,
    Guard,
    loss_gradient,
    mlp_parts,
    mlp_tensors,
    steady_reached,
)
from bioprop.rules.options import count, positive

WHITTINGTON = "Whittington & Bogacz 2019, Trends Cogn. Sci. 23(3):235, Box 4"
SETTLE_ADVICE = "raise max_steps or lower dt"


class DendriticParameters(NamedTuple):
    """The constants of the Box 4 dynamics: output precision ``beta`` (β), Euler step ``dt``, the steady state's
    tolerance ``tol`` on max|ẋ| and the step budget ``max_steps``, and the run's output ``loss`` ℓ."""

    beta: float = 0.1
    dt: float = 0.5
    tol: float = 1e-5
    max_steps: int = 200
    loss: Loss = losses.LOSSES["ce"]


class Dendrites(NamedTuple):
    """Per hidden layer l = 1..L−1: basal v_B,l, apical v_A,l and the right-hand side ẋ_l, each (B, n_l)."""

    basal: list[Tensor]
    apical: list[Tensor]
    rhs: list[Tensor]


def dendritic_rhs(mlp: MLP, x0: Tensor, xs: list[Tensor], y: Tensor, p: DendriticParameters) -> Dendrites:
    """The value dynamics of the dendritic error model (Whittington & Bogacz 2019, Box 4), for hidden values
    ``xs`` = [x_1, ..., x_{L−1}] (each (B, n_l)) and the clamped input ``x0`` (B, n_0):

    ẋ_l = −x_l + v_B,l + φ'(x_l) ⊙ v_A,l, v_B,l = W_l φ(x_{l−1}) + b_l,
    v_A,l = W_{l+1}ᵀ x_{l+1} − W_{l+1}ᵀ (W_{l+1} φ(x_l) + b_{l+1}),

    with the output value x_L = μ_L − β ∂ℓ/∂μ_L following x_{L−1}; ``mlp.weights[l]`` is W_{l+1} (out, in)."""
    weights, biases, phi = mlp
    rates = [x0] + [phi(x) for x in xs]  # φ(x_0) read as x_0
    basal = [r @ w.T + b for r, w, b in zip(rates, weights, biases, strict=True)]  # v_B,l = μ_l, l = 1..L
    top = basal[-1] - p.beta * loss_gradient(p.loss, basal[-1], y)  # x_L
    values = [*xs, top]
    apical, rhs = [], []
    for i, x in enumerate(xs):  # x is x_{i+1}; the layer above is values[i + 1], its weight weights[i + 1]
        w = weights[i + 1]
        v_a = values[i + 1] @ w - basal[i + 1] @ w  # top-down input minus interneuron inhibition
        apical.append(v_a)
        rhs.append(-x + basal[i] + through_parameterless(phi, x, rates[i + 1], v_a))  # φ'(x) ⊙ v_A
    return Dendrites(basal[:-1], apical, rhs)


def settle(
    mlp: MLP, x0: Tensor, y: Tensor, p: DendriticParameters, slow: str = SETTLE_ADVICE
) -> tuple[list[Tensor], Dendrites, Tensor]:
    """Euler steps x_l ← x_l + dt ẋ_l (:func:`dendritic_rhs`) from the feedforward pass to the steady state,
    max|ẋ| < tol; returns the hidden values, their dendrites and the residual max|ẋ| per step (float64, padded with
    its final value to max_steps + 1 entries). Raises :class:`~bioprop.rules.base.Unstable` when the state becomes
    non-finite (advising dt) or max_steps run out (advising ``slow``)."""
    xs, h = [], x0
    for w, b in zip(mlp.weights[:-1], mlp.biases[:-1], strict=True):
        xs.append(h @ w.T + b)
        h = mlp.phi(xs[-1])
    guard = Guard("dendritic", "max_steps", p.max_steps, p.tol, f"lower dt (now {p.dt:g})", slow)
    residuals = []
    for step in range(p.max_steps + 1):
        d = dendritic_rhs(mlp, x0, xs, y, p)
        residual = max((float(r.abs().max()) for r in d.rhs), default=0.0)
        residuals.append(residual)
        if steady_reached(residual, step, guard):
            break
        xs = [x + p.dt * r for x, r in zip(xs, d.rhs, strict=True)]
    trace = torch.tensor(residuals + [residuals[-1]] * (p.max_steps + 1 - len(residuals)), dtype=torch.float64)
    return xs, d, trace


def dendritic_plasticity(
    mlp: MLP, x0: Tensor, xs: list[Tensor], d: Dendrites, y: Tensor, p: DendriticParameters
) -> list[tuple[Tensor, Tensor]]:
    """The weight update at the steady state ``xs`` (Whittington & Bogacz 2019, Box 4): the error read from the
    apical compartment, δ_l = φ'(x_l) ⊙ v_A,l for hidden layers and ε_L = −β ∂ℓ/∂μ_L at the output, then
    (∂W_l, ∂b_l) = (−δ_l φ(x_{l−1})ᵀ, −Σ_batch δ_l) / (β B) per layer l = 1..L, as descent directions."""
    weights, biases, phi = mlp
    rates = [x0] + [phi(v) for v in xs]
    mu_top = rates[-1] @ weights[-1].T + biases[-1]
    errors = [through_parameterless(phi, v, r, a) for v, r, a in zip(xs, rates[1:], d.apical, strict=True)]
    errors.append(-p.beta * loss_gradient(p.loss, mu_top, y))  # ε_L
    scale = p.beta * len(x0)
    return [(-(delta.T @ r) / scale, -delta.sum(0) / scale) for delta, r in zip(errors, rates, strict=True)]


def has_kink(layer: nn.Module) -> bool:
    """Whether the activation ``layer``'s derivative jumps somewhere: ReLU, leaky ReLU, hard tanh and hard sigmoid
    (at their kinks), ELU with α ≠ 1 (at 0)."""
    return isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.Hardtanh)) or (isinstance(layer, nn.ELU) and layer.alpha != 1)


CARD_DENDRITIC = make_card(
    linear=(False, "the apical error is linear in the layer above's error; only the φ' gate is nonlinear"),
    derivatives=(False, "the apical input is gated by φ'(x_l), the exact derivative"),
    weight_transport=(False, "top-down and interneuron synapses are W_{l+1}ᵀ, the transposed forward weights"),
    spikes=(False, "real-valued rates and potentials"),
    clock=(True, "one continuous relaxation: no separate backward phase, errors live in apical dendrites"),
    targets=(False, "needs a supervised target nudging the output"),
)


@dataclasses.dataclass(frozen=True)
class DendriticOptions(Options):
    """Options of ``dendritic`` (module docstring)."""

    output: str = option("ce", "output loss nudging the output", choices=tuple(losses.LOSSES))
    beta: float = positive(0.1, "output precision β: how far the target nudges the output")
    dt: float = positive(0.5, "Euler step of the value dynamics (needs a smooth activation, e.g. tanh: with ReLU's "
                              "kink no dt and no max_steps reach a steady state)")  # fmt: skip
    tol: float = positive(1e-5, "steady state when max|ẋ| falls below this")
    max_steps: int = count(200, "Euler step budget", MAX_STEPS)


@register("dendritic", family="dendritic", paper=WHITTINGTON, summary="apical-dendrite errors, PC regrouped",
          card=CARD_DENDRITIC)  # fmt: skip
class Dendritic(Rule):
    """The dendritic error model (rate form); equations in the module docstring."""

    Options = DendriticOptions
    activation = "tanh"  # needs a smooth φ (module docstring): the hidden activation `--activation auto` picks
    trace_specs = (Trace("residual", "residual max|ẋ|"),)
    figures = (FigureSpec("energy.png", "value dynamics: residual max|ẋ| per Euler step", traces=("residual",)),)

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        linears, self.phi = mlp_parts(net, self.name)
        self.linears = [layer.module for layer in linears]
        o = self.opts
        self.params = DendriticParameters(o.beta, o.dt, o.tol, o.max_steps, self.loss)
        kink = next((layer for layer in walk(net, self.name) if has_kink(layer.module)), None)
        self.slow = SETTLE_ADVICE
        if kink is not None:  # the likelier cause of a settling that does not end: name it first
            self.slow = (f"layer {kink.path} ({type(kink.module).__name__}) has a kink where φ' jumps, and there the "
                         f"dynamics may have no steady state whatever dt and max_steps: use a smooth activation such "
                         f"as {self.activation} (this rule's choice); else {SETTLE_ADVICE}")  # fmt: skip

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        x0 = x.reshape(len(x), -1)
        mlp = mlp_tensors(self.linears, self.phi)
        xs, d, trace = settle(mlp, x0, y, self.params, self.slow)
        grads: dict[str, Tensor] = {}  # a layer used at several positions: its terms add up
        for layer, pair in zip(self.linears, dendritic_plasticity(mlp, x0, xs, d, y, self.params), strict=True):
            params = layer_parameters(layer)
            add_grads(grads, [self.param_name(q) for q in params], list(pair[: len(params)]))
        prediction = self.net(x)
        return Update(grads, self.loss.value(prediction, y), prediction, traces={"residual": trace})
