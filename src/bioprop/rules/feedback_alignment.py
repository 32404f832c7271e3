"""The feedback-alignment family: backprop's backward pass with W_lᵀ replaced by other feedback weights.

With δ_l the error at layer l's pre-activation a_l, e = ∂L/∂z the output error and φ' the activation's
derivative, each hidden layer receives (the output layer always gets its exact gradient δ_L = e):

- ``fa``, random feedback (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276, Eq. 1):
  δ_l = (B_{l+1} δ_{l+1}) ⊙ φ'(a_l), B fixed random.
- ``dfa``, direct feedback (Nøkland 2016, NeurIPS, Eq. 3): δ_l = (B_l e) ⊙ φ'(a_l), B_l fixed random, from the
  output error straight to every hidden layer.
- Sign symmetry (Liao, Leibo & Poggio 2016, AAAI; variants as in Moraitis et al.'s BioTorch, Sanfiz & Akrout
  2021): B_{l+1} = sign(W_{l+1})ᵀ scaled, i.e. only the signs of the forward weights are transported:
  ``usf`` B = σ·sign(W) with σ the init's standard deviation; ``brsf`` B = |M| ∘ sign(W) with M redrawn every
  step; ``frsf`` B = |B₀| ∘ sign(W) with B₀ drawn once.

Weight updates are ∂W_l = δ_l h_{l-1}ᵀ, ∂b_l = Σ δ_l (descent directions of the batch-mean cross-entropy). For
convolutions B has the kernel's shape and is applied with the transposed convolution. Between parameterised
layers, activations, pooling and dropout (its forward mask) are differentiated exactly (see
:mod:`bioprop.rules.layerwise`); in ``dfa`` the signal B_l e enters at the input of the next parameterised layer.

B belongs to a position in the stack: a module used at two positions (shared weights) has a B at each, and its
update is the sum of its positions' δ hᵀ. A frozen layer (``requires_grad=False``) still carries errors through its
B and gets no update. B follows the network when it changes dtype or device after :func:`~bioprop.rules.create`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from bioprop.errors import BioPropError
from bioprop.metrics import angle_deg
from bioprop.nets import layer_parameters
from bioprop.nets import layers as walk_layers
from bioprop.rules.base import Entry, Option, Rule, Update, add_grads, make_card, register
from bioprop.rules.layerwise import (
    forward_cached,
    layer_backward,
    parameterised_indices,
    through_parameterless,
)

INITS = ("xavier", "kaiming", "uniform")


def init_std(shape: torch.Size, init: str) -> float:
    """Standard deviation of the feedback initialisation for a weight of this shape (fan as in torch.nn.init)."""
    receptive = math.prod(shape[2:])
    fan_out, fan_in = shape[0] * receptive, shape[1] * receptive
    if init == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "kaiming":
        return math.sqrt(2.0 / fan_in)
    return 1.0 / math.sqrt(3.0 * fan_in)  # torch's default layer init, U(±1/√fan_in)


def same_kind(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device


def draw_feedback(shape: torch.Size, init: str, generator: torch.Generator) -> Tensor:
    """A random feedback tensor: xavier and uniform are uniform, kaiming is normal, all with :func:`init_std`."""
    std = init_std(shape, init)
    if init == "kaiming":
        return torch.randn(shape, generator=generator, dtype=torch.float64) * std
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * (std * math.sqrt(3.0))


CARD_FA = make_card(
    linear=(False, "errors still flow through a linear backward pathway"),
    derivatives=(False, "hidden errors are multiplied by the exact φ'"),
    weight_transport=(True, "errors return through fixed random weights B, not Wᵀ"),
    spikes=(False, "real-valued activities and errors"),
    clock=(False, "a separate backward phase follows each forward phase"),
    targets=(False, "needs a supervised target at the output"),
)
CARD_DFA = make_card(
    linear=(False, "errors reach hidden layers through a linear projection"),
    derivatives=(False, "hidden errors are multiplied by the exact φ'"),
    weight_transport=(True, "the output error reaches each layer through its own fixed random B_l"),
    spikes=(False, "real-valued activities and errors"),
    clock=(False, "the output error is broadcast after each forward phase"),
    targets=(False, "needs a supervised target at the output"),
)
CARD_SIGN = make_card(
    linear=(False, "errors still flow through a linear backward pathway"),
    derivatives=(False, "hidden errors are multiplied by the exact φ'"),
    weight_transport=(False, "only the signs of W are transported, magnitudes are not"),
    spikes=(False, "real-valued activities and errors"),
    clock=(False, "a separate backward phase follows each forward phase"),
    targets=(False, "needs a supervised target at the output"),
)
LILLICRAP = "Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276"
NOKLAND = "Nøkland 2016, NeurIPS (direct feedback alignment)"
LIAO = "Liao, Leibo & Poggio 2016, AAAI (sign symmetry)"


@register("frsf", family="feedback alignment", paper=LIAO, summary="B = |B₀|∘sign(W), B₀ fixed",
          card=CARD_SIGN, feedback="frsf")  # fmt: skip
@register("brsf", family="feedback alignment", paper=LIAO, summary="B = |M|∘sign(W), M redrawn each step",
          card=CARD_SIGN, feedback="brsf")  # fmt: skip
@register("usf", family="feedback alignment", paper=LIAO, summary="B = σ·sign(W), uniform sign-concordant",
          card=CARD_SIGN, feedback="usf")  # fmt: skip
@register("dfa", family="feedback alignment", paper=NOKLAND, summary="output error sent to every layer by fixed B_l",
          card=CARD_DFA, feedback="direct")  # fmt: skip
@register("fa", family="feedback alignment", paper=LILLICRAP, summary="fixed random feedback B in place of Wᵀ",
          card=CARD_FA, feedback="random")  # fmt: skip
class FeedbackAlignment(Rule):
    """Random, direct and sign-concordant feedback; the equations are in the module docstring."""

    options = {
        "feedback": Option("random", "which feedback replaces Wᵀ", choices=("random", "direct", "usf", "brsf", "frsf")),
        "init": Option("xavier", "distribution of the random feedback weights", choices=INITS),
        "scale": Option(
            1.0, "factor on every feedback weight", type=float, check=lambda v: v > 0, check_says="must be positive"
        ),
        "seed": Option(0, "seed of the feedback weights' generator", type=int),
    }

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        self.layers = walk_layers(net, self.name)
        self.param_layers = parameterised_indices(self.layers)
        if not self.param_layers:
            raise BioPropError(f"rule {self.name}: the network has no Linear or Conv2d layer")
        self.generator = torch.Generator().manual_seed(self.config["seed"])
        # Feedback tensors of layers after the first parameterised one (the first needs none: nothing lies
        # below it), one per position: a module used twice has a feedback tensor for each use. "direct" feedback
        # is shaped (n_classes, input size) and drawn at the first batch.
        self.feedback: dict[int, Tensor] = {}
        self.last_feedback: dict[int, Tensor] = {}
        self.sign_sigma: dict[int, float] = {}
        kind = self.config["feedback"]
        for index in self.param_layers[1:]:
            weight = self.layers[index].weight
            if kind in ("random", "frsf"):
                # Kept in the weight's dtype and device, so that using it costs no conversion per step.
                self.feedback[index] = draw_feedback(weight.shape, self.config["init"], self.generator).to(weight)
            elif kind == "usf":
                self.sign_sigma[index] = init_std(weight.shape, self.config["init"])

    def feedback_for(self, index: int, like: Tensor) -> Tensor:
        """The tensor standing in for W at layer ``index`` (weight-shaped; for ``direct``, (K, input size))."""
        kind, scale, weight = self.config["feedback"], self.config["scale"], self.layers[index].weight
        if kind in ("random", "direct", "frsf") and not same_kind(self.feedback[index], like):
            self.feedback[index] = self.feedback[index].to(like)  # the network changed dtype or device: follow it
        if kind in ("random", "direct"):
            feedback = self.feedback[index]
        elif kind == "usf":
            feedback = torch.sign(weight).mul_(self.sign_sigma[index])
        elif kind == "frsf":
            feedback = torch.sign(weight).mul_(self.feedback[index].abs())
        else:  # brsf: magnitudes redrawn every step
            fresh = draw_feedback(weight.shape, self.config["init"], self.generator).to(like)
            feedback = fresh.abs_().mul_(torch.sign(weight))
        feedback = feedback * scale if scale != 1.0 else feedback  # a copy: the stored B stays unscaled
        self.last_feedback[index] = feedback
        return feedback

    def ensure_direct_feedback(self, acts: list[Tensor], n_classes: int) -> None:
        for index in self.param_layers[1:]:
            if index not in self.feedback:
                size = acts[index][0].numel()
                drawn = draw_feedback(torch.Size((n_classes, size)), self.config["init"], self.generator)
                self.feedback[index] = drawn.to(acts[index])

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        acts, saved = forward_cached(self.layers, x)
        logits = acts[-1]
        loss, error = self.loss.error(logits, y)  # error: (B, K)
        direct = self.config["feedback"] == "direct"
        if direct:
            self.ensure_direct_feedback(acts, logits.shape[1])
        grads: dict[str, Tensor] = {}
        grad = error
        first = self.param_layers[0]
        for index in range(len(self.layers) - 1, first - 1, -1):
            layer, h_in, h_out = self.layers[index], acts[index], acts[index + 1]
            if index not in self.param_layers:
                grad = through_parameterless(layer, h_in, h_out, grad, saved.get(index))
                continue
            chained = not direct and index != first
            params, below = layer_backward(layer, h_in, grad, self.feedback_for(index, grad) if chained else None)
            add_grads(grads, [self.param_name(p) for p in layer_parameters(layer)], params)
            if index == first:
                break
            if direct:
                grad = (error @ self.feedback_for(index, error)).reshape(h_in.shape)  # (B, K) @ (K, size)
            else:
                grad = below
        return Update(grads, loss, logits)

    def diagnostics(self) -> dict[str, float]:
        """Per weight after the first: angle (degrees) between W and the feedback used in its place (Bᵀ in the
        paper's orientation), and the norm ratio ‖B‖/‖W‖. ``dfa``'s B has another shape: norm ratio only. A module
        used at several positions reports each, the later ones as ``name@position``."""
        out: dict[str, float] = {}
        for index, feedback in self.last_feedback.items():
            weight = self.layers[index].weight.detach()
            name = self.param_name(self.layers[index].weight)
            name = name if f"{name}/b_w_norm_ratio" not in out else f"{name}@{index}"
            if feedback.shape == weight.shape:
                out[f"{name}/w_b_angle_deg"] = angle_deg(weight, feedback)
            out[f"{name}/b_w_norm_ratio"] = float(feedback.norm() / weight.norm())
        return out

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"feedback.{index}": tensor for index, tensor in self.feedback.items()}
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.generator.set_state(state.pop("generator"))
        self.feedback = {int(key.split(".", 1)[1]): tensor for key, tensor in state.items()}
