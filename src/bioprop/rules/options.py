"""Rule options: one frozen, typed dataclass per rule, declared field by field with :func:`option`, parsed and
validated once (:meth:`Options.parse`) and printed by ``bioprop rules NAME``.

Values given as strings (``--rule-opt key=value``, YAML) are parsed by the field's type: booleans from
true/false/yes/no/on/off/1/0, ints also from integral floats (YAML's ``steps: 5.0``), floats from ints; every
float must be finite; choices, checks and maxima are applied after parsing. Every error is a
:class:`~bioprop.errors.BioPropError` of one line naming the rule, the key and the value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bioprop.errors import BioPropError

INT_RANGE = (-(2**63), 2**63 - 1)  # what torch's generators, safetensors' JSON and numpy all hold


@dataclass(frozen=True)
class Option:
    """A rule option: its default, type (used to parse ``--rule-opt key=value`` strings) and a one-line help.
    ``maximum`` bounds a count that sets how much work a step does (inference steps, sweeps); the help says it.
    Every float option must be finite."""

    default: Any
    help: str
    type: Callable[[str], Any] | None = None  # defaults to type(default)
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None  # e.g. lambda v: v > 0
    check_says: str = ""
    maximum: int | None = None

    def __post_init__(self) -> None:
        if self.maximum is not None:
            object.__setattr__(self, "help", f"{self.help} (at most {self.maximum})")

    def parse(self, rule: str, key: str, value: Any) -> Any:
        kind = self.type or type(self.default)
        parsed = _coerce(kind, value)
        if parsed is _INVALID:
            raise BioPropError(f"rule {rule}: option {key}={value!r} is not a valid {kind.__name__}")
        value = parsed
        if isinstance(value, float) and not math.isfinite(value):
            raise BioPropError(f"rule {rule}: option {key}={value!r} must be a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise BioPropError(f"rule {rule}: option {key}={value!r} must be a 64-bit integer, from {INT_RANGE[0]} to "
                               f"{INT_RANGE[1]}")  # fmt: skip
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(map(str, self.choices))
            raise BioPropError(f"rule {rule}: option {key}={value!r}; choose one of {choices}")
        if self.check is not None and not self.check(value):
            raise BioPropError(f"rule {rule}: option {key}={value!r} {self.check_says or 'is out of range'}")
        if self.maximum is not None and value > self.maximum:
            raise BioPropError(f"rule {rule}: option {key}={value!r} is above its maximum, {self.maximum}")
        return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_INVALID = object()


def say(value: Any) -> str:
    """An option value as ``--rule-opt`` would take it: floats in ``%g`` form, booleans lowercase."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _coerce(kind: Callable[[str], Any], value: Any) -> Any:
    """``value`` as an option of type ``kind``: strings parsed, ints accepted for floats, integral floats for ints
    (YAML's ``steps: 5.0``); anything else of the wrong type is ``_INVALID``."""
    try:
        if isinstance(value, str) and kind is not str:
            return _parse_bool(value) if kind is bool else kind(value)
    except (TypeError, ValueError):
        return _INVALID
    if kind is bool:
        return value if isinstance(value, bool) else _INVALID
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return _INVALID
    if kind is int and isinstance(value, float):
        return int(value) if value.is_integer() else _INVALID
    if kind is float:
        return float(value)
    return value


def option(
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] | None = None,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], bool] | None = None,
    check_says: str = "",
    maximum: int | None = None,
) -> Any:
    """A field of a rule's :class:`Options` dataclass: its default, one-line help and validation (:class:`Option`)."""
    spec = Option(default, help, type, choices, check, check_says, maximum)
    return field(default=default, metadata={"option": spec})


@dataclass(frozen=True)
class Options:
    """Base of every rule's options: a frozen dataclass whose fields are declared with :func:`option`, parsed and
    validated once by :meth:`parse` (strings from ``--rule-opt`` converted, ranges checked) and read as attributes,
    ``rule.opts.steps``. ``bioprop rules NAME`` prints them."""

    @classmethod
    def declared(cls) -> dict[str, Option]:
        """Each option's :class:`Option` (default, help, checks), in declaration order."""
        return {f.name: f.metadata["option"] for f in dataclasses.fields(cls)}

    @classmethod
    def parse(cls, rule: str, given: dict[str, Any]) -> Options:
        """The options ``given`` (any subset, values or strings) over the defaults; an unknown key or an invalid
        value is a :class:`BioPropError` naming the rule, the key and the value."""
        declared = cls.declared()
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise BioPropError(f"rule {rule}: unknown option {unknown[0]!r}; known: {', '.join(declared) or 'none'}")
        return cls(**{key: spec.parse(rule, key, given.get(key, spec.default)) for key, spec in declared.items()})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ------------------------------------------------------------------------------- the validators, written once


def is_positive(value: float) -> bool:
    return value > 0


def is_non_negative(value: float) -> bool:
    return value >= 0


def positive(default: float, help: str, kind: type = float) -> Any:
    """An option of type ``kind`` (float by default) that must be > 0."""
    return option(default, help, type=kind, check=is_positive, check_says="must be positive")


def non_negative(default: float, help: str, kind: type = float, maximum: int | None = None) -> Any:
    """An option of type ``kind`` that must be ≥ 0 (and at most ``maximum``, where given)."""
    return option(default, help, type=kind, check=is_non_negative, check_says="must be non-negative", maximum=maximum)


def count(default: int, help: str, maximum: int, says: str = "must be at least 1") -> Any:
    """A count that sets how much work a step does (inference steps, sweeps, a batch): an int in [1, ``maximum``]."""
    return option(default, help, type=int, check=is_positive, check_says=says, maximum=maximum)
