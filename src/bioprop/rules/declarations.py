"""What a rule declares about itself, so that nothing outside ``rules/`` knows a rule by name: its card (which
of the six implausibilities of backprop it removes), its per-step traces, per-epoch diagnostics and figures.
See ``docs/contract.md``."""

from __future__ import annotations

from typing import NamedTuple

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


class Trace(NamedTuple):
    """A per-step quantity of a rule's inner dynamics, recorded in ``traces.csv`` (the mean over an epoch's batches
    at each step): its ``name`` (the key in ``Update.traces``), axis ``label`` and whether a panel of the value
    relative to step 0 is drawn too (how much of it the dynamics remove); ``steps`` names the step axis (an
    inference step of a relaxation, a time step of a sequence)."""

    name: str
    label: str
    relative: bool = False
    steps: str = "inference step"


class Diagnostic(NamedTuple):
    """A family of per-epoch numbers a rule logs in ``metrics.csv`` as ``diag/<name>``: ``pattern`` (a regular
    expression over ``<name>`` with named groups) and ``label``, formatted with those groups for the legend."""

    pattern: str
    label: str


class FigureSpec(NamedTuple):
    """A figure a rule declares for its run directory: ``file`` (e.g. ``energy.png``), panels of the ``traces`` per
    epoch (one line per epoch), a panel of the ``preparation`` trace (epoch 0, :meth:`Rule.prepare`) and a panel of
    the ``diagnostics`` (indices into the rule's ``diagnostic_specs``) per epoch. The report draws whatever is
    declared and recorded (:mod:`bioprop.report.plots`)."""

    file: str
    title: str
    traces: tuple[str, ...] = ()
    preparation: str | None = None
    diagnostics: tuple[int, ...] = ()
    ylabel: str = ""
