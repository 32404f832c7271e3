"""The target-propagation family: each layer learns towards a target activity, sent down by learned feedback maps.

The equations (the output and hidden targets, the feedback maps and losses, the local forward update) are in
:mod:`bioprop.rules.target_prop_equations`; this module holds the rules: their options, the feedback's training,
state and randomness, and the diagnostics.

Feedback training. In :meth:`~bioprop.rules.base.Rule.backward` (where the rule's state advances), after the forward
update is computed with the feedback as it stands, ``feedback_iterations`` plain SGD steps of size ``feedback_lr`` on
Σ_k L_k (L^inv or L^rec, mean over the batch) move the feedback weights, each iteration with fresh noise, the
forward weights held fixed; ``feedback_optimizer=adam`` takes Adam steps instead (:func:`adam_step`; Meulemans et
al. train their feedback weights with Adam), its moments kept in the rule's state and checkpoint. ``grads``
computes the same forward update and trains nothing. Feedback pre-training: the
first ``pretrain_batches`` calls of ``backward`` (counted by the rule's step count) train only the feedback, and the
forward update of those steps is zero, in ``grads`` and ``backward`` alike, so the optimizer moves no forward weight
(momentum starts from zero; weight decay still applies); the update angles probed then are NaN. A network left with
no feedback map (no hidden layer, or one with ``first_target=hidden``) has nothing to pre-train and skips it. The
default, 20
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
from bioprop.rules.mlp_settling import MLP, mlp_parts, mlp_tensors
from bioprop.rules.options import count, non_negative, output_loss, positive, seed_option
from bioprop.rules.target_prop_equations import (
    Feedback,
    Moments,
    Targets,
    adam_step,
    feedback_losses,
    local_update,
    propagate,
)

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
    """Difference and direct difference target propagation; the equations in
    :mod:`bioprop.rules.target_prop_equations`, state and randomness in the module docstring. Raises
    :class:`BioPropError` at create for a network that is not an MLP with one activation (naming the layer) and, for
    ddtp, ``noise=0`` (the DRL divides by σ²)."""

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
        hidden = len(sizes) - 1
        for k in range(hidden - 1 if self.from_hidden else hidden):
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
        """:func:`~bioprop.rules.target_prop_equations.propagate` with the rule's loss and options. Pure."""
        return propagate(mlp, feedback, x, y, self.loss, self.opts.target_lr, self.from_hidden, self.direct)

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
        pretraining = self.step < self.opts.pretrain_batches and bool(self.feedback.weights)
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
                feedback = Feedback(params[:n], params[n:], current.psi)
                losses = feedback_losses(mlp, feedback, found, noise, self.direct, o.noise)
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
        ``self.step + steps`` ≤ ``pretrain_batches`` never moves a forward weight. Without a feedback map there is
        no pre-training; one line when ``first_target=hidden`` leaves none (one hidden layer): every layer then gets
        backprop's gradient."""
        if not self.feedback.weights:
            if not (self.from_hidden and len(self.linears) == 2):
                return []
            return [f"rule {self.name}: first_target=hidden on a network with one hidden layer: its target is the "
                    "gradient step, so every layer gets backprop's gradient and no target is propagated"]  # fmt: skip
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
