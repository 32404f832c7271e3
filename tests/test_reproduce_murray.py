"""Reproduction gallery entry ``murray2019`` (RFLO learns Murray 2019's periodic output, Fig. 2a). The entry runs
once at its ``quick`` scale (a module fixture, a few seconds); the tests recompute the JSON's numbers from the
per-step losses, the target and the trained output the same JSON records, check the target and the constant-output
baseline against their closed forms, check that the entry's training loop records what ``bioprop train`` records,
and that the criterion says no when RFLO does not learn."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

import bioprop.reproduce.murray2019 as murray
from bioprop import reproduce

PNG = b"\x89PNG\r\n\x1a\n"


def murray_target(period: int) -> list[float]:
    """Murray 2019's target over one period, written out here from the paper's code: y*(t), t = 1 … P."""
    return [
        math.sin(2 * math.pi * t / period) + 0.5 * math.sin(4 * math.pi * t / period)
        + 0.25 * math.sin(8 * math.pi * t / period)
        for t in range(1, period + 1)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("murray2019")
    returned = reproduce.reproduce("murray2019", out, seed=0, scale="quick")
    stored = json.loads((out / "murray2019.json").read_text())
    assert stored == returned
    return out, stored


def test_murray2019_is_registered_with_its_paper_claim_and_figure() -> None:
    assert "murray2019" in reproduce.names()
    entry = reproduce.get("murray2019")
    assert "Murray" in entry.paper and "43299" in entry.paper and "Fig. 2" in entry.source
    assert "RFLO" in entry.claim and "periodic" in entry.claim and "Fig. 2" in entry.paper_value
    assert entry.figures == ("murray2019.png",)


def test_murray2019_writes_its_figure_and_a_finished_quick_record(record: tuple[Path, dict[str, Any]]) -> None:
    out, rec = record
    figure = out / "murray2019.png"
    assert figure.read_bytes()[:8] == PNG and figure.stat().st_size > 20_000
    assert rec["status"] == "finished" and rec["scale"] == "quick" and rec["figures"] == ["murray2019.png"]
    assert rec["results"]["criterion"] and rec["paper_value"] == reproduce.get("murray2019").paper_value
    setting = rec["results"]["setting"]
    assert setting == murray.SETTINGS["quick"]._asdict()
    curves = rec["results"]["curves"]
    assert set(curves) == set(murray.RULES)
    assert all(len(c) == setting["seeds"] and all(len(s) == setting["steps"] + 1 for s in c) for c in curves.values())
    assert rec["seconds"] < 60  # quick: about 5 s on one core of the development machine
    # quick, seed 0: RFLO ends at 0.42 of the constant-output loss (measured); the criterion asks for < 0.5
    assert rec["holds"] is True, rec["ours"]


def test_the_stored_target_is_murrays_sum_of_three_sines_and_the_baseline_its_half_variance(record) -> None:
    """The target is y*(t) = sin(2πt/P) + ½ sin(4πt/P) + ¼ sin(8πt/P), t = 1 … P; over whole periods its mean is 0,
    so the best constant output's loss ½ mean (y*)² is ½ · ½ (1 + ¼ + 1/16) = 0.328125 in closed form."""
    rec = record[1]
    period = rec["results"]["setting"]["period"]
    target = rec["results"]["outputs"]["target"]
    expected = murray_target(period)
    assert target == pytest.approx(expected, abs=1e-6)  # stored at the run's float32
    assert rec["ours"]["mean_output_loss"] == pytest.approx(0.328125, rel=1e-6)


def test_the_numbers_are_recomputed_from_the_stored_losses(record) -> None:
    rec = record[1]
    ours, curves = rec["ours"], rec["results"]["curves"]
    tail = murray.TAIL
    for rule in murray.RULES:
        finals = [sum(c[-tail:]) / tail for c in curves[rule]]
        assert ours[f"{rule}_final_loss_per_seed"] == pytest.approx(finals, rel=1e-12)
        assert ours[f"{rule}_final_loss_median"] == pytest.approx(statistics.median(finals), rel=1e-12)
        assert ours[f"{rule}_untrained_loss_per_seed"] == [c[0] for c in curves[rule]]
    # both rules start from the same initial weights (the seed): the same untrained loss
    assert ours["rflo_untrained_loss_per_seed"] == ours["bptt_untrained_loss_per_seed"]
    base = ours["mean_output_loss"]
    worst = max(sum(c[-tail:]) / tail / min(c[0], base) for c in curves["rflo"])
    assert ours["rflo_worst_fraction_of_untrained"] == pytest.approx(worst, rel=1e-12)
    below = [sum(b[-tail:]) < sum(r[-tail:]) for r, b in zip(curves["rflo"], curves["bptt"], strict=True)]
    assert ours["bptt_below_rflo_per_seed"] == below
    assert rec["holds"] is (worst < murray.FRACTION)


def test_the_last_loss_is_that_of_the_stored_trained_output(record) -> None:
    """The stored output trace and the last recorded loss describe the same trained network: ½ mean (y − y*)²."""
    rec = record[1]
    outputs, curves = rec["results"]["outputs"], rec["results"]["curves"]
    target = outputs["target"]
    for rule in murray.RULES:
        loss = 0.5 * statistics.fmean((y - t) ** 2 for y, t in zip(outputs[rule], target, strict=True))
        assert curves[rule][0][-1] == pytest.approx(loss, rel=1e-4)


def test_the_training_loop_records_what_bioprop_train_records(tmp_path: Path) -> None:
    """The entry runs the training loop itself (one trial per epoch); its loss after k updates is the test_loss
    ``bioprop train`` writes to metrics.csv after epoch k, and its first loss the untrained network's."""
    from bioprop import train
    from bioprop.report import logs

    setting = murray.Setting(period=20, steps=3, seeds=1, hidden=8)
    for rule in murray.RULES:
        ours = murray.train_one(setting, rule, seed=3)["loss"]
        train.run(murray.config(setting, rule, seed=3), tmp_path / rule, quiet=True)
        theirs = [float(row["test_loss"]) for row in logs.read_metrics(tmp_path / rule)]
        assert len(ours) == setting.steps + 1 and ours[1:] == pytest.approx(theirs, rel=1e-6)
        assert ours[1] != ours[0]  # the first update changed the network


def synthetic(rflo_ends: list[float], bptt_ends: list[float], start: float = 0.36) -> dict[str, list[dict]]:
    """Runs of 20 steps whose losses fall linearly from ``start`` to the given ends over 10 steps, then stay there
    (so the final loss, the mean of the last 10, is the end), on Murray's target (P = 40)."""
    target = murray_target(40)

    def run(end: float) -> dict[str, list[float]]:
        loss = [start + (end - start) * min(k, 10) / 10 for k in range(21)]
        return {"loss": loss, "output": [0.0] * 40, "target": target}

    return {"rflo": [run(e) for e in rflo_ends], "bptt": [run(e) for e in bptt_ends]}


@pytest.mark.parametrize(
    ("rflo_ends", "bptt_ends", "holds"),
    [
        ([0.05, 0.04], [0.01, 0.01], True),  # RFLO learns in both seeds
        ([0.30, 0.32], [0.01, 0.01], False),  # RFLO does not learn: its loss stays near the untrained one
        ([0.05, 0.30], [0.01, 0.01], False),  # every seed must learn
        ([0.05, 0.04], [0.20, 0.30], True),  # BPTT is reported, not required
    ],
)
def test_the_criterion_says_no_when_rflo_does_not_learn(rflo_ends, bptt_ends, holds) -> None:
    ours = murray.summarise(synthetic(rflo_ends, bptt_ends))
    assert murray.holds_for(ours) is holds
    assert ours["bptt_below_rflo_per_seed"] == [b < r for r, b in zip(rflo_ends, bptt_ends, strict=True)]


def test_the_criterion_is_against_the_smaller_of_untrained_and_constant_output() -> None:
    """An untrained network far worse than a constant output (start 2.0) does not make a small fall count: RFLO
    must also halve the constant-output loss (0.328)."""
    ours = murray.summarise(synthetic([0.2], [0.01], start=2.0))  # 10 % of untrained, 61 % of constant output
    assert ours["rflo_worst_fraction_of_untrained"] > murray.FRACTION and murray.holds_for(ours) is False
