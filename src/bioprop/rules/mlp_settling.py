"""What the dendritic family's rules (:mod:`bioprop.rules.dendritic`, :mod:`bioprop.rules.microcircuit`) share:
the MLP they take apart into tensors, the output loss's per-example gradient, the guard of a settling to a steady
state, and the validators of their options.

Both rules take an MLP, Flatten (optional), Linear, φ, ..., Linear, with one activation throughout; a Linear layer
without a bias is a zero bias that is not updated; an in-place activation is used as its out-of-place copy (the rules
keep both a potential and its rate).
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

from torch import Tensor, nn

from bioprop.errors import BioPropError
from bioprop.losses import Loss
from bioprop.nets import ACTIVATIONS, Layer, walk
from bioprop.rules.base import Unstable, option

Act = nn.Module  # an elementwise activation module

#: Bound of an Euler step budget per batch: beyond it a run would work for hours without a word, so a larger value
#: is refused.
MAX_STEPS = 100_000


class MLP(NamedTuple):
    """An MLP as tensors: ``weights[l]`` (n_{l+1}, n_l) and ``biases[l]`` (n_{l+1},) of its Linear layers in forward
    order (zeros for a Linear without a bias), and its one hidden activation ``phi`` (φ)."""

    weights: list[Tensor]
    biases: list[Tensor]
    phi: Act


def mlp_parts(net: nn.Module, rule: str) -> tuple[list[Layer], Act]:
    """The Linear layers of an MLP (Flatten, Linear, φ, ..., Linear) with their paths, and its activation (a copy
    that does not work in place); anything else is a :class:`BioPropError` naming the first layer that does not
    fit."""
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


def mlp_tensors(linears: list[nn.Linear], phi: Act) -> MLP:
    """The layers' weights and biases, detached (zeros where a layer has no bias), with the activation ``phi``."""
    weights = [m.weight.detach() for m in linears]
    biases = [w.new_zeros(len(w)) if m.bias is None else m.bias.detach() for m, w in zip(linears, weights, strict=True)]
    return MLP(weights, biases, phi)


def loss_gradient(loss: Loss, z: Tensor, y: Tensor) -> Tensor:
    """∂ℓ/∂z per example, (B, K), of the run's output loss (:mod:`bioprop.losses`): ``se`` z − onehot(y), ``ce``
    softmax(z) − onehot(y). ``loss.error`` gives the batch mean's gradient, 1/B included; this is B times it."""
    return loss.error(z, y)[1] * len(z)


class Guard(NamedTuple):
    """The budget of a settling and what its failures advise: ``rule`` (the message's prefix), ``budget`` (the option
    that bounds it, e.g. ``max_steps``) and its value ``steps``, the tolerance ``tol`` on the residual, and the advice
    when the state becomes non-finite (``unstable``) or the budget runs out (``slow``)."""

    rule: str
    budget: str
    steps: int
    tol: float
    unstable: str
    slow: str


def steady_reached(residual: float, step: int, guard: Guard) -> bool:
    """True once ``residual`` (max|ẋ|, or max|Δu| between sweeps) is below ``guard.tol``. A non-finite residual or a
    spent budget (``step == guard.steps``) is an :class:`Unstable` advising ``guard.unstable`` or ``guard.slow``."""
    if not math.isfinite(residual):
        unit = "sweep" if guard.budget == "sweeps" else "step"
        raise Unstable(guard.rule, f"the state became non-finite at {unit} {step}", guard.unstable)
    if residual < guard.tol:
        return True
    if step == guard.steps:
        raise Unstable(guard.rule, f"no steady state within {guard.budget}={guard.steps} (residual {residual:.1e} > "
                       f"tol {guard.tol:g})", guard.slow, named=(guard.budget, "tol"))  # fmt: skip
    return False


# The option validators of the family, each written once.


def lms_rate(default: float, help: str) -> Any:
    """A normalised-LMS learning rate: stable in [0, 2)."""
    return option(default, help, type=float, check=lambda v: 0 <= v < 2, check_says="must be in [0, 2)")
