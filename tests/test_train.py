"""Training runs: what a run directory holds, determinism, resuming after a hard kill, the divergence guard."""

from __future__ import annotations

import csv
import json
import math
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError, DivergenceError
from bioprop.report import compare
from bioprop.rules.backprop import Backprop
from conftest import tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = {
    "rule", "dataset", "arch", "activation", "seed", "epochs", "epochs_done", "status", "test_accuracy",
    "best_test_accuracy", "epoch_seconds", "alignment_deg", "alignment_init_deg", "diagnostics",
    "bioprop_version", "torch_version", "device",
}  # fmt: skip


def read_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run_dir / "model.safetensors")


def checkpoint_epoch(run_dir: Path) -> int:
    return train.read_checkpoint(run_dir / train.CHECKPOINT)[1]["epoch"]


# ------------------------------------------------------------------------------------------ the run directory


def test_summary_has_every_key_with_sane_values(finished_run: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["rule"], summary["dataset"], summary["arch"], summary["seed"]) == ("fa", "digits", "mlp:32", 0)
    assert summary["status"] == "finished" and summary["epochs_done"] == summary["epochs"] == 2
    assert 0.0 <= summary["test_accuracy"] <= summary["best_test_accuracy"] <= 1.0
    assert summary["test_accuracy"] > 0.2, "2 epochs of FA on digits should beat chance (0.1)"
    assert len(summary["epoch_seconds"]) == 2 and all(s > 0 for s in summary["epoch_seconds"])
    params = [n for n, _ in torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                                 torch.nn.Linear(32, 10)).named_parameters()]  # fmt: skip
    assert list(summary["alignment_deg"]) == params == list(summary["alignment_init_deg"])
    for name, angles in summary["alignment_deg"].items():
        assert len(angles) == 2 and all(0.0 <= a <= 180.0 for a in angles), name
    # The output layer gets the exact error in FA, so its update IS the gradient; the hidden layer's is not.
    assert summary["alignment_deg"]["3.weight"][-1] < 1e-3
    assert summary["alignment_deg"]["1.weight"][-1] > 1.0
    assert all(len(values) == 2 for values in summary["diagnostics"].values()) and summary["diagnostics"]
    assert summary["device"] == "cpu" and summary["torch_version"] == torch.__version__


def test_metrics_csv_has_a_row_per_epoch(finished_run: Path) -> None:
    rows = read_rows(finished_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0])[:7] == ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "lr"]
    assert any(k.startswith("angle/") for k in rows[0]) and any(k.startswith("diag/") for k in rows[0])
    summary = json.loads((finished_run / "summary.json").read_text())
    assert float(rows[-1]["test_accuracy"]) == summary["test_accuracy"]
    assert [float(r["angle/1.weight"]) for r in rows] == summary["alignment_deg"]["1.weight"]


def test_plots_model_and_config_are_written(finished_run: Path) -> None:
    for name in ("alignment.png", "curves.png"):
        assert (finished_run / name).read_bytes()[:8] == PNG_MAGIC, name
    weights = model_tensors(finished_run)
    assert set(weights) == {"1.weight", "1.bias", "3.weight", "3.bias"} and weights["1.weight"].shape == (32, 64)
    assert RunConfig.from_yaml(finished_run / "config.yaml") == tiny_config(rule="fa")
    tensors, meta = train.read_checkpoint(finished_run / train.CHECKPOINT)
    assert meta["epoch"] == 2 and torch.equal(tensors["model.1.weight"], weights["1.weight"])
    assert not list(finished_run.glob("*.tmp")), "atomic writes leave no temporary files behind"


def test_probes_do_not_change_the_trajectory(tmp_path: Path) -> None:
    """Measuring angles calls rule.grads, which for brsf draws fresh feedback; the run must restore the rule's
    state afterwards, or the measurement schedule would change what is learnt."""
    config = tiny_config(rule="brsf", epochs=1)
    train.run(config, tmp_path / "plain", quiet=True)
    train.run(RunConfig(**{**config.to_dict(), "probe_every": 2}), tmp_path / "probed", quiet=True)
    plain, probed = model_tensors(tmp_path / "plain"), model_tensors(tmp_path / "probed")
    assert all(torch.equal(plain[k], probed[k]) for k in plain)
    rows = read_rows(tmp_path / "probed" / "alignment.csv")
    assert list(rows[0]) == ["step", "epoch", "parameter", "angle_deg"]
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]  # 300 examples / 64 = 5 steps; step 0 is the init
    assert (tmp_path / "probed" / "alignment.png").read_bytes()[:8] == PNG_MAGIC


def test_same_seed_same_run_other_seed_other_run(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train.run(tiny_config(rule="fa", epochs=1, seed=seed), tmp_path / name, quiet=True)
    a, b, c = (model_tensors(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["1.weight"], c["1.weight"])


def test_lr_schedules_follow_their_formulas() -> None:
    cosine = RunConfig(lr=0.1, epochs=4, schedule="cosine")
    expected = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]  # half a cosine period over the run
    assert [cosine.lr_at(e) for e in range(4)] == pytest.approx(expected) and expected[2] == pytest.approx(0.05)
    step = RunConfig(lr=1.0, epochs=7, schedule="step")  # step_size 0: epochs // 3 = 2
    assert [step.lr_at(e) for e in range(7)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001])
    assert RunConfig(lr=0.3, schedule="none").lr_at(5) == 0.3


def test_overwrite_clears_an_earlier_run_but_never_a_foreign_directory(tmp_path: Path, finished_run: Path) -> None:
    out = tmp_path / "run"
    train.run(tiny_config(epochs=1), out, quiet=True)
    (out / "stale.txt").write_text("from before")
    train.run(tiny_config(epochs=1), out, overwrite=True, quiet=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(BioPropError, match="not a bioprop run directory"):
        train.run(tiny_config(epochs=1), foreign, overwrite=True, quiet=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


# --------------------------------------------------------------------------------------------- divergence


def test_divergence_raises_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A NaN loss at step 7 (epoch 2 of 5-step epochs) must stop the run with a DivergenceError naming where it
    happened, leave epoch 1's checkpoint intact and mark the summary as diverged."""
    calls = {"n": 0}
    honest = Backprop.backward

    def poisoned(self, x, y):
        calls["n"] += 1
        loss, prediction = honest(self, x, y)
        return (loss * math.nan if calls["n"] == 7 else loss), prediction

    monkeypatch.setattr(Backprop, "backward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"diverged at epoch 2, step 2/5.*smaller --lr") as caught:
        train.run(tiny_config(epochs=3), out, quiet=True)
    assert caught.value.exit_code == 3 and "\n" not in str(caught.value)
    assert checkpoint_epoch(out) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_done"] == 1 and "epoch 2" in summary["message"]
    assert len(read_rows(out / "metrics.csv")) == 1 and (out / "curves.png").is_file()
    assert not (out / "model.safetensors").exists()


def test_non_finite_update_is_divergence_too(tmp_path: Path, monkeypatch) -> None:
    honest = Backprop.backward

    def inf_grad(self, x, y):
        loss, prediction = honest(self, x, y)
        next(self.net.parameters()).grad[0, 0] = math.inf
        return loss, prediction

    monkeypatch.setattr(Backprop, "backward", inf_grad)
    with pytest.raises(DivergenceError, match="epoch 1, step 1/5 .*non-finite"):
        train.run(tiny_config(), tmp_path / "run", quiet=True)


# ---------------------------------------------------------------------------------------------- resuming


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path) -> float:
    """Start ``cmd``, wait until the first checkpoint exists, SIGKILL it a random moment later; returns the delay.
    Retries (at most 3 times) if the run finished before the kill landed."""
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not (run_dir / train.CHECKPOINT).exists() and proc.poll() is None:
            time.sleep(0.002)
        delay = random.uniform(0.0, 0.3)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == -signal.SIGKILL and checkpoint_epoch(run_dir) < 3:
            return delay
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        cmd = [*cmd, "--overwrite"] if "--overwrite" not in cmd else cmd
    pytest.fail("the run always finished before it could be killed")


def assert_same_results(whole: Path, resumed: Path) -> None:
    """Bit-identical weights, metrics.csv except its timing column, alignment.csv and summary numbers."""
    assert (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert read_rows(resumed / "metrics.csv", drop=("seconds",)) == read_rows(whole / "metrics.csv", drop=("seconds",))
    if (whole / "alignment.csv").exists():
        assert (resumed / "alignment.csv").read_text() == (whole / "alignment.csv").read_text()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, resumed))
    for key in ("status", "test_accuracy", "best_test_accuracy", "alignment_deg", "alignment_init_deg", "diagnostics"):
        assert a[key] == b[key], key


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, cli) -> None:
    """Killing a run at any moment and resuming it must give exactly the uninterrupted run's weights and metrics:
    the checkpoint holds every piece of state. brsf draws fresh feedback from its own generator at every step, so
    a generator state not restored would show at once; step-level probes exercise alignment.csv's history."""
    common = ["--rule", "brsf", "--probe-every", "90", "--data", "digits", "--arch", "mlp:32", "--epochs", "3",
              "--batch-size", "4", "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = cli("train", *common, "--out", tmp_path / "whole")
    assert code == 0, err
    killed = tmp_path / "killed"
    delay = kill_after_first_checkpoint([sys.executable, "-m", "bioprop.cli", "train", *common, "--out", str(killed)],
                                        killed)  # fmt: skip
    assert not (killed / "model.safetensors").exists()
    code, _, err = cli("resume", killed, "--quiet")
    assert code == 0, f"killed {delay:.3f} s after the first checkpoint: {err}"
    assert_same_results(tmp_path / "whole", killed)


def test_resume_after_ctrl_c_is_bit_identical(tmp_path: Path, cli, monkeypatch) -> None:
    """The same with Adam (moments and step counts in the checkpoint) and a cosine schedule, interrupted by
    Ctrl-C at a random step after the first epoch: exit 130, a message saying how to resume, identical results."""
    common = ["--rule", "bp", "--optimizer", "adam", "--lr", "0.003", "--schedule", "cosine", "--data", "digits",
              "--arch", "mlp:32", "--epochs", "3", "--batch-size", "16", "--limit", "800",
              "--device", "cpu"]  # fmt: skip
    code, _, err = cli("train", *common, "--quiet", "--out", tmp_path / "whole")
    assert code == 0, err
    stop_at = random.randint(51, 149)  # 50 steps per epoch: somewhere in epoch 2 or 3
    steps = {"n": 0}
    honest = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == stop_at:
            raise KeyboardInterrupt
        return honest(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    code, _, err = cli("train", *common, "--quiet", "--out", tmp_path / "stopped")
    assert code == 130 and f"bioprop resume {tmp_path / 'stopped'}" in err and "Traceback" not in err
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(torch.optim.Adam, "step", honest)
    code, out, err = cli("resume", tmp_path / "stopped")
    assert code == 0, f"stopped at step {stop_at}: {err}"
    assert "test accuracy" in out
    assert_same_results(tmp_path / "whole", tmp_path / "stopped")


def test_resume_of_a_finished_run_only_reports(run_copy: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    summary = train.resume(run_copy, quiet=True)
    assert summary["resumed_from"] == summary["epochs"] == 2 and summary["status"] == "finished"
    assert {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()} == before, "nothing is rewritten"


# --------------------------------------------------------------------------------------------- comparing


def test_compare_groups_seeds_into_mean_and_std(tmp_path: Path, finished_run: Path) -> None:
    for seed in (1, 2):
        train.run(tiny_config(rule="fa", seed=seed, epochs=1), tmp_path / f"s{seed}", quiet=True)
    accuracies = [json.loads((tmp_path / f"s{s}" / "summary.json").read_text())["test_accuracy"] for s in (1, 2)]
    table = compare([tmp_path / "s1", tmp_path / "s2"])
    lines = table.splitlines()
    assert len(lines) == 3 and "test acc" in lines[0] and "1.weight" in lines[2]
    expected = f"{100 * statistics.fmean(accuracies):.2f} ± {100 * statistics.stdev(accuracies):.2f}"
    assert expected in lines[2] and "| 2 " in lines[2]
    assert len(compare([tmp_path / "s1", finished_run]).splitlines()) == 3  # same rule+arch: one group of two
    with pytest.raises(BioPropError, match="no summary.json"):
        compare([tmp_path])


def test_config_yaml_of_a_run_round_trips(finished_run: Path) -> None:
    values = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert values["rule"] == "fa" and values["rule_opts"] == {}
    assert RunConfig.from_dict(values).fingerprint() == tiny_config(rule="fa").fingerprint()


def test_inference_rules_record_energy_traces_per_epoch_and_resume_them(tmp_path: Path, cli) -> None:
    """pc returns the energy at each inference step; the run keeps the epoch mean in traces.csv, draws
    energy.png, and a resumed run carries the traces of the epochs before the interruption."""
    common = ["--rule", "pc", "--rule-opt", "steps=6", "--data", "digits", "--arch", "mlp:16", "--limit", "300",
              "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = cli("train", *common, "--epochs", "3", "--out", tmp_path / "whole")
    assert code == 0, err
    rows = read_rows(tmp_path / "whole" / "traces.csv")
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(e, t) for e in (1, 2, 3) for t in range(7)]
    assert {r["trace"] for r in rows} == {"energy"}
    for epoch in (1, 2, 3):
        energy = [float(r["value"]) for r in rows if int(r["epoch"]) == epoch]
        assert energy[-1] < energy[0], "inference lowers the energy"
    assert (tmp_path / "whole" / "energy.png").read_bytes()[:8] == PNG_MAGIC
    stopped = train_one_epoch_then_resume(cli, common, tmp_path / "stopped", epochs=3)
    assert read_rows(stopped / "traces.csv") == rows


def train_one_epoch_then_resume(cli, common: list[str], stopped: Path, epochs: int) -> Path:
    """Train one epoch, turn the run into one of ``epochs`` epochs interrupted after its first, and resume it."""
    code, _, err = cli("train", *common, "--epochs", "1", "--out", stopped)
    assert code == 0, err
    config = stopped / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", f"epochs: {epochs}"))
    checkpoint = stopped / train.CHECKPOINT
    tensors, meta = train.read_checkpoint(checkpoint)
    meta["fingerprint"] = RunConfig.from_yaml(config).fingerprint()  # as if started for `epochs` epochs
    blob = safetensors.torch.save(tensors, metadata={"bioprop": json.dumps(meta)})
    checkpoint.write_bytes(blob)
    (stopped / "model.safetensors").unlink()
    code, _, err = cli("resume", stopped, "--quiet")
    assert code == 0, err
    return stopped


def test_ep_resume_keeps_the_random_signs_and_the_trace_schedule(tmp_path: Path, cli) -> None:
    """ep with random-sign nudging draws a sign per batch and records traces every 4th batch: a resumed run has the
    uninterrupted run's weights and traces only if the checkpoint holds the generator and the batch counter."""
    common = ["--rule", "ep", "--rule-opt", "nudge=random-sign", "--rule-opt", "trace_every=4", "--data", "digits",
              "--arch", "ebm:16", "--limit", "300", "--optimizer", "adam", "--lr", "0.01", "--device", "cpu",
              "--quiet"]  # fmt: skip
    code, _, err = cli("train", *common, "--epochs", "2", "--out", tmp_path / "whole")
    assert code == 0, err
    stopped = train_one_epoch_then_resume(cli, common, tmp_path / "stopped", epochs=2)
    assert_same_results(tmp_path / "whole", stopped)
    assert read_rows(stopped / "traces.csv") == read_rows(tmp_path / "whole" / "traces.csv")
