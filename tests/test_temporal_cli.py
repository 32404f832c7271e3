"""The temporal family from the command line, as a user types it: sequence runs write the same run directory as every
other run (metrics with update angles to BPTT, summary, weights, checkpoint), regression tasks say they have no
accuracy, and every mismatch between rule, network and data is one ``bioprop: error:`` line with exit code 2."""

from __future__ import annotations

import csv
import json
import math

import pytest

SMALL = "store-recall:delay=4,n_train=48,n_test=16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule", "eprop", "--data", "digits"], "arch 'lsnn:50+50' takes sequences of shape (T, C)"),
        (["--rule", "fa", "--data", SMALL], "is a sequence task (24x4: steps x channels): use a recurrent arch"),
        (
            ["--rule", "fa", "--data", SMALL, "--arch", "lsnn:4+4"],
            "rule fa: recurrent networks (rnn:N, lif:N, alif:N, lsnn:N+M, sab:N) are trained by bptt, tbptt, eprop",
        ),  # fmt: skip
        (["--rule", "eprop", "--data", SMALL, "--arch", "rnn:8"], "rule eprop trains spiking networks"),
        (["--rule", "tbptt", "--data", SMALL, "--rule-opt", "truncation=0"], "truncation='0' must be at least 1"),
        (["--rule", "bptt", "--data", "store-recall:delay=-1"], "delay must be an integer >= 0, not '-1'"),
        (["--rule", "bptt", "--data", SMALL, "--arch", "lsnn:5"], "give the LIF and ALIF counts as lsnn:N+M"),
        (
            ["--rule", "eprop", "--data", "pattern-generation", "--arch", "lif:4", "--rule-opt", "output=ce"],
            "has float targets (regression): use --rule-opt output=se, not output=ce",
        ),  # fmt: skip
    ],
)
def test_mismatches_are_one_line_errors(cli, tmp_path, args: list[str], message: str) -> None:
    code, out, err = cli("train", *args, "--epochs", "1", "--quiet", "--out", tmp_path / "run")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bioprop: error: ") and message in lines[0], err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_rule_options_are_refused_before_the_data_are_loaded(cli, tmp_path, monkeypatch) -> None:
    from bioprop import data

    def loaded(*args, **kwargs):
        raise AssertionError("the data were loaded before the rule's options were checked")

    monkeypatch.setattr(data, "load", loaded)
    for option, message in (("block=0", "block='0' must be at least 1"), ("blocks=2", "unknown option 'blocks'")):
        code, _, err = cli("train", "--rule", "eprop", "--data", "cue-accumulation", "--rule-opt", option, "--out",
                           tmp_path / "run")  # fmt: skip
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_sequence_run_writes_a_run_directory_with_angles_to_bptt(cli, tmp_path) -> None:
    run = tmp_path / "run"
    code, _, err = cli("train", "--rule", "tbptt", "--data", SMALL, "--arch", "lsnn:6+6", "--epochs", "2",
                       "--rule-opt", "truncation=4", "--optimizer", "adam", "--lr", "0.01", "--quiet",
                       "--out", run)  # fmt: skip
    assert code == 0, err
    for name in ("config.yaml", "metrics.csv", "summary.json", "model.safetensors", "checkpoint.safetensors",
                 "example.png"):  # fmt: skip
        assert (run / name).is_file(), name
    from safetensors.torch import load_file

    example = load_file(run / "example.safetensors")  # the first test sequence through the trained network
    steps = example["input"].shape[0]
    assert example["input"].shape == (steps, 4) and example["target"].shape == (steps,)
    assert example["state.z"].shape == example["state.v"].shape == (steps, 12) and example["state.y"].shape[1] == 2
    assert set(example["state.z"].unique().tolist()) <= {0.0, 1.0}
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and rows[0]["loss"] == "ce"
    angles = {key: float(value) for key, value in rows[-1].items() if key.startswith("angle/")}
    assert set(angles) == {"angle/input.weight", "angle/recurrent.weight", "angle/readout.weight",
                           "angle/readout.bias"}  # fmt: skip
    assert 0.0 < angles["angle/recurrent.weight"] < 90.0  # truncated: another direction than BPTT's, still a descent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["arch"] == "lsnn:6+6" and 0.0 <= summary["test_accuracy"] <= 1.0


def test_a_regression_task_trains_with_squared_error_and_reports_no_accuracy(cli, tmp_path) -> None:
    run = tmp_path / "run"
    code, out, err = cli("train", "--rule", "eprop", "--data", "pattern-generation:n_train=2,n_test=1", "--arch",
                         "lif:8", "--epochs", "1", "--batch-size", "2", "--out", run)  # fmt: skip
    assert code == 0, err
    assert "regression: no accuracy" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss"] == "se" and summary["test_accuracy"] is None and math.isfinite(summary["test_loss"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", SMALL, "--arch", "lsnn:4+4", "--activation", "tanh"], "fixes its nonlinearity (spike)"),
        (["--data", "store-recall:delay=100000000"], "need more memory than there is"),
    ],
)
def test_settings_a_recurrent_run_cannot_honour_are_refused(cli, tmp_path, args: list[str], message: str) -> None:
    code, _, err = cli("train", "--rule", "bptt", *args, "--epochs", "1", "--quiet", "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_sequences_too_long_for_bptt_in_memory_are_refused_before_training(cli, tmp_path, monkeypatch) -> None:
    """BPTT (every probe's reference) keeps ~12 values per neuron and step: 20,020 steps × 64 examples × 100 neurons
    need ~6 GiB, refused at a stated 1 GiB available."""
    from bioprop import train

    monkeypatch.setattr(train, "available_memory", lambda device: 1 << 30)
    code, _, err = cli("train", "--rule", "eprop", "--data", "store-recall:delay=20000,n_train=64,n_test=8",
                       "--epochs", "1", "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert code == 2 and "sequences of 20,020 steps are too long for 'lsnn:50+50'" in err and "1.0 GiB" in err, err
    assert not (tmp_path / "run").exists()
