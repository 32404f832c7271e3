"""The feedback-alignment family: backprop's backward pass with W_lᵀ replaced by other feedback weights.

With a_l = W_l h_{l−1} + b_l the pre-activation of layer l, h_l = φ(a_l), δ_l = ∂ℓ/∂a_l, e = ∂ℓ/∂z the output error
of the run's loss (``output``: ce or se, :mod:`bioprop.losses`) and φ' the activation's derivative, each hidden
layer receives (the output layer always gets its exact gradient, δ_L = e):

- ``fa``, random feedback (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276, Eq. 1 and Methods):
  δ_l = (B_{l+1} δ_{l+1}) ⊙ φ'(a_l), B fixed random (:func:`random_feedback_step`).
- ``dfa``, direct feedback (Nøkland 2016, NeurIPS, Eq. 3): δ_l = (B_l e) ⊙ φ'(a_l), B_l fixed random, from the
  output error straight to every hidden layer (:func:`direct_feedback_signal`).
- Sign symmetry (Liao, Leibo & Poggio 2016, AAAI; variants as in Moraitis et al.'s BioTorch, Sanfiz & Akrout
  2021): B_{l+1} = sign(W_{l+1})ᵀ with magnitudes from elsewhere, i.e. only the signs of the forward weights are
  transported (:func:`sign_concordant_feedback`): ``usf`` B = σ·sign(W) with σ the init's standard deviation;
  ``brsf`` B = |M| ∘ sign(W) with M redrawn every step; ``frsf`` B = |B₀| ∘ sign(W) with B₀ drawn once.

Weight updates are ∂W_l = δ_l h_{l−1}ᵀ, ∂b_l = Σ_batch δ_l: descent directions of the batch-mean output loss.
Every feedback tensor is stored in W's orientation, (out, in), standing where W stands in backprop, so the paper's
B_{l+1} is its transpose: the error sent down is δ @ F for a Linear layer, the transposed convolution with kernel F
for a Conv2d. ``scale`` s multiplies every F. Between parameterised layers, activations, pooling and dropout (its
forward mask) are differentiated exactly (:mod:`bioprop.rules.layerwise`): they supply the ⊙ φ'(a_l); in ``dfa``
the signal B_l e enters at the input of the next parameterised layer.

Randomness (all draws on the CPU in float64 from generators of their own, never the global one; the results do not
depend on the device): ``fa`` and ``frsf`` draw B (B₀) once at create from a generator seeded with ``seed``, in
layer order; ``dfa`` draws its B_l, shaped (K, size of the layer's input), at the first batch (only then are the
sizes of convolutional feature maps known), from a fresh generator seeded with ``seed``: a function of the seed and
the sizes alone, so a later or repeated call draws the same; ``brsf`` draws M for each step from
:meth:`Rule.generator`, seeded by ``(seed, step)``. So ``grads`` is pure: twice on one batch it gives the same
update and changes no state (``dfa``'s first batch only fills in B_l that any call would draw identically), and
``backward``'s step count moves brsf to its next M. :meth:`FeedbackAlignment.state_dict` holds the step count,
the seed and the drawn feedback; loading it continues that run's draws exactly.

B belongs to a position in the stack: a module used at two positions (shared weights) has a B at each, and its
update is the sum of its positions' δ hᵀ. A frozen layer (``requires_grad=False``) still carries errors through its
B and gets no update. B follows the network when it changes dtype or device after :func:`~bioprop.rules.create`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bioprop.errors import BioPropError
from bioprop.metrics import angle_deg
from bioprop.nets import layer_parameters
from bioprop.nets import layers as walk_layers
from bioprop.rules.base import (
    Diagnostic,
    Entry,
    FigureSpec,
    Options,
    Rule,
    Update,
    add_grads,
    make_card,
    option,
    register,
)
from bioprop.rules.layerwise import forward_cached, layer_backward, parameterised_indices, through_parameterless
from bioprop.rules.options import output_loss, positive, seed_option

INITS = ("xavier", "kaiming", "uniform")
FEEDBACKS = ("random", "direct", "usf", "brsf", "frsf")
#: The variants whose feedback tensors are drawn (and checkpointed); usf and brsf derive theirs from W each step.
DRAWN = ("random", "direct", "frsf")


# ------------------------------------------------------------------------------------------------ the functional core


def init_std(shape: torch.Size, init: str) -> float:
    """Standard deviation of the feedback initialisation for a weight of ``shape`` (out, in, *kernel), fans as in
    ``torch.nn.init`` (receptive field included): ``xavier`` √(2/(fan_in + fan_out)) (Glorot & Bengio 2010),
    ``kaiming`` √(2/fan_in) (He et al. 2015), ``uniform`` 1/√(3·fan_in), the std of torch's default U(±1/√fan_in)."""
    receptive = math.prod(shape[2:])
    fan_out, fan_in = shape[0] * receptive, shape[1] * receptive
    if init == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "kaiming":
        return math.sqrt(2.0 / fan_in)
    return 1.0 / math.sqrt(3.0 * fan_in)


def draw_feedback(shape: torch.Size, init: str, generator: torch.Generator) -> Tensor:
    """A random feedback tensor of ``shape``, float64 on the CPU, drawn from ``generator`` (nothing else): xavier
    and uniform are uniform on ±√3σ, kaiming is normal, all with σ = :func:`init_std`."""
    std = init_std(shape, init)
    if init == "kaiming":
        return torch.randn(shape, generator=generator, dtype=torch.float64) * std
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * (std * math.sqrt(3.0))


def sign_concordant_feedback(weight: Tensor, magnitude: Tensor | float) -> Tensor:
    """Sign symmetry (Liao, Leibo & Poggio 2016, AAAI, Sec. "Sign-concordant feedback"): F = |M| ∘ sign(W), the
    feedback standing in for ``weight`` W (any shape) with W's signs and the magnitudes |M| (a tensor of W's shape,
    or a number): uSF M = σ, brSF M redrawn each step, frSF M = B₀ fixed. A new tensor; W is not written."""
    signs = torch.sign(weight.detach())
    return signs.mul_(abs(magnitude)) if isinstance(magnitude, float) else signs.mul_(magnitude.abs())


def random_feedback_step(
    layer: nn.Module, h_in: Tensor, delta: Tensor, feedback: Tensor | None
) -> tuple[list[Tensor], Tensor | None]:
    """One layer of feedback alignment (Lillicrap et al. 2016, Eq. 1 and Methods). For the Linear or Conv2d
    ``layer`` with input h_{l−1} = ``h_in`` (B, in...) and output error δ_l = ``delta`` (B, out...): its update
    [δ_l h_{l−1}ᵀ, Σ_batch δ_l] (bias term only with a bias) and the error sent down, B_l δ_l, with B_l = Fᵀ for the
    ``feedback`` F of W's shape (δ @ F; for a convolution the transposed convolution with kernel F). The activation
    layers below multiply it by φ'(a_{l−1}), completing δ_{l−1} = (B_l δ_l) ⊙ φ'(a_{l−1}). ``feedback`` None: no
    error is sent down (the first layer)."""
    return layer_backward(layer, h_in, delta, feedback)


def direct_feedback_signal(error: Tensor, feedback: Tensor, shape: torch.Size) -> Tensor:
    """Direct feedback alignment (Nøkland 2016, Eq. 3): B_l e, the output error e = ∂ℓ/∂z (B, K) sent straight to
    the output h_l of hidden layer l through the fixed ``feedback`` (K, size of h_l), reshaped to ``shape`` (B, ...).
    The activation layers below multiply it by φ'(a_l), completing δ_l = (B_l e) ⊙ φ'(a_l)."""
    return (error @ feedback).reshape(shape)


def feedback_alignment_walk(
    layers: Sequence[nn.Module],
    positions: Sequence[int],
    acts: Sequence[Tensor],
    saved: Mapping[int, Tensor],
    error: Tensor,
    feedback: Mapping[int, Tensor],
    direct: bool,
) -> dict[int, list[Tensor]]:
    """The family's backward pass over a cached forward pass (:func:`~bioprop.rules.layerwise.forward_cached`:
    ``acts[i]`` is the input of ``layers[i]``, ``saved`` its pooling indices and dropout masks), from the output
    error ``error`` = e (B, K): the updates of the parameterised layers at ``positions`` (ascending), keyed by
    position, each in :func:`bioprop.nets.layer_parameters` order. ``feedback[i]`` is what stands in for W at each
    position after the first (W's shape; (K, input size) when ``direct``). Parameterless layers in between are
    differentiated exactly; each parameterised layer applies :func:`random_feedback_step`, and, when ``direct``, its
    input receives :func:`direct_feedback_signal` instead of the chained error."""
    first, chosen = positions[0], set(positions)
    updates: dict[int, list[Tensor]] = {}
    grad = error
    for i in range(len(layers) - 1, first - 1, -1):
        layer, h_in = layers[i], acts[i]
        if i not in chosen:
            grad = through_parameterless(layer, h_in, acts[i + 1], grad, saved.get(i))
            continue
        chained = feedback[i] if i != first and not direct else None
        updates[i], below = random_feedback_step(layer, h_in, grad, chained)
        if i == first:
            break
        grad = direct_feedback_signal(error, feedback[i], h_in.shape) if direct else below
    return updates


# ---------------------------------------------------------------------------------------------------------- the rule


@dataclasses.dataclass(frozen=True)
class FeedbackAlignmentOptions(Options):
    """Options of the feedback-alignment family (``feedback`` is fixed by each rule's name)."""

    feedback: str = option("random", "which feedback replaces Wᵀ", choices=FEEDBACKS)
    init: str = option("xavier", "distribution and standard deviation of the random feedback weights", choices=INITS)
    scale: float = positive(1.0, "factor s on every feedback weight")
    seed: int = seed_option("seed of the random feedback weights (drawn once, or, where redrawn each step, from the "
                          "seed and the step count)")  # fmt: skip
    output: str = output_loss()


def same_kind(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device


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
    """Random, direct and sign-concordant feedback; the equations, the draws and the state are in the module
    docstring. ``feedback`` holds the drawn tensors by layer position (unscaled, W's shape; dfa's (K, input size))."""

    Options = FeedbackAlignmentOptions
    opts: FeedbackAlignmentOptions
    diagnostic_specs = (
        Diagnostic(r"(?P<param>[^/]+)/w_b_angle_deg", "∠(W, B) {param}"),
        Diagnostic(r"(?P<param>[^/]+)/b_w_norm_ratio", "‖B‖/‖W‖ {param}"),
    )
    figures = (FigureSpec("feedback-angles.png", "Angle between each W and the feedback B used in its place",
                          diagnostics=(0,), ylabel="angle (degrees)"),)  # fmt: skip

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        self.layers = walk_layers(net, self.name)
        self.param_layers = parameterised_indices(self.layers)
        if not self.param_layers:
            raise BioPropError(f"rule {self.name}: the network has no Linear or Conv2d layer")
        # One feedback tensor per position after the first (the first needs none: nothing lies below it), kept in
        # the weight's dtype and device so that using it costs no conversion per step.
        self.feedback: dict[int, Tensor] = {}
        if self.opts.feedback in ("random", "frsf"):
            generator = torch.Generator().manual_seed(self.opts.seed)
            for i in self.param_layers[1:]:
                weight = self.layers[i].weight
                self.feedback[i] = draw_feedback(weight.shape, self.opts.init, generator).to(weight)

    # ------------------------------------------------------------------------------------------- the feedback

    def feedback_weights(self) -> dict[int, Tensor]:
        """What stands in for W at each position after the first at the current step, scaled by ``scale`` (W's
        shape; dfa's (K, input size), only once drawn at the first batch): the feedback :meth:`grads` uses now, and
        that :meth:`backward` uses next. Changes no state (brsf's M comes from :meth:`Rule.generator`)."""
        scale, init, kind = self.opts.scale, self.opts.init, self.opts.feedback
        generator = self.generator() if kind == "brsf" else None
        out: dict[int, Tensor] = {}
        for i in self.param_layers[1:]:
            weight = self.layers[i].weight.detach()
            if kind in DRAWN:
                if i not in self.feedback:  # dfa before its first batch
                    continue
                if not same_kind(self.feedback[i], weight):  # the network changed dtype or device: follow it
                    self.feedback[i] = self.feedback[i].to(weight)
                feedback = self.feedback[i]
                if kind == "frsf":
                    feedback = sign_concordant_feedback(weight, feedback)
            elif kind == "usf":
                feedback = sign_concordant_feedback(weight, init_std(weight.shape, init))
            else:  # brsf: this step's magnitudes
                feedback = sign_concordant_feedback(weight, draw_feedback(weight.shape, init, generator).to(weight))
            out[i] = feedback * scale if scale != 1.0 else feedback  # a copy: the stored B stays unscaled
        return out

    @property
    def last_feedback(self) -> dict[int, Tensor]:
        """:meth:`feedback_weights` (the name tests and probes used when it recorded the last update's feedback)."""
        return self.feedback_weights()

    def draw_direct_feedback(self, acts: Sequence[Tensor], n_classes: int) -> None:
        """dfa: the B_l (K, size of layer l's input) not yet drawn, from a fresh generator seeded with ``seed``, all
        positions in order, so that each B_l depends on the seed and the sizes only (module docstring). A B_l of
        another size (a loaded checkpoint, another input size) is a :class:`BioPropError`."""
        positions = self.param_layers[1:]
        shapes = {i: torch.Size((n_classes, acts[i][0].numel())) for i in positions}
        if any(i not in self.feedback for i in positions):
            generator = torch.Generator().manual_seed(self.opts.seed)
            for i in positions:  # every position draws, so that each B_l is the same whichever are missing
                drawn = draw_feedback(shapes[i], self.opts.init, generator)
                self.feedback.setdefault(i, drawn.to(acts[i]))
        for i in positions:
            if self.feedback[i].shape != shapes[i]:
                raise BioPropError(f"rule {self.name}: layer {i} takes inputs of size {shapes[i][1]} and there are "
                                   f"{n_classes} classes, but its direct feedback is {tuple(self.feedback[i].shape)}; "
                                   "create the rule again for these inputs")  # fmt: skip

    # ------------------------------------------------------------------------------------------- the update

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        acts, saved = forward_cached(self.layers, x)
        logits = acts[-1]
        loss, error = self.loss.error(logits, y)  # error: e = ∂ℓ/∂z (B, K), 1/B included
        direct = self.opts.feedback == "direct"
        if direct:
            self.draw_direct_feedback(acts, logits.shape[1])
        updates = feedback_alignment_walk(
            self.layers, self.param_layers, acts, saved, error, self.feedback_weights(), direct
        )
        grads: dict[str, Tensor] = {}
        for i, values in updates.items():
            add_grads(grads, [self.param_name(p) for p in layer_parameters(self.layers[i])], values)
        return Update(grads, loss, logits)

    def diagnostics(self) -> dict[str, float]:
        """Per weight after the first, for :meth:`feedback_weights` (this step's feedback, against the current W):
        the angle (degrees) between W and the feedback used in its place (Bᵀ in the paper's orientation), and the
        norm ratio ‖B‖/‖W‖. ``dfa``'s B has another shape: norm ratio only. A module used at several positions
        reports each, the later ones as ``name@position``."""
        out: dict[str, float] = {}
        for i, feedback in self.feedback_weights().items():
            weight = self.layers[i].weight.detach()
            name = self.param_name(self.layers[i].weight)
            name = name if f"{name}/b_w_norm_ratio" not in out else f"{name}@{i}"
            if feedback.shape == weight.shape:
                out[f"{name}/w_b_angle_deg"] = angle_deg(weight, feedback)
            out[f"{name}/b_w_norm_ratio"] = float(feedback.norm() / weight.norm())
        return out

    # ------------------------------------------------------------------------------------------- the state

    def state_dict(self) -> dict[str, Tensor]:
        """``step`` and ``seed`` (int64 scalars) and the drawn feedback, ``feedback.<position>`` (unscaled)."""
        state = super().state_dict()
        state["seed"] = torch.tensor(self.opts.seed, dtype=torch.int64)
        state.update({f"feedback.{i}": tensor for i, tensor in self.feedback.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors: the checkpoint's seed becomes the rule's (its later draws continue
        that run's). Raises :class:`BioPropError` for a feedback tensor at a position without one, of another
        shape than its weight (fa, frsf), missing (fa, frsf), or any other key; nothing changes then. A
        ``generator`` entry (checkpoints before step-seeded draws) is ignored."""
        state = dict(state)
        state.pop("generator", None)
        seed = state.pop("seed", None)
        feedback: dict[int, Tensor] = {}
        wanted = self.param_layers[1:] if self.opts.feedback in DRAWN else []
        for key in [k for k in state if k.startswith("feedback.")]:
            position = key.split(".", 1)[1]
            if not position.isdigit() or int(position) not in wanted:
                raise BioPropError(f"rule {self.name}: unexpected state {key!r} in checkpoint")
            feedback[int(position)] = state.pop(key)
        if self.opts.feedback != "direct":
            for i in wanted:
                shape = self.layers[i].weight.shape
                if i not in feedback or feedback[i].shape != shape:
                    got = "missing" if i not in feedback else f"of shape {tuple(feedback[i].shape)}"
                    raise BioPropError(f"rule {self.name}: checkpoint's feedback.{i} is {got}, not {tuple(shape)}")
        super().load_state_dict(state)
        self.feedback = feedback
        if seed is not None:
            self.opts = dataclasses.replace(self.opts, seed=int(seed))
