"""The registry of rules: :func:`register` (a class decorator, once per name), :func:`names`, :func:`entry` and
:func:`create`, which binds a rule to a network (see ``docs/contract.md``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from bioprop import checks
from bioprop import nets as walk_nets
from bioprop.errors import BioPropError
from bioprop.rules.declarations import CardEntry

if TYPE_CHECKING:
    from bioprop.rules.base import Rule


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


#: The kinds of network a rule may declare in ``Rule.networks``, as messages name them.
KINDS = {
    "feedforward": "feedforward networks (mlp:..., lenet)",
    "energy": "energy-based networks (ebm:...)",
    "recurrent": "recurrent networks (rnn:N, lif:N, alif:N, lsnn:N+M, sab:N)",
}
NEEDS = {
    "feedforward": "a feedforward network: --arch mlp:H1x... or lenet",
    "energy": "an energy-based network: --arch ebm:H1x... (e.g. ebm:500) or ebm-conv",
    "recurrent": "a recurrent network: --arch rnn:N, lif:N, alif:N, lsnn:N+M (e.g. lsnn:50+50) or sab:N",
}


def network_kind(net: nn.Module) -> str:
    """``"recurrent"`` for a time-major network (:func:`bioprop.checks.time_major`), ``"energy"`` for an
    :class:`~bioprop.nets.energy.EnergyNet`, else ``"feedforward"``."""
    if checks.time_major(net):
        return "recurrent"
    return "energy" if isinstance(net, walk_nets.EnergyNet) else "feedforward"


def create(name: str, net: nn.Module, **options: Any) -> Rule:
    """Bind the rule called ``name`` to ``net``; ``options`` are the rule's options (strings are parsed).
    Raises :class:`BioPropError`, before any work, for an unknown rule or option, an invalid option value, a ``net``
    that is not an ``nn.Module``, a network with a lazy (uninitialised) layer, parameters other than float32 or
    float64, and a layer the rule cannot handle (named)."""
    found = entry(name)
    if not isinstance(net, nn.Module):
        raise BioPropError(f"rule {name}: net must be a torch.nn.Module (e.g. bioprop.nets.build), not "
                           f"{type(net).__name__}")  # fmt: skip
    clash = sorted(set(options) & set(found.presets))
    if clash:
        raise BioPropError(f"rule {name}: option {clash[0]!r} is fixed by the rule's name")
    kind = network_kind(net)
    if kind not in found.cls.networks:
        if kind == "feedforward":
            raise BioPropError(f"rule {name} needs {' or '.join(NEEDS[k] for k in sorted(found.cls.networks))}")
        able = [n for n, e in _REGISTRY.items() if kind in e.cls.networks]
        able = ", ".join(able[:-1]) + f" or {able[-1]}" if len(able) > 1 else (able[0] if able else "no rule yet")
        raise BioPropError(f"rule {name}: {KINDS[kind]} are trained by {able}, not by this rule")
    return found.cls(net, found, {**found.presets, **options})
