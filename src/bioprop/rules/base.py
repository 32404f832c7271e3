"""The learning-rule contract, the registry and the rule card.

A rule is bound to a network with :func:`create`. For one batch ``(x, y)``:

- ``rule.backward(x, y)`` writes the rule's update into each parameter's ``.grad`` as a descent direction
  (accumulating, as autograd does), so any ``torch.optim`` optimizer applies it; returns ``(loss, prediction)``.
- ``rule.grads(x, y)`` computes the same update without touching ``.grad``.
- ``rule.reference_grads(x, y)`` is the exact gradient the rule approximates, keyed like
  ``net.named_parameters()``.
- ``rule.card`` says, for each of the six implausibilities of backprop (Bengio et al. 2015), whether the rule
  removes it and why.

Rules with an inner dynamics (inference, relaxation, settling) return per-step traces in ``Update.traces``, e.g.
``{"energy": tensor of shape (T + 1,)}``; ``backward`` accumulates them and ``rule.epoch_traces()`` hands the
training loop their mean since the last call. ``rule.prepare()`` runs once before a fresh run's first epoch (a
phase without targets, e.g. reaching a self-predicting state) and returns its traces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.errors import BioPropError

#: The six implausibilities of backprop (Bengio et al. 2015, arXiv:1502.04156), keyed as in every rule's card.
IMPLAUSIBILITIES: dict[str, str] = {
    "linear": "backprop is purely linear, neurons interleave linear and nonlinear operations",
    "derivatives": "feedback paths would need the exact derivatives of the forward nonlinearities",
    "weight_transport": "feedback would need the transposed forward weights",
    "spikes": "real neurons communicate with spikes, not real values",
    "clock": "forward and backward phases must alternate on a precise clock",
    "targets": "it is unclear where output targets come from",
}


class CardEntry(NamedTuple):
    removed: bool
    why: str


def make_card(**entries: tuple[bool, str]) -> dict[str, CardEntry]:
    """A rule card: one ``(removed, why)`` entry for each of the six implausibilities, no more, no fewer."""
    if set(entries) != set(IMPLAUSIBILITIES):
        raise ValueError(f"a card needs exactly the keys {sorted(IMPLAUSIBILITIES)}, got {sorted(entries)}")
    return {key: CardEntry(*entries[key]) for key in IMPLAUSIBILITIES}


@dataclass(frozen=True)
class Option:
    """A rule option: its default, type (used to parse ``--rule-opt key=value`` strings) and a one-line help."""

    default: Any
    help: str
    type: Callable[[str], Any] | None = None  # defaults to type(default)
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None  # e.g. lambda v: v > 0
    check_says: str = ""

    def parse(self, rule: str, key: str, value: Any) -> Any:
        kind = self.type or type(self.default)
        if isinstance(value, str) and kind is not str:
            try:
                value = _parse_bool(value) if kind is bool else kind(value)
            except (TypeError, ValueError):
                raise BioPropError(f"rule {rule}: option {key}={value!r} is not a valid {kind.__name__}") from None
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(map(str, self.choices))
            raise BioPropError(f"rule {rule}: option {key}={value!r}; choose one of {choices}")
        if self.check is not None and not self.check(value):
            raise BioPropError(f"rule {rule}: option {key}={value!r} {self.check_says or 'is out of range'}")
        return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


class Update(NamedTuple):
    grads: dict[str, Tensor]  # descent direction, keyed like net.named_parameters()
    loss: Tensor  # scalar, batch-mean
    prediction: Tensor  # (B, n_classes) logits
    traces: dict[str, Tensor] | None = None  # per inner step, e.g. the energy at each inference step


def cross_entropy_grad(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Batch-mean cross-entropy and its gradient with respect to the logits, e = (softmax(z) − onehot(y)) / B."""
    log_p = torch.log_softmax(logits, dim=1)  # one softmax pass serves the loss and its gradient
    loss = F.nll_loss(log_p, y)
    error = log_p.exp()  # (B, K)
    error.scatter_add_(1, y.unsqueeze(1), error.new_full((len(y), 1), -1.0))
    return loss, error.div_(len(y))


def output_loss(z: Tensor, y: Tensor, output: str = "ce") -> Tensor:
    """Batch-mean output loss ℓ of the rules that choose one: cross-entropy (``ce``) or squared error against the
    one-hot target, ½‖z − onehot(y)‖² summed over classes (``se``)."""
    if output == "ce":
        return F.cross_entropy(z, y)
    return 0.5 * (z - F.one_hot(y, z.shape[1]).to(z.dtype)).square().sum(1).mean()


def backprop_update(net: nn.Module, x: Tensor, y: Tensor, output: str = "ce") -> Update:
    """Autograd's gradient of the batch-mean :func:`output_loss` of ``net(x)`` (cross-entropy by default); leaves
    ``.grad`` untouched. Backprop's update, and the reference gradient of every rule that approximates it."""
    named = dict(net.named_parameters())
    with torch.enable_grad():
        prediction = net(x)
        loss = output_loss(prediction, y, output)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    update = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), grads, strict=True)}
    return Update(update, loss.detach(), prediction.detach())


class Rule:
    """Base class: subclasses declare their ``options`` and implement :meth:`grads`. Build rules with
    :func:`create`, which passes the registry entry (name, family, paper, card) and the options."""

    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        self.net = net
        self.name, self.family, self.paper, self.card = entry.name, entry.family, entry.paper, entry.card
        self.config = self.parse_options(entry.name, options)
        self._trace_sums: dict[str, Tensor] = {}
        self._trace_counts: dict[str, int] = {}

    @classmethod
    def parse_options(cls, rule: str, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            known = ", ".join(cls.options) or "none"
            raise BioPropError(f"rule {rule}: unknown option {unknown[0]!r}; known: {known}")
        return {key: opt.parse(rule, key, given.get(key, opt.default)) for key, opt in cls.options.items()}

    def grads(self, x: Tensor, y: Tensor) -> Update:
        raise NotImplementedError

    def backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.apply_update(self.grads(x, y))

    def apply_update(self, update: Update) -> tuple[Tensor, Tensor]:
        """What :meth:`backward` does with an update: accumulate it into ``.grad`` and its traces into the epoch's
        means; returns the loss and prediction. For rules whose ``backward`` also changes state of their own."""
        for name, param in self.net.named_parameters():
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

    def reference_grads(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Backprop of the batch-mean cross-entropy (the default reference); leaves ``.grad`` untouched."""
        return backprop_update(self.net, x, y).grads

    def diagnostics(self) -> dict[str, float]:
        """Rule-specific numbers logged per epoch (e.g. W–B angles); none by default."""
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        """Rule state that must survive a checkpoint (feedback weights, generator states)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise BioPropError(f"rule {self.name}: unexpected state {sorted(state)[0]!r} in checkpoint")


@dataclass(frozen=True)
class Entry:
    """A registered rule: its name, class, family, paper, one-line summary, card and fixed options."""

    name: str
    cls: type[Rule]
    family: str
    paper: str
    summary: str
    card: dict[str, CardEntry]
    presets: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str, *, family: str, paper: str, summary: str, card: dict[str, CardEntry], **presets: Any
) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: register a rule class under ``name``; ``presets`` fix options for named variants, so one
    class serves every variant of a family. Stack it to register several names."""

    def wrap(cls: type[Rule]) -> type[Rule]:
        if name in _REGISTRY:
            raise ValueError(f"rule {name!r} registered twice")
        _REGISTRY[name] = Entry(name, cls, family, paper, summary, card, presets)
        return cls

    return wrap


def names() -> list[str]:
    """Every registered rule name, in registration order."""
    return list(_REGISTRY)


def entry(name: str) -> Entry:
    """The registry entry of ``name``; unknown names are a :class:`BioPropError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BioPropError(f"unknown rule {name!r}; known: {', '.join(_REGISTRY)}") from None


def create(name: str, net: nn.Module, **options: Any) -> Rule:
    """Bind the rule called ``name`` to ``net``; ``options`` are the rule's options (strings are parsed)."""
    found = entry(name)
    clash = sorted(set(options) & set(found.presets))
    if clash:
        raise BioPropError(f"rule {name}: option {clash[0]!r} is fixed by the rule's name")
    return found.cls(net, found, {**found.presets, **options})
