"""More of the reproduction gallery (issue 13, item 4): ``lillicrap-santoro2019`` and ``bellec2020``. Each entry runs
at its ``quick`` scale once (a module fixture); the tests recompute its JSON's numbers from the curves the same JSON
records, check the figure and that the claim holds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

import bioprop.reproduce.lillicrap_santoro2019  # noqa: F401  (registers the entry until it is in MODULES)
from bioprop import reproduce
from bioprop.reproduce import bellec2020  # (imported: registers the entry until it is in MODULES)

PNG = b"\x89PNG\r\n\x1a\n"


def read(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def santoro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("santoro")
    reproduce.reproduce("lillicrap-santoro2019", out, seed=0, scale="quick")
    return out


def test_lillicrap_santoro2019_is_listed_with_its_paper_and_figure() -> None:
    entry = reproduce.get("lillicrap-santoro2019")
    assert "lillicrap-santoro2019" in reproduce.names()
    assert entry.paper.startswith("Lillicrap & Santoro 2019") and entry.figures == ("lillicrap-santoro2019.png",)


def test_lillicrap_santoro2019_numbers_are_those_of_its_curves(santoro: Path) -> None:
    record = read(santoro, "lillicrap-santoro2019")
    assert record["status"] == "finished" and record["scale"] == "quick" and record["quick"] is True
    curves, ours, setting = record["results"]["curves"], record["ours"], record["results"]["setting"]
    assert setting["delay"] > setting["truncation"]  # the store lies beyond truncated BPTT's reach
    assert set(curves) == {"sab", "tbptt", "bptt"}
    for rule, seeds in curves.items():
        assert len(seeds) == setting["seeds"] and all(len(c) == setting["epochs"] for c in seeds)
        assert ours[f"{rule}_test_accuracy_per_seed"] == [c[-1] for c in seeds]
        assert ours[f"{rule}_test_accuracy"] == pytest.approx(statistics.fmean(c[-1] for c in seeds), rel=1e-12)
    gap = min(s[-1] - t[-1] for s, t in zip(curves["sab"], curves["tbptt"], strict=True))
    assert ours["smallest_gap_sab_minus_tbptt"] == pytest.approx(gap, rel=1e-12)
    assert ours["sab_test_accuracy"] >= 0.9 and gap >= 0.2  # sab solves it; tbptt does not
    assert ours["tbptt_test_accuracy"] < 0.8
    assert record["holds"] is True and "sab" in record["results"]["criterion"]
    assert record["paper_value"] and record["claim"].startswith("attention")


def test_lillicrap_santoro2019_writes_its_figure(santoro: Path) -> None:
    record = read(santoro, "lillicrap-santoro2019")
    path = santoro / "lillicrap-santoro2019.png"
    assert record["figures"] == ["lillicrap-santoro2019.png"]
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000
    row = reproduce.gallery_row(record)
    assert row.startswith("| lillicrap-santoro2019 | attention") and row.endswith("| yes |")


# ---------------------------------------------------------------------------------------------------- bellec2020


@pytest.fixture(scope="module")
def bellec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bellec")
    reproduce.reproduce("bellec2020", out, seed=0, scale="quick")
    return out


def test_bellec2020_is_listed_and_full_is_the_papers_scale() -> None:
    entry = reproduce.get("bellec2020")
    assert entry.paper.startswith("Bellec") and "Fig. 3" in entry.source and entry.figures == ("bellec2020.png",)
    full, default = bellec2020.SETTINGS["full"], bellec2020.SETTINGS["default"]
    assert (full.cues, full.neurons, full.epochs * full.n_train // full.batch_size) == (7, 100, 2000)
    assert default.cues < full.cues and default.neurons < full.neurons
    assert (
        bellec2020.config(full, "alif", 0).arch == "lsnn:50+50" and bellec2020.config(full, "lif", 0).arch == "lif:100"
    )


def test_bellec2020_numbers_are_those_of_its_curves(bellec: Path) -> None:
    record = read(bellec, "bellec2020")
    assert record["status"] == "finished" and record["scale"] == "quick"
    curves, ours, setting = record["results"]["curves"], record["ours"], record["results"]["setting"]
    per_epoch = -(-setting["n_train"] // setting["batch_size"])
    assert ours["iterations"] == setting["epochs"] * per_epoch
    for network in ("alif", "lif"):
        seeds = curves[network]
        assert len(seeds) == setting["seeds"] and all(len(c) == setting["epochs"] for c in seeds)
        assert all(0 <= a <= 1 for c in seeds for a in c)
        finals = [statistics.fmean(c[-3:]) for c in seeds]
        assert ours[f"{network}_final_accuracy_per_seed"] == pytest.approx(finals, rel=1e-12)
        assert ours[f"{network}_best_error"] == pytest.approx(1 - max(max(c) for c in seeds), rel=1e-12)
        reached = [next(((e + 1) * per_epoch for e, a in enumerate(c) if 1 - a < 0.07), None) for c in seeds]
        assert ours[f"{network}_iterations_to_7pct_error"] == reached
    gap = min(statistics.fmean(a[-3:]) - statistics.fmean(b[-3:])
              for a, b in zip(curves["alif"], curves["lif"], strict=True))  # fmt: skip
    assert ours["smallest_gap_alif_minus_lif"] == pytest.approx(gap, rel=1e-12)
    expected = min(ours["alif_final_accuracy_per_seed"]) >= 0.6 and gap >= 0.1
    assert record["holds"] is expected  # quick is too short to learn: holds says what was measured


def test_bellec2020_writes_its_figure(bellec: Path) -> None:
    record = read(bellec, "bellec2020")
    path = bellec / "bellec2020.png"
    assert record["figures"] == ["bellec2020.png"]
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000
