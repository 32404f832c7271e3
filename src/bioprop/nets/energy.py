"""Energy-based networks for the contrastive rules (``ep``, ``chl``, ``generec``): layers of state units s_1..s_L
with symmetric connections, relaxed to a fixed point with the input x = s_0 clamped.

The primitive function (Ernoult et al. 2019; Laborieux et al. 2021, Front. Neurosci. 15:633674) and the
Hopfield-like energy (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24) with ρ = hard sigmoid:

.. math::
    Φ(x, s) = \\sum_{l=0}^{L-1} s_{l+1} · f_l(s_l), \\qquad f_l(s_l) = W_l s_l + b_l \\ \\text{(dense)}
    \\quad \\text{or} \\quad \\mathcal{P}(W_l ⋆ s_l + b_l) \\ \\text{(conv, max-pooling } \\mathcal{P})

    E(s) = ½ \\sum_l ‖s_l‖^2 - Φ(x, s)

    s_l ← σ\\bigl((1 - ε)\\, s_l + ε\\, ∂Φ/∂s_l\\bigr), \\qquad
    ∂Φ/∂s_l = f_{l-1}(s_{l-1}) + f_l^{T}(s_{l+1})

all layers at once (synchronous, as in Laborieux's code), from s = 0. With ε = 1 this is the discrete form
s_{t+1} = σ(∂Φ/∂s); with σ = hard sigmoid (clip to [0, 1]) and ε < 1 it is projected gradient descent on E, the
discretised ds/dt = −∂E/∂s of Scellier & Bengio, which never increases E while ε < 2/‖∇²E‖. ``f_lᵀ`` is the
transposed weight (dense) or the transposed convolution of the un-pooled state (conv), i.e. ∂(s_{l+1}·f_l)/∂s_l.

Output: with ``output="se"`` the last layer s_L is a state and the prediction; with ``output="ce"`` the last
synapse is a readout outside the dynamics (Laborieux's softmax variant): logits = W_L s_{L-1} + b_L, and s_{L-1}
is the last state.

``net(x)`` is :func:`free_prediction` with ``net.relaxation``, the :class:`Relaxation` given at construction and
fixed for the network's life (default: 30 synchronous steps of ε = 1 from rest, no early stop, ``se`` output). A
learning rule never changes it: a rule whose dynamics relax with other settings passes its own
:class:`Relaxation` to the functions below (:meth:`bioprop.rules.Rule.predict` is the rule's prediction path).

Specs for :func:`bioprop.nets.build`: ``ebm:500`` / ``ebm:256x256`` (dense), ``ebm-conv`` (= ``ebm-conv:32x64``,
Laborieux's MNIST ConvNet: 5×5 convolutions without padding, each followed by 2×2 max-pooling, then the dense
layers, e.g. ``ebm-conv:32x64:256`` for a hidden dense layer of 256 before the output).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.errors import BioPropError

#: Bounded activations σ of the state units (unbounded ones let the states explode).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "hard_sigmoid": lambda a: a.clamp(0.0, 1.0),
    "sigmoid": torch.sigmoid,
    "hard_tanh": lambda a: a.clamp(-1.0, 1.0),
    "tanh": torch.tanh,
}
_IN_PLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "hard_sigmoid": lambda a: a.clamp_(0.0, 1.0),
    "sigmoid": torch.sigmoid_,
    "hard_tanh": lambda a: a.clamp_(-1.0, 1.0),
    "tanh": torch.tanh_,
}
OUTPUTS = ("se", "ce")


class Relaxation(NamedTuple):
    """How a free phase relaxes (the parameters of :func:`free_phase`): ``steps`` (budget, ≥ 1), ``eps`` (step size
    ε in (0, 1]), ``tol`` (stop early once the mean |change| of the state units in a step is below it; 0 runs the
    whole budget) and ``output`` (``se``: the last layer is a state; ``ce``: it is a readout outside the
    dynamics)."""

    steps: int = 30
    eps: float = 1.0
    tol: float = 0.0
    output: str = "se"

    def check(self, net: EnergyNet) -> Relaxation:
        """Itself, or a :class:`BioPropError` naming the first setting ``net`` cannot relax with."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise BioPropError(f"relaxation steps={self.steps!r} must be a positive integer")
        if not 0.0 < self.eps <= 1.0:
            raise BioPropError(f"relaxation eps={self.eps!r} must be in (0, 1]")
        if not self.tol >= 0.0:
            raise BioPropError(f"relaxation tol={self.tol!r} must be 0 or positive")
        if self.output not in OUTPUTS:
            raise BioPropError(f"relaxation output={self.output!r}; choose one of {', '.join(OUTPUTS)}")
        if net.n_states(self.output) < 1:
            raise BioPropError("output=ce (a readout outside the dynamics) needs at least one hidden layer (e.g. "
                               "ebm:500), or use output=se")  # fmt: skip
        return self


class Drive(NamedTuple):
    """f_l(s_l) and what its transpose needs: the max-pooling indices and the shape before pooling."""

    value: Tensor
    indices: Tensor | None = None
    unpooled_shape: torch.Size | None = None


class EnergyNet(nn.Module):
    """Dense or convolutional energy-based network; see the module docstring. ``synapses[l]`` maps s_l to s_{l+1}
    (s_0 = x); ``pools[l]`` is its max-pooling size (1: none); ``relaxation`` (read-only) is how ``net(x)`` relaxes.
    Raises :class:`BioPropError` for an unbounded activation, a conv layer on inputs that are not images or are too
    small, and a ``relaxation`` it cannot run (:meth:`Relaxation.check`)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        hidden: Sequence[int],
        n_classes: int,
        act: str = "hard_sigmoid",
        channels: Sequence[int] = (),
        kernel: int = 5,
        pool: int = 2,
        relaxation: Relaxation = Relaxation(),
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise BioPropError(
                f"energy-based networks need a bounded activation, not {act!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        self.act_name = act
        self.in_shape = tuple(in_shape)
        self.synapses = nn.ModuleList()
        self.pools: list[int] = []
        self.state_shapes: list[tuple[int, ...]] = []  # shapes of s_1..s_L, the output included
        shape = self.in_shape
        for out_channels in channels:
            if len(shape) != 3:
                raise BioPropError("convolutional energy nets need image inputs (C, H, W)")
            height, width = (shape[1] - kernel + 1) // pool, (shape[2] - kernel + 1) // pool
            if height < 1 or width < 1:
                raise BioPropError(f"the input {shape[1]}x{shape[2]} is too small for {len(channels)} conv layers")
            self.synapses.append(nn.Conv2d(shape[0], out_channels, kernel))
            self.pools.append(pool)
            shape = (out_channels, height, width)
            self.state_shapes.append(shape)
        for size in [*hidden, n_classes]:
            self.synapses.append(nn.Linear(math.prod(shape), size))
            self.pools.append(1)
            shape = (size,)
            self.state_shapes.append(shape)
        self.chain = list(self.synapses)  # a plain list: indexing an nn.ModuleList costs ~10 µs, per step and layer
        if not isinstance(relaxation, Relaxation):
            raise BioPropError(f"relaxation must be a Relaxation, not {type(relaxation).__name__}")
        self._relaxation = relaxation.check(self)

    @property
    def relaxation(self) -> Relaxation:
        """The free phase ``net(x)`` runs, fixed at construction."""
        return self._relaxation

    @property
    def act(self) -> Callable[[Tensor], Tensor]:
        return ACTIVATIONS[self.act_name]

    @property
    def act_(self) -> Callable[[Tensor], Tensor]:
        """The activation, overwriting its argument."""
        return _IN_PLACE[self.act_name]

    def n_states(self, output: str | None = None) -> int:
        """Number of relaxing layers: every synapse's target, but the readout with ``output="ce"``."""
        return len(self.synapses) - ((output or self.relaxation.output) == "ce")

    def forward(self, x: Tensor) -> Tensor:
        """The prediction (B, n_classes) at the end of the free phase of ``net.relaxation`` from rest."""
        return free_prediction(self, x, self.relaxation)

    def extra_repr(self) -> str:
        return f"act={self.act_name}, pools={self.pools}, relaxation={self.relaxation}"


# ------------------------------------------------------------------------------------ functional pieces


def drive(net: EnergyNet, index: int, s: Tensor) -> Drive:
    """f_l(s_l) for synapse ``index``: W s + b (dense, the state flattened) or max-pooled W ⋆ s + b (conv)."""
    synapse = net.chain[index]
    if isinstance(synapse, nn.Linear):
        return Drive(F.linear(s.flatten(1), synapse.weight, synapse.bias))
    value = F.conv2d(s, synapse.weight, synapse.bias)
    if net.pools[index] == 1:
        return Drive(value)
    pooled, indices = F.max_pool2d(value, net.pools[index], return_indices=True)
    return Drive(pooled, indices, value.shape)


def repeat_drive(d: Drive, copies: int) -> Drive:
    """f_0(x) for ``copies`` stacked copies of the batch (the nudged phases run batched together)."""
    if copies == 1:
        return d
    ones = [1] * (d.value.dim() - 1)
    indices = None if d.indices is None else d.indices.repeat(copies, *ones)
    return Drive(d.value.repeat(copies, *ones), indices, d.unpooled_shape)


def feedback(net: EnergyNet, index: int, s_next: Tensor, d: Drive, s_shape: Sequence[int]) -> Tensor:
    """f_lᵀ(s_{l+1}) = ∂(s_{l+1} · f_l(s_l))/∂s_l for synapse ``index``, shaped like s_l (``s_shape``)."""
    synapse = net.chain[index]
    if isinstance(synapse, nn.Linear):
        return (s_next @ synapse.weight).view(len(s_next), *s_shape)
    if d.indices is not None:
        s_next = F.max_unpool2d(s_next, d.indices, net.pools[index], output_size=d.unpooled_shape[-2:])
    return F.conv_transpose2d(s_next, synapse.weight)


def synapse_grads(net: EnergyNet, index: int, pre: Tensor, post: Tensor, d: Drive | None = None) -> list[Tensor]:
    """∂/∂(W_l, b_l) of Σ_batch post · f_l(pre), with the pooling indices of ``d`` (conv): [weight, bias]."""
    synapse = net.chain[index]
    if isinstance(synapse, nn.Linear):
        return [post.t() @ pre.flatten(1), post.sum(0)]
    if d is not None and d.indices is not None:
        post = F.max_unpool2d(post, d.indices, net.pools[index], output_size=d.unpooled_shape[-2:])
    weight = torch.nn.grad.conv2d_weight(pre, synapse.weight.shape, post)
    return [weight, post.sum((0, 2, 3))]


def zero_states(net: EnergyNet, x: Tensor, output: str | None = None) -> list[Tensor]:
    """The states s_1..s_n at rest, zeros (Laborieux's initialisation), for the batch of ``x`` (B rows; its dtype
    and device); ``output`` (default the net's own) says whether the last synapse's target is a state."""
    return [x.new_zeros(len(x), *shape) for shape in net.state_shapes[: net.n_states(output)]]


def readout(net: EnergyNet, states: Sequence[Tensor]) -> Tensor:
    """Logits of the readout outside the dynamics (``output="ce"``)."""
    synapse = net.chain[-1]
    return F.linear(states[-1].flatten(1), synapse.weight, synapse.bias)


def prediction(net: EnergyNet, states: Sequence[Tensor], output: str | None = None) -> Tensor:
    """The network's output at ``states``: the last state (se) or the readout's logits (ce)."""
    if (output or net.relaxation.output) == "ce":
        return readout(net, states)
    return states[-1].flatten(1)


def drives_of(net: EnergyNet, x_drive: Drive, states: Sequence[Tensor]) -> list[Drive]:
    """f_l(s_l) for every synapse into a state: f_0(x) as given, then each state's drive of the next."""
    return [x_drive] + [drive(net, i, s) for i, s in enumerate(states[:-1], start=1)]


def primitive(net: EnergyNet, x_drive: Drive, states: Sequence[Tensor]) -> tuple[Tensor, list[Drive]]:
    """Per-sample Φ(x, s) (shape (B,)) and the drives f_l(s_l) it was made of (reused by a step)."""
    drives = drives_of(net, x_drive, states)
    phi = sum((s * d.value).flatten(1).sum(1) for s, d in zip(states, drives, strict=True))
    return phi, drives


def primitive_grads(net: EnergyNet, x: Tensor, states: Sequence[Tensor], coef: Tensor | None = None,
                    x_drive: Drive | None = None) -> list[Tensor]:  # fmt: skip
    """Σ_r c_r ∂Φ(x, s_r)/∂θ over the rows r of ``states``, for the synapses into states (every synapse but the
    readout with ``output="ce"``), as [weight, bias] pairs in ``net.parameters()`` order. ``states`` may stack K
    copies of the batch (K·B rows), all with the input ``x`` (B rows); ``coef`` (K·B,) defaults to ones, which gives
    the batch sum of ∂Φ/∂θ. For a dense synapse ∂Φ/∂W_l = s_{l+1} s_lᵀ and ∂Φ/∂b_l = s_{l+1}: the sum over rows is
    one product per synapse whatever K is; the input is the same in every copy, so for the first synapse the copies'
    weighted s_1 are summed before the product. ``x_drive``: f_0(x) when already computed (its pooling indices)."""
    batch = len(x)
    copies = len(states[0]) // batch
    x_drive = drive(net, 0, x) if x_drive is None else x_drive
    grads: list[Tensor] = []
    for index, post in enumerate(states):
        if coef is not None:
            post = post * coef.view(-1, *[1] * (post.dim() - 1))
        if index == 0:
            grads += synapse_grads(net, 0, x, post.view(copies, batch, *post.shape[1:]).sum(0), x_drive)
        else:
            pre = states[index - 1]
            pooled = net.pools[index] > 1
            grads += synapse_grads(net, index, pre, post, drive(net, index, pre) if pooled else None)
    return grads


def primitive_difference(net: EnergyNet, x: Tensor, plus: Sequence[Tensor], minus: Sequence[Tensor],
                         scale: float = 1.0, x_drive: Drive | None = None) -> list[Tensor]:  # fmt: skip
    """``scale`` times the batch mean of ∂Φ/∂θ(s⁺) − ∂Φ/∂θ(s⁻) (states (B, ...) each), the contrast every
    contrastive rule is made of: ``scale · (primitive_grads(plus) − primitive_grads(minus)) / B``. Computed as one
    :func:`primitive_grads` over both phases stacked with coefficients ±scale/B (an optimisation: one product per
    synapse, the first synapse's from s_1⁺ − s_1⁻, and no pass over the gradients to scale them)."""
    batch = len(x)
    stacked = [torch.cat([a, b]) for a, b in zip(plus, minus, strict=True)]
    coef = torch.cat([x.new_full((batch,), scale / batch), x.new_full((batch,), -scale / batch)])
    return primitive_grads(net, x, stacked, coef, x_drive)


Nudge = Callable[[Tensor], Tensor]  # the last state ↦ the term −β ∂ℓ/∂s added to ∂Φ/∂s of the last state


class Relaxed(NamedTuple):
    states: list[Tensor]
    steps: int  # steps taken
    residual: float  # mean |change| of the state units in the last step (0 when no step was taken)
    previous_residual: float  # the same in the step before (0 with fewer than two steps)
    energies: Tensor | None  # per step (steps + 1,), batch-mean E + β ℓ, when traced
    residuals: Tensor | None  # per step (steps,), the mean |change|, when traced


def step(net: EnergyNet, x_drive: Drive, states: Sequence[Tensor], eps: float, nudge: Nudge | None = None,
         drives: list[Drive] | None = None, clamp: Tensor | None = None,
         out: Sequence[Tensor] | None = None) -> list[Tensor]:  # fmt: skip
    """One synchronous step s ← σ((1 − ε) s + ε ∂(Φ − βℓ)/∂s); ``drives`` (f_l(s_l)) when already computed;
    ``clamp`` holds the last state at a fixed value (the clamped phase of CHL); ``out`` (no autograd) receives the
    new states, so that a relaxation allocates nothing per step."""
    if drives is None:
        drives = drives_of(net, x_drive, states)
    new = []
    last = len(states) - 1
    in_place = not torch.is_grad_enabled()  # fresh tensors may then be overwritten (autograd keeps its inputs)
    for i, s in enumerate(states):  # s is s_{i+1}: driven by f_i(s_i) from below, f_{i+1}ᵀ(s_{i+2}) from above
        if i == last and clamp is not None:
            new.append(clamp)
            continue
        target = out[i] if out is not None and in_place else None
        total, fresh = drives[i].value, i > 0  # f_0(x) is reused by every step: never overwritten
        if i < last:
            total, fresh = add_feedback(net, i + 1, states[i + 1], drives[i + 1], total, target), True
        if i == last and nudge is not None:
            total, fresh = torch.add(total, nudge(s), out=target), True
        if eps != 1.0:
            total, fresh = torch.lerp(s, total, eps, out=target), True
        new.append(net.act_(total) if in_place and fresh else net.act(total))
    return new


def add_feedback(net: EnergyNet, index: int, s_next: Tensor, d: Drive, below: Tensor,
                 out: Tensor | None = None) -> Tensor:  # fmt: skip
    """below + f_lᵀ(s_{l+1}) as a new tensor (or into ``out``); dense synapses fuse the sum into the product."""
    synapse = net.chain[index]
    if isinstance(synapse, nn.Linear) and below.dim() == 2:
        return torch.addmm(below, s_next, synapse.weight, out=out)
    return torch.add(below, feedback(net, index, s_next, d, below.shape[1:]), out=out)


def relax(net: EnergyNet, x: Tensor | Drive, states: Sequence[Tensor], steps: int, *, eps: float = 1.0,
          tol: float = 0.0, nudge: Nudge | None = None, cost: Callable[[Tensor], Tensor] | None = None,
          clamp: Tensor | None = None, trace: bool = False) -> Relaxed:  # fmt: skip
    """Run up to ``steps`` steps from ``states`` (the input's drive f_0(x) computed once); stop early when the
    mean absolute change of the state units in a step (:func:`mean_change`) falls below ``tol``. ``cost`` (last
    state ↦ per-sample β ℓ) adds the nudging cost to the traced energy. Differentiable: autograd through it is
    backprop through time."""
    x_drive = x if isinstance(x, Drive) else drive(net, 0, x)
    states = list(states)
    energies: list[Tensor] = []
    residuals: list[Tensor] = []
    # Without autograd the states alternate between two buffers of this call's own (never the caller's tensors),
    # and a third serves the residual: large tensors allocated at every step cost page faults on the CPU.
    buffers = None if torch.is_grad_enabled() else [[torch.empty_like(s) for s in states] for _ in range(3)]
    taken = 0
    while taken < steps:
        drives = None
        if trace:
            phi, drives = primitive(net, x_drive, states)
            energies.append(_mean_energy(states, phi, cost))
        new = step(net, x_drive, states, eps, nudge, drives, clamp, buffers[taken % 2] if buffers else None)
        taken += 1
        if trace or tol > 0 or taken >= steps - 1:
            residuals.append(mean_change(new, states, buffers[2] if buffers else None))
        states = new
        if tol > 0 and float(residuals[-1].detach()) < tol:
            break
    if trace:
        energies.append(_mean_energy(states, primitive(net, x_drive, states)[0], cost))
    return Relaxed(
        states,
        taken,
        float(residuals[-1].detach()) if residuals else 0.0,
        float(residuals[-2].detach()) if len(residuals) > 1 else 0.0,
        torch.stack(energies).detach() if trace else None,
        torch.stack(residuals).detach() if trace and residuals else None,
    )


def free_phase(net: EnergyNet, x: Tensor | Drive, relaxation: Relaxation, start: Sequence[Tensor] | None = None,
               trace: bool = False) -> Relaxed:  # fmt: skip
    """The free phase: the input clamped, :func:`relax` for ``relaxation.steps`` steps of ``relaxation.eps`` (early
    stop at ``relaxation.tol``) from ``start``, by default from rest (:func:`zero_states`)."""
    if start is None:
        start = zero_states(net, x.value if isinstance(x, Drive) else x, relaxation.output)
    return relax(net, x, start, relaxation.steps, eps=relaxation.eps, tol=relaxation.tol, trace=trace)


def free_prediction(net: EnergyNet, x: Tensor, relaxation: Relaxation) -> Tensor:
    """The network's output (B, n_classes) at the end of the free phase from rest: ``net(x)`` with
    ``net.relaxation``, a rule's prediction with its own. Differentiable (autograd through it is backprop through
    time over the free phase)."""
    return prediction(net, free_phase(net, x, relaxation).states, relaxation.output)


def mean_change(new: Sequence[Tensor], old: Sequence[Tensor], scratch: Sequence[Tensor] | None = None) -> Tensor:
    """Mean |s_new − s_old| over every state unit of the batch: the residual of a relaxation step. A mean, not a
    maximum, so that a few units left oscillating (as CHL's free phase does late in training) do not count as a
    network that failed to settle. ``scratch`` (shaped like the states) holds the differences when given."""
    outs = scratch if scratch is not None else [None] * len(new)
    total = sum(torch.sub(a, b, out=o).abs_().sum() for a, b, o in zip(new, old, outs, strict=True))
    return total / sum(a.numel() for a in new)


def mean_energy(net: EnergyNet, x_drive: Drive, states: Sequence[Tensor]) -> Tensor:
    """Batch mean of E = ½ Σ‖s_l‖² − Φ(x, s) at ``states`` (any values, e.g. the potentials of a spiking phase)."""
    return _mean_energy(states, primitive(net, x_drive, states)[0], None)


def _mean_energy(states: Sequence[Tensor], phi: Tensor, cost: Callable[[Tensor], Tensor] | None) -> Tensor:
    """Batch mean of E = ½ Σ‖s_l‖² − Φ (plus the nudging cost β ℓ when given)."""
    e = 0.5 * sum(s.square().flatten(1).sum(1) for s in states) - phi
    return (e if cost is None else e + cost(states[-1])).mean()
