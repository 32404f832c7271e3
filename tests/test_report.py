"""`bioprop report`: report.md and a self-contained report.html rebuilt from run directories (issue 13, item 2).

Four real runs are trained once for the module (bp and pc, seeds 0 and 1, 200 digits, a 32-unit MLP, 2 epochs: pc
declares a figure, energy.png, drawn from its traces.csv) and copied by the tests that change anything. The cost
ratio is checked against the epoch_seconds in the runs' summary.json, computed here with the statistics module.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bioprop import train
from bioprop.errors import BioPropError
from bioprop.report import logs, study
from conftest import tiny_config

RULES, SEEDS = ("bp", "pc"), (0, 1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of four finished runs, ``<rule>-s<seed>``. Read only: copy it before changing anything."""
    root = tmp_path_factory.mktemp("study") / "runs"
    for rule in RULES:
        for seed in SEEDS:
            train.run(tiny_config(rule=rule, seed=seed, limit=200), root / f"{rule}-s{seed}", quiet=True)
    return root


@pytest.fixture(scope="module")
def built(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The report of :func:`runs` (written into a folder of its own): the text of report.md and report.html."""
    md, web = study.build_report([runs], tmp_path_factory.mktemp("report"))
    return md.read_text(), web.read_text()


def table_rows(md: str, section: str = "## Leaderboard") -> list[dict[str, str]]:
    """The rows of the first Markdown table after ``section`` as ``{column: cell}``."""
    lines = md.split(section, 1)[1].splitlines()
    table = [line for line in lines[lines.index(next(x for x in lines if x.startswith("|"))) :]]
    table = table[: next((i for i, x in enumerate(table) if not x.startswith("|")), len(table))]
    cells = [[c.strip() for c in line.strip()[1:-1].split(" | ")] for line in table]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def png_size(blob: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert blob.startswith(PNG_SIGNATURE) and blob[12:16] == b"IHDR"
    return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")


def mean_seconds(paths: list[Path]) -> float:
    return statistics.fmean(s for p in paths for s in json.loads((p / "summary.json").read_text())["epoch_seconds"])


# ---------------------------------------------------------------------------------------------------- content


def test_every_section_is_in_both_files(built: tuple[str, str]) -> None:
    md, page = built
    assert md.splitlines()[0] == page.splitlines()[0] == study.MARK
    rows = table_rows(md)
    assert [(r["rule"], r["dataset"], r["arch"], r["runs"], r["epochs"]) for r in rows] == [
        ("bp", "digits", "mlp:32", "2", "2/2"),
        ("pc", "digits", "mlp:32", "2", "2/2"),
    ]
    assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", r["test acc (%)"]) for r in rows)
    assert rows[1]["final angle to reference (°)"].startswith("1.weight ")
    # The matrix: a row per rule present, none for rules absent.
    matrix = table_rows(md, "## Implausibility matrix")
    assert [r["rule"] for r in matrix] == ["`bp`", "`pc`"]
    assert matrix[0]["weight_transport"].startswith("✗") and matrix[1]["linear"].startswith("✓")
    assert "## Figures" in md and "pc: energy.png, declared by the rule" in md
    for heading in ("Leaderboard", "Implausibility matrix", "Figures"):
        assert f"{heading}</h2>" in page
    assert re.search(r"<td>bp</td><td>digits</td><td>mlp:32</td><td>2</td>", page)
    assert re.search(r"<td><code>pc</code></td><td>✓ ", page)  # the matrix's pc row
    assert "pc: energy.png, declared by the rule" in page


def test_html_embeds_its_figures_and_fetches_nothing(built: tuple[str, str]) -> None:
    _, page = built
    blobs = images(page)
    assert len(blobs) == 4  # learning curves, angles, pc's energy.png, cost
    for blob in blobs:
        width, height = png_size(blob)
        assert width > 200 and height > 200
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page


def test_cost_ratio_is_seconds_per_epoch_over_bp(built: tuple[str, str], runs: Path) -> None:
    rows = {r["rule"]: r for r in table_rows(built[0])}
    bp = mean_seconds([runs / f"bp-s{s}" for s in SEEDS])
    pc = mean_seconds([runs / f"pc-s{s}" for s in SEEDS])
    assert rows["bp"][study.COST] == "1.00"
    assert rows["pc"][study.COST] == f"{pc / bp:.2f}"
    assert (rows["bp"]["s/epoch"], rows["pc"]["s/epoch"]) == (f"{bp:.3g}", f"{pc:.3g}")  # not 0.00 for a fast epoch
    # Without a bp row of the same data, arch and epochs, there is no ratio.
    kept, _ = study.read_runs([runs / "pc-s0", runs / "pc-s1"])
    _, [row] = study.leaderboard(kept)
    assert row.cells[study.COST] == "–" and row.cost is None


def test_the_ratio_follows_the_summaries(runs: Path, tmp_path: Path) -> None:
    """Numbers chosen here: bp 2.5 s per epoch, pc 7.5 s: the ratio is 3.00."""
    copy = Path(shutil.copytree(runs, tmp_path / "runs"))
    for name, seconds in (("bp-s0", [1.0, 2.0]), ("bp-s1", [3.0, 4.0]), ("pc-s0", [5.0, 5.0]), ("pc-s1", [10.0, 10.0])):
        summary = json.loads((copy / name / "summary.json").read_text())
        summary["epoch_seconds"] = seconds
        (copy / name / "summary.json").write_text(json.dumps(summary))
    kept, _ = study.read_runs([copy])
    _, rows = study.leaderboard(kept)
    assert [(r.cells["rule"], r.seconds, r.cells["s/epoch"], r.cells[study.COST]) for r in rows] == [
        ("bp", 2.5, "2.5", "1.00"),
        ("pc", 7.5, "7.5", "3.00"),
    ]


# ------------------------------------------------------------------------------------------------ what is skipped


def test_half_written_and_unfinished_runs_are_skipped_with_a_warning(runs: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(runs, tmp_path / "runs"))
    half = Path(shutil.copytree(copy / "pc-s1", copy / "half"))
    (half / "summary.json").unlink()
    running = Path(shutil.copytree(copy / "pc-s1", copy / "running"))
    summary = json.loads((running / "summary.json").read_text())
    (running / "summary.json").write_text(json.dumps({**summary, "status": "running", "seed": 7}))
    lock = logs.RunLock.acquire(running)  # its process still trains
    broken = Path(shutil.copytree(copy / "pc-s1", copy / "broken"))
    (broken / "summary.json").write_text("{not json")
    # Finished runs with an unreadable metrics.csv or traces.csv: in the leaderboard, out of what they cannot draw.
    (copy / "bp-s1" / "metrics.csv").write_bytes(b"\x91\x00\xff binary")
    (copy / "pc-s0" / "traces.csv").write_text("epoch,trace,step,value\nx,energy,zz,1\n")
    (copy / "report.md").write_text(study.MARK + "\nan earlier report\n")  # ours: rewritten
    lines: list[str] = []
    md, web = study.build_report([copy], on_skip=lines.append)
    lock.release()
    assert lines[0].startswith(f"skipped: {broken} (cannot read '{broken / 'summary.json'}': Expecting property")
    assert lines[1:] == [
        f"skipped: {half} (no summary.json: half-written or not a run)",
        f"skipped: {running} (status running)",
    ]
    text, page = md.read_text(), web.read_text()
    assert "an earlier report" not in text
    for line in lines:
        assert f"- {line}" in text
        assert f"<li>{line.replace(chr(39), '&#x27;')}</li>" in page
    assert [(r["rule"], r["runs"]) for r in table_rows(text)] == [("bp", "2"), ("pc", "2")]
    assert f"- left out of the curves: {copy / 'bp-s1'} (" in text
    assert f"pc: energy.png, declared by the rule (seed 1; {copy / 'pc-s1'})" in text  # seed 0's traces are broken
    assert len(images(page)) == 4


def test_no_run_at_all_is_a_one_line_error(tmp_path: Path, runs: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BioPropError, match=r"^no run directories in '.*empty' \(a run directory holds") as err:
        study.build_report([tmp_path / "empty"])
    assert "\n" not in str(err.value)
    only_half = tmp_path / "only-half"
    shutil.copytree(runs / "bp-s0", only_half / "bp")
    (only_half / "bp" / "summary.json").unlink()
    with pytest.raises(BioPropError, match=r"^no finished run to report in .*: skipped '.*bp' \(no summary.json"):
        study.build_report([only_half])
    assert not (only_half / "report.md").exists() and not (tmp_path / "empty" / "report.md").exists()


def test_bad_paths_and_a_missing_out_are_refused(tmp_path: Path, runs: Path) -> None:
    with pytest.raises(BioPropError, match=r"^run directory '.*nowhere' does not exist$"):
        study.build_report([tmp_path / "nowhere"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BioPropError, match=r"^'.*file.txt' is not a directory of runs"):
        study.build_report([tmp_path / "file.txt"], tmp_path / "out")
    with pytest.raises(BioPropError, match=r"^'.*file.txt' is not a directory of runs"):  # not "--out ... is a file"
        study.build_report([tmp_path / "file.txt"])
    with pytest.raises(BioPropError, match=r"^--out is needed: 2 directories given"):
        study.build_report([runs / "bp-s0", runs / "pc-s0"])
    with pytest.raises(BioPropError, match=r"^--out '.*file.txt' is a file, not a folder$"):
        study.build_report([runs], tmp_path / "file.txt")
    before = sorted(path.name for path in (runs / "bp-s0").iterdir())
    with pytest.raises(BioPropError, match=r"^--out '.*bp-s0' is a run directory; give a folder of its own$"):
        study.build_report([runs], runs / "bp-s0")  # its --overwrite would refuse the report files as foreign
    assert sorted(path.name for path in (runs / "bp-s0").iterdir()) == before


@pytest.mark.parametrize("name", [study.REPORT_HTML, study.REPORT_MD])
def test_a_report_file_bioprop_did_not_write_is_not_overwritten(runs: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("<html>my own notes</html>\n")
    with pytest.raises(BioPropError, match=rf"^refusing to overwrite '.*{re.escape(name)}': bioprop did not write it"):
        study.build_report([runs], out)
    assert (out / name).read_text() == "<html>my own notes</html>\n"
    assert sorted(p.name for p in out.iterdir()) == [name]  # the other file is not written either
    (out / name).unlink()
    (out / name).mkdir()
    with pytest.raises(BioPropError, match=r"it is a folder or a link"):
        study.build_report([runs], out)


def test_the_command_writes_the_report_and_warns_of_skipped_runs(cli, runs: Path, tmp_path: Path) -> None:
    """`bioprop report DIR --out OUT` writes both files and says where; a half-written run beside the finished ones
    is one `bioprop: warning:` line; a run directory given alone gets its report beside it, not inside it; bad input
    is one `bioprop: error:` line with exit code 2."""
    shutil.copytree(runs, tmp_path / "runs")
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "config.yaml").write_text("rule: bp\n")
    code, out, err = cli("report", tmp_path / "runs", "--out", tmp_path / "report")
    assert code == 0, err
    assert "wrote" in out and (tmp_path / "report" / "report.html").is_file()
    warnings = [line for line in err.splitlines() if line.startswith("bioprop: warning: skipped:")]
    assert len(warnings) == 1 and "broken" in warnings[0]
    one = next(p for p in (tmp_path / "runs").iterdir() if (p / "summary.json").is_file())
    code, out, err = cli("report", one)
    assert code == 0, err
    assert (one.parent / "report.md").is_file() and not (one / "report.md").exists()
    for args in (("report",), ("report", tmp_path / "nowhere"), ("report", "")):
        code, _, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("bioprop: error:"), (args, err)


#: The browser of the rendering test: Debian's chromium (`make test` installs it when run as root with apt).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Appended to a copy of report.html for the test only: after load, the decoded size of every image goes into an
#: attribute of <body>, which --dump-dom serialises with the rest of the rendered DOM.
PROBE = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-sizes', JSON.stringify("
         "[...document.images].map(i => [i.naturalWidth, i.naturalHeight]))))</script>")  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it as root with apt)")
def test_the_html_report_renders_in_a_headless_browser(runs: Path, tmp_path: Path) -> None:
    """Headless Chromium, offline, loads report.html: the rendered DOM holds the leaderboard with both rules and the
    implausibility matrix, and every embedded figure decoded to its full size (at least 200 × 200 pixels)."""
    _, web = study.build_report([runs], tmp_path / "report")
    probed = tmp_path / "probed.html"
    probed.write_text(web.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                             "--virtual-time-budget=5000", probed.as_uri()],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    sizes = json.loads(html.unescape(re.search(r'data-sizes="([^"]*)"', dom).group(1)))
    assert len(sizes) >= 3 and all(width >= 200 and height >= 200 for width, height in sizes), sizes
    text = re.sub(r"<[^>]+>", " ", dom)
    assert "Leaderboard" in text and "Implausibility matrix" in text
    assert re.search(r"\bbp\b", text) and re.search(r"\bpc\b", text)


SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "report_png.py"


def report_png(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=180, check=False)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it as root with apt)")
def test_report_png_renders_the_top_of_the_report(runs: Path, tmp_path: Path) -> None:
    """scripts/report_png.py (the README's picture): a PNG of the window size asked for, under its size budget, with
    the page drawn in it (dark text on the white page: neither blank nor one colour)."""
    _, web = study.build_report([runs], tmp_path / "report")
    out = tmp_path / "top.png"
    result = report_png(web.parent, out, "--width", 600, "--height", 800, "--max-kb", 300)
    assert result.returncode == 0, result.stderr
    blob = out.read_bytes()
    assert png_size(blob) == (600, 800) and len(blob) <= 300 * 1024
    with Image.open(out) as picture:
        grey = picture.convert("L")
        histogram = grey.histogram()
    assert sum(histogram[:64]) > 1000, "no dark (text) pixels"
    assert sum(histogram[240:]) > 0.5 * 600 * 800, "the page's white background is missing"
    # over the budget: refused, nothing written
    small = tmp_path / "small.png"
    refused = report_png(web.parent, small, "--width", 600, "--height", 800, "--max-kb", 1)
    assert (
        refused.returncode == 2
        and refused.stderr.startswith("report_png: error:")
        and "over --max-kb" in refused.stderr
    )
    assert not small.exists()


@pytest.mark.parametrize(
    ("report", "out", "extra", "token"),
    [("missing", "x.png", [], "missing"), (".", "x.jpg", [], "x.jpg"), ("notes.txt", "x.png", [], "not an HTML page"),
     (".", "dir.png", [], "is a folder"), (".", "mine.png", [], "is not a PNG: not replaced"),
     (".", "x.png", ["--width", "9000"], "--width 9000"), (".", "x.png", ["--height", "100"], "--height 100"),
     (".", "x.png", ["--max-kb", "nan"], "--max-kb nan"), (".", "x.png", ["--max-kb", "0"], "--max-kb 0")],
)  # fmt: skip
def test_report_png_refuses_bad_input_in_one_line(tmp_path: Path, report: str, out: str, extra: list, token: str):
    """Refused before rendering, exit 2, one line naming the token; a file it did not write is left as it was."""
    (tmp_path / "report.html").write_text("<!DOCTYPE html><html></html>")
    (tmp_path / "notes.txt").write_text("not a page")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "mine.png").write_text("my notes")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = report_png(tmp_path / report, tmp_path / out, *extra)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and token in result.stderr, result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
