"""Contrastive learning and equilibrium propagation (Whittington & Bogacz 2019, Trends Cogn. Sci., Box 2): what the
three contrastive rules share.

An energy-based network (:mod:`bioprop.nets.energy`, ``--arch ebm:...``) relaxes twice: in a free phase with only
the input clamped, then with the target acting on the output. The weights change by the difference of Hebbian
terms between the phases: the free phase is unlearnt (anti-Hebbian), the target phase learnt. With
Φ = Σ_l s_{l+1} · f_l(s_l) the network's primitive function (so ∂Φ/∂W_l = s_{l+1} s_lᵀ for a dense synapse):

- ``ep``, equilibrium propagation (Scellier & Bengio 2017; Laborieux et al. 2021): :mod:`bioprop.rules.equilibrium`,
  ĝ = −(∂Φ_{β₂}/∂θ(s^{β₂}) − ∂Φ_{β₁}/∂θ(s^{β₁}))/(β₂ − β₁) between two nudged equilibria.
- ``chl``, contrastive Hebbian learning (Movellan 1991; Xie & Seung 2003), and ``generec`` (O'Reilly 1996):
  :mod:`bioprop.rules.hebbian`, the second phase clamps the output to the target.

This module holds their common part: the options of the free phase, its convergence guard, persistent particles,
the prediction path and the reference gradient.

- Prediction (:meth:`Rule.predict`, which :func:`bioprop.metrics.evaluate` uses): the free phase from rest with the
  rule's ``free_steps``, ``eps``, ``tol`` and ``output`` (:func:`bioprop.nets.energy.free_prediction`). The rule
  never changes the network: ``net(x)`` keeps relaxing with the :class:`~bioprop.nets.energy.Relaxation` the
  network was built with.
- One output loss per run, :attr:`Rule.loss`, from the ``output`` option (``ep``: ``ce`` by default or ``se``;
  ``chl`` and ``generec``: ``se`` only, their clamped phase needs the last layer to be a state): ``Update.loss`` is
  its batch mean at the end of the training free phase, the test loss its mean over the prediction path: the same
  number on the same batch with the same weights (without persistent particles).
- Reference gradient (:meth:`Rule.reference_grads`): backprop through time of the batch-mean loss over the
  prediction path's free phase from rest (autograd through the relaxation).
- Batch reduction: each sample relaxes on its own energy; the update is the batch mean of the per-sample ĝ, on the
  scale of the gradient of the batch-mean loss. Every update is written as a descent direction.
- Persistent particles (``persistent=true``; Scellier & Bengio 2017): each training example's free state
  is kept, keyed by its position in the training set (the ``index`` the trainer passes to ``backward``), and its
  next free phase starts there, which lets a short free phase settle over the epochs. The free states of a step are
  returned in ``Update.state`` and kept by ``backward`` only (:meth:`commit`): ``grads`` reads the particles and
  never writes them. A batch without ``index`` starts from rest and keeps nothing. The particles are part of
  :meth:`state_dict` (dense buffers, one row per example up to the largest index seen), so a resumed run continues
  them bit-identically. The free phase of the prediction path always starts from rest.
- Purity: ``grads`` changes nothing; the trace schedule (``trace_every``) and ``ep``'s random signs follow the step
  count of :meth:`backward` (:attr:`Rule.step`, checkpointed).

Step budgets (``free_steps``, ``nudged_steps``, ``clamped_steps``) are at most 10 000 each.

Guards: a free phase whose last step still changes the state units by more than ``max_residual`` on average
(non-convergence, e.g. an oscillation of the synchronous updates, or non-finite states) raises
:class:`~bioprop.errors.DivergenceError` naming the settings to change (:class:`Unstable`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import Drive, EnergyNet, Relaxation, Relaxed
from bioprop.rules.base import (
    CardEntry,
    Entry,
    FigureSpec,
    Options,
    Rule,
    Trace,
    Unstable,
    Update,
    backprop_update,
    make_card,
    option,
)
from bioprop.rules.options import count, non_negative, positive

MAX_STEPS = 10_000  # steps of one phase; more would run for minutes per batch without a word


def steps_option(default: int, help: str) -> Any:
    """An option counting the steps of a phase: positive, at most :data:`MAX_STEPS`."""
    return count(default, help, MAX_STEPS, says="must be a positive number of steps")


@dataclass(frozen=True)
class ContrastiveOptions(Options):
    """The free phase's options, shared by ``ep``, ``chl`` and ``generec``."""

    free_steps: int = steps_option(30, "T1: steps of the free phase (from rest)")
    eps: float = option(1.0, "step size ε of s ← σ((1 − ε) s + ε ∂Φ/∂s); 1 is the discrete form, < 1 descends E",
                        check=lambda v: 0.0 < v <= 1.0, check_says="must be in (0, 1]")  # fmt: skip
    tol: float = non_negative(0.0, "end the free phase once the mean |change| of the states in a step is below tol "
                              "(0: no)")  # fmt: skip
    max_residual: float = positive(
        1e-2,
        "largest mean |change| of the states allowed in the free phase's last step "
        "(and in a nudged phase that stopped shrinking)",
    )
    trace_every: int = non_negative(20, "record energy and residual traces every N batches (0: never)", int)
    persistent: bool = option(False, "persistent particles: each example's free phase starts from its last free state")
    output: str = option("se", "output loss: se (the last layer is a state, clamped to the target)", choices=("se",))


# ------------------------------------------------------------------------------------ persistent particles


class Particles:
    """Persistent particles (Scellier & Bengio 2017): each training example's last free state, keyed by its
    position in the training set. Dense buffers: ``states[l]`` (N, *shape of s_{l+1}) and ``seen`` (N,) bool, grown
    (geometrically) to hold the largest index written; kept on the device of the states written last."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.clear()

    def clear(self) -> None:
        """Forget every particle."""
        self.states: list[Tensor] = [torch.zeros(0, *shape) for shape in self.shapes]
        self.seen = torch.zeros(0, dtype=torch.bool)

    def start(self, rest: list[Tensor], index: Tensor | None) -> list[Tensor]:
        """The free phase's first states: ``rest`` (B rows per layer, overwritten) with the rows of the examples seen
        before replaced by their kept state; ``rest`` as it is for a batch without ``index``."""
        if index is None or not len(self.seen):
            return rest
        at = index.to(self.seen.device)
        inside = at < len(self.seen)
        known = torch.zeros_like(inside)
        known[inside] = self.seen[at[inside]]
        rows = known.nonzero().squeeze(1)
        if not len(rows):
            return rest
        for s, kept in zip(rest, self.states, strict=True):
            s[rows.to(s.device)] = kept[at[rows]].to(s)
        return rest

    def check_room(self, index: Tensor | None, like: list[Tensor], rule: str) -> None:
        """Refuse, before any work, an ``index`` whose particle buffers would not fit in half the machine's memory
        (a :class:`BioPropError` naming the index): positions in a training set, not arbitrary keys."""
        if index is None or not len(index):
            return
        need = int(index.max()) + 1
        if need <= len(self.seen):  # the buffers already hold it
            return
        row = sum(math.prod(shape) for shape in self.shapes) * like[0].element_size()
        try:
            memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return
        if need * row > memory / 2:
            raise BioPropError(f"rule {rule}: index {need - 1} would need persistent particles for {need:,} "
                               f"examples ({need * row / 2**30:.1f} GiB); indices are positions in the training "
                               "set")  # fmt: skip

    def write(self, index: Tensor, states: list[Tensor]) -> None:
        """Keep ``states`` (B rows per layer) as the particles of the examples at ``index`` (B,)."""
        like = states[0]
        need = int(index.max()) + 1
        if need > len(self.seen) or self.seen.device != like.device or self.states[0].dtype != like.dtype:
            size = max(need, 2 * len(self.seen)) if need > len(self.seen) else len(self.seen)
            grown = [like.new_zeros(size, *shape) for shape in self.shapes]
            for new, old in zip(grown, self.states, strict=True):
                new[: len(old)] = old.to(new)
            seen = torch.zeros(size, dtype=torch.bool, device=like.device)
            seen[: len(self.seen)] = self.seen.to(like.device)
            self.states, self.seen = grown, seen
        at = index.to(like.device)
        for kept, s in zip(self.states, states, strict=True):
            kept[at] = s.detach()
        self.seen[at] = True

    def state_dict(self) -> dict[str, Tensor]:
        """``particles.seen`` and ``particles.<l>`` up to the largest index written (nothing before the first)."""
        if not bool(self.seen.any()):
            return {}
        size = int(self.seen.nonzero().max()) + 1
        return {"particles.seen": self.seen[:size].clone(),
                **{f"particles.{i}": s[:size].clone() for i, s in enumerate(self.states)}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Tensor], rule: str) -> None:
        """Restore :meth:`state_dict`'s tensors (taken out of ``state``); shapes that do not fit the network are a
        :class:`BioPropError`."""
        seen = state.pop("particles.seen", None)
        states = [state.pop(f"particles.{i}", None) for i in range(len(self.shapes))]
        if seen is None and all(s is None for s in states):
            self.clear()
            return
        for s, shape in zip(states, self.shapes, strict=True):
            if seen is None or s is None or tuple(s.shape) != (len(seen), *shape):
                raise BioPropError(f"rule {rule}: the checkpoint's persistent particles do not fit this network")
        self.seen, self.states = seen.to(torch.bool).clone(), [s.clone() for s in states]


# ------------------------------------------------------------------------------------------------ the rules


class FreePhase(NamedTuple):
    """A training step's free phase: the input's drive f_0(x), the relaxation and the state to keep (particles)."""

    x_drive: Drive
    relaxed: Relaxed
    keep: tuple[Tensor, list[Tensor]] | None


def phase_declarations(second: str, label: str) -> tuple[tuple[Trace, ...], tuple[FigureSpec, ...]]:
    """The traces (energy and residual of the free and the ``second`` phase) and the ``energy.png`` figure of a
    contrastive rule. The energy panels are not drawn relative to step 0: the free phase starts at rest, where
    E = 0."""
    traces = (
        Trace("free energy", "energy E = ½Σ‖s_l‖² − Φ (batch mean)"),
        Trace("free residual", "mean |Δs| of the step"),
        Trace(f"{second} energy", label),
        Trace(f"{second} residual", "mean |Δs| of the step"),
    )
    figure = FigureSpec("energy.png", f"free and {second} phases per relaxation step", tuple(t.name for t in traces))
    return traces, (figure,)


class Contrastive(Rule):
    """The phases shared by ``ep``, ``chl`` and ``generec``; subclasses implement :meth:`contrast`, the second phase
    and how the update combines the phases."""

    Options = ContrastiveOptions
    networks = frozenset({"energy"})
    opts: ContrastiveOptions

    def __init__(self, net: EnergyNet, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        synapses = {id(p) for synapse in net.synapses for p in synapse.parameters()}
        outside = next((name for name, p in net.named_parameters() if id(p) not in synapses), None)
        if outside is not None:
            raise BioPropError(f"rule {self.name}: parameter {outside!r} is not a synapse of the energy-based network")
        o = self.opts
        try:
            #: The free phase's settings, the training phase's and the prediction path's.
            self.relaxation = Relaxation(o.free_steps, o.eps, o.tol, o.output).check(net)
        except BioPropError as exc:
            raise BioPropError(f"rule {self.name}: {exc}") from None
        shapes = net.state_shapes[: net.n_states(o.output)]
        self.particles = Particles(shapes) if o.persistent else None

    # ------------------------------------------------------------------------------ prediction and reference

    def prediction(self, x: Tensor) -> Tensor:
        """The free phase from rest with the rule's settings; its output (B, n_classes)."""
        return energy.free_prediction(self.net, x, self.relaxation)

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Backprop through time of the batch-mean loss over the free phase from rest (the prediction path)."""
        return backprop_update(self.net, x, y, self.loss, self.prediction).grads

    # ------------------------------------------------------------------------------------------------ a step

    @torch.no_grad()  # the relaxations then reuse their buffers in place
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        return self.contrast(x, y, index, trace=False)

    @torch.no_grad()
    def train_update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """:meth:`update`, with the energy and residual traces every ``trace_every`` steps (from step 0)."""
        every = self.opts.trace_every
        return self.contrast(x, y, index, trace=every > 0 and self.step % every == 0)

    def contrast(self, x: Tensor, y: Tensor, index: Tensor | None, trace: bool) -> Update:
        """The update for a checked batch: the free phase (:meth:`free_phase`), the second phase, the update."""
        raise NotImplementedError

    def free_phase(self, x: Tensor, index: Tensor | None, trace: bool) -> FreePhase:
        """Relax from rest (or from the examples' persistent particles) with the input clamped; non-convergence
        within the budget is :class:`Unstable`. Pure: the states to keep are returned, not kept."""
        net, o = self.net, self.opts
        x_drive = energy.drive(net, 0, x)
        start = energy.zero_states(net, x, o.output)
        if self.particles is not None:
            self.particles.check_room(index, start, self.name)
            start = self.particles.start(start, index)
        free = energy.free_phase(net, x_drive, self.relaxation, start, trace)
        if not free.residual <= o.max_residual:  # NaN fails too
            what = "non-finite states"
            if math.isfinite(free.residual):
                what = f"states still changing by {free.residual:.3g} on average"
            raise Unstable(self.name, f"the free phase did not converge ({what} in step {free.steps}, max_residual "
                           f"{o.max_residual:g})", f"raise free_steps (now {o.free_steps}) or lower eps (now "
                           f"{o.eps:g}) or the learning rate", named=("free_steps", "eps", "max_residual"))  # fmt: skip
        keep = (index, free.states) if self.particles is not None and index is not None else None
        return FreePhase(x_drive, free, keep)

    def commit(self, update: Update) -> None:
        """Keep the step's free states as the examples' persistent particles."""
        if self.particles is not None and update.state is not None:
            self.particles.write(*update.state)

    def named(self, grads: list[Tensor]) -> dict[str, Tensor]:
        """``grads`` in ``net.parameters()`` order, keyed by name."""
        return {name: g for (name, _), g in zip(self.net.named_parameters(), grads, strict=True)}

    @staticmethod
    def traces(free: Relaxed, second: Relaxed, name: str) -> dict[str, Tensor] | None:
        """The energy and residual per step of both phases, when traced."""
        if free.energies is None:
            return None
        traces = {"free energy": free.energies, "free residual": free.residuals}
        if second.energies is not None:
            traces[f"{name} energy"] = second.energies
        if second.residuals is not None:
            traces[f"{name} residual"] = second.residuals
        return traces

    # -------------------------------------------------------------------------------------------- checkpoint

    def state_dict(self) -> dict[str, Tensor]:
        """The step count and, with ``persistent``, the particles."""
        particles = self.particles.state_dict() if self.particles is not None else {}
        return {**super().state_dict(), **particles}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        if self.particles is not None:
            self.particles.load_state_dict(state, self.name)
        super().load_state_dict(state)


def contrastive_card(phases: str) -> dict[str, CardEntry]:
    """The card of the contrastive rules; ``phases`` names the two phases a global signal switches between."""
    return make_card(
        linear=(True, "the update is local and Hebbian; the network's own nonlinear relaxation carries the error"),
        derivatives=(True, "no derivative of the activation is computed: the relaxation propagates the nudge"),
        weight_transport=(False, "feedback uses the transposed forward weights: the connections are symmetric"),
        spikes=(False, "rate units"),
        clock=(False, f"a global signal switches between the {phases} phases"),
        targets=(False, "targets are given by the task"),
    )
