"""The inference loops of predictive coding: T Euler steps of the value dynamics, then the weight change.

The equations are those of :mod:`bioprop.rules.pc_equations`; this module runs them over a batch, for every variant:

- plain PC (Whittington & Bogacz 2017): the values relax for T steps from the feedforward pass (where every hidden
  error is 0); the weights change once, at the end, by ε_l φ(x_{l-1})ᵀ;
- the fixed prediction assumption (``fixed_predictions``; Millidge, Tschantz & Buckley 2022, Rosenbaum 2022
  "FixedPred"): μ_l, J_φ and the output error stay at their feedforward values; with γ = 1 the errors sweep down
  one layer per step and after L − 1 steps equal backprop's deltas;
- Z-IL (``zil``; Song et al. 2020, NeurIPS): with γ = 1, layer l takes its weight change at step L − l, when the
  error wave passes it; the update then equals backprop's;
- iPC (``weight_lr`` > 0; Salvatori et al. 2024, ICLR): the weights also take a step down F at every inference
  step, θ_{t+1} = θ_t − η ∂F/∂θ(t) ÷ (βN); the update is Σ_{t<T} ∂F/∂θ(t) ÷ (βN), so an SGD step of size η
  continues the incremental trajectory exactly.

Nudging (positive, negative, centred) enters only through β, a number or an (N, 1) column of signed precisions
(:class:`~bioprop.rules.pc_equations.Output`).

Optimisations, each exact (the tests compare every variant with autograd on F):

- consecutive hidden layers whose values have one shape and one elementwise φ (the hidden layers of an
  ``mlp:128x128``) form a :class:`Group`: their values, predictions and top-down drives are stacked into (k, N, ...)
  tensors, so that φ, the errors, their norms and the value step run once for the group, not once per layer;
- values are moved in place and buffers are reused from step to step; the layer-1 prediction μ_1 is computed once
  (its input is clamped and, outside iPC, so are its weights); the Wᵀ of a Linear layer whose prediction is made at
  every step is stored contiguous once per batch; a squared-error output error is one addmm
  (:func:`~bioprop.rules.pc_equations.output_error_of`); the energy's terms are combined once per batch;
- in iPC the first layer's T weight steps are folded when it is a Linear layer fed by the clamped input h_0
  (N × n_0) with N < n_0: with D(t) = Σ_{s<t} (−ε_1(s)/(βN)), W_1(t) = W_1(0) − η D(t)ᵀ h_0 and
  b_1(t) = b_1(0) − η 1ᵀ D(t), so μ_1(t) = μ_1(0) − η (h_0 h_0ᵀ + 1 1ᵀ) D(t): an (N × N) product per step instead of
  two (N × n_0 × n_1) ones, and the update Σ_t ∂F/∂W_1(t) = D(T)ᵀ h_0 once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bioprop.rules.base import add_grads
from bioprop.rules.layerwise import forward_cached
from bioprop.rules.pc_equations import (
    Block,
    Chain,
    Output,
    Weights,
    output_energy,
    output_error,
    output_error_of,
    output_shift,
    prediction,
    prediction_error,
    relax,
    top_down,
    weight_change,
    weights_of,
)
from bioprop.rules.pc_incremental import Sums, accumulate, gram


class Inference(NamedTuple):
    """How one inference runs (the rule's options, resolved): ``steps`` T (Euler steps of the values), ``gamma`` γ,
    ``fixed_predictions`` (FPA), ``zil`` (Z-IL) and, for iPC, ``weight_lr`` η > 0 (0: the weights stay put)."""

    steps: int
    gamma: float
    fixed_predictions: bool = False
    zil: bool = False
    weight_lr: float = 0.0


class Inferred(NamedTuple):
    """What an inference returns: ``updates`` (descent directions ∂F/∂θ ÷ β, batch mean, keyed by parameter name),
    ``energy`` (T + 1,) the batch-mean F at each evaluation, ``prediction`` (N, K) the feedforward output μ_L."""

    updates: dict[str, Tensor]
    energy: Tensor
    prediction: Tensor


class Network(NamedTuple):
    """The network as inference walks it: ``before`` (parameterless layers ahead of the first parameterised one),
    ``blocks`` and their ``chains`` φ_l (:class:`~bioprop.rules.pc_equations.Chain`)."""

    before: list[nn.Module]
    blocks: list[Block]
    chains: list[Chain]


class Group:
    """Hidden layers ``first`` .. ``first + size − 1`` stacked: values ``x`` and predictions ``mu``, each
    (size, N, ...), and the members' views of them (``xs``, ``mus``, and ``drives``, where the top-down terms
    W_{l+1}ᵀ ε_{l+1} are written). φ runs on the whole stack when it is elementwise (``stacked``); a chain that is
    not (pooling, flatten, dropout) makes a group of one, whose φ runs on its member's (N, ...) values."""

    def __init__(self, first: int, mus: list[Tensor], chain: Chain) -> None:
        self.first, self.size, self.chain, self.stacked = first, len(mus), chain, chain.elementwise
        self.x = torch.stack(mus)
        self.mu = self.x.clone()
        self.error = torch.empty_like(self.x)  # ε = x − μ, rewritten at every step
        self.phi = torch.empty_like(self.x) if self.stacked else None  # φ, where the chain writes it in place
        self.drive = torch.empty_like(self.x) if self.stacked else None
        self.views = {id(t): list(t.unbind(0)) for t in (self.x, self.mu, self.error, self.phi) if t is not None}
        self.xs, self.mus, self.errors = self.views[id(self.x)], self.views[id(self.mu)], self.views[id(self.error)]
        self.drives = list(self.drive.unbind(0)) if self.drive is not None else [None] * self.size
        self.dims = tuple(range(1, self.x.dim()))
        self.a: Tensor = self.x
        self.saved: Any = None

    def forward(self, masks: Any, at: Tensor) -> list[Tensor]:
        """φ of the values ``at`` (x; FPA: the fixed μ, which no step overwrites), kept with what its Jacobian
        needs; returns each member's φ, the input of the layer above it."""
        if self.stacked:
            self.a, self.saved = self.chain.forward(at, masks, out=self.phi)
            views = self.views.get(id(self.a))
            return views if views is not None else list(self.a.unbind(0))
        self.a, self.saved = self.chain.forward(at[0], masks)
        return [self.a]

    def prediction_errors(self) -> tuple[list[Tensor], Tensor]:
        """ε_l = x_l − μ_l of every member (views of one tensor), and their norms ‖ε_l‖ (size,)."""
        error = prediction_error(self.x, self.mu, out=self.error)
        return self.errors, torch.linalg.vector_norm(error, dim=self.dims)

    def relax(self, gamma: float, down: Tensor | None, at: Tensor) -> None:
        """x ← x + γ (−ε + J_φᵀ W_{l+1}ᵀ ε_{l+1}) for every member (:func:`~bioprop.rules.pc_equations.relax`);
        ``down`` the top-down term of a group of one (a stack's were written into ``drives``); J_φ taken at ``at``
        (the values x; FPA: the feedforward ones)."""
        if self.stacked:
            relax(self.x, self.chain.vjp_add(self.mu, self.drive, at, self.a, self.saved), gamma)
        else:
            relax(self.xs[0], self.chain.vjp_add(self.mus[0], down, at[0], self.a, self.saved), gamma)


def groups_of(net: Network, mus: list[Tensor]) -> list[Group]:
    """The hidden layers' :class:`Group` s: runs of layers with one value shape and one elementwise φ."""
    runs: list[list[int]] = []
    for index in range(len(mus) - 1):
        head = runs[-1][0] if runs else None
        if head is not None and net.chains[index].stacks_with(net.chains[head]) and mus[index].shape == mus[head].shape:
            runs[-1].append(index)
        else:
            runs.append([index])
    return [Group(run[0], [mus[i] for i in run], net.chains[run[0]]) for run in runs]


def feedforward(net: Network, weights: list[Weights], x: Tensor) -> tuple[Tensor, list[Tensor], list]:
    """The feedforward pass: the clamped input h_0 (after ``before``), μ_l for every layer and the dropout masks
    (and pooling indices) of each φ_l, drawn here once per batch."""
    h0 = forward_cached(net.before, x)[0][-1] if net.before else x
    mus, masks = [], []
    a = h0
    for index, w in enumerate(weights):
        mus.append(prediction(w, a))
        if index < len(weights) - 1:
            a, kept = net.chains[index].forward(mus[-1], slope=False)
            masks.append(net.chains[index].masks(kept))
    return h0, mus, masks


def descent_scale(out: Output, n: int) -> float | Tensor:
    """−1/(βN): turns Σ_n ε φᵀ into the batch-mean descent direction ∂F/∂θ ÷ β (a column for per-sample β)."""
    return -1.0 / (out.beta * n)


def infer(net: Network, x: Tensor, out: Output, p: Inference, frozen: frozenset[str] = frozenset()) -> Inferred:
    """Predictive coding's inference on one batch ``x`` (N, ...) with the output term ``out``, for every variant
    (module docstring); iPC's weight steps leave the ``frozen`` parameters (by name) where they are, as the
    optimizer will."""
    blocks, last, n = net.blocks, len(net.blocks) - 1, len(x)
    weights = [weights_of(b.layer, transposed=index > 0) for index, b in enumerate(blocks)]
    h0, mus, masks = feedforward(net, weights, x)
    groups = groups_of(net, mus)
    predictions = [view for group in groups for view in group.mus]  # μ_l of each hidden layer, written in place
    drives = [view for group in groups for view in group.drives]
    fixed, eta, scale = p.fixed_predictions, p.weight_lr, descent_scale(out, n)
    fold = folded = sums = None
    if eta > 0:  # iPC
        fold = gram(blocks, h0, frozen)  # (N, N): layer 1's weight steps folded
        if fold is not None:
            folded = torch.zeros_like(mus[0])  # D(t)
        elif last:
            weights[0] = weights_of(blocks[0].layer)  # its prediction is made at every step
        sums = Sums(blocks, weights, frozen, skip=blocks[0].layer if fold is not None else None)
    moving = 0 if sums is not None else 1  # the first layer whose prediction changes from step to step
    shift = output_shift(out, weights[last]) if sums is None else None  # the output error in one addmm

    updates: dict[str, Tensor] = {}
    norms: list[list[Tensor]] = [[] for _ in groups]
    outputs: list[Tensor] = []
    output, u = output_error(out, mus[-1])
    inputs = [h0]
    for step in range(p.steps + 1):
        if step == 0 or not fixed:
            inputs = [h0]  # φ_{l-1}(x_{l-1}), the input of layer l
            for group in groups:
                inputs += group.forward(masks[group.first], group.mu if fixed else group.x)
        if step and not fixed:
            for index in range(moving, last):
                if index == 0 and fold is not None:  # μ_1(t) = μ_1(0) − η K D(t)
                    torch.addmm(mus[0], fold, folded, alpha=-eta, out=predictions[0])
                else:
                    prediction(weights[index], inputs[index], out=predictions[index])
            output, u = output_error_of(out, weights[last], inputs[last], shift)
        errors: list[Tensor] = []
        for group, trace in zip(groups, norms, strict=True):
            members, norm = group.prediction_errors()
            errors += members
            trace.append(norm)
        errors.append(output)
        outputs.append(u)
        if p.zil and step <= last:  # the error wave reaches layer L − t at step t
            index = last - step
            add_grads(updates, blocks[index].names, weight_change(weights[index], errors[index], inputs[index], scale))
        if step == p.steps:
            break
        if sums is not None:
            if folded is not None:
                accumulate(folded, errors[0], scale)
            sums.add(weights, errors, inputs, scale)
        downs = [top_down(weights[i + 1], errors[i + 1], inputs[i + 1], out=drives[i]) for i in range(last)]
        for group in groups:
            group.relax(p.gamma, downs[group.first], group.mu if fixed else group.x)
        if sums is not None:
            weights = sums.moved(eta, weights)
    if sums is not None:
        updates = sums.updates()
        if folded is not None:
            grads = [folded.t() @ h0] + ([folded.sum(0)] if blocks[0].layer.bias is not None else [])
            updates.update(zip(blocks[0].names, grads, strict=True))
    elif not p.zil:
        for index, block in enumerate(blocks):
            add_grads(updates, block.names, weight_change(weights[index], errors[index], inputs[index], scale))
    energy = output_energy(out, outputs)
    for trace in norms:  # ½ Σ_l ‖ε_l‖², per step
        energy = energy + torch.stack(trace).square().sum(1) * 0.5
    return Inferred(updates, energy / n, mus[-1])
