"""The reproduction gallery (issue 13, item 4): :mod:`bioprop.reproduce`, a registry of seed papers' headline
results over the experiment framework's writing and refusal machinery. Every entry runs at its ``quick`` scale
once (a module fixture, about 12 s in all on one core); the tests then check that its JSON holds the numbers it
claims, recomputed here from the curves and sweeps the same JSON records, and that the claim holds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bioprop import experiments, reproduce
from bioprop.errors import BioPropError

ENTRIES = ("bengio2015", "lillicrap2016", "whittington-bogacz2017")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Every entry run once at the quick scale into one folder: the folder and each returned record."""
    out = tmp_path_factory.mktemp("gallery")
    return out, {name: reproduce.reproduce(name, out, seed=0, scale="quick") for name in ENTRIES}


def read(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / f"{name}.json").read_text())


# ------------------------------------------------------------------------------------------------- the registry


def test_the_list_names_every_entry_with_its_paper_claim_and_figures() -> None:
    assert set(ENTRIES) <= set(reproduce.names()) and reproduce.names() == sorted(reproduce.names())
    for name in ENTRIES:
        entry = reproduce.get(name)
        assert entry.paper and entry.claim and entry.summary and entry.paper_value
        assert entry.figures and all(f.startswith(name) and f.endswith(".png") for f in entry.figures)


def test_an_unknown_name_is_one_line_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(BioPropError) as caught:
        reproduce.reproduce("lillicrap2017", tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("unknown reproduction 'lillicrap2017'; known: ")
    assert all(name in message for name in ENTRIES)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("kwargs", "says"), [({"scale": "huge"}, "scale must be one of quick, default, full, not "
                                                                  "'huge'"),
                                              ({"seed": -1}, "--seed must be an integer"),
                                              ({"seed": "x"}, "not 'x'")])  # fmt: skip
def test_a_bad_scale_or_seed_is_refused_before_any_work(tmp_path: Path, kwargs: dict, says: str) -> None:
    with pytest.raises(BioPropError, match=says):
        reproduce.reproduce("lillicrap2016", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- the framework, on a toy entry


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """A registered reproduction ``toy`` writing ``toy.png``; returns the (seed, scale) of its runs."""
    calls: list[tuple[int, str]] = []

    def run(out: Path, seed: int, scale: str) -> dict[str, Any]:
        calls.append((seed, scale))
        reproduce.figure_path(out, "toy", "toy.png").write_bytes(f"{seed} {scale}".encode())
        return {"ours": 0.5 + seed, "holds": seed == 0, "detail": [1, 2]}

    reproduce.names()  # the real entries first
    entry = reproduce.Reproduction("toy", "Toy et al. 2000", "Fig. 1", "toys hold", 0.5, "a toy", ("toy.png",), run)
    monkeypatch.setitem(reproduce.CATALOG.entries, "toy", entry)
    return calls


def test_the_record_puts_paper_claim_and_numbers_on_top_and_a_rerun_overwrites_only_its_files(
    toy, tmp_path: Path
) -> None:
    out = tmp_path / "a" / "b"
    reproduce.reproduce("toy", out, seed=1, scale="full")
    (out / "unrelated.txt").write_bytes(b"x")
    record = reproduce.reproduce("toy", out, seed=0, scale="quick")
    assert toy == [(1, "full"), (0, "quick")]
    assert read(out, "toy") == record
    expected = {
        "reproduction": "toy", "status": "finished", "paper": "Toy et al. 2000", "claim": "toys hold",
        "paper_value": 0.5, "ours": 0.5, "holds": True, "scale": "quick", "quick": True, "figures": ["toy.png"],
    }  # fmt: skip
    assert {key: record[key] for key in expected} == expected
    assert record["results"] == {"detail": [1, 2]} and "experiment" not in record
    assert (out / "toy.png").read_bytes() == b"0 quick"
    assert sorted(p.name for p in out.iterdir()) == ["toy.json", "toy.png", "unrelated.txt"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("toy.png", b"the user's picture"),
        ("toy.json", b'{"notes": "the user\'s"}'),
        # an experiment's record of the same name is not a reproduction's: the record's key names its kind
        (
            "toy.json",
            json.dumps({"experiment": "toy", "status": "finished", "figures": ["toy.png"], "bioprop": "0"}).encode(),
        ),  # fmt: skip
    ],
)
def test_a_foreign_file_of_an_own_name_is_refused_and_left_byte_identical(toy, tmp_path: Path, name, content) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BioPropError, match=f"refusing to overwrite .*{name}.*bioprop did not write it"):
        reproduce.reproduce("toy", tmp_path)
    assert toy == [] and (tmp_path / name).read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_an_entry_that_returns_no_verdict_is_a_programming_error(toy, tmp_path: Path, monkeypatch) -> None:
    entry = reproduce.CATALOG.entries["toy"]
    monkeypatch.setitem(reproduce.CATALOG.entries, "toy", dataclasses.replace(entry, run=lambda out, seed, scale: {}))
    with pytest.raises(ValueError, match="reproduction 'toy' returned no ours, holds"):
        reproduce.reproduce("toy", tmp_path)


def test_experiments_keep_their_record_form(tmp_path: Path, monkeypatch) -> None:
    """The framework's generalisation (kind, top, execute) leaves an experiment's record as it was."""
    toy = experiments.Experiment("toy", "a toy", "nowhere", (), lambda out, seed, quick: {"value": 1.0})
    monkeypatch.setitem(experiments.CATALOG.entries, "toy", toy)
    record = experiments.run_experiment("toy", tmp_path)
    assert set(record) == {"experiment", "status", "summary", "source", "seed", "quick", "figures", "seconds",
                           "torch", "bioprop", "machine", "results"}  # fmt: skip
    assert record["experiment"] == "toy" and record["results"] == {"value": 1.0}


# --------------------------------------------------------------------------------------------- the entries


@pytest.mark.parametrize("name", ENTRIES)
def test_each_entry_writes_its_figures_and_a_finished_record_whose_claim_holds(gallery, name: str) -> None:
    out, records = gallery
    record = read(out, name)
    assert record == records[name]
    assert record["reproduction"] == name and record["status"] == "finished" and record["scale"] == "quick"
    assert {"paper", "claim", "paper_value", "ours", "holds", "criterion"} <= set(record) | set(record["results"])
    assert record["figures"] == list(reproduce.get(name).figures)
    for figure in record["figures"]:
        assert (out / figure).read_bytes()[:8] == PNG and (out / figure).stat().st_size > 20_000
    assert record["holds"] is True, record["ours"]
    assert record["seconds"] < 60  # quick: about 2-9 s on one core of the development machine


def test_bengio2015_numbers_are_those_of_its_curves(gallery) -> None:
    out, _ = gallery
    record = read(out, "bengio2015")
    ours, window, gradient = record["ours"], record["results"]["window"], record["results"]["gradient"]
    cosines = gradient["cosine"]
    assert ours["cosine_mean"] == pytest.approx(sum(cosines) / len(cosines), rel=1e-12)
    assert ours["cosine_min"] == min(cosines) and ours["steps"] == len(cosines) == gradient["setting"]["steps"]
    assert ours["j_first"] == gradient["j"][0] and ours["j_last"] == gradient["j"][-1]
    assert ours["window_tau_plus_ms"] == window["fit"]["plus"]["tau_ms"] > 0
    # the window from its bin means: ΔW has the sign of ΔT, and each side's far third is smaller than its near third
    bins = window["bins"]
    sides = {1: [], -1: []}
    for dt, dw in zip(bins["dt_ms"], bins["mean_dw"], strict=True):
        sides[1 if dt > 0 else -1].append((abs(dt), dw))
    sign = all(sum(dw for _, dw in side) * s > 0 for s, side in sides.items())
    thirds = [(sorted(side)[: len(side) // 3], sorted(side)[-(len(side) // 3) :]) for side in sides.values()]
    decays = all(sum(abs(dw) for _, dw in far) < sum(abs(dw) for _, dw in near) for near, far in thirds)
    assert ours["window_sign_follows_dt"] is sign is True and ours["window_decays_with_abs_dt"] is decays is True
    assert record["holds"] is (sign and decays and ours["cosine_mean"] >= 0.95 and ours["j_last"] < ours["j_first"])


def test_lillicrap2016_numbers_are_those_of_its_curves(gallery) -> None:
    out, _ = gallery
    record = read(out, "lillicrap2016")
    ours, (curves,) = record["ours"], record["results"]["curves"]  # quick: one seed
    angles, steps, w_bt = curves["update_angle_deg"], curves["step"], curves["w_bt_angle_deg"]
    assert steps[0] == 0 and steps[-1] == record["results"]["setting"]["steps"]
    assert 75 < angles[0] < 105 and 75 < w_bt[0] < 105  # at the start B is unrelated to W: near orthogonal
    crossing = next(k for k, a in enumerate(angles) if a < 90)
    assert ours["first_step_below_90"] == steps[crossing] and max(angles[crossing:]) < 90
    tail, quarter = len(angles) // 10, len(angles) // 4
    assert ours["update_angle_end_deg"] == pytest.approx(sum(angles[-tail:]) / tail, rel=1e-12)
    assert ours["update_angle_end_deg"] < 45 and sum(angles[-quarter:]) < sum(angles[:quarter])
    assert ours["w_bt_angle_end_deg"] == w_bt[-1] < 45
    assert ours["nse_fa_end"] == curves["nse_fa"][-1] < 0.5  # FA learns: the error falls from 1
    assert ours["seeds"] == ours["seeds_holding"] == ours["seeds_where_angle_keeps_falling"] == 1
    assert record["holds"] is True


def test_whittington_bogacz2017_numbers_are_those_of_its_sweep(gallery) -> None:
    out, _ = gallery
    record = read(out, "whittington-bogacz2017")
    ours, sweep = record["ours"], record["results"]["sweep"]
    betas = sweep["betas"]
    worst = [max(sweep["angle_deg"][w][k] for w in sweep["weights"]) for k in range(len(betas))]
    assert worst == record["results"]["largest_angle_deg_per_beta"]
    assert ours["angle_deg_at_largest_beta"] == worst[0] > 5  # β = 1 (hard clamp) is not backprop
    assert ours["angle_deg_at_smallest_beta"] == worst[-1] < 1
    assert all(b < a for a, b in zip(worst, worst[1:], strict=False))
    errors = [max(sweep["relative_error"][w][k] for w in sweep["weights"]) for k in range(len(betas))]
    small = [(math.log(b), math.log(e)) for b, e in zip(betas, errors, strict=True) if b <= 0.1]
    slope = (small[-1][1] - small[0][1]) / (small[-1][0] - small[0][0])  # quick: two points, the line through them
    assert ours["relative_error_slope_in_beta"] == pytest.approx(slope, rel=1e-9) and 0.8 < slope < 1.2
    assert ours["fpa_max_relative_error"] == sweep["fpa_max_relative_error"] < 1e-12
    assert record["holds"] is True


def test_a_gallery_row_sets_our_number_beside_the_papers(gallery) -> None:
    out, _ = gallery
    row = reproduce.gallery_row(read(out, "whittington-bogacz2017"))
    assert row.startswith("| whittington-bogacz2017 | predictive coding's weight update") and row.endswith("| yes |")
    assert f"{read(out, 'whittington-bogacz2017')['ours']['fpa_max_relative_error']:.4g}" in row
    assert row.count(" | ") == 4  # five cells: no '|' of a claim breaks the table


def test_the_command_lists_runs_and_refuses_bad_input(cli, tmp_path: Path) -> None:
    """`bioprop reproduce --list` names every entry; a quick run says whether the claim holds and writes NAME.json;
    an unknown name, --full with --quick, and NAME with --list are one-line errors with exit code 2."""
    code, out, err = cli("reproduce", "--list")
    assert code == 0, err
    assert all(name in out for name in ("bengio2015", "lillicrap2016", "whittington-bogacz2017"))
    code, out, err = cli("reproduce", "whittington-bogacz2017", "--quick", "--out", tmp_path)
    assert code == 0, err
    assert "the claim holds" in out and (tmp_path / "whittington-bogacz2017.json").is_file()
    for args in (("nope",), ("lillicrap2016", "--full", "--quick"), ("lillicrap2016", "--list")):
        code, _, err = cli("reproduce", *args, "--out", tmp_path / "other")
        assert code == 2 and err.count("\n") == 1 and err.startswith("bioprop: error:"), (args, err)


def test_all_runs_every_reproduction_and_writes_the_gallery(cli, tmp_path: Path, monkeypatch) -> None:
    """`bioprop reproduce --all` runs each registered reproduction (two toys here) and writes gallery.md, a row per
    reproduction and its figures, and a self-contained gallery.html with the figures embedded; a gallery.md that
    bioprop did not write is refused before any work and left as it was."""
    calls: list[str] = []

    def toy(name: str, holds: bool) -> reproduce.Reproduction:
        def run(out: Path, seed: int, scale: str) -> dict[str, Any]:
            calls.append(name)
            reproduce.figure_path(out, name, f"{name}.png").write_bytes(b"\\x89PNG fake")
            return {"ours": {"value": 0.25}, "holds": holds}

        return reproduce.Reproduction(name, "Toy 2000", "Fig. 1", f"{name} | holds", 1.0, "a toy", (f"{name}.png",),
                                      run)  # fmt: skip

    reproduce.names()
    monkeypatch.setattr(reproduce.CATALOG, "entries", {"toy-a": toy("toy-a", True), "toy-b": toy("toy-b", False)})
    code, out, err = cli("reproduce", "--all", "--quick", "--out", tmp_path)
    assert code == 0, err
    assert calls == ["toy-a", "toy-b"] and "gallery:" in out and "[2/2] toy-b" in err
    md = (tmp_path / "gallery.md").read_text().splitlines()
    assert md[0] == reproduce.GALLERY_MARK
    assert "| toy-a | toy-a \\| holds | 1 | value 0.25 | yes |" in md  # the claim's "|" escaped
    assert "| toy-b | toy-b \\| holds | 1 | value 0.25 | no |" in md
    assert "![toy-a: toy-a.png](toy-a.png)" in md
    page = (tmp_path / "gallery.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<td>toy-b | holds</td>" in page
    foreign = tmp_path / "other" / "gallery.md"
    foreign.parent.mkdir()
    foreign.write_text("mine\n")
    calls.clear()
    code, _, err = cli("reproduce", "--all", "--out", foreign.parent)
    assert code == 2 and "was not written by bioprop" in err and calls == [] and foreign.read_text() == "mine\n"
    code, _, err = cli("reproduce", "toy-a", "--all", "--out", tmp_path)
    assert code == 2 and err.startswith("bioprop: error: give --all alone")
