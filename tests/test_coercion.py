"""How values become typed settings and rule options: one table of inputs, parsed values and refusals, held against
both readers, ``bioprop.rules.options.Option.parse`` (``--rule-opt``, YAML ``rule_opts``, Python keywords) and
``bioprop.config.parse_value`` (run settings from YAML and flags). Both read values by one set of rules (pydantic's
lax mode with strict pieces), so a value a user writes means the same thing wherever it is written; the expected
values below are written by hand from those rules, and each refusal must be our one-line message, never pydantic's
(which spans lines and carries URLs)."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest

from bioprop.config import RunConfig, parse_value
from bioprop.errors import BioPropError
from bioprop.rules.options import Option, is_positive

INT64_MIN, INT64_MAX = -9223372036854775808, 9223372036854775807  # -2**63 and 2**63 - 1, written out


class Refused:
    """An expected refusal: ``why`` is "type" (not a value of the kind), "finite" (nan, ±inf or an overflow to it)
    or "range" (an integer outside 64 bits)."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"Refused({self.why})"


TYPE, FINITE, RANGE = Refused("type"), Refused("finite"), Refused("range")

# (kind, given, expected): a parsed value (its type checked too) or a refusal.
TABLE = [
    # booleans: bools, and the words true/false, yes/no, on/off, 1/0 in any case; never a number
    (bool, True, True),
    (bool, False, False),
    (bool, "true", True),
    (bool, "False", False),
    (bool, "YES", True),
    (bool, "no", False),
    (bool, "on", True),
    (bool, "off", False),
    (bool, "1", True),
    (bool, "0", False),
    (bool, " yes ", True),  # surrounding whitespace is not part of the value
    (bool, "maybe", TYPE),
    (bool, "", TYPE),
    (bool, 1, TYPE),  # YAML `compile: 1` is an int, not a boolean
    (bool, 0, TYPE),
    (bool, 1.0, TYPE),
    (bool, None, TYPE),
    # integers: ints, whole floats (YAML's `steps: 5.0`) and integer strings; never 5.5, 1e3 as text or a bool
    (int, 5, 5),
    (int, -7, -7),
    (int, 5.0, 5),
    (int, "5", 5),
    (int, "-12", -12),
    (int, " 12 ", 12),
    (int, "5.0", 5),
    (int, 5.5, TYPE),
    (int, "5.5", TYPE),
    (int, "1e3", TYPE),
    (int, "10**30", TYPE),
    (int, "abc", TYPE),
    (int, "", TYPE),
    (int, True, TYPE),
    (int, None, TYPE),
    (int, [1], TYPE),
    (int, math.inf, TYPE),  # not a whole number
    (int, math.nan, TYPE),
    (int, INT64_MAX, INT64_MAX),
    (int, INT64_MIN, INT64_MIN),
    (int, str(INT64_MAX), INT64_MAX),
    (int, INT64_MAX + 1, RANGE),
    (int, INT64_MIN - 1, RANGE),
    (int, "9223372036854775808", RANGE),
    (int, "9" * 30, RANGE),
    (int, 1e30, RANGE),  # a whole float, but past 64 bits
    # floats: numbers and numeric strings, finite only; never a bool
    (float, 2.5, 2.5),
    (float, 1, 1.0),
    (float, "1e-3", 0.001),
    (float, "1E-3", 0.001),
    (float, "-0.25", -0.25),
    (float, " 0.5 ", 0.5),
    (float, "abc", TYPE),
    (float, "0x10", TYPE),
    (float, "", TYPE),
    (float, True, TYPE),
    (float, None, TYPE),
    (float, [0.1], TYPE),
    (float, "nan", FINITE),
    (float, "inf", FINITE),
    (float, "-inf", FINITE),
    (float, "1e999", FINITE),  # overflows to inf
    (float, math.nan, FINITE),
    (float, -math.inf, FINITE),
    # strings: a number given for one becomes its text (YAML reads `data_dir: 2024` as an int); never a bool
    (str, "ce", "ce"),
    (str, " ce", " ce"),  # a string is kept as given
    (str, 5, "5"),
    (str, 2.5, "2.5"),
    (str, True, TYPE),
    (str, None, TYPE),
    (str, [1], TYPE),
]

KIND_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}
SAYS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def check_parsed(parsed: object, expected: object) -> None:
    assert parsed == expected and type(parsed) is type(expected), (parsed, expected)


def check_one_line(error: BioPropError) -> None:
    """Our message alone: one line, nothing of pydantic's, no chained ValidationError to print under it."""
    message = str(error)
    assert "\n" not in message and "http" not in message and "pydantic" not in message.lower(), message
    assert "Input should" not in message, message
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(("kind", "given", "expected"), TABLE, ids=[f"{k.__name__}-{g!r}" for k, g, _ in TABLE])
def test_rule_options_read_the_table(kind: type, given: object, expected: object) -> None:
    """``--rule-opt key=value``, YAML's ``rule_opts`` and Python keywords: each value read as the table says, a
    refusal naming the rule, the key and the value as given."""
    option = Option(kind(), "help", type=kind)
    if not isinstance(expected, Refused):
        check_parsed(option.parse("fa", "k", given), expected)
        return
    says = {
        "type": f"is not a valid {KIND_NAMES[kind]}",
        "finite": "must be a finite number",
        "range": "must be a 64-bit integer, from -9223372036854775808 to 9223372036854775807",
    }[expected.why]
    with pytest.raises(BioPropError) as info:
        option.parse("fa", "k", given)
    assert str(info.value) == f"rule fa: option k={given!r} {says}"
    check_one_line(info.value)


@pytest.mark.parametrize(("kind", "given", "expected"), TABLE, ids=[f"{k.__name__}-{g!r}" for k, g, _ in TABLE])
def test_run_settings_read_the_table(kind: type, given: object, expected: object) -> None:
    """Run settings (YAML values and flags) are read by the same rules as rule options; a refusal names the key as
    the user gave it and quotes the value."""
    if not isinstance(expected, Refused):
        check_parsed(parse_value("--k", given, kind), expected)
        return
    says = {
        "type": f"must be {SAYS[kind]}, not {given!r}",
        "finite": f"must be a finite number, not {given!r}",
        "range": f"must be an integer from -9223372036854775808 to 9223372036854775807, not {given!r}",
    }[expected.why]
    with pytest.raises(BioPropError) as info:
        parse_value("--k", given, kind)
    assert str(info.value).startswith(f"--k {says}"), str(info.value)
    check_one_line(info.value)


@pytest.mark.parametrize(
    ("given", "hint"),
    [("1e3", " (write 1000)"), ("2E2", " (write 200)"), ("-1.5e1", " (write -15)"), ("1e3 ", " (write 1000)"),
     ("2.5", ""), ("1e-3", ""), ("1e19", ""), ("abc", "")],
)  # fmt: skip
def test_a_whole_number_in_another_notation_is_refused_with_how_to_write_it(given: str, hint: str) -> None:
    """YAML 1.1 reads ``epochs: 1e3`` as the string '1e3'; an int setting refuses it (it is not a count written as
    one) but says which integer it writes, when it is one that fits in 64 bits (1e19 > 2**63 - 1 does not)."""
    with pytest.raises(BioPropError) as info:
        parse_value("epochs", given, int)
    assert str(info.value) == f"epochs must be an integer, not {given!r}{hint}"


def test_settings_files_read_numbers_for_strings_and_whole_floats_for_counts() -> None:
    """What YAML hands over for a file of settings: numbers where strings are wanted become text, a whole float a
    count, None stands only where a setting allows it."""
    config = RunConfig.from_dict({"data_dir": 2024, "arch": "mlp:8", "epochs": 5.0, "lr": "1e-3", "limit": None,
                                  "download": "yes", "rule_opts": {"scale": "0.5"}})  # fmt: skip
    assert config.data_dir == "2024" and type(config.epochs) is int and config.epochs == 5
    assert config.lr == 0.001 and config.limit is None and config.download is True
    assert config.rule_opts == {"scale": "0.5"}  # a rule's options are read by the rule
    with pytest.raises(BioPropError, match=r"^config: epochs must be an integer, not None$"):
        RunConfig.from_dict({"epochs": None})
    with pytest.raises(BioPropError, match=r"^config: rule_opts must be a mapping, not 3$"):
        RunConfig.from_dict({"rule_opts": 3})
    with pytest.raises(BioPropError, match=r"^config: data_dir needs a path, not ''$"):
        RunConfig.from_dict({"data_dir": ""})


def test_unknown_settings_are_refused_listing_the_known_ones() -> None:
    known = ", ".join(sorted(f.name for f in fields(RunConfig)))
    with pytest.raises(BioPropError) as info:
        RunConfig.from_dict({"epochz": 3}, source="config 'run.yaml'")
    assert str(info.value) == f"config 'run.yaml': unknown key 'epochz'; known: {known}"
    with pytest.raises(BioPropError) as info:
        RunConfig.from_sources(None, {"lr": "fast"})
    assert str(info.value) == "--lr must be a number, not 'fast'"  # a flag is named as it was typed


def test_choices_checks_and_maximum_apply_to_the_parsed_value() -> None:
    """Parsing comes first: a string is checked as the number it writes, and the message quotes the value as given
    (the token typed, not the number it reads as)."""
    with pytest.raises(BioPropError, match=r"^rule fa: option scale='-1' must be positive$"):
        Option(1.0, "help", check=is_positive, check_says="must be positive").parse("fa", "scale", "-1")
    with pytest.raises(BioPropError, match=r"^rule pc: option steps='11\.0' is above its maximum, 10$"):
        Option(3, "help", maximum=10).parse("pc", "steps", "11.0")
    assert Option(3, "help", maximum=10).parse("pc", "steps", "10") == 10
    with pytest.raises(BioPropError, match=r"^rule fa: option init=5; choose one of xavier, kaiming$"):
        Option("xavier", "help", choices=("xavier", "kaiming")).parse("fa", "init", 5)
