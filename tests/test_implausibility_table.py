"""The implausibility table (issue 12): rule × the six implausibilities of backprop (Bengio et al. 2015), made from
the rules' cards. README.md's block between the implausibility-table markers must be exactly what
``scripts/readme_tables.py`` writes, and each of its cells, read back from the README here, must say what the
rule's card says; the terminal version (``bioprop rules --table``) too."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from bioprop import rules
from bioprop.errors import BioPropError
from bioprop.report import tables
from bioprop.rules import registry

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- implausibility-table:start -->", "<!-- implausibility-table:end -->"
KEYS = list(rules.IMPLAUSIBILITIES)
MARK = {"✓": True, "✗": False}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_block(text: str) -> str:
    """The README's lines from the start marker to the end marker, both included."""
    lines = text.split("\n")
    start, end = lines.index(START), lines.index(END)
    assert lines.count(START) == 1 and lines.count(END) == 1 and start < end
    return "\n".join(lines[start : end + 1])


def cells(row: str) -> list[str]:
    """The cells of a Markdown table row, split at unescaped ``|``, unescaped and stripped."""
    parts = re.split(r"(?<!\\)\|", row.strip())
    assert parts[0] == "" and parts[-1] == "", row
    return [part.strip().replace("\\|", "|") for part in parts[1:-1]]


def table_rows(block: str) -> dict[str, list[str]]:
    """Rule name -> its six cells, from the Markdown table in ``block`` (header and separator checked)."""
    lines = [line for line in block.split("\n") if line.startswith("|")]
    assert cells(lines[0]) == ["rule", *KEYS] and set(lines[1]) <= {"|", "-", ":"}
    rows: dict[str, list[str]] = {}
    for line in lines[2:]:
        name, *rest = cells(line)
        assert name.startswith("`") and name.endswith("`") and len(rest) == len(KEYS), line
        assert name.strip("`") not in rows, f"{name} twice"
        rows[name.strip("`")] = rest
    return rows


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_block_is_the_generated_one(readme: str) -> None:
    """Fails when a card changed or a rule was registered without `python scripts/readme_tables.py`."""
    assert readme_block(readme) == load_script().implausibility_block()
    assert tables.implausibility_table(markdown=True) in readme_block(readme)


def test_every_registered_rule_has_one_row_in_registry_order(readme: str) -> None:
    assert list(table_rows(readme_block(readme))) == rules.names()


def test_each_readme_cell_says_what_the_card_says(readme: str) -> None:
    for name, row in table_rows(readme_block(readme)).items():
        card = rules.entry(name).card
        for key, cell in zip(KEYS, row, strict=True):
            mark, why = cell.split(" ", 1)
            assert MARK[mark] is card[key].removed and why == " ".join(card[key].why.split()), (name, key)


def test_the_readme_legend_names_the_six(readme: str) -> None:
    block = readme_block(readme)
    for key, about in rules.IMPLAUSIBILITIES.items():
        assert f"- **{key}**: {about}" in block


def test_every_card_answers_the_six_with_a_reason() -> None:
    for name in rules.names():
        card = rules.entry(name).card
        assert list(card) == KEYS, name
        for key, item in card.items():
            assert isinstance(item.removed, bool) and item.why.strip() and "\n" not in item.why, (name, key)


def test_the_hand_written_weight_transport_column_agrees_with_the_cards(readme: str) -> None:
    """The Rules table's 'weight transport removed' column (written by hand) says yes exactly where the card has ✓."""
    lines = readme.split("\n")
    header = lines.index("| rule | family | paper | feedback | weight transport removed |")
    checked = 0
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        name, *_, removed = cells(line)
        assert removed.startswith("yes") is rules.entry(name.strip("`")).card["weight_transport"].removed, line
        checked += 1
    assert checked >= 20


def test_the_terminal_table(capsys: pytest.CaptureFixture[str]) -> None:
    text = tables.implausibility_table(markdown=False)
    lines = text.split("\n")
    matrix = {line.split()[0]: line.split()[1:] for line in lines if line.split() and line.split()[0] in rules.names()
              and len(line.split()) == len(KEYS) + 1}  # fmt: skip
    assert list(matrix) == rules.names()
    for name in rules.names():
        card = rules.entry(name).card
        assert [MARK[m] for m in matrix[name]] == [card[key].removed for key in KEYS], name
        start = lines.index(name)
        for key, line in zip(KEYS, lines[start + 1 : start + 1 + len(KEYS)], strict=True):
            mark, shown, why = line.split(maxsplit=2)
            assert (MARK[mark], shown, why) == (card[key].removed, key, " ".join(card[key].why.split())), (name, key)


def test_names_pick_the_rules_and_an_unknown_one_is_refused() -> None:
    assert list(table_rows(tables.implausibility_table(markdown=True, names=["fa", "bp"]))) == ["fa", "bp"]
    with pytest.raises(BioPropError, match="unknown rule 'nope'"):
        tables.implausibility_table(names=["nope"])


def test_a_pipe_in_a_reason_keeps_the_markdown_row_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    bp = rules.entry("bp")
    card = {**bp.card, "spikes": rules.CardEntry(True, "a | b\nc")}
    monkeypatch.setitem(registry._REGISTRY, "piped", registry.Entry("piped", bp.cls, "x", "y", "z", card))
    row = table_rows(tables.implausibility_table(markdown=True, names=["piped"]))["piped"]
    assert row[KEYS.index("spikes")] == "✓ a | b c"


def test_the_script_checks_and_rewrites_only_its_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    before, after = "# title\n\ntext before\n", "\ntext after | with a pipe\n"
    stale = tmp_path / "README.md"
    stale.write_text(f"{before}{START}\nold table\n{END}{after}", encoding="utf-8")
    assert script.main(["--readme", str(stale), "--check"]) == 1
    assert stale.read_text(encoding="utf-8") == f"{before}{START}\nold table\n{END}{after}"
    assert script.main(["--readme", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == f"{before}{script.implausibility_block()}{after}"
    assert script.main(["--readme", str(stale), "--check"]) == 0
    for broken in (f"{before}no markers{after}", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"):
        stale.write_text(broken, encoding="utf-8")
        assert script.main(["--readme", str(stale)]) == 2 and stale.read_text(encoding="utf-8") == broken
    assert "readme_tables: " in capsys.readouterr().err


def test_cli_rules_table(cli) -> None:
    """`bioprop rules --table` (the edit to cli.py proposed with this table) prints the terminal table."""
    code, out, err = cli("rules", "--table")
    assert code == 0, err
    assert out.strip() == tables.implausibility_table(markdown=False).strip()
    code, out, _ = cli("rules", "eprop", "--table")
    assert code == 0 and out.strip() == tables.implausibility_table(markdown=False, names=["eprop"]).strip()
