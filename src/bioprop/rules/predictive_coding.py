"""Predictive coding (Whittington & Bogacz 2017, Neural Comput. 29:1229; review 2019, Trends Cogn. Sci., Box 3).

Value nodes x_l sit at the output of every parameterised layer (Linear, Conv2d); the parameterless layers after
it (activation, pooling, flatten) make φ_l. With x_0 the clamped input and W_l, b_l layer l's parameters:

.. math::
    μ_l = W_l φ_{l-1}(x_{l-1}) + b_l, \\qquad δ_l = x_l - μ_l \\quad (l < L), \\qquad
    ε_L = -β \\, ∂\\ell(μ_L, y) / ∂μ_L

    F = \\sum_{l<L} ½‖δ_l‖^2 + β \\, \\ell(μ_L, y)

    x_l ← x_l + γ \\bigl(-δ_l + J_{φ_l}(x_l)^T W_{l+1}^T ε_{l+1}\\bigr), \\quad ε_l = δ_l \\ (l < L),
    \\quad t = 1..T

    ∂W_l = -ε_l φ_{l-1}(x_{l-1})^T / β, \\qquad ∂b_l = -ε_l / β  \\quad (= ∂F/∂W_l / β)

The output ℓ is squared error ½‖μ_L − onehot(y)‖² (``output=se``) or cross-entropy with the softmax outside the
dynamics (``output=ce``). β is the output precision (π_L); with ``se`` and β = 1 the output node is hard-clamped
to the target, x_L = onehot(y). Inference starts from the feedforward pass, where every hidden error is 0; the
weights change once, at the end (test-time prediction is the feedforward pass, ``net(x)``).

Batch reduction: inference descends the *sum* of the per-sample energies, so γ means the same for any batch
size (each sample's values move independently); the weight update is the batch *mean* of the per-sample
∂F/∂W ÷ β, on the scale of the batch-mean loss gradient. The traces report the batch-mean energy at each step.

Options and variants (Whittington & Bogacz 2019 list the conditions under which PC equals backprop):

- ``nudge``: ``positive`` (energy + β ℓ, as above), ``negative`` (−β ℓ; Scellier & Bengio 2017's sign trick,
  the update divided by −β) or ``centred`` (both, batched together, update = (∂F⁺ − ∂F⁻)/(2β)), as in PCX
  (Pinchetti et al. 2024). Small β: the equilibrium update tends to backprop's gradient of ℓ.
- ``pc-fpa``: the fixed prediction assumption (Millidge, Tschantz & Buckley 2022; Rosenbaum 2022 "FixedPred"):
  μ_l, J_φ and the output error stay at their feedforward values, γ = 1 and T = L − 1 sweeps: the update is
  backprop's, exactly.
- ``ipc``: incremental PC (Salvatori et al. 2024, ICLR): the weights also descend F at every inference step,
  W ← W − η ∂F/∂W (η = ``weight_lr``); the update written to ``.grad`` is the sum of those per-step gradients,
  so SGD with lr = η continues exactly the incremental trajectory.
- ``update_at=zil``: zero-divergence inference learning (Song et al. 2020, NeurIPS): with γ = 1, layer l takes its
  update at step L − l, when the error wave passes it; the update then equals backprop's. Z-IL is defined at γ = 1
  (at the default γ = 0.1 the update would be far from backprop's), so ``update_at=zil`` sets γ = 1 and refuses any
  other γ given with it.

Stability: on a linear network F is quadratic in the values and inference descends it iff γ < 2/λ_max(∇²_x F);
a rise of the energy over the inference (or a non-finite value) raises :class:`DivergenceError` naming γ, unless a
parameter is itself non-finite, which is named instead. An energy already non-finite at the feedforward pass is no
inference step's doing and blames no γ. ``ipc``'s weights move during inference, so a rise is measured again with
the weights held fixed: γ is named only if that inference rises too, the weight step ``weight_lr`` otherwise.
``steps`` is at most 10 000.

Networks: a module used at several positions (shared weights) has value nodes at each, and since F depends on its
weight through every position, its update is the sum of their terms (``pc-fpa`` stays exactly backprop). A dropout
layer draws its mask once, in the feedforward pass, as ``net(x)`` would from the same random state; the mask is a
fixed part of φ_l for every inference step (a redrawn mask would make the energy jump). ``ipc`` leaves frozen
parameters where they are during inference, as the optimizer will.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.errors import BioPropError
from bioprop.nets import layer_parameters
from bioprop.nets import layers as walk_layers
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
    say,
)
from bioprop.rules.layerwise import conv_geometry, forward_cached, layer_backward, through_parameterless

OUTPUTS = ("ce", "se")
NUDGES = ("positive", "negative", "centred")
MAX_STEPS = 10_000  # inference steps per batch; more would run for minutes per batch without a word


@dataclass
class Block:
    """A parameterised layer and the parameterless layers after it (φ_l); ``names`` of its weight and bias."""

    layer: nn.Linear | nn.Conv2d
    after: list[nn.Module]
    names: list[str]


def split_blocks(net: nn.Module, rule: str) -> tuple[list[nn.Module], list[Block]]:
    """The parameterless layers before the first parameterised one, then one :class:`Block` per parameterised
    layer. The network must end with a parameterised layer (its output is the prediction μ_L). A module used at
    several positions is a block at each (its parameters' updates add up)."""
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


# ------------------------------------------------------------------------------------ functional pieces


def predict(layer: nn.Module, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """μ = W h + b for a Linear or Conv2d layer, with the given (possibly updated) parameters."""
    if isinstance(layer, nn.Linear):
        return F.linear(h, weight, bias)
    return F.conv2d(h, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def transpose_weights(layer: nn.Module, h_in: Tensor, error: Tensor, weight: Tensor) -> Tensor:
    """Wᵀ ε carried to the layer's input (shape of ``h_in``): a matrix product or a transposed convolution."""
    if isinstance(layer, nn.Linear):
        return error @ weight
    stride, padding, dilation, groups = conv_geometry(layer)
    return torch.ops.aten.convolution_backward(
        error, h_in, weight, None, stride, padding, dilation, False, [0, 0], groups, [True, False, False]
    )[0]


def through_chain(chain: list[nn.Module], acts: list[Tensor], pool: dict[int, Tensor], grad: Tensor) -> Tensor:
    """J_φᵀ grad: ``grad`` at the chain's output carried back to its input (``acts`` from forward_cached)."""
    for index in range(len(chain) - 1, -1, -1):
        grad = through_parameterless(chain[index], acts[index], acts[index + 1], grad, pool.get(index))
    return grad


def output_error(mu: Tensor, target: Tensor, output: str, beta: Tensor | float) -> tuple[Tensor, Tensor, float]:
    """ε_L = −β ∂ℓ/∂μ_L per sample, and the summed output energy Σ_n β_n ℓ_n as ``(dot, factor)`` with
    energy = dot · factor. ``target`` is β · onehot(y). (Products with a Python number are avoided: each would
    copy the number into a tensor, at every inference step; the factor is applied once for all steps.)"""
    if output == "se":  # ε = β (onehot − μ); β ℓ = ½ β ‖μ − onehot‖² = ‖ε‖² / (2β)
        if isinstance(beta, float):
            error = torch.sub(target, mu, alpha=beta)
            return error, squared_dot(error, error), 0.5 / beta
        error = torch.addcmul(target, beta, mu, value=-1.0)
        return error, squared_dot(error, error / beta), 0.5
    log_p = torch.log_softmax(mu, dim=1)  # ε = β (onehot − softmax μ); β ℓ = −β onehot · log softmax μ
    if isinstance(beta, float):
        return torch.sub(target, log_p.exp(), alpha=beta), squared_dot(target, log_p), -1.0
    return torch.addcmul(target, beta, log_p.exp(), value=-1.0), squared_dot(target, log_p), -1.0


def squared_dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


@dataclass
class Settings:
    steps: int
    gamma: float
    output: str
    fixed_predictions: bool = False
    incremental: bool = False
    weight_lr: float = 0.0
    zil: bool = False


def infer(
    before: list[nn.Module],
    blocks: list[Block],
    x: Tensor,
    y: Tensor,
    beta: float | Tensor,
    s: Settings,
    frozen: frozenset[str] = frozenset(),
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Run inference on one batch; return the weight updates (∂F/∂θ ÷ β, batch mean) keyed by parameter name,
    the batch-mean energy at each of the T + 1 evaluations, and the feedforward prediction. ``beta`` is a float
    or a (N, 1) column of each sample's signed precision (centred nudging stacks the +β and −β copies).
    Dropout masks are drawn once, in the feedforward pass, and kept for every step; incremental weight steps
    leave the ``frozen`` parameters (by name) where they are."""
    n, last = len(x), len(blocks) - 1
    params = [[p.detach() for p in layer_parameters(b.layer)] for b in blocks]
    weights = [p[0] for p in params]
    biases = [p[1] if len(p) > 1 else None for p in params]
    target = F.one_hot(y, blocks[-1].layer.weight.shape[0]).to(x.dtype) * beta  # β · onehot(y)
    h0 = forward_cached(before, x)[0][-1] if before else x

    # Feedforward pass: x_l = μ_l, so every hidden error starts at 0.
    ff_mu: list[Tensor] = []
    caches: list[tuple[list[Tensor], dict[int, Tensor]]] = []
    h = h0
    for index, block in enumerate(blocks):
        ff_mu.append(predict(block.layer, h, weights[index], biases[index]))
        if index < last:
            caches.append(forward_cached(block.after, ff_mu[-1]))
            h = caches[-1][0][-1]
    ff_caches = caches
    values = [mu.clone() for mu in ff_mu[:-1]]  # hidden value nodes, moved in place

    updates: dict[str, Tensor] = {}
    summed = None  # incremental: Σ_{s≤t} ∂F/∂θ(s) by parameter name (a shared weight's positions add up)
    if s.incremental:
        summed = {name: torch.zeros_like(p) for b, ps in zip(blocks, params, strict=True)
                  for name, p in zip(b.names, ps, strict=True)}  # fmt: skip
    hidden_energy: list[Tensor] = []  # ‖δ_l‖² per step and hidden layer, combined once at the end
    output_energy: list[Tensor] = []
    scale = -1.0 / (beta * n)  # turns ε into the batch-mean descent direction ∂F/∂W ÷ β

    for step in range(s.steps + 1):
        if step and not s.fixed_predictions:  # the feedforward pass's dropout masks serve every step
            caches = [forward_cached(blocks[i].after, values[i], ff_caches[i][1]) for i in range(last)]
        inputs = [h0] + [cache[0][-1] for cache in caches]
        errors: list[Tensor] = []
        for index, block in enumerate(blocks):
            if s.fixed_predictions or (index == 0 and not s.incremental):
                mu = ff_mu[index]  # frozen, or layer 1 under a clamped input and fixed weights
            else:
                mu = predict(block.layer, inputs[index], weights[index], biases[index])
            if index < last:
                errors.append(values[index] - mu)
            else:
                error, out_energy, out_factor = output_error(mu, target, s.output, beta)
                errors.append(error)
        hidden_energy += [squared_dot(e, e) for e in errors[:-1]]
        output_energy.append(out_energy)

        if s.zil and step <= last:
            index = last - step  # the error wave reaches layer L − t at step t
            grads, _ = layer_backward(blocks[index].layer, inputs[index], errors[index] * scale, None)
            add_grads(updates, blocks[index].names, grads)
        if step == s.steps:
            break
        if summed is not None:
            for index, block in enumerate(blocks):
                grads, _ = layer_backward(block.layer, inputs[index], errors[index] * scale, None)
                for name, grad in zip(block.names, grads, strict=True):
                    summed[name].add_(grad)

        # Value updates; each layer reads only this step's errors (computed above, in separate tensors).
        for index in range(last - 1, -1, -1):
            above = blocks[index + 1].layer
            grad = transpose_weights(above, inputs[index + 1], errors[index + 1], weights[index + 1])
            acts, pool = caches[index]
            grad = through_chain(blocks[index].after, acts, pool, grad)
            values[index].add_(grad.sub_(errors[index]), alpha=s.gamma)

        if summed is not None:  # incremental: θ_{t+1} = θ_0 − η Σ_{s≤t} ∂F/∂θ(s)
            moved = [[p if name in frozen else p - s.weight_lr * summed[name]
                      for p, name in zip(ps, b.names, strict=True)]
                     for ps, b in zip(params, blocks, strict=True)]  # fmt: skip
            weights = [m[0] for m in moved]
            biases = [m[1] if len(m) > 1 else None for m in moved]

    if summed is not None:
        updates = summed
    elif not s.zil:
        inputs = [h0] + [cache[0][-1] for cache in (ff_caches if s.fixed_predictions else caches)]
        for index, block in enumerate(blocks):
            grads, _ = layer_backward(block.layer, inputs[index], errors[index] * scale, None)
            add_grads(updates, block.names, grads)
    energy = torch.stack(output_energy) * out_factor
    if last:
        energy = energy + torch.stack(hidden_energy).view(len(output_energy), last).sum(1) * 0.5
    return updates, energy / n, ff_mu[-1]


# ------------------------------------------------------------------------------------------------ the rule

CARD_PC = make_card(
    linear=(True, "errors are neurons: value nodes integrate them through their own nonlinearity"),
    derivatives=(False, "the value dynamics multiply top-down errors by φ'(x_l)"),
    weight_transport=(False, "errors return through Wᵀ, the transposed forward weights"),
    spikes=(False, "real-valued values and errors"),
    clock=(True, "one continuous relaxation, no separate backward phase; updates are local in space and time"),
    targets=(False, "needs a supervised target at the output"),
)
CARD_FPA = make_card(
    linear=(False, "under the fixed prediction assumption the sweep is backprop's linear backward pass"),
    derivatives=(False, "the error sweep multiplies by φ' at the feedforward values"),
    weight_transport=(False, "errors return through Wᵀ"),
    spikes=(False, "real-valued values and errors"),
    clock=(False, "predictions must be frozen during inference: an implicit phase signal"),
    targets=(False, "needs a supervised target at the output"),
)
WHITTINGTON = "Whittington & Bogacz 2017, Neural Comput. 29:1229; review 2019, Trends Cogn. Sci. (Box 3)"
FPA = "Millidge, Tschantz & Buckley 2022, Neural Comput. 34:1329 (fixed prediction assumption)"
SALVATORI = "Salvatori et al. 2024, ICLR (incremental predictive coding)"


@register("ipc", family="predictive coding", paper=SALVATORI, summary="weights also move at every inference step",
          card=CARD_PC, incremental=True)  # fmt: skip
@register("pc-fpa", family="predictive coding", paper=FPA, summary="fixed predictions, γ = 1: equals backprop",
          card=CARD_FPA, predictions="fixed", gamma=1.0)  # fmt: skip
@register("pc", family="predictive coding", paper=WHITTINGTON, summary="value and error nodes relax, then δ φ(x)ᵀ",
          card=CARD_PC)  # fmt: skip
class PredictiveCoding(Rule):
    """Predictive coding and its variants; the equations are in the module docstring."""

    options = {
        "steps": Option(20, "inference steps T", check=lambda v: v >= 0, check_says="must be 0 or more",
                        maximum=MAX_STEPS),
        "gamma": Option(0.1, "inference step size γ (update_at=zil: 1, Z-IL's only value)", type=float,
                        check=lambda v: v > 0, check_says="must be positive"),
        "output": Option("ce", "output energy: cross-entropy (ce) or squared error (se)", choices=OUTPUTS),
        "beta": Option(
            1.0,
            "output precision / nudging strength β (with se, 1 hard-clamps the output)",
            type=float,
            check=lambda v: v > 0,
            check_says="must be positive",
        ),  # fmt: skip
        "nudge": Option("positive", "sign of the output nudging; centred runs ±β together", choices=NUDGES),
        "predictions": Option("free", "free, or fixed at the feedforward pass (pc-fpa)", choices=("free", "fixed")),
        "incremental": Option(False, "also descend F in the weights at every inference step (ipc)"),
        "weight_lr": Option(
            0.01,
            "incremental: the weights' inner step size η",
            type=float,
            check=lambda v: v > 0,
            check_says="must be positive",
        ),  # fmt: skip
        "update_at": Option(
            "end", "end: update after T steps; zil: layer l at step L − l, γ = 1 (Z-IL)", choices=("end", "zil")
        ),
        "compile": Option(False, "torch.compile the inference (fused kernels; each new batch shape compiles first)"),
    }

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        self.before, self.blocks = split_blocks(net, self.name)
        c, depth = self.config, len(self.blocks)
        self.dropouts = [m for m in walk_layers(net) if isinstance(m, nn.Dropout)]
        if c["compile"] and self.dropouts:
            raise BioPropError(
                f"rule {self.name}: compile=true with a Dropout layer is not supported (the compiled inference would "
                "draw other masks than net(x)); leave compile off"
            )
        fixed = c["predictions"] == "fixed"
        if c["incremental"] and (fixed or c["update_at"] == "zil"):
            raise BioPropError(f"rule {self.name}: incremental updates need predictions=free and update_at=end")
        if c["update_at"] == "zil":
            if c["steps"] < depth - 1:
                raise BioPropError(f"rule {self.name}: update_at=zil needs steps >= {depth - 1} for this network")
            if c["gamma"] != 1.0 and "gamma" in self.given_options():
                raise BioPropError(f"rule {self.name}: gamma={say(c['gamma'])} with update_at=zil; Z-IL is defined at "
                                   "gamma=1 (its update equals backprop's only there), so leave gamma out")  # fmt: skip
            c["gamma"] = 1.0
        steps = c["steps"]
        if fixed and c["gamma"] == 1.0:
            steps = min(steps, depth - 1)  # the sweep is exact after L − 1 steps and stays put
        self.settings = Settings(steps, c["gamma"], c["output"], fixed, c["incremental"], c["weight_lr"],
                                 c["update_at"] == "zil")  # fmt: skip
        self.infer = torch.compile(infer, dynamic=False) if c["compile"] else infer

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        c, n = self.config, len(x)
        beta: float | Tensor = c["beta"]
        if c["nudge"] == "negative":
            beta = -c["beta"]
        elif c["nudge"] == "centred":
            if any(m.training for m in self.dropouts):  # the two stacked copies would draw two other masks
                raise BioPropError(
                    f"rule {self.name}: nudge=centred with a Dropout layer in training mode is not supported; use "
                    "nudge=positive or negative, or net.eval()"
                )
            beta = torch.full((2 * n, 1), c["beta"], dtype=x.dtype, device=x.device)
            beta[n:] = -c["beta"]
            x, y = torch.cat([x, x]), torch.cat([y, y])
        for block in self.blocks:  # the names again: a layer replaced since create is an error, not a stale update
            block.names = [self.param_name(p) for p in layer_parameters(block.layer)]
        frozen = frozenset()
        if self.settings.incremental:
            frozen = frozenset(name for name, p in self.net.named_parameters() if not p.requires_grad)
        updates, energy, prediction = self.infer(self.before, self.blocks, x, y, beta, self.settings, frozen)
        prediction = prediction[:n]
        if self.energy_rose(energy):
            fixed = replace(self.settings, incremental=False)
            raise self.unstable(energy, lambda: self.infer(self.before, self.blocks, x, y, beta, fixed, frozen)[1])
        loss = self.loss.value(prediction, y[:n])
        return Update(updates, loss, prediction, {"energy": energy})

    def energy_rose(self, energy: Tensor) -> bool:
        """Whether the energy trace (T + 1,) rose over the inference or has a non-finite value; a sweep
        (fixed predictions) or Z-IL (each layer read as the wave passes, at γ = 1) descends nothing, so never."""
        if self.settings.fixed_predictions or self.settings.zil:
            return False
        first, final = energy[0], energy[-1]
        rose = final > first + 1e-4 * first.abs() + 1e-12
        return bool(rose | ~torch.isfinite(energy).all())

    def unstable(self, energy: Tensor, with_fixed_weights: Callable[[], Tensor]) -> Unstable:
        """The error for a risen ``energy``. The descent of F in the values rises only if γ is above the stability
        bound, so γ is blamed when that was measured: the energy was finite at the feedforward pass and rose with the
        weights held fixed (for ``ipc``, the inference ``with_fixed_weights()`` re-run from the same start)."""
        first, final, gamma = float(energy[0]), float(energy[-1]), self.settings.gamma
        x_dtype = self.blocks[0].layer.weight.dtype
        if not math.isfinite(first):
            return Unstable(self.name, f"the energy is {first} at the feedforward pass, before any inference step, so "
                            f"gamma is not the cause: the network's values or its output energy overflow {x_dtype}",
                            "check the scale of the parameters and inputs")  # fmt: skip
        rose = f"the energy rose from {first:.4g} to {final:.4g} during inference"
        if self.settings.incremental and not self.energy_rose(with_fixed_weights()):
            eta = self.settings.weight_lr
            return Unstable(self.name, f"{rose}, but not with the weights held fixed, so the inner weight step "
                            f"weight_lr={eta:g} is too large for this network", "lower weight_lr",
                            named=("weight_lr",))  # fmt: skip
        fixed = " with the weights held fixed too" if self.settings.incremental else ""
        return Unstable(self.name, f"{rose}{fixed}, so gamma={gamma:g} is above the stability bound for this network",
                        "lower gamma", named=("gamma",))  # fmt: skip

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Backprop of the batch-mean output loss ℓ (cross-entropy or squared error, as the option says)."""
        return backprop_update(self.net, x, y, self.loss).grads
