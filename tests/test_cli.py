"""The command line: every user error ends with exit code 2 (3 for divergence) and ONE line on stderr, never a
traceback; the listing commands show what they promise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bioprop import rules
from bioprop.data import DATASETS

TINY = ["--data", "digits", "--arch", "mlp:32", "--epochs", "1", "--limit", "200", "--device", "cpu", "--quiet"]


def assert_one_line_error(code: int, err: str, expected_code: int = 2, says: str = "") -> None:
    lines = err.strip("\n").splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("bioprop: error: "), err
    assert "Traceback" not in err and says in lines[0], err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--data", "nope"], "unknown dataset 'nope'"),
        (["--rule", "nope"], "unknown rule 'nope'"),
        (["--arch", "resnet"], "unknown arch 'resnet'"),
        (["--arch", "mlp:0"], "hidden sizes must be positive"),
        (["--activation", "nope"], "unknown --activation 'nope'; choose one of auto, hard_sigmoid"),
        (["--optimizer", "rmsprop"], "unknown --optimizer 'rmsprop'"),
        (["--schedule", "linear"], "unknown --schedule"),
        (["--device", "tpu"], "unknown --device"),
        (["--dtype", "float16"], "unknown --dtype"),
        (["--lr", "0"], "lr must be positive"),
        (["--lr", "-0.1"], "lr must be positive"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--epochs", "-3"], "epochs must be a positive integer"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--rule-opt", "foo"], "malformed --rule-opt 'foo'"),
        (["--rule-opt", "=1"], "malformed --rule-opt '=1'"),
        (["--rule", "fa", "--rule-opt", "nope=1"], "unknown option 'nope'"),
        (["--rule", "fa", "--rule-opt", "scale=-1"], "must be positive"),
        (["--rule", "fa", "--rule-opt", "scale=big"], "not a valid float"),
        (["--limit", "0"], "limit must be a positive"),
        (["--rule", "ep"], "rule ep needs an energy-based network"),
        (["--rule", "ep", "--arch", "ebm:32", "--rule-opt", "beta=0"], "must be non-zero"),
        (["--rule", "ep", "--arch", "ebm:32", "--rule-opt", "free_steps=-2"], "must be a positive number of steps"),
        (["--rule", "chl", "--arch", "ebm:32", "--rule-opt", "clamped_steps=0"], "must be a positive number"),
        (["--arch", "ebm:32", "--activation", "relu"], "need a bounded activation"),
        (["--arch", "ebm-conv:8x0"], "channel counts must be positive"),
        (["--rule", "fa", "--arch", "ebm:32"], "energy-based networks (ebm:...) are trained by"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path, args: list[str], says: str) -> None:
    code, _, err = cli("train", *TINY, *args, "--out", tmp_path / "run")
    assert_one_line_error(code, err, says=says)
    assert not (tmp_path / "run").exists(), "a rejected run must not create its directory"


def test_errors_from_a_real_process(tmp_path: Path) -> None:
    """The installed entry point, not just main(): exit code, one stderr line, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "bioprop.cli", "train", "--rule", "nope", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_line_error(done.returncode, done.stderr, says="unknown rule 'nope'; known: bp")


def test_yaml_that_does_not_parse(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rule: fa\nepochs: [1, 2\n")
    code, _, err = cli("train", "--config", bad, *TINY, "--out", tmp_path / "run")
    assert_one_line_error(code, err, says="cannot parse config")


@pytest.mark.parametrize(("text", "says"), [("epochz: 3\n", "unknown key 'epochz'"),
                                            ("epochs: three\n", "epochs must be an integer"),
                                            ("- a list\n", "must be a mapping")])  # fmt: skip
def test_yaml_with_bad_keys_or_values(cli, tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    code, _, err = cli("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert_one_line_error(code, err, says=says)


def test_missing_config_file(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", "--config", tmp_path / "absent.yaml", "--out", tmp_path / "run")
    assert_one_line_error(code, err, says="cannot read config")


def test_flags_override_the_config_file(cli, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("rule: fa\nepochs: 5\nlr: 0.2\nrule_opts: {scale: 0.5, init: kaiming}\n")
    code, out, err = cli("train", "--config", tmp_path / "c.yaml", *TINY, "--rule-opt", "scale=2",
                         "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (written["rule"], written["epochs"], written["lr"]) == ("fa", 1, 0.2)
    assert written["rule_opts"] == {"scale": "2", "init": "kaiming"}
    assert out == "" and err == "", "--quiet prints nothing"


def test_existing_output_dir_is_left_untouched(cli, run_copy: Path) -> None:
    before = snapshot(run_copy)
    code, _, err = cli("train", *TINY, "--out", run_copy)
    assert_one_line_error(code, err, says="--overwrite")
    assert snapshot(run_copy) == before


def test_output_dir_below_a_file_is_not_writable(cli, tmp_path: Path) -> None:
    (tmp_path / "somefile").write_text("x")
    code, _, err = cli("train", *TINY, "--out", tmp_path / "somefile" / "run")
    assert_one_line_error(code, err, says="is not a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_output_dir_without_permission(cli, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, _, err = cli("train", *TINY, "--out", locked / "run")
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, says="permission denied")


def test_resume_without_checkpoint(cli, run_copy: Path) -> None:
    (run_copy / "checkpoint.safetensors").unlink()
    code, _, err = cli("resume", run_copy)
    assert_one_line_error(code, err, says=f"no checkpoint in {run_copy}")


def test_resume_of_a_missing_directory(cli, tmp_path: Path) -> None:
    code, _, err = cli("resume", tmp_path / "nothing")
    assert_one_line_error(code, err, says="no run directory")
    (tmp_path / "afile").write_text("mine")
    code, _, err = cli("resume", tmp_path / "afile")  # it exists: not "no run directory"
    assert_one_line_error(code, err, says=f"'{tmp_path / 'afile'}' is a file, not a run directory")
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_resume_with_truncated_checkpoint(cli, run_copy: Path, keep: float) -> None:
    path = run_copy / "checkpoint.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    code, _, err = cli("resume", run_copy)
    assert_one_line_error(code, err, says="corrupt or truncated checkpoint")


def test_resume_with_checkpoint_from_another_config(cli, run_copy: Path) -> None:
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.05", "lr: 0.07"))
    code, _, err = cli("resume", run_copy)
    assert_one_line_error(code, err, says="checkpoint is from another config")


def test_resume_of_a_finished_run_says_so(cli, run_copy: Path) -> None:
    code, out, err = cli("resume", run_copy)
    assert code == 0 and "already finished" in out, err


def test_divergence_exits_3_with_advice(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", *TINY, "--epochs", "2", "--lr", "1e12", "--out", tmp_path / "run")
    assert_one_line_error(code, err, expected_code=3, says="training diverged at epoch")
    assert "smaller --lr" in err


def test_keyboard_interrupt_exits_130(cli, tmp_path: Path, monkeypatch) -> None:
    from bioprop import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    code, _, err = cli("train", *TINY, "--out", tmp_path / "run")  # before the run directory was made
    assert (code, err.strip()) == (130, "bioprop: interrupted before anything was written")
    (tmp_path / "run").mkdir()
    code, _, err = cli("train", *TINY, "--out", tmp_path / "run")  # before any checkpoint: nothing to resume
    assert code == 130 and "interrupted before the first checkpoint" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1

    def interrupted_later(config, run_dir, *args, **kwargs):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.safetensors").write_bytes(b"")  # what a finished epoch leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted_later)
    code, _, err = cli("train", *TINY, "--out", tmp_path / "later")
    assert code == 130 and "last checkpoint" in err and f"bioprop resume {tmp_path / 'later'}" in err
    assert len(err.strip().splitlines()) == 1


def test_default_out_dir_is_named_after_the_run(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", *TINY, "--rule", "fa", "--seed", "3")
    assert code == 0, err
    assert (tmp_path / "runs" / "fa-digits-mlp-32-s3" / "model.safetensors").is_file()


def test_train_prints_a_result_line_unless_quiet(cli, tmp_path: Path) -> None:
    code, out, _ = cli("train", *[a for a in TINY if a != "--quiet"], "--out", tmp_path / "run")
    assert code == 0 and "test accuracy" in out and str(tmp_path / "run") in out


# --------------------------------------------------------------------------------------------------- listings


def test_rules_lists_every_rule_with_its_card(cli) -> None:
    code, out, _ = cli("rules")
    assert code == 0
    for name in ("bp", "fa", "dfa", "usf", "brsf", "frsf"):
        entry = rules.entry(name)
        assert f"{name} · {entry.family}" in out
    for key in rules.IMPLAUSIBILITIES:
        assert out.count(key) >= 6, key
    assert out.count("✓") >= 2 and out.count("✗") >= 6 * 4


def test_rules_name_shows_options_and_card(cli) -> None:
    code, out, _ = cli("rules", "fa")
    assert code == 0 and "Lillicrap" in out and "scale" in out and "xavier" in out and "✓" in out
    assert [n for n in rules.names() if f"─ {n} · " in out] == ["fa"], "the panel of the named rule only"
    code, _, err = cli("rules", "nope")
    assert_one_line_error(code, err, says="unknown rule 'nope'")


def test_datasets_lists_every_registered_dataset(cli) -> None:
    code, out, _ = cli("datasets")
    assert code == 0
    images = {"digits", "mnist", "fashion-mnist", "kmnist", "cifar10"}
    sequences = {"cue-accumulation", "pattern-generation", "periodic-target", "store-recall", "seq-fashion-mnist",
                 "shd"}  # fmt: skip
    assert set(DATASETS) == images | sequences
    for name in DATASETS:
        assert name in out


def test_datasets_check(cli, tmp_path: Path, monkeypatch) -> None:
    from bioprop.data import _locate

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    monkeypatch.setattr(_locate, "SYSTEM_DATA_DIR", tmp_path / "system")
    code, out, _ = cli("datasets", "--check", "digits")
    assert code == 0 and "found" in out
    code, _, err = cli("datasets", "--check", "kmnist", "--data-dir", tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "kmnist not found" in err
    code, _, err = cli("datasets", "--check", "nope")
    assert_one_line_error(code, err, says="unknown dataset")


def test_compare_prints_a_table(cli, finished_run: Path, tmp_path: Path) -> None:
    code, out, _ = cli("compare", finished_run)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].startswith("| rule") and "| fa " in lines[2]
    # the same run under another seed (its files relabelled): one row of two runs, zero spread
    other = Path(shutil.copytree(finished_run, tmp_path / "seed1"))
    for name in ("config.yaml", "summary.json"):
        path = other / name
        path.write_text(path.read_text().replace("seed: 0", "seed: 1").replace('"seed": 0', '"seed": 1'))
    code, out, err = cli("compare", finished_run, other)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and "± 0.00" in lines[2], err
    # two copies of one run are not two seeds
    twins = [shutil.copytree(finished_run, tmp_path / name) for name in ("a", "b")]
    code, _, err = cli("compare", *twins)
    assert_one_line_error(code, err, says="same configuration and seed")


def test_compare_of_a_non_run(cli, tmp_path: Path) -> None:
    code, _, err = cli("compare", tmp_path)
    assert_one_line_error(code, err, says=f"no run directories in {str(tmp_path)!r}")  # tables.compare's wording


def test_help_texts(cli) -> None:
    code, out, _ = cli("train", "--help")
    assert code == 0
    for flag in ("--rule", "--rule-opt", "--config", "--overwrite", "--probe-every", "--schedule", "--limit"):
        assert flag in out
    code, out, _ = cli("--help")
    assert code == 0 and all(cmd in out for cmd in ("train", "resume", "rules", "datasets", "compare"))


def test_unstable_inference_step_exits_3_naming_gamma(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", *TINY, "--rule", "pc", "--rule-opt", "gamma=3", "--out", tmp_path / "run")
    assert_one_line_error(code, err, expected_code=3, says="gamma=3 is above the stability bound")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_free_phase_that_does_not_settle_exits_3_naming_the_settings(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", *TINY, "--rule", "ep", "--arch", "ebm:32", "--rule-opt", "free_steps=1",
                       "--out", tmp_path / "run")  # fmt: skip
    assert_one_line_error(code, err, expected_code=3, says="raise free_steps (now 1) or lower eps")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_ep_run_records_each_phases_energy_and_residual(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", *TINY, "--rule", "ep", "--arch", "ebm:32", "--rule-opt", "trace_every=1",
                       "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    traces = (tmp_path / "run" / "traces.csv").read_text()
    for name in ("free energy", "free residual", "nudged energy", "nudged residual"):
        assert f",{name}," in traces
    assert (tmp_path / "run" / "energy.png").stat().st_size > 10_000


def test_python_dash_m_bioprop_is_the_same_command_line() -> None:
    """``python -m bioprop`` runs the CLI: its errors are the same one line and exit code 2."""
    done = subprocess.run([sys.executable, "-m", "bioprop", "train", "--rule", "nope"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("bioprop: error: unknown rule 'nope'; known: bp,")


def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    """The console script's first seconds import torch; Ctrl-C there printed a traceback. The finder stands in for
    Ctrl-C landing in ``import bioprop.cli``."""
    import importlib.abc

    from bioprop import __main__ as entry

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "bioprop.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "bioprop.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        entry.launch()
    assert stop.value.code == 130 and capsys.readouterr().err == "bioprop: interrupted\n"


def test_import_bioprop_leaves_torch_unloaded_until_nets_or_rules_are_used() -> None:
    """What lets :func:`bioprop.__main__.launch` catch Ctrl-C while torch loads; ``bioprop.rules`` still works."""
    script = ("import sys, bioprop; assert 'torch' not in sys.modules, 'torch loaded'; "
              "assert bioprop.rules.create and bioprop.nets.build and 'torch' in sys.modules")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
