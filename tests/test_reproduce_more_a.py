"""Reproduction gallery entries (issue 13, item 4): ``ernoult2019`` (the GDU property of equilibrium propagation).
Each entry runs once at its ``quick`` scale (a module fixture); the tests recompute the JSON's headline numbers from
the per-step comparisons the same JSON records, check the figure and that the claim holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bioprop.reproduce.ernoult2019 as ernoult2019  # registers the entry (the lead adds it to MODULES)
from bioprop import reproduce

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ernoult(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("ernoult2019")
    reproduce.reproduce("ernoult2019", out, seed=0, scale="quick")
    return out, json.loads((out / "ernoult2019.json").read_text())


def test_ernoult2019_is_registered_with_its_paper_claim_and_figure() -> None:
    entry = reproduce.get("ernoult2019")
    assert "Ernoult" in entry.paper and "2019" in entry.paper and "BPTT" in entry.claim
    assert entry.figures == ("ernoult2019.png",)


def test_ernoult2019_writes_its_figure_and_the_claim_holds(ernoult: tuple[Path, dict[str, Any]]) -> None:
    out, record = ernoult
    figure = out / "ernoult2019.png"
    assert figure.read_bytes()[:8] == PNG and figure.stat().st_size > 20_000
    assert record["holds"] is True and record["status"] == "finished" and record["scale"] == "quick"
    assert record["paper_value"] == reproduce.get("ernoult2019").paper_value and record["results"]["criterion"]
    ours = record["ours"]
    assert ours["neurons_min_cosine"] >= 0.999 and ours["weights_min_cosine"] >= 0.999
    assert ours["neurons_max_relative_error"] <= 1e-3 and ours["weights_max_relative_error"] <= 1e-3
    # the limit β → 0: the worst relative error shrinks by more than 10x per decade of β
    errors = [ours[f"max_relative_error_beta={beta:g}"] for beta in ernoult2019.BETAS]
    assert all(b < a / 10 for a, b in zip(errors, errors[1:], strict=False)), errors


def test_ernoult2019_numbers_are_recomputed_from_the_per_step_comparisons(
    ernoult: tuple[Path, dict[str, Any]],
) -> None:
    record = ernoult[1]
    results, ours = record["results"]["curves"], record["ours"]
    setting = record["results"]["setting"]
    assert len(results) == setting["seeds"] == ours["seeds"] == ours["seeds_holding"]
    small = f"{ernoult2019.BETAS[-1]:g}"
    for part, pick in (("neurons", lambda n: not n.endswith(".weight")), ("weights", lambda n: n.endswith(".weight"))):
        pairs = [row[n] for r in results for row in r["per_beta"][small] for n in r["tensors"] if pick(n)]
        reached = [p for p in pairs if p["cosine"] is not None]
        assert ours[f"{part}_min_cosine"] == min(p["cosine"] for p in reached)
        assert ours[f"{part}_max_relative_error"] == max(p["relative_error"] for p in reached)
        for p in reached:  # the stored cosine and error agree with the stored norms (a triangle inequality)
            assert abs(p["ep_norm"] - p["bptt_norm"]) <= p["relative_error"] * p["bptt_norm"] * (1 + 1e-9) + 1e-15
        assert all(p["ep_norm"] < 1e-9 for p in pairs if p["cosine"] is None)  # no signal: no EP update
    for r in results:
        steps = r["per_beta"][small]
        assert [row["step"] for row in steps] == list(range(setting["steps"]))
        # the wave of the nudge: at step 0 only the output layer and its weights get an update
        first = steps[0]
        assert first["s1"]["cosine"] is None and first[f"s{len(setting['hidden']) + 1}"]["cosine"] is not None
        assert r["fixed_point_residual"] < ernoult2019.FIXED_POINT_TOL
        # the curves of the figure: one unit per layer, EP beside BPTT, equal to within the stored error
        for ep, bp in zip(r["curves"]["ep_neuron"], r["curves"]["bptt_neuron"], strict=True):
            assert len(ep) == setting["steps"]
            assert all(abs(a - b) <= 1e-3 * max(1e-12, abs(b)) + 1e-12 for a, b in zip(ep, bp, strict=True))


def test_ernoult2019_fails_its_criterion_at_a_large_beta(ernoult: tuple[Path, dict[str, Any]]) -> None:
    """The criterion can fail: judged at β = 0.1 instead of 0.001, the same net's numbers do not hold."""
    summary = ernoult[1]["results"]["per_seed"][0]
    at_large = dict(summary)
    at_large[f"beta={ernoult2019.BETAS[-1]:g}"] = summary[f"beta={ernoult2019.BETAS[0]:g}"]
    assert ernoult2019.holds_for(summary) is True and ernoult2019.holds_for(at_large) is False
