"""Training runs: what a run directory holds, determinism, resuming after a hard kill or SIGTERM, the divergence
guard and what it blames, verified checkpoints, the memory estimate."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from safetensors import safe_open

from bioprop import data, rules, train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError, DivergenceError
from bioprop.report import compare
from bioprop.rules.backprop import Backprop
from conftest import TINY_FLAGS, threads_per_epoch, tiny_config

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


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` with its contents (files), link target (links) or None (folders)."""

    def content(path: Path) -> object:
        return ("link", os.readlink(path)) if path.is_symlink() else path.read_bytes() if path.is_file() else None

    return {str(path.relative_to(root)): content(path) for path in sorted(root.rglob("*"))}


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
    assert list(rows[0])[:8] == ["epoch", "loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                                 "seconds", "lr"]  # fmt: skip
    assert {r["loss"] for r in rows} == {"ce"}  # the run's one output loss, which both loss columns measure
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
    """Measuring angles calls rule.grads, which for brsf draws feedback of the step; grads is pure (the contract),
    so the trainer restores nothing and the measurement schedule still cannot change what is learnt."""
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
    """An earlier run's own files go, including one the new run does not write (alignment.csv, written only with
    probes) and the temporary file of a write a killed process left; a folder bioprop did not write stays whole."""
    out = tmp_path / "run"
    train.run(tiny_config(epochs=1, probe_every=2), out, quiet=True)
    (out / "checkpoint.safetensors.tmp").write_bytes(b"half a checkpoint")
    assert (out / "alignment.csv").is_file()
    train.run(tiny_config(epochs=1), out, overwrite=True, quiet=True)
    assert not (out / "alignment.csv").exists() and (out / "model.safetensors").is_file()
    assert not (out / "checkpoint.safetensors.tmp").exists()
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

    def poisoned(self, x, y, index=None):
        calls["n"] += 1
        loss, prediction = honest(self, x, y, index)
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

    def inf_grad(self, x, y, index=None):
        loss, prediction = honest(self, x, y, index)
        next(self.net.parameters()).grad[0, 0] = math.inf
        return loss, prediction

    monkeypatch.setattr(Backprop, "backward", inf_grad)
    with pytest.raises(DivergenceError, match="epoch 1, step 1/5 .*non-finite"):
        train.run(tiny_config(), tmp_path / "run", quiet=True)


def test_a_parameter_made_non_finite_by_a_step_is_named_not_the_learning_rate(tmp_path: Path, monkeypatch) -> None:
    """An optimizer step that leaves a NaN weight makes the next loss non-finite; the error must name that
    parameter and the step it came from, not suggest a smaller learning rate."""
    honest, steps = torch.optim.SGD.step, {"n": 0}

    def step(self, *args, **kwargs):
        result = honest(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 3:
            self.param_groups[0]["params"][0].data[0, 0] = math.nan  # the first parameter: '1.weight'
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(DivergenceError) as caught:
        train.run(tiny_config(rule="bp"), tmp_path / "run", quiet=True)
    message = str(caught.value)
    assert "'1.weight'" in message and "last step (step 3)" in message and "step 4/5" in message
    assert "--lr" not in message


def test_a_non_finite_feedback_matrix_is_named_as_the_rules_state(tmp_path: Path, monkeypatch) -> None:
    """FA's loss stays finite when its feedback matrix B holds a NaN (B acts after the forward pass); the update
    does not, and the error must name B, not the learning rate."""
    made, honest_create = [], rules.create

    def create(*args, **kwargs):
        made.append(honest_create(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(rules, "create", create)
    honest, steps = torch.optim.SGD.step, {"n": 0}

    def step(self, *args, **kwargs):
        result = honest(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 2:
            state = made[0].state_dict()
            state["feedback.3"] = state["feedback.3"].clone()
            state["feedback.3"][4, 5] = math.nan
            made[0].load_state_dict(state)
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(DivergenceError) as caught:
        train.run(tiny_config(rule="fa"), tmp_path / "run", quiet=True)
    message = str(caught.value)
    assert "state tensor 'feedback.3'" in message and "step 3/5" in message and "--lr" not in message


def test_non_finite_data_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    honest = data.load

    def load(*args, **kwargs):
        dataset = honest(*args, **kwargs)
        dataset.train_x[5, 0, 2, 3] = math.nan
        return dataset

    monkeypatch.setattr(data, "load", load)
    with pytest.raises(BioPropError, match=r"non-finite values in train_x: they come from the data") as caught:
        train.run(tiny_config(), tmp_path / "run", quiet=True)
    assert not isinstance(caught.value, DivergenceError) and not (tmp_path / "run").exists()


def test_a_network_too_large_for_memory_is_refused_with_the_estimate(tmp_path: Path, monkeypatch, cli) -> None:
    """mlp:100000x100000 on 8x8 digits: 64*1e5 + 1e5 + 1e5*1e5 + 1e5 + 1e5*10 + 10 parameters; with SGD and
    momentum, weights + gradients + momentum + the probes' two gradient copies = 5 float32 copies."""
    n_params = 64 * 10**5 + 10**5 + 10**10 + 10**5 + 10**6 + 10
    need = n_params * 4 * 5
    monkeypatch.setattr(train, "available_memory", lambda device: 2**30)
    with pytest.raises(BioPropError) as caught:
        train.run(tiny_config(arch="mlp:100000x100000"), tmp_path / "big", quiet=True)
    assert f"{n_params:,} parameters" in str(caught.value) and f"{need / 2**30:.1f} GiB" in str(caught.value)
    assert "1.0 GiB of memory is available" in str(caught.value) and not (tmp_path / "big").exists()
    # the boundary, on a tiny net: 64*32 + 32 + 32*10 + 10 parameters, 5 float32 copies
    tiny_need = (64 * 32 + 32 + 32 * 10 + 10) * 4 * 5
    monkeypatch.setattr(train, "available_memory", lambda device: tiny_need - 1)
    with pytest.raises(BioPropError, match="too large"):
        train.build(tiny_config(), tmp_path / "unused")
    monkeypatch.setattr(train, "available_memory", lambda device: tiny_need)
    train.build(tiny_config(), tmp_path / "unused")
    monkeypatch.undo()  # the real memory of this machine: 4e12 weights are far beyond any of it
    code, _, err = cli("train", "--arch", "mlp:1000000x1000000", "--data", "digits", "--device", "cpu", "--quiet",
                       "--out", tmp_path / "huge")  # fmt: skip
    assert code == 2 and err.startswith("bioprop: error: network 'mlp:1000000x1000000' is too large")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "huge").exists()


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_records_the_sha256_of_its_tensors(finished_run: Path) -> None:
    """The checksum is SHA-256 over the tensors' bytes in sorted-name order, recomputed here with numpy."""
    checkpoint = finished_run / train.CHECKPOINT
    tensors = safetensors.torch.load_file(checkpoint)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].numpy().tobytes())
    with safe_open(checkpoint, framework="pt") as handle:
        assert json.loads(handle.metadata()["bioprop"])["sha256"] == digest.hexdigest()


def test_a_flipped_byte_in_a_checkpoint_is_corruption(run_copy: Path, cli) -> None:
    checkpoint = run_copy / train.CHECKPOINT
    (run_copy / "model.safetensors").unlink()  # as if killed before the end, so resume has work to do
    blob = bytearray(checkpoint.read_bytes())
    data_start = 8 + int.from_bytes(blob[:8], "little")  # safetensors: 8-byte header length, header, tensor data
    blob[(data_start + len(blob)) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(blob))
    before = snapshot(run_copy)
    with pytest.raises(BioPropError, match="corrupt checkpoint .*SHA-256"):
        train.resume(run_copy, quiet=True)
    code, _, err = cli("resume", run_copy)
    assert code == 2 and "corrupt checkpoint" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run_copy) == before, "a refused resume writes nothing"


def test_non_finite_weights_in_a_checkpoint_are_named_not_blamed_on_the_learning_rate(run_copy: Path) -> None:
    """A checkpoint whose weights were overwritten with NaN (and its checksum made to match, so only the values
    are wrong) is refused when read, naming the tensor, instead of resuming into a 'divergence'."""
    checkpoint = run_copy / train.CHECKPOINT
    (run_copy / "model.safetensors").unlink()
    tensors = safetensors.torch.load_file(checkpoint)
    with safe_open(checkpoint, framework="pt") as handle:
        meta = json.loads(handle.metadata()["bioprop"])
    tensors["model.3.weight"] = torch.full_like(tensors["model.3.weight"], math.nan)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].numpy().tobytes())
    meta["sha256"] = digest.hexdigest()
    checkpoint.write_bytes(safetensors.torch.save(tensors, metadata={"bioprop": json.dumps(meta)}))
    with pytest.raises(BioPropError) as caught:
        train.resume(run_copy, quiet=True)
    message = str(caught.value)
    assert "'model.3.weight'" in message and "non-finite" in message and "from the checkpoint" in message
    assert not isinstance(caught.value, DivergenceError) and "--lr" not in message


# ---------------------------------------------------------------------------------------------- resuming


# Runs the bioprop CLI in a fresh process and, at a point the test chooses, sends that process a signal or pauses
# it: no timing, so the outcome never depends on how fast the machine is.
INTERRUPTER = """\
import os, signal, sys
import torch
from bioprop.cli import main

# python interrupter.py WHEN ACTION ARGS...: run `bioprop ARGS...`; at WHEN (step:N, just before the N-th optimizer
# step; checkpoint:N, just before the N-th checkpoint is renamed over the last one) do ACTION: send this process
# the signal of that name (SIGKILL, SIGTERM), or `pause` (print "paused", then wait for a line on stdin).
when, action, args = sys.argv[1], sys.argv[2], sys.argv[3:]
kind, at = when.split(":")
count = 0

def counted(honest, counts):
    def wrapper(*a, **kw):
        global count
        if counts(*a):
            count += 1
            if count == int(at):
                if action == "pause":
                    print("paused", flush=True)
                    sys.stdin.readline()
                else:
                    os.kill(os.getpid(), signal.Signals[action])
        return honest(*a, **kw)
    return wrapper

if kind == "step":
    torch.optim.SGD.step = counted(torch.optim.SGD.step, lambda *a: True)
else:
    os.replace = counted(os.replace, lambda src, dst: str(dst).endswith("checkpoint.safetensors"))
main(args)
"""


def interrupter(tmp_path: Path, when: str, action: str, *args: object) -> list[str]:
    """The command that runs ``bioprop ARGS`` and does ``action`` at ``when`` (see INTERRUPTER)."""
    script = tmp_path / "interrupter.py"
    script.write_text(INTERRUPTER)
    return [sys.executable, str(script), when, action, *map(str, args)]


# 100 steps of 4 examples per epoch; brsf draws fresh feedback from its own generator at every step, so a generator
# state not restored would show at once; step-level probes exercise alignment.csv's history.
BRSF = ["--rule", "brsf", "--probe-every", "90", "--data", "digits", "--limit", "400", "--arch", "mlp:32",
        "--epochs", "3", "--batch-size", "4", "--device", "cpu", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def brsf_whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run of BRSF's flags that interrupted ones are compared with (read only)."""
    out = tmp_path_factory.mktemp("brsf") / "whole"
    config = RunConfig(rule="brsf", probe_every=90, data="digits", limit=400, arch="mlp:32", epochs=3, batch_size=4,
                       device="cpu")  # fmt: skip
    train.run(config, out, quiet=True)
    return out


def assert_same_results(whole: Path, resumed: Path) -> None:
    """Bit-identical weights, metrics.csv except its timing column, alignment.csv and summary numbers."""
    assert (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert read_rows(resumed / "metrics.csv", drop=("seconds",)) == read_rows(whole / "metrics.csv", drop=("seconds",))
    if (whole / "alignment.csv").exists():
        assert (resumed / "alignment.csv").read_text() == (whole / "alignment.csv").read_text()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, resumed))
    for key in ("status", "test_accuracy", "best_test_accuracy", "alignment_deg", "alignment_init_deg", "diagnostics"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("when", ["step:150", "checkpoint:2"])
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, cli, brsf_whole: Path, when: str) -> None:
    """Killing a run at any moment and resuming it must give exactly the uninterrupted run's weights and metrics:
    the checkpoint holds every piece of state. Killed in the middle of epoch 2 (step 150), or in the middle of
    writing epoch 2's checkpoint (the new one written, not yet renamed over epoch 1's): either way epoch 1's
    checkpoint is the one on disk."""
    killed = tmp_path / "killed"
    proc = subprocess.run(interrupter(tmp_path, when, "SIGKILL", "train", *BRSF, "--out", killed), capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert checkpoint_epoch(killed) == 1 and not (killed / "model.safetensors").exists()
    if when.startswith("checkpoint"):
        assert (killed / "checkpoint.safetensors.tmp").is_file(), "the kill landed between write and rename"
    assert (killed / ".bioprop-lock").is_file(), "a killed process cannot remove its lock file"
    code, _, err = cli("resume", killed, "--quiet")
    assert code == 0, err
    assert_same_results(brsf_whole, killed)
    assert not list(killed.glob("*.tmp")) and not (killed / ".bioprop-lock").exists()


def test_sigterm_is_handled_as_ctrl_c_and_resumes_bit_identically(tmp_path: Path, cli, brsf_whole: Path) -> None:
    """SIGTERM (what schedulers and `docker stop` send) at step 250 (epoch 3): a one-line message, status
    'interrupted', epoch 2's checkpoint kept, the lock released, and a resume equal to the uninterrupted run."""
    stopped = tmp_path / "stopped"
    proc = subprocess.run(interrupter(tmp_path, "step:250", "SIGTERM", "train", *BRSF, "--out", stopped),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 130, proc.stderr  # as Ctrl-C
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"bioprop resume {stopped}" in lines[0], proc.stderr
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["message"] and summary["epochs_done"] == 2
    assert checkpoint_epoch(stopped) == 2 and not (stopped / ".bioprop-lock").exists()
    assert not list(stopped.glob("*.tmp"))
    assert (stopped / "curves.png").is_file()  # the two finished epochs drawn, before any resume
    code, _, err = cli("resume", stopped, "--quiet")
    assert code == 0, err
    assert_same_results(brsf_whole, stopped)


def test_resume_after_ctrl_c_is_bit_identical(tmp_path: Path, cli, monkeypatch) -> None:
    """The same with Adam (moments and step counts in the checkpoint) and a cosine schedule, interrupted by
    Ctrl-C at step 77 (epoch 2 of 50-step epochs): exit 130, a message saying how to resume, identical results;
    the resumed run says where it continues and that the train metrics are running means."""
    common = ["--rule", "bp", "--optimizer", "adam", "--lr", "0.003", "--schedule", "cosine", "--data", "digits",
              "--arch", "mlp:32", "--epochs", "3", "--batch-size", "16", "--limit", "800",
              "--device", "cpu"]  # fmt: skip
    code, _, err = cli("train", *common, "--quiet", "--out", tmp_path / "whole")
    assert code == 0, err
    stop_at = 77
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
    assert f"resuming {tmp_path / 'stopped'} from epoch 2/3" in err
    assert "epoch 2/3  train (running mean) loss" in err and "epoch 1/3" not in err
    assert_same_results(tmp_path / "whole", tmp_path / "stopped")


def test_ctrl_c_while_the_last_plots_are_drawn_exits_130_in_one_line_and_resume_finishes(
    tmp_path: Path, cli, monkeypatch
) -> None:
    """Ctrl-C that lands in ``import matplotlib`` as the finished run's plots are drawn leaves matplotlib
    half-imported: drawing the interrupted run's plots then raises a KeyError from inside it (it used to end in
    that traceback, exit 1). The exit stays 130 with one line; resume writes the plots, the model and the final
    summary."""
    calls = {"n": 0}
    honest = train.write_plots

    def plots(run_dir):
        calls["n"] += 1
        raise KeyboardInterrupt if calls["n"] == 1 else KeyError("PolyCollection:kwdoc")

    monkeypatch.setattr(train, "write_plots", plots)
    out = tmp_path / "run"
    code, _, err = cli("train", *TINY_FLAGS, "--epochs", "2", "--quiet", "--out", out)
    assert code == 130 and calls["n"] == 2, err
    assert err.strip().splitlines() == [f"bioprop: interrupted; the last checkpoint in {out} is kept; "
                                        f"continue with `bioprop resume {out}`"]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_done"] == 2
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(train, "write_plots", honest)
    code, got, err = cli("resume", out, "--quiet")
    assert code == 0 and "already finished" not in got, got + err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert (out / "model.safetensors").is_file() and (out / "curves.png").is_file()
    code, got, _ = cli("resume", out)
    assert code == 0 and f"{out} already finished (2/2 epochs); nothing to do" in got


def test_run_and_resume_train_with_the_configs_threads_and_put_the_callers_back(tmp_path: Path, monkeypatch) -> None:
    """The Python API applies a config's ``threads`` for the run (it used to record them only, so a script's
    ``threads=1`` ran on torch's full count); resume applies the recorded ones; the caller's count is back after,
    also when the run is stopped by Ctrl-C."""
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    seen = threads_per_epoch(monkeypatch)  # Ctrl-C in epoch 2, after epoch 1's checkpoint
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_config(threads=wanted), tmp_path / "run", quiet=True)
    assert seen == [wanted, wanted] and torch.get_num_threads() == before
    assert train.resume(tmp_path / "run", quiet=True)["status"] == "finished"
    assert seen == [wanted, wanted, wanted] and torch.get_num_threads() == before
    train.run(tiny_config(epochs=1), tmp_path / "unset", quiet=True)  # threads None: torch's count as it stands
    assert seen[-1] == before and torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -1, 1025, 1.5, True, "2"])
def test_resume_refuses_a_bad_thread_count_before_it_touches_the_run(tmp_path: Path, monkeypatch, threads) -> None:
    seen = threads_per_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # stopped in epoch 2: a resume would train and write
        train.run(tiny_config(), tmp_path / "run", quiet=True)
    before, epochs = snapshot(tmp_path / "run"), len(seen)
    message = f"threads must be a whole number from 1 to 1024, not {threads!r}"
    with pytest.raises(BioPropError, match=re.escape(message)):
        train.resume(tmp_path / "run", quiet=True, threads=threads)
    assert snapshot(tmp_path / "run") == before and len(seen) == epochs, "refused before the first step"


def test_resume_of_a_finished_run_only_reports(run_copy: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    summary = train.resume(run_copy, quiet=True)
    assert summary["resumed_from"] == summary["epochs"] == 2 and summary["status"] == "finished"
    assert {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()} == before, "nothing is rewritten"


# --------------------------------------------------------------------------------------------- comparing


def test_compare_groups_seeds_into_mean_and_std(tmp_path: Path, finished_run: Path) -> None:
    for seed in (1, 2):
        train.run(tiny_config(rule="fa", seed=seed), tmp_path / f"s{seed}", quiet=True)  # as finished_run but the seed
    accuracies = [json.loads((tmp_path / f"s{s}" / "summary.json").read_text())["test_accuracy"] for s in (1, 2)]
    table = compare([tmp_path / "s1", tmp_path / "s2"])
    lines = table.splitlines()
    assert len(lines) == 3 and "test acc" in lines[0] and "1.weight" in lines[2]
    expected = f"{100 * statistics.fmean(accuracies):.2f} ± {100 * statistics.stdev(accuracies):.2f}"
    assert expected in lines[2] and "| 2 " in lines[2]
    assert len(compare([tmp_path / "s1", finished_run]).splitlines()) == 3  # same rule+arch: one group of two
    (tmp_path / "empty").mkdir()
    with pytest.raises(BioPropError, match=r"summary\.json"):  # a path without a run: says what a run holds
        compare([tmp_path / "empty"])


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


def test_ep_resume_keeps_the_random_signs_the_trace_schedule_and_the_particles(tmp_path: Path, cli) -> None:
    """ep with random-sign nudging draws a sign per batch, records traces every 4th batch and (persistent) starts
    each example's free phase from its state of the epoch before: a resumed run has the uninterrupted run's weights
    and traces only if the checkpoint holds the step count and every example's particle."""
    common = ["--rule", "ep", "--rule-opt", "nudge=random-sign", "--rule-opt", "trace_every=4",
              "--rule-opt", "persistent=true", "--data", "digits",
              "--arch", "ebm:16", "--limit", "300", "--optimizer", "adam", "--lr", "0.01", "--device", "cpu",
              "--quiet"]  # fmt: skip
    code, _, err = cli("train", *common, "--epochs", "2", "--out", tmp_path / "whole")
    assert code == 0, err
    stopped = train_one_epoch_then_resume(cli, common, tmp_path / "stopped", epochs=2)
    assert_same_results(tmp_path / "whole", stopped)
    assert read_rows(stopped / "traces.csv") == read_rows(tmp_path / "whole" / "traces.csv")


def test_a_divergence_names_the_options_the_user_set_before_the_learning_rate(tmp_path: Path) -> None:
    """fa with feedback weights 1e30 times their usual size: the loss goes non-finite with finite parameters. The
    option set far from its default is named as the first suspect, before the learning rate; the seed the trainer
    passes to the rule by itself is not."""
    with pytest.raises(DivergenceError) as caught:
        train.run(tiny_config(rule="fa", rule_opts={"scale": 1e30}), tmp_path / "run", quiet=True)
    message = str(caught.value)
    assert "suspects, first the options you set: scale=1e+30 (default 1); then try a smaller --lr" in message
    assert "seed=" not in message


def test_clip_scales_the_update_to_its_norm_before_the_optimizer_step(tmp_path: Path) -> None:
    """One full batch of plain SGD with --clip c: the weights move by −lr · g · c/‖g‖ (‖g‖ over all parameters) when
    ‖g‖ > c, g the rule's update at the initial weights (the same network: build seeds it)."""
    config = RunConfig(rule="bp", data="digits", arch="mlp:8", epochs=1, batch_size=64, limit=64, optimizer="sgd",
                       momentum=0.0, lr=0.5, clip=0.01, probe_batches=1, probe_batch_size=16, threads=1)  # fmt: skip
    session = train.build(config, tmp_path / "unused")
    start = {name: p.detach().clone() for name, p in session.net.named_parameters()}
    g = rules.create("bp", session.net).grads(session.dataset.train_x, session.dataset.train_y).grads
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in g.values()))
    assert norm > 10 * config.clip  # the clipping acts
    train.run(config, tmp_path / "run", quiet=True)
    trained = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    for name, before in start.items():
        expected = before - config.lr * g[name] * (config.clip / norm)
        torch.testing.assert_close(trained[name], expected, rtol=0, atol=1e-6)
    assert RunConfig(**{**config.to_dict(), "clip": None}).fingerprint() != config.fingerprint()


def test_epoch_lines_show_accuracy_only_where_there_are_classes(capsys) -> None:
    """A regression task's accuracy is NaN: its epoch line and bar leave accuracy out instead of printing "acc nan";
    a classification task's line keeps both accuracies."""
    from bioprop.report.progress import Progress

    row = dict(epoch=1, train_loss=0.5, test_loss=0.25, seconds=1.0)
    for train_acc, test_acc in ((float("nan"), float("nan")), (0.5, 0.75)):
        with Progress(2, 1, 0, quiet=False) as bar:
            bar.advance(0, 1, 1, 0.5, train_acc)
            bar.epoch_done(dict(row, train_accuracy=train_acc, test_accuracy=test_acc))
    err = capsys.readouterr().err
    assert "nan" not in err
    assert "epoch 1/2  train (running mean) loss 0.5000  test loss 0.2500  1.0 s" in err
    assert "epoch 1/2  train (running mean) loss 0.5000  acc 0.5000  test loss 0.2500  acc 0.7500  1.0 s" in err
