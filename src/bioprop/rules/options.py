"""Rule options: one frozen, typed dataclass per rule, declared field by field with :func:`option`, parsed and
validated once (:meth:`Options.parse`) and printed by ``bioprop rules NAME``.

Values, whether strings (``--rule-opt key=value``, YAML) or Python values, are read by :func:`coerce`, which
:mod:`bioprop.config` uses too: pydantic's lax mode, finite floats and 64-bit ints; choices, checks and maxima are
applied after parsing. Every error is a :class:`~bioprop.errors.BioPropError` of one line naming the rule, the key
and the value as given (the token typed, not the number it was read as).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from bioprop.errors import BioPropError

INT_RANGE = (-(2**63), 2**63 - 1)  # what torch's generators, safetensors' JSON and numpy all hold

#: What a value of each kind is validated as, where it is not the kind itself: ints within 64 bits.
VALIDATED_AS: dict[type, Any] = {int: Annotated[int, Field(ge=INT_RANGE[0], le=INT_RANGE[1])], dict: dict[str, Any]}
#: pydantic's lax mode, with floats finite and a number given for a string turned into its text.
LAX = ConfigDict(allow_inf_nan=False, coerce_numbers_to_str=True)


@cache
def adapter(kind: type) -> TypeAdapter:
    """The pydantic validator of values of ``kind`` (int, float, bool, str or dict), built once."""
    return TypeAdapter(VALIDATED_AS.get(kind, kind), config=LAX)


def coerce(kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` (int, float, bool, str or dict), by pydantic's rules in lax mode
    (https://docs.pydantic.dev/latest/concepts/conversion_table/), which the rule options and the run settings share:

    - a bool from a bool, or from a string true/false, yes/no, on/off, 1/0, t/f, y/n (any case);
    - an int from an int, a float that is a whole number (YAML's ``steps: 5.0``, not ``5.5``) or a string of
      digits (``"1e3"`` is refused); from ``-2**63`` to ``2**63 - 1``;
    - a float from a number or a numeric string (``"1e-3"``), finite only (``nan``, ``inf`` and ``1e999`` refused);
    - a str from a string or a number (``5`` becomes ``"5"``); a dict from a mapping.

    Strict where lax mode is laxer than these rules: a bool is no number, and a bool is not given as ``1`` or
    ``0.0`` (only strings are parsed). Whitespace around a string is ignored for every kind but str.

    Raises ``pydantic.ValidationError``; :func:`problem` says in a word what it found."""
    if isinstance(value, str) and kind is not str:
        value = value.strip()
    strict = not isinstance(value, str) and (kind is bool or isinstance(value, bool))
    return adapter(kind).validate_python(value, strict=strict)


def problem(kind: type, error: ValidationError) -> str:
    """What :func:`coerce` refused in a value of ``kind``: ``"finite"`` (a float that is nan or infinite, or
    overflows to it), ``"range"`` (an int outside :data:`INT_RANGE`) or ``"type"`` (anything else)."""
    found = error.errors()[0]["type"]
    if found == "finite_number" and kind is float:
        return "finite"
    if found in ("greater_than_equal", "less_than_equal", "int_parsing_size"):
        return "range"
    return "type"


@dataclass(frozen=True)
class Option:
    """A rule option: its default, type (int, float, bool or str: :func:`coerce` reads values as it) and a one-line
    help. ``maximum`` bounds a count that sets how much work a step does (inference steps, sweeps); the help says
    it. Every float option must be finite."""

    default: Any
    help: str
    type: type | None = None  # defaults to type(default)
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None  # e.g. lambda v: v > 0
    check_says: str = ""
    maximum: int | None = None

    def __post_init__(self) -> None:
        if self.maximum is not None:
            object.__setattr__(self, "help", f"{self.help} (at most {self.maximum})")

    def parse(self, rule: str, key: str, value: Any) -> Any:
        """``value`` read as the option's type (:func:`coerce`), then checked against its choices, check and maximum;
        a BioPropError naming ``rule`` and ``key`` and quoting ``value`` as given (the token typed, ``'-1'``, not the
        number it reads as, ``-1.0``) otherwise."""
        kind, given = self.type or type(self.default), value
        try:
            value = coerce(kind, value)
        except ValidationError as error:
            says = {
                "finite": "must be a finite number",
                "range": f"must be a 64-bit integer, from {INT_RANGE[0]} to {INT_RANGE[1]}",
                "type": f"is not a valid {kind.__name__}",
            }[problem(kind, error)]
            raise BioPropError(f"rule {rule}: option {key}={given!r} {says}") from None
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(map(str, self.choices))
            raise BioPropError(f"rule {rule}: option {key}={given!r}; choose one of {choices}")
        if self.check is not None and not self.check(value):
            raise BioPropError(f"rule {rule}: option {key}={given!r} {self.check_says or 'is out of range'}")
        if self.maximum is not None and value > self.maximum:
            raise BioPropError(f"rule {rule}: option {key}={given!r} is above its maximum, {self.maximum}")
        return value


def say(value: Any) -> str:
    """An option value as ``--rule-opt`` would take it: floats in ``%g`` form, booleans lowercase."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def option(
    default: Any,
    help: str,
    *,
    type: type | None = None,
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


def output_loss() -> Any:
    """The ``output`` option of a rule that trains with either loss of :mod:`bioprop.losses` (cross-entropy by
    default): the run's one output loss."""
    from bioprop import losses  # here: the losses module needs nothing of the rules

    return option("ce", "output loss: ce (cross-entropy) or se (squared error to the one-hot target, or to float "
                  "targets: regression)", choices=tuple(losses.LOSSES))  # fmt: skip


#: The largest seed: torch's CPU generator (Mersenne Twister) keeps the low 32 bits of a seed, so 0 and 2**32, or −1
#: and 2**32 − 1, draw the same weights and the same order (:func:`bioprop.config.parse_seed`, :func:`seed_option`).
SEED_MAX = 2**32 - 1


def seed_option(help: str) -> Any:
    """A rule's ``seed`` option: an int from 0 to :data:`SEED_MAX`, as ``bioprop train --seed`` takes (default 0)."""
    says = f"must be an integer from 0 to {SEED_MAX} (torch's CPU generator keeps 32 bits)"
    return option(0, help, type=int, check=lambda v: 0 <= v <= SEED_MAX, check_says=says)


def count(default: int, help: str, maximum: int, says: str = "must be at least 1") -> Any:
    """A count that sets how much work a step does (inference steps, sweeps, a batch): an int in [1, ``maximum``]."""
    return option(default, help, type=int, check=is_positive, check_says=says, maximum=maximum)
