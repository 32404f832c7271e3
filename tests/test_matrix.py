"""Every rule × the ways a user's network can differ from what a rule assumed: each cell either gets the right
update or is refused at ``rules.create`` with a one-line error naming the layer.

"Right" is checked against expectations written here, independently of the rules' code:

- ``bp``, ``pc-fpa`` (fixed predictions: exactly backprop) and ``dendritic`` in its exact limit (β → 0): autograd
  of the batch-mean cross-entropy through the network itself;
- the feedback-alignment family: autograd through the network with each parameterised layer after the first
  carrying errors through its feedback B instead of W (a straight-through substitution), B read from the rule's
  ``state_dict`` (fa, dfa, frsf) or from its definition (usf: σ·sign W; brsf: this step's |M| ∘ sign W);
- ``pc`` and ``ipc``: gradient descent on the energy F = Σ ½‖x_l − μ_l‖² + β ℓ by autograd from the feedforward
  pass (and, for ipc, on the weights too), the update ∂F/∂θ ÷ (β N);
- for every rule where a cell has an equivalent plain network (an in-place activation and the same one not in
  place, a bias-free layer and a zero bias, nested and flat, a frozen layer and an unfrozen one, float32 and
  float64, dropout in eval mode and no dropout): the same update on both.

A stochastic layer (dropout in training mode) must draw once per batch, from the random state at the call, in
forward order as ``net(x)`` does; the expectations draw from the same state. The input ``x`` must never change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop import metrics, rules
from bioprop.errors import BioPropError
from bioprop.nets.energy import EnergyNet
from conftest import energy_rules

#: The rules for recurrent networks train none of the matrix's networks (their checks: tests/test_eprop.py).
TEMPORAL = tuple(name for name in rules.names() if rules.entry(name).cls.networks == {"recurrent"})
RULES = [name for name in rules.names() if name not in TEMPORAL]
ENERGY_RULES = energy_rules()
FA_RULES = ("fa", "dfa", "usf", "brsf", "frsf")
SEED = 11  # the random state every call starts from (dropout masks)

#: Options per rule that make the expectations below exact (or, for dendritic, close to its β → 0 limit).
OPTIONS: dict[str, dict] = {
    "pc": {"steps": 8, "gamma": 0.1},
    "ipc": {"steps": 5, "gamma": 0.1, "weight_lr": 0.05},
    "dendritic": {"beta": 1e-4, "tol": 1e-11, "max_steps": 3000},
    "dtp": {"pretrain_batches": 0},  # otherwise the first batches' forward update is zero by design
    "ddtp": {"pretrain_batches": 0},
}
#: The tolerance of each expectation (relative error per tensor).
TOLERANCE = {"dendritic": 3e-3, "pc": 1e-9, "ipc": 1e-9}


# ---------------------------------------------------------------------------------------------------------------
# The cells
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """A network variant: how to build it (float64), the input shape, what each rule that refuses it must say,
    and optionally an equivalent network whose update must be the same (``pairs`` maps this net's parameter names
    to the equivalent's; ``after_create`` changes the network after the rule is bound)."""

    build: Callable[[], nn.Module]
    shape: tuple[int, ...] = (6,)
    refused: dict[str, str] = field(default_factory=dict)
    equivalent: Callable[[nn.Module], nn.Module] | None = None
    pairs: Callable[[nn.Module, nn.Module], dict[str, str]] | None = None
    after_create: Callable[[nn.Module], object] | None = None
    dtype: torch.dtype = torch.float64
    tolerance: float | None = None  # of the equivalence
    unlike_for: tuple[str, ...] = ()  # rules for which the equivalent network is not equivalent (and why, below)


def init(net: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """float64 parameters from an explicit generator, large enough that every update is far from zero."""
    generator = torch.Generator().manual_seed(seed)
    net.double()
    with torch.no_grad():
        for param in net.parameters():
            fan_in = math.prod(param.shape[1:]) if param.dim() > 1 else 3
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * scale * fan_in**-0.5)
    return net


def mlp(act: Callable[[], nn.Module] = nn.Tanh, bias: bool = True, dropout: float | None = None) -> nn.Sequential:
    """Flatten, 6-5-4-3 with ``act`` (and a dropout layer after the first activation)."""
    extra = [nn.Dropout(dropout)] if dropout is not None else []
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), act(), *extra, nn.Linear(5, 4, bias=bias), act(), nn.Linear(4, 3)
    )  # fmt: skip
    return init(net)


def energy_net(n_in: int = 6) -> EnergyNet:
    """A float64 6-5-3 energy net whose synapses are contractions, so that the free phase settles."""
    net = EnergyNet((n_in,), [5], 3)
    init(net)
    with torch.no_grad():
        for synapse in net.synapses:
            synapse.weight.mul_(0.5 / torch.linalg.matrix_norm(synapse.weight, 2))
            synapse.bias.uniform_(0.1, 0.4)
    return net


class Custom(nn.Module):
    """Not an nn.Sequential: a hand-written forward."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(torch.tanh(self.first(x)))


class Reversed(nn.Sequential):
    """An nn.Sequential whose forward is not the stack's."""

    def forward(self, x: Tensor) -> Tensor:
        return self[1](torch.tanh(self[0](x)))


def shared() -> nn.Sequential:
    middle = nn.Linear(5, 5)
    return init(nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), middle, nn.Tanh(), middle, nn.Tanh(),
                              nn.Linear(5, 3)))  # fmt: skip


def tied() -> nn.Sequential:
    """Two Linear modules holding one weight tensor (each its own bias)."""
    net = shared()
    net[5] = nn.Linear(5, 5).double()
    net[5].weight = net[3].weight
    return init(net, seed=0, scale=0.8)


def mixed_dtypes() -> nn.Sequential:
    net = mlp()
    net[3].float()
    return net


def conv() -> nn.Sequential:
    """1×6×6: conv(1→2, pad 1) tanh maxpool(2) conv(2→4, 2×2, 2 groups) relu avgpool(2) flatten fc(4→3)."""
    return init(nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(2, 4, 2, groups=2), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3),
    ))  # fmt: skip


def nested() -> nn.Sequential:
    plain = mlp()
    return nn.Sequential(plain[0], nn.Sequential(plain[1], plain[2]), nn.Sequential(nn.Sequential(plain[3], plain[4]),
                                                                                     plain[5]))  # fmt: skip


def frozen() -> nn.Sequential:
    net = mlp()
    net[3].requires_grad_(False)
    return net


def with_extra_parameter() -> nn.Sequential:
    net = mlp()
    net.register_parameter("extra", nn.Parameter(torch.ones(2, dtype=torch.float64)))
    return net


def dropout_eval() -> nn.Sequential:
    return mlp(dropout=0.5).eval()


def energy_with_extra() -> EnergyNet:
    net = energy_net()
    net.register_parameter("extra", nn.Parameter(torch.ones(2, dtype=torch.float64)))
    return net


def energy_frozen() -> EnergyNet:
    net = energy_net()
    net.synapses[0].weight.requires_grad_(False)
    return net


def by_order(a: nn.Module, b: nn.Module) -> dict[str, str]:
    return {na: nb for (na, _), (nb, _) in zip(a.named_parameters(), b.named_parameters(), strict=True)}


def same_names(a: nn.Module, b: nn.Module) -> dict[str, str]:
    return {name: name for name, _ in a.named_parameters()}


def unfrozen(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).requires_grad_(True)


def without_dropout(net: nn.Sequential) -> nn.Sequential:
    return nn.Sequential(*[m for m in copy.deepcopy(net) if not isinstance(m, nn.Dropout)])


def zero_bias(net: nn.Sequential) -> nn.Sequential:
    """The bias-free net with a bias of zeros in its place."""
    other = mlp()
    other.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        other[3].bias.zero_()
    return other


def not_in_place(net: nn.Sequential) -> nn.Sequential:
    other = copy.deepcopy(net)
    for module in other:
        if hasattr(module, "inplace"):
            module.inplace = False
    return other


def as_float32(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).float()


WALKING = [name for name in RULES if name not in ENERGY_RULES and name != "bp"]
MLP_ONLY = ("dendritic", "microcircuit", "dtp", "ddtp")
NOT_ENERGY = {name: "needs an energy-based network" for name in ENERGY_RULES}
ENERGY_ONLY = {name: "energy-based networks (ebm:...) are trained by" for name in WALKING}

CELLS: dict[str, Cell] = {
    "plain": Cell(mlp, refused=NOT_ENERGY),
    "shared module": Cell(
        shared, refused={"microcircuit": "layer 5 (Linear) shares its weights with layer 3", **NOT_ENERGY}
    ),
    "tied weights": Cell(
        tied, refused={"microcircuit": "layer 5 (Linear) shares its weights with layer 3", **NOT_ENERGY}
    ),
    "mixed dtypes": Cell(
        mixed_dtypes,
        refused={
            n: "mixes parameter types: '1.weight' is torch.float64 on cpu, '3.weight' is torch.float32" for n in RULES
        }
        | NOT_ENERGY,
    ),
    "in-place activation": Cell(
        lambda: mlp(lambda: nn.ReLU(inplace=True)), refused=NOT_ENERGY, equivalent=not_in_place, pairs=same_names
    ),
    "in-place layer on the input": Cell(
        lambda: init(nn.Sequential(nn.Flatten(), nn.ReLU(inplace=True), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))),
        refused={name: "layer 1 (ReLU) is not supported" for name in MLP_ONLY} | NOT_ENERGY,
        equivalent=not_in_place,
        pairs=same_names,
    ),  # fmt: skip
    # ipc's weights (a zero bias, an unfrozen layer) move during inference, so there the equivalence does not hold
    "bias-free layer": Cell(
        lambda: mlp(bias=False), refused=NOT_ENERGY, equivalent=zero_bias, pairs=same_names, unlike_for=("ipc",)
    ),
    "dropout (training)": Cell(
        lambda: mlp(dropout=0.5), refused={name: "layer 3 (Dropout) is not supported" for name in MLP_ONLY} | NOT_ENERGY
    ),
    "dropout (eval)": Cell(
        dropout_eval,
        refused={name: "layer 3 (Dropout) is not supported" for name in MLP_ONLY} | NOT_ENERGY,
        equivalent=without_dropout,
        pairs=by_order,
    ),  # fmt: skip
    "conv and pooling": Cell(
        conv, shape=(1, 6, 6), refused={name: "layer 0 (Conv2d) is not supported" for name in MLP_ONLY} | NOT_ENERGY
    ),
    "nested Sequential": Cell(
        nested, refused=NOT_ENERGY, equivalent=lambda net: nn.Sequential(*copy.deepcopy(mlp())), pairs=by_order
    ),
    "unsupported layer": Cell(
        lambda: init(nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))),
        refused={name: "layer 2 (BatchNorm1d) is not supported" for name in WALKING} | NOT_ENERGY,
    ),
    "frozen layer": Cell(frozen, refused=NOT_ENERGY, equivalent=unfrozen, pairs=same_names, unlike_for=("ipc",)),
    "float32": Cell(
        mlp, refused=NOT_ENERGY, equivalent=copy.deepcopy, pairs=same_names, dtype=torch.float32, tolerance=1e-4
    ),  # fmt: skip
    "dtype changed after create": Cell(
        lambda: mlp().float(),
        refused=NOT_ENERGY,
        after_create=lambda net: net.double(),
        equivalent=lambda net: copy.deepcopy(net).double(),
        pairs=same_names,
    ),  # fmt: skip
    "not a Sequential": Cell(Custom, refused={name: "got Custom" for name in WALKING} | NOT_ENERGY),
    "Sequential with its own forward": Cell(
        lambda: init(Reversed(nn.Linear(6, 5), nn.Linear(5, 3))),
        refused={name: "got Reversed (its own forward)" for name in WALKING} | NOT_ENERGY,
    ),
    "empty Sequential": Cell(
        nn.Sequential,
        refused={
            "bp": "no parameters",
            **{n: "no Linear or Conv2d" for n in FA_RULES},
            **{n: "at least one Linear or Conv2d" for n in ("pc", "pc-fpa", "ipc")},
            **{n: "found no layers" for n in MLP_ONLY},
            **NOT_ENERGY,
        },
    ),  # fmt: skip
    "parameter outside the layers": Cell(
        with_extra_parameter,
        refused={name: "parameter 'extra' is not a weight or bias" for name in WALKING} | NOT_ENERGY,
    ),
    "energy-based net": Cell(energy_net, refused=ENERGY_ONLY),
    "energy-based net, frozen synapse": Cell(
        energy_frozen, refused=ENERGY_ONLY, equivalent=unfrozen, pairs=same_names
    ),  # fmt: skip
    "energy-based net, float32": Cell(
        energy_net, refused=ENERGY_ONLY, equivalent=copy.deepcopy, pairs=same_names, dtype=torch.float32, tolerance=1e-4
    ),  # fmt: skip
    "energy-based net, dtype changed after create": Cell(
        lambda: energy_net().float(),
        refused=ENERGY_ONLY,
        after_create=lambda net: net.double(),
        equivalent=lambda net: copy.deepcopy(net).double(),
        pairs=same_names,
    ),  # fmt: skip
    "energy-based net, parameter outside the synapses": Cell(
        energy_with_extra, refused={name: "parameter 'extra' is not a synapse" for name in ENERGY_RULES} | ENERGY_ONLY
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# The expectations, written from each rule's definition
# ---------------------------------------------------------------------------------------------------------------


def flat(net: nn.Module) -> list[nn.Module]:
    """The layers of a (nested) nn.Sequential in forward order."""
    out = []
    for module in net:
        out += flat(module) if isinstance(module, nn.Sequential) else [module]
    return out


def call(layer: nn.Module, h: Tensor) -> Tensor:
    """The layer on ``h``, never overwriting ``h`` (autograd needs it)."""
    return layer(h.clone() if getattr(layer, "inplace", False) else h)


def trainable(net: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in net.named_parameters() if p.requires_grad}


def autograd_backprop(net: nn.Module, x: Tensor, y: Tensor, predict=None) -> dict[str, Tensor]:
    """∂ mean CE(predict(x), y) / ∂θ for the trainable parameters (zero for one the output does not depend on);
    ``predict`` is ``net`` unless given (bp on an energy net predicts through its free phase, not by changing it)."""
    params = trainable(net)
    with torch.enable_grad():
        loss = F.cross_entropy((predict or net)(x), y)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads, strict=True)}


def xavier_std(shape: torch.Size) -> float:
    receptive = math.prod(shape[2:])
    return math.sqrt(2.0 / ((shape[0] + shape[1]) * receptive))


def feedback_alignment(name: str, rule: rules.Rule, net: nn.Sequential, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The FA family by autograd: every parameterised layer after the first computes W h + b in the forward pass,
    but passes errors to h through B (fa, usf, brsf, frsf: out + B h − stopgrad(B h), with W's own term on a
    detached h); for dfa its input is detached and receives e D_i directly (a term ⟨h_i, stopgrad(e D_i)⟩ with
    e = ∂L/∂z). The gradient of W is δ hᵀ either way."""
    layers = flat(net)
    params_at = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    state = rule.state_dict()

    def feedback(i: int) -> Tensor:
        weight = layers[i].weight.detach()
        if name in ("fa", "dfa"):
            return state[f"feedback.{i}"].to(weight.dtype)
        if name == "usf":
            return xavier_std(weight.shape) * torch.sign(weight)
        if name == "frsf":
            return state[f"feedback.{i}"].to(weight.dtype).abs() * torch.sign(weight)
        return rule.last_feedback[i].abs() * torch.sign(weight)  # brsf: this step's magnitudes

    def through(layer: nn.Module, h: Tensor, weight: Tensor) -> Tensor:
        if isinstance(layer, nn.Linear):
            return F.linear(h, weight)
        return F.conv2d(h, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    taps = []
    with torch.enable_grad():
        h = x
        for i, layer in enumerate(layers):
            if i in params_at[1:]:
                out = layer(h.detach())
                if name == "dfa":
                    taps.append((h, i))
                else:
                    detour = through(layer, h, feedback(i))
                    out = out + detour - detour.detach()
                h = out
            else:
                h = call(layer, h)
        loss = F.cross_entropy(h, y)
        if name == "dfa":
            e = (torch.softmax(h.detach(), 1) - F.one_hot(y, h.shape[1]).to(h.dtype)) / len(y)
            loss = loss + sum((tap * (e @ feedback(i)).reshape(tap.shape)).sum() for tap, i in taps)
        params = trainable(net)
        grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads, strict=True))


def dropout_masks(net: nn.Module, x: Tensor) -> dict[int, Tensor]:
    """The masks (scaled by 1/(1 − p)) the training-mode dropout layers draw in ``net(x)`` from the random state
    of every call here, read off their outputs (their inputs are tanh rates, never exactly 0), by layer index."""
    layers, masks = flat(net), {}
    hooks = [
        layer.register_forward_hook(lambda m, inp, out, i=i: masks.__setitem__(i, (out != 0).to(out.dtype) / (1 - m.p)))
        for i, layer in enumerate(layers) if isinstance(layer, nn.Dropout) and layer.training
    ]  # fmt: skip
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(SEED)
        net(x)
    for hook in hooks:
        hook.remove()
    return masks


def energy_descent(net: nn.Sequential, x: Tensor, y: Tensor, steps: int, gamma: float, weight_lr: float = 0.0):
    """Predictive coding by autograd on F(x_1..x_{L−1}, θ) = Σ_l ½‖x_l − μ_l‖² + ℓ(μ_L, y) (β = 1, cross-entropy,
    batch sums): x_l ← x_l − γ ∂F/∂x_l for ``steps`` steps from the feedforward pass, the values sitting at every
    Linear/Conv2d output, the layers in between (and a dropout mask drawn once) forming μ_l; the update is
    ∂F/∂θ ÷ N at the end, or, with ``weight_lr`` (ipc), θ also descends by η ∂F/∂θ ÷ N at every step (frozen
    parameters stay) and the update is the sum of those per-step gradients."""
    layers, masks, n = flat(net), dropout_masks(net, x), len(x)
    cuts = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    names = {id(p): name for name, p in net.named_parameters()}
    theta = {name: p.detach().clone() for name, p in net.named_parameters()}
    train = set(trainable(net))

    def run(start: int, stop: int, h: Tensor) -> Tensor:
        for i in range(start, stop):
            layer = layers[i]
            if i in masks:
                h = h * masks[i]
            elif i in cuts:
                own = {key: theta[names[id(p)]] for key, p in layer.named_parameters()}
                h = torch.func.functional_call(layer, own, (h,))
            else:
                h = call(layer, h)
        return h

    bounds = list(zip([0, *[c + 1 for c in cuts[:-1]]], [c + 1 for c in cuts], strict=True))
    with torch.no_grad():
        values, h = [], x
        for start, stop in bounds[:-1]:
            h = run(start, stop, h)
            values.append(h.clone())
    summed = {name: torch.zeros_like(theta[name]) for name in train}
    with torch.enable_grad():
        for step in range(steps + 1):
            values = [v.detach().requires_grad_(True) for v in values]
            for name in train:
                theta[name] = theta[name].detach().requires_grad_(True)
            inputs = [x, *values]
            energy = sum(0.5 * (v - run(*bounds[k], inputs[k])).square().sum() for k, v in enumerate(values))
            energy = energy + F.cross_entropy(run(*bounds[-1], inputs[-1]), y, reduction="sum")
            grads = torch.autograd.grad(energy, [*values, *[theta[name] for name in sorted(train)]])
            weight_grads = {name: g / n for name, g in zip(sorted(train), grads[len(values) :], strict=True)}
            if step == steps:
                break
            values = [v - gamma * g for v, g in zip(values, grads[: len(values)], strict=True)]
            if weight_lr:
                for name, g in weight_grads.items():
                    summed[name] = summed[name] + g
                    theta[name] = theta[name] - weight_lr * g
    return {name: g.detach() for name, g in (summed if weight_lr else weight_grads).items()}


def expected_update(name: str, rule: rules.Rule, net: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor] | None:
    """The rule's update from its definition (None for the rules checked by equivalence only); call it after the
    rule's update, from the same random state."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        if name in ("bp", "pc-fpa", "dendritic"):
            return autograd_backprop(net, x, y, rule.prediction if name == "bp" else None)
        if name in FA_RULES:
            return feedback_alignment(name, rule, net, x, y)
        if name in ("pc", "ipc"):
            opts = OPTIONS[name]
            return energy_descent(net, x, y, opts["steps"], opts["gamma"], opts.get("weight_lr", 0.0))
    return None


# ---------------------------------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------------------------------


def batch(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 3) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((7, *shape), generator=generator, dtype=torch.float64) * 2 - 1
    return x.to(dtype), torch.randint(3, (7,), generator=generator)


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖; for an expectation of exact zeros (a parameter the output does not depend on), ‖a‖."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.norm())


def update_of(rule: rules.Rule, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return rule.grads(x, y).grads


def create(name: str, net: nn.Module, dtype: torch.dtype = torch.float64) -> rules.Rule:
    options = dict(OPTIONS.get(name, {}))
    if name == "dendritic" and dtype == torch.float32:
        options.update(beta=0.1, tol=1e-5)  # a steady state float32 can resolve
    return rules.create(name, net, **options)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("name", RULES)
def test_every_rule_on_every_network_is_right_or_refused(name: str, cell: str) -> None:
    """One cell of the matrix (module docstring): refused at create with one line naming the layer, or an update
    equal to the rule's definition (and to the update on an equivalent plain network); ``x`` left untouched."""
    spec = CELLS[cell]
    net = spec.build()
    if spec.dtype != torch.float64:
        net = net.to(spec.dtype)
    if name in spec.refused:
        with pytest.raises(BioPropError) as info:
            create(name, net, spec.dtype)
        message = str(info.value)
        assert spec.refused[name] in message and "\n" not in message and message.startswith(f"rule {name}")
        return
    rule = create(name, net, spec.dtype)
    state = {key: value.clone() for key, value in rule.state_dict().items()}
    if spec.after_create is not None:
        spec.after_create(net)
    dtype = next(net.parameters()).dtype
    x, y = batch(spec.shape, dtype)
    x_before = x.clone()
    update = update_of(rule, x, y)
    assert torch.equal(x, x_before)
    assert set(update) == set(trainable(net))
    assert all(bool(torch.isfinite(g).all()) and g.dtype == dtype for g in update.values())

    exact_limit = not (name == "dendritic" and dtype == torch.float32)  # float32 settles with β = 0.1, not β → 0
    expected = expected_update(name, rule, net, x, y) if exact_limit else None
    if expected is not None:
        assert set(expected) == set(update)
        errors = {key: rel(update[key], expected[key]) for key in expected}
        tolerance = TOLERANCE.get(name, 1e-10) if dtype == torch.float64 else max(TOLERANCE.get(name, 0.0), 1e-4)
        assert max(errors.values()) < tolerance, errors

    if spec.equivalent is not None and name not in spec.unlike_for:
        other = spec.equivalent(net)
        other_rule = create(name, other, spec.dtype)
        if spec.after_create is not None:
            other_rule.load_state_dict(state)  # the same feedback / synapses as the rule bound before the change
        x_other = x.to(next(other.parameters()).dtype)
        reference = update_of(other_rule, x_other, y)
        pairs = spec.pairs(net, other)
        errors = {key: rel(update[key], reference[pairs[key]]) for key in update}
        assert max(errors.values()) < (spec.tolerance or 1e-12), errors


@pytest.mark.parametrize("name", [n for n in RULES if n not in ENERGY_RULES])
def test_frozen_parameters_get_no_grad_from_backward(name: str) -> None:
    """``backward`` leaves a frozen parameter's ``.grad`` alone (None) and writes ``grads``' values everywhere
    else; errors still pass through the frozen layer (the lower layer's update equals the unfrozen net's)."""
    net = frozen()
    rule = create(name, net)
    x, y = batch((6,), torch.float64)
    state = {key: value.clone() for key, value in rule.state_dict().items()}
    update = update_of(rule, x, y)
    rule.load_state_dict(state)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        rule.backward(x, y)
    assert net[3].weight.grad is None and net[3].bias.grad is None
    for key, param in net.named_parameters():
        if param.requires_grad:
            assert rel(param.grad, update[key]) < 1e-12, key


@pytest.mark.parametrize("name", ["bp", "pc-fpa", "fa"])
def test_dropout_draws_one_mask_that_serves_update_reference_and_probe(name: str) -> None:
    """The angle probe compares the rule's update and its reference on one mask: for bp and pc-fpa (both backprop)
    and fa with B = W, every angle is 0; with a mask drawn afresh for the reference they would not be."""
    net = mlp(dropout=0.5)
    rule = rules.create(name, net)
    if name == "fa":
        for index in rule.param_layers[1:]:
            rule.feedback[index] = rule.layers[index].weight.detach().clone()
    x, y = batch((6,), torch.float64)
    angles = metrics.update_angles(rule, [(x, y), batch((6,), torch.float64, seed=4)])
    assert max(angles.values()) < 1e-5, angles
    with torch.random.fork_rng():  # and the masks do differ between draws, so that this could fail
        torch.manual_seed(SEED)
        first = rule.grads(x, y).grads
        second = rule.grads(x, y).grads
    assert rel(first["1.weight"], second["1.weight"]) > 1e-3


@pytest.mark.parametrize("name", [n for n in RULES if n not in ENERGY_RULES and n != "bp"])
def test_a_layer_replaced_after_create_is_an_error_not_a_stale_update(name: str) -> None:
    """The rules walk the layers once, at create; a layer the user swaps afterwards must not be trained through
    the old one's weights."""
    net = mlp()
    rule = create(name, net)
    net[3] = init(nn.Linear(5, 4), seed=5)
    with pytest.raises(BioPropError, match=f"rule {name}: the network's layers were replaced; create the rule again"):
        rule.grads(*batch((6,), torch.float64))


@pytest.mark.parametrize("name", TEMPORAL)
def test_temporal_rules_refuse_every_network_that_is_not_recurrent(name: str) -> None:
    for make in (mlp, conv):
        with pytest.raises(BioPropError, match=f"rule {name} needs a recurrent network: --arch rnn:N"):
            rules.create(name, make())
    with pytest.raises(BioPropError, match=rf"rule {name}: energy-based networks \(ebm:...\) are trained by"):
        rules.create(name, energy_net())
