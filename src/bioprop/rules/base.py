"""The learning-rule contract (written out in ``docs/contract.md``): the :class:`Rule` every rule subclasses.

A rule is bound to a network with :func:`create`. For one batch ``(x, y)`` (``x`` of shape (B, ...) in the
network's dtype and on its device, ``y`` of shape (B,), int64 class indices; optionally ``index`` (B,) int64, the
examples' positions in the training set, for rules with per-example state):

- ``rule.grads(x, y)`` is the rule's update (:class:`Update`), keyed like ``net.named_parameters()``, trainable
  parameters only, as a descent direction. It is pure: the same batch gives the same update and leaves the rule's
  state and the global random state as they were.
- ``rule.backward(x, y)`` writes the same update into each trainable parameter's ``.grad`` (accumulating, as
  autograd does), so any ``torch.optim`` optimizer applies it; it is where the rule's state advances
  (:meth:`Rule.commit`, the step count); returns ``(loss, prediction)``.
- ``rule.reference_grads(x, y)`` is the exact gradient the rule approximates (backprop of the run's output loss
  unless the rule says otherwise).
- ``rule.predict(x)`` is the network's output as the rule reads it: the one prediction path evaluation uses.
- ``rule.loss`` (:mod:`bioprop.losses`) is the run's one output loss: the update, the reference, ``Update.loss``
  and the test loss all use it.
- ``rule.card`` says, for each of the six implausibilities of backprop (Bengio et al. 2015), whether the rule
  removes it and why.

A rule never changes what ``net(x)`` computes. Randomness comes from :meth:`Rule.generator`, seeded by the rule's
``seed``, its step count and a stream number, never from the global generator. A frozen parameter
(``requires_grad=False``) gets no update, though errors still pass through its layer.

Every call checks the batch first (:mod:`bioprop.checks`) and raises :class:`BioPropError` naming the problem
before any work: x or y not tensors, labels not 1-D int64, out of range or of another length than x, an empty
batch, x of another dtype or device than the network or of a shape it does not accept, a NaN or inf in x, a
malformed ``index``. A rule's divergence guards, and a non-finite loss, first look for a non-finite parameter (or
rule state): if one is found the :class:`DivergenceError` names it, not a setting of the rule. Otherwise a guard's
message says what it measured; the options the user set away from their defaults (:meth:`Rule.given_options`)
come next, as the first suspects, and only then the settings that usually cause such a failure.

A stochastic layer (``nn.Dropout`` in training mode) draws its mask once per call, in forward order, as ``net(x)``
would from the same random state; :func:`bioprop.metrics.update_angles` replays that state for the reference.

Rules with an inner dynamics return per-step traces in ``Update.traces`` (declared in ``trace_specs``);
``backward`` accumulates them and ``rule.epoch_traces()`` hands the training loop their mean since the last call.
``rule.prepare()`` runs once before a fresh run's first epoch (a phase without targets, e.g. reaching a
self-predicting state) and returns its traces. ``rule.plan_warnings(steps)`` is what a trainer about to make ``steps``
calls of ``backward`` says first (as a :class:`PlanWarning`): a setting that makes such a run do other than it seems,
e.g. a pre-training of the feedback that lasts the whole run. What the report draws for a rule is what it declares
(``trace_specs``, ``diagnostic_specs``, ``figures``).

Subclasses declare an :class:`Options` dataclass and implement :meth:`Rule.update`; :meth:`Rule.commit` when a step
leads to state of their own; :meth:`Rule.reference` and :meth:`Rule.prediction` when theirs differ from the defaults.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bioprop import checks, losses
from bioprop import nets as walk_nets
from bioprop.errors import BioPropError, DivergenceError
from bioprop.rules.declarations import (  # noqa: F401  (re-exported: the names rules import from here)
    IMPLAUSIBILITIES,
    CardEntry,
    Diagnostic,
    FigureSpec,
    Trace,
    make_card,
)
from bioprop.rules.options import Option, Options, option, say  # noqa: F401  (re-exported)
from bioprop.rules.registry import _REGISTRY, Entry, create, register  # noqa: F401  (re-exported)
from bioprop.rules.rule_state import (  # noqa: F401  (re-exported)
    STATE_NAME,
    name_tensor,
    refuses_other_rules,
    tensor_name,
)
from bioprop.rules.updates import Update, add_grads, backprop_update, local_grads  # noqa: F401  (re-exported)


class PlanWarning(UserWarning):
    """A line of :meth:`Rule.plan_warnings`, given by the trainer (:mod:`bioprop.train`) through :mod:`warnings` before
    a run's first step; the CLI prints it as ``bioprop: warning: <message>``."""


class Unstable(DivergenceError):
    """A guard of a rule's inner dynamics tripped: ``what`` it measured and ``advice``, the settings that usually
    cause it (``named``: the options the advice already names with their values). :meth:`Rule.guarded` names a
    non-finite parameter, state or input first, then re-raises it as :meth:`Rule.diverged` (with the options the
    user set)."""

    def __init__(self, rule: str, what: str, advice: str = "", named: tuple[str, ...] = ()) -> None:
        super().__init__(f"{rule}: {what}" + (f"; {advice}" if advice else ""))
        self.what, self.advice, self.named = what, advice, named


class Rule:
    """Base class: subclasses declare their ``Options`` (a frozen :class:`Options` dataclass) and implement
    :meth:`update`. Build rules with :func:`create`, which passes the registry entry (name, family, paper, card) and
    the options."""

    #: The rule's options dataclass; ``options`` is its table of :class:`Option` (derived, for help and checks).
    Options: ClassVar[type[Options]] = Options
    options: ClassVar[dict[str, Option]] = {}
    #: The hidden activation ``--activation auto`` picks for this rule on a feedforward net (None: relu); a rule
    #: whose dynamics need a particular nonlinearity declares it (dendritic: tanh). A rule never changes the net.
    activation: ClassVar[str | None] = None
    #: The network ``--arch auto`` builds for this rule (None: the default of the kinds it trains,
    #: ``bioprop.config.DEFAULT_ARCH``); e.g. rflo, which trains rate networks only, declares ``rnn:50``.
    arch: ClassVar[str | None] = None
    #: The kinds of network the rule trains: "feedforward" (:func:`bioprop.nets.walk`), "energy" (EnergyNet).
    networks: ClassVar[frozenset[str]] = frozenset({"feedforward"})
    #: Per-step traces in ``Update.traces``, per-epoch diagnostics and the figures drawn from them.
    trace_specs: ClassVar[tuple[Trace, ...]] = ()
    diagnostic_specs: ClassVar[tuple[Diagnostic, ...]] = ()
    figures: ClassVar[tuple[FigureSpec, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.options = cls.Options.declared()
        load = cls.__dict__.get("load_state_dict")
        if load is not None and not getattr(load, "refuses_other_rules", False):
            cls.load_state_dict = refuses_other_rules(load)  # type: ignore[method-assign]

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        self.net = net
        self.name, self.family, self.paper, self.card = entry.name, entry.family, entry.paper, entry.card
        self.opts = self.Options.parse(entry.name, options)
        self._given = {key: getattr(self.opts, key) for key in options if key not in entry.presets}
        try:
            checks.network_dtype(net)
        except BioPropError as exc:
            raise BioPropError(f"rule {self.name}: {exc}") from None
        #: The run's one output loss (the ``output`` option where the rule has one, else cross-entropy): the
        #: update, the reference gradient and every reported loss use it.
        self.loss = losses.get(getattr(self.opts, "output", "ce"))
        #: Training steps taken (calls of :meth:`backward`): with ``seed``, what :meth:`generator` draws from.
        self.step = 0
        self._trace_sums: dict[str, Tensor] = {}
        self._trace_counts: dict[str, int] = {}
        self._names: dict[int, tuple[Tensor, str]] = {}
        self._fitted: tuple[tuple, int] | None = None  # (input shape, dtypes, devices) checked, and n_classes
        self._copy_input = walk_nets.writes_input(net)
        self._first_param = next(net.parameters(), torch.empty(0))
        #: Batches are time-major sequences, x (T, B, C) and y (T, B) or (T, B, K) (:func:`bioprop.checks.time_major`).
        self.sequence = checks.time_major(net)

    @classmethod
    def parse_options(cls, rule: str, given: dict[str, Any]) -> dict[str, Any]:
        """The options ``given`` over the defaults, parsed and checked, as a plain mapping (:meth:`Options.parse`)."""
        return cls.Options.parse(rule, given).as_dict()

    # --------------------------------------------------------------------------------------------- the contract

    def grads(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """The rule's update for the batch, without touching ``.grad``. Pure: the same batch gives the same update
        and leaves the rule's state and the global random state as they were (module docstring). ``index`` (B,)
        int64: the examples' positions in the training set, for rules with per-example state."""
        x, index = self.check_batch(x, y, index)
        local = self.local_grads(x)
        update = self.guarded(self.update, x, y, index)
        return update._replace(grads=self.trainable({**update.grads, **local}), state=None)

    def backward(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Accumulate the rule's update into ``.grad``, adopt the state it leads to (:meth:`commit`) and count the
        step; returns the loss (scalar) and prediction (B, n_classes)."""
        x, index = self.check_batch(x, y, index)
        local = self.local_grads(x)
        update = self.guarded(self.train_update, x, y, index)
        result = self.apply_update(update._replace(grads={**update.grads, **local}))
        self.commit(update)
        self.step += 1
        return result

    def reference_grads(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The exact gradient the rule approximates (default: backprop of the run's output loss); leaves ``.grad``
        untouched."""
        x, _ = self.check_batch(x, y)
        return self.trainable(self.reference(x, y))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The network's output (B, n_classes) for ``x`` as the rule reads it: the one prediction path evaluation
        uses. ``net(x)`` unless the rule's dynamics define the output (a free phase)."""
        x, _ = self.check_batch(x, None)
        return self.prediction(x)

    # ------------------------------------------------------------------------------------- what subclasses write

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """The rule's update for a checked batch (``x`` detached), keyed by parameter name. Must not change the
        rule's state: a new state goes into ``Update.state`` and :meth:`commit` adopts it."""
        raise NotImplementedError

    def train_update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """The update :meth:`backward` applies (default :meth:`update`)."""
        return self.update(x, y, index)

    def commit(self, update: Update) -> None:
        """Adopt the state a training step led to (``update.state``); nothing by default."""

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The reference gradient for a checked batch."""
        return backprop_update(self.net, x, y, self.loss).grads

    def prediction(self, x: Tensor) -> Tensor:
        """:meth:`predict` for a checked batch."""
        return self.net(x)

    def generator(self, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded from the rule's ``seed`` option, the step count and ``stream``: every draw of a step is
        the same in :meth:`grads` and :meth:`backward` and changes from step to step, with no state of its own to
        checkpoint beyond :attr:`step`."""
        seed = int(getattr(self.opts, "seed", 0))
        digest = hashlib.sha256(f"{seed}/{self.step}/{stream}".encode()).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def local_grads(self, x: Tensor) -> dict[str, Tensor]:
        """The updates the network's own plastic modules make for the batch (:func:`local_grads`), computed before
        the rule's update (so that a dropout layer draws the mask the update's ``net(x)`` draws): in :meth:`grads` and
        :meth:`backward` they take the place of the rule's entries for those parameters (zero: the modules read
        them detached). A divergence is explained as the rule's own (:meth:`explain`)."""
        try:
            return local_grads(self.net, x)
        except DivergenceError as exc:
            raise self.explain(exc, x) from None

    def accumulate_grads(self, grads: dict[str, Tensor]) -> None:
        """Add ``grads`` (some parameters' updates, keyed like ``net.named_parameters()``) into the trainable
        parameters' ``.grad``: for a rule whose :meth:`backward` leaves ``.grad`` to autograd, the
        :meth:`local_grads` autograd does not compute."""
        for name, param in self.net.named_parameters():
            if name not in grads or not param.requires_grad:
                continue
            if param.grad is None:
                param.grad = grads[name].detach().clone()
            else:
                param.grad.add_(grads[name])

    # ---------------------------------------------------------------------------------------------- the checks

    def check_batch(self, x: Tensor, y: Tensor | None, index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Refuse a malformed batch with a :class:`BioPropError` naming the problem (module docstring); returns
        ``x`` detached (a copy when the network's first layers would overwrite it) and ``index``. ``y`` None: inputs
        only (:meth:`predict`). The network is run on one example only when the input's shape, dtype or device (or
        the network's) differ from the last batch."""
        checks.check_batch(x, y, inputs_only=y is None, sequence=self.sequence)
        if y is not None and y.is_floating_point() and self.loss.name != "se":
            raise BioPropError(f"rule {self.name}: float targets y (regression) need the squared error: create the "
                               f"rule with output='se' (its loss is {self.loss.name})")  # fmt: skip
        param = self._first_param  # the same object after net.double() / net.to(...), which change its dtype
        shape = (x.shape[0], *x.shape[2:]) if self.sequence else x.shape[1:]  # without the batch dimension
        key = (shape, x.dtype, x.device, param.dtype, param.device)
        if self._fitted is None or self._fitted[0] != key:
            self._fitted = (key, checks.fit_input(self.net, x))
        if y is not None:
            checks.check_labels(y, self._fitted[1])
        checks.check_finite_input(x)
        if index is not None:
            checks.check_index(index, x.shape[1] if self.sequence else len(x))
        return (x.detach().clone() if self._copy_input else x.detach()), index

    def guarded(self, compute: Callable[..., Update], x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """``compute(x, y, index)``; when it reports a divergence or returns a non-finite loss, a non-finite
        parameter or rule state is named first (:meth:`blame_nonfinite`), so that no setting is blamed for it."""
        try:
            update = compute(x, y, index)
        except DivergenceError as exc:
            raise self.explain(exc, x) from None
        if not math.isfinite(float(update.loss)):
            self.blame_nonfinite(x)
        return update

    def explain(self, exc: DivergenceError, x: Tensor | None = None) -> DivergenceError:
        """The error to raise for a guard's ``exc``: a non-finite parameter, rule state or input is raised first
        (:meth:`blame_nonfinite`); an :class:`Unstable` becomes :meth:`diverged`'s message; others stay as they are."""
        self.blame_nonfinite(x)
        return self.diverged(exc.what, exc.advice, exc.named) if isinstance(exc, Unstable) else exc

    def diverged(self, what: str, advice: str = "", named: tuple[str, ...] = ()) -> DivergenceError:
        """``RULE: what``, then the options the user set away from their defaults (the first suspects; those in
        ``named`` left out, as ``what`` or ``advice`` already give their values), then ``advice``."""
        message = f"{self.name}: {what}"
        given = self.describe_given(skip=named)
        if given:
            message += f"; suspects, first the options you set: {given}"
        if advice:
            message += f"; {'then ' if given else ''}{advice}"
        return DivergenceError(message)

    def given_options(self) -> dict[str, Any]:
        """The options passed to :func:`create`, parsed (neither the presets of the rule's name nor defaults), e.g.
        ``{"scale": 1e30}``: the settings a diagnosis names as suspects before any default."""
        return dict(self._given)

    def describe_given(self, skip: tuple[str, ...] = ()) -> str:
        """The given options whose value differs from the default, as ``key=value (default d)`` joined by ", "
        (those in ``skip`` left out); "" when there are none."""
        return ", ".join(
            f"{key}={say(value)} (default {say(self.options[key].default)})"
            for key, value in self._given.items()
            if key not in skip and value != self.options[key].default
        )

    def blame_nonfinite(self, x: Tensor | None = None) -> None:
        """Raise :class:`DivergenceError` naming the first parameter or rule-state tensor with a NaN or inf entry
        (or :class:`BioPropError` for a non-finite input); return if there is none. Only for failure paths."""
        found = checks.first_nonfinite(self.net.named_parameters())
        # A rule never writes the network's parameters (the optimizer does), so a non-finite one predates this call.
        what = f"parameter {found!r} has non-finite entries (NaN or inf), from an earlier step or loaded so"
        if found is None:
            found = checks.first_nonfinite(self.state_dict().items())
            what = f"its own state tensor {found!r} has non-finite entries (NaN or inf)"
        if found is not None:
            raise self.diverged(what)
        if x is not None:
            checks.check_finite_input(x)

    # ---------------------------------------------------------------------------------------------- the plumbing

    def param_name(self, param: Tensor) -> str:
        """The name of ``param`` in ``net.named_parameters()`` (looked up again if the network's parameters were
        replaced since the last call); a tensor that is no longer in the network is a :class:`BioPropError`."""
        found = self._names.get(id(param))
        if found is None or found[0] is not param:
            self._names = {id(p): (p, n) for n, p in self.net.named_parameters()}
            found = self._names.get(id(param))
            if found is None:
                raise BioPropError(f"rule {self.name}: the network's layers were replaced; create the rule again")
        return found[1]

    def trainable(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """``grads`` without the frozen parameters'."""
        return {name: grads[name] for name, p in self.net.named_parameters() if p.requires_grad}

    def apply_update(self, update: Update) -> tuple[Tensor, Tensor]:
        """What :meth:`backward` does with an update: accumulate it into the trainable parameters' ``.grad`` and its
        traces into the epoch's means; returns the loss and prediction."""
        for name, param in self.net.named_parameters():
            if not param.requires_grad:
                continue
            grad = update.grads[name]
            if param.grad is None:
                param.grad = grad.detach()  # rules return fresh tensors, so no copy is needed
            else:
                param.grad.add_(grad)
        for key, trace in (update.traces or {}).items():
            trace = trace.detach()
            total = self._trace_sums.get(key)
            if total is None or total.shape != trace.shape:  # a changed step budget starts a new mean
                self._trace_sums[key], self._trace_counts[key] = trace.double().clone(), 1
            else:
                total.add_(trace)
                self._trace_counts[key] += 1
        return update.loss, update.prediction

    def epoch_traces(self) -> dict[str, list[float]]:
        """The mean of each trace over the ``backward`` calls since the last call, then forgets them."""
        means = {key: (total / self._trace_counts[key]).tolist() for key, total in self._trace_sums.items()}
        self._trace_sums, self._trace_counts = {}, {}
        return means

    def prepare(self) -> dict[str, list[float]]:
        """A phase run once before a fresh run's first epoch (not on resume, whose checkpoint holds its result);
        returns its traces. Nothing by default."""
        return {}

    def diagnostics(self) -> dict[str, float]:
        """Rule-specific numbers logged per epoch (e.g. W–B angles); none by default."""
        return {}

    def plan_warnings(self, steps: int) -> list[str]:
        """What a caller about to make ``steps`` calls of :meth:`backward` (counted from the rule's step count as it
        stands, so a resumed run's are the rest of it) must be told before the first: each a one-line message naming
        the option and the numbers, for a setting that makes such a run do other than it seems (a warm-up or
        pre-training as long as the run, which then trains nothing it seems to). The trainer gives them as
        :class:`PlanWarning`. None by default."""
        return []

    def state_dict(self) -> dict[str, Tensor]:
        """Rule state that must survive a checkpoint (the step count, feedback weights, particles) and the rule's name
        (:data:`STATE_NAME`, so that another rule refuses it); subclasses add theirs to ``super().state_dict()``."""
        return {"step": torch.tensor(self.step, dtype=torch.int64), STATE_NAME: name_tensor(self.name)}

    @refuses_other_rules
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors; subclasses take theirs out and pass the rest here. The state of
        another rule is refused first (:func:`refuses_other_rules`, which wraps every subclass's method too)."""
        state = dict(state)
        step = state.pop("step", None)
        if state:
            raise BioPropError(f"rule {self.name}: unexpected state {sorted(state)[0]!r} in checkpoint")
        if step is not None:
            self.step = int(step)
