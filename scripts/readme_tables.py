"""Regenerate the README's tables that are made from the code: the implausibility table (rule × the six
implausibilities of backprop, from every rule's card, :func:`bioprop.report.tables.implausibility_table`) between
the lines ``<!-- implausibility-table:start -->`` and ``<!-- implausibility-table:end -->``. Nothing outside the
markers is touched.

    python scripts/readme_tables.py                  # rewrite the block in README.md
    python scripts/readme_tables.py --check          # exit 1, saying so, when README.md's block is out of date
    python scripts/readme_tables.py --readme OTHER.md

tests/test_implausibility_table.py fails while README.md's block differs from what this writes: after changing a
card or registering a rule, run this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bioprop.report import tables

START = "<!-- implausibility-table:start -->"
END = "<!-- implausibility-table:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def implausibility_block() -> str:
    """The README's block, markers included: a heading, where it comes from, and the Markdown table."""
    return "\n".join([
        START,
        "### Backprop's six implausibilities, rule by rule",
        "",
        "Generated from the rules' cards by `python scripts/readme_tables.py` (a test fails when this table and the",
        "cards disagree); `bioprop rules --table` prints the same in a terminal, `bioprop rules NAME` one rule's card.",
        "",
        tables.implausibility_table(markdown=True),
        END,
    ])  # fmt: skip


def replace_block(text: str, block: str) -> str:
    """``text`` with the lines from the start marker to the end marker (both included) replaced by ``block``.
    Raises ValueError when the markers are not there, each exactly once and alone on its line, start before end."""
    lines = text.split("\n")
    found = {marker: [i for i, line in enumerate(lines) if line.strip() == marker] for marker in (START, END)}
    for marker, where in found.items():
        if len(where) != 1:
            raise ValueError(f"README needs the line {marker} exactly once, found {len(where)}")
    start, end = found[START][0], found[END][0]
    if end < start:
        raise ValueError(f"README has {END} before {START}")
    return "\n".join([*lines[:start], block, *lines[end + 1 :]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=README, help="the file to update (default: README.md)")
    parser.add_argument("--check", action="store_true", help="only check: exit 1 when the block is out of date")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        updated = replace_block(text, implausibility_block())
    except ValueError as err:
        print(f"readme_tables: {args.readme}: {err}", file=sys.stderr)
        return 2
    if updated == text:
        print(f"{args.readme}: the implausibility table is up to date")
        return 0
    if args.check:
        print(f"{args.readme}: the implausibility table is out of date; run python scripts/readme_tables.py",
              file=sys.stderr)  # fmt: skip
        return 1
    args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: implausibility table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
