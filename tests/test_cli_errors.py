"""Bad input to the command line, kind by kind: every error is ONE stderr line ``bioprop: error: ...`` that quotes
the offending token, with exit code 2 and no traceback; numbers are read as the README writes them (``1e-3``) and
only finite; config files that are binary, empty, not a mapping or of the wrong types are refused in one line;
the thread count is chosen by the CLI, overridable, recorded in the run and reused on resume."""

from __future__ import annotations

import errno
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bioprop import cli as cli_module
from bioprop.config import RunConfig
from bioprop.errors import BioPropError
from bioprop.report import logs

BIOPROP = Path(sys.executable).with_name("bioprop")  # the console script of the venv running the tests


def assert_one_line_error(code: int, err: str, token: str, expected_code: int = 2) -> str:
    """Exit code, exactly one stderr line starting ``bioprop: error: ``, ``token`` in it quoted; returns the line."""
    lines = err.splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("bioprop: error: "), err
    assert "Traceback" not in err
    assert f"'{token}'" in lines[0], f"{token!r} not quoted in: {lines[0]}"
    return lines[0]


# Each case: the arguments, the token the message must quote, and (optionally) more the line must say.
BAD_INPUTS = [
    # numbers in flags: one parser with the config file, finite only, integers as digits
    (["train", "--seed", "notanumber"], "notanumber", "--seed must be an integer"),
    (["train", "--epochs", "2.5"], "2.5", "--epochs must be an integer"),
    (["train", "--epochs", "1e3"], "1e3", "(write 1000)"),
    (["train", "--batch-size", ""], "", "--batch-size must be an integer"),
    (["train", "--lr", "abc"], "abc", "--lr must be a number"),
    (["train", "--lr", "nan"], "nan", "--lr must be a finite number"),
    (["train", "--lr", "inf"], "inf", "--lr must be a finite number"),
    (["train", "--lr", "-inf"], "-inf", "finite"),
    (["train", "--momentum", "1e999"], "1e999", "--momentum must be a finite number"),  # overflows to inf
    (["train", "--momentum", "2"], "2", "--momentum must be below 1"),  # never forgets a step: diverges later
    (["train", "--weight-decay", "0x10"], "0x10", "--weight-decay must be a number"),
    (["train", "--limit", "10k"], "10k", "--limit must be an integer"),
    (["train", "--probe-every", "99999999999999999999"], "99999999999999999999", "9223372036854775807"),
    (["train", "--step-size", "one"], "one", "--step-size"),
    (["train", "--threads", "two"], "two", "--threads must be an integer"),
    # options: unknown, given a value they do not take, missing their value
    (["train", "--epoch", "3"], "--epoch", "did you mean '--epochs'"),
    (["train", "-x"], "-x", "no such option"),
    (["train", "--overwrite=yes"], "--overwrite", "does not take a value"),
    (["train", "--quiet=1"], "--quiet", "does not take a value"),
    (["train", "--seed"], "--seed", "requires an argument"),
    (["train", "--rule-opt"], "--rule-opt", "requires an argument"),
    (["train", "--config"], "--config", "requires an argument"),
    (["train", "--rule-opt", "scale"], "scale", "expected key=value"),
    (["train", "--rule-opt", "seed=1", "--rule-opt", "seed=2"], "seed", "given twice ('1' and '2')"),
    # settings that would be silently ignored
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "0.5", "--momentum '0.5' has no effect without"),
    (["train", "--step-size", "2"], "2", "--step-size '2' has no effect without --schedule step"),
    (["train", "--lr", "-1"], "-1", "--lr must be positive"),  # the token as typed, not the -1.0 it reads as
    (["train", "--epochs", "0"], "0", "--epochs must be a positive integer"),
    # arguments: extra, missing, empty paths
    (["train", "--download", "maybe"], "maybe", "unexpected extra argument"),  # a bool flag takes no value
    (["train", "foo"], "foo", "unexpected extra argument"),
    (["train", "--out", ""], "", "--out needs a path"),
    (["train", "--config", ""], "", "--config needs a path"),
    (["resume"], "DIR", "missing argument"),
    (["resume", "a", "b"], "b", "unexpected extra argument"),
    (["resume", "somewhere", "--threads", "1.5"], "1.5", "--threads must be an integer"),
    (["resume", "--bogus"], "--bogus", "no such option"),
    (["resume", ""], "", "DIR needs a path"),
    (["rules", "fa", "extra"], "extra", "unexpected extra argument"),
    (["rules", "nope"], "nope", "unknown rule"),
    (["rules", "--all"], "--all", "no such option"),
    (["datasets", "--check"], "--check", "requires an argument"),
    (["datasets", "--check", "nope"], "nope", "unknown dataset"),
    (["datasets", "extra"], "extra", "unexpected extra argument"),
    (["datasets", "--data-dir", ""], "", "--data-dir needs a path"),
    (["compare"], "DIR...", "missing argument"),
    (["compare", "--sort", "acc"], "--sort", "no such option"),
    # commands
    (["trian"], "trian", "did you mean 'train'"),
    (["rule"], "rule", "no such command"),
    ([""], "", "no such command"),
    (["--seed", "3"], "--seed", "no such option"),
    (["--version=1"], "--version", "does not take a value"),
]


@pytest.mark.parametrize(("args", "token", "says"), BAD_INPUTS, ids=[" ".join(c[0]) or "''" for c in BAD_INPUTS])
def test_bad_input_is_one_line_quoting_the_token(cli, tmp_path, monkeypatch, args, token, says) -> None:
    monkeypatch.chdir(tmp_path)  # a case that wrongly trained would write runs/ here, never into the checkout
    code, out, err = cli(*args)
    line = assert_one_line_error(code, err, token)
    assert says in line
    assert out == ""
    assert list(tmp_path.iterdir()) == [], "a refused command writes nothing"


@pytest.mark.parametrize(("args", "token"), [(["train", "--seed", "notanumber"], "notanumber"), (["trian"], "trian")])
def test_the_console_script_behaves_the_same(tmp_path, args, token) -> None:
    """The installed entry point in a real process: the same one line and exit code as in-process."""
    done = subprocess.run([str(BIOPROP), *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_one_line_error(done.returncode, done.stderr, token)


def test_closed_output_pipe_ends_quietly(tmp_path) -> None:
    """`bioprop rules | head`: the reader is gone before bioprop writes (its end of the pipe is closed at once),
    so every write fails with EPIPE; that ends the command without a traceback or a message."""
    proc = subprocess.Popen([str(BIOPROP), "rules"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert err == ""


def test_version(cli) -> None:
    code, out, err = cli("--version")
    assert (code, out, err) == (0, f"bioprop {importlib.metadata.version('bioprop')}\n", "")


def test_no_arguments_prints_the_help(cli) -> None:
    code, out, err = cli()
    assert code == 0 and err == ""
    assert out == cli("--help")[1] and "Usage: bioprop" in out


def test_train_help_lists_every_file_a_run_can_write(cli) -> None:
    """The authoritative list is the docstring of bioprop.report.logs: each file named there is in the help."""
    named = set(re.findall(r"``(\.bioprop-\w+|[\w-]+\.(?:yaml|csv|json|safetensors|png))``", logs.__doc__))
    assert {"config.yaml", "summary.json", "checkpoint.safetensors", ".bioprop-run"} <= named  # the parse works
    code, out, _ = cli("train", "--help")
    assert code == 0
    assert [name for name in sorted(named) if name not in out] == []


# --------------------------------------------------------------------------- errors outside the argument parser


def test_keyboard_interrupt_outside_training_is_one_line(cli, monkeypatch) -> None:
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module.rules, "names", interrupted)
    code, out, err = cli("rules")
    assert code == 130 and err == "bioprop: interrupted\n"


def test_sigterm_during_training_is_one_line(cli, tmp_path, monkeypatch) -> None:
    """The trainer turns SIGTERM into a KeyboardInterrupt subclass: the same one line and exit 130 as Ctrl-C."""
    from bioprop import train

    class Terminated(KeyboardInterrupt):
        pass

    def terminated(config, run_dir, *args, **kwargs):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.safetensors").write_bytes(b"")  # an epoch finished before the signal
        raise Terminated

    monkeypatch.setattr(train, "run", terminated)
    code, _, err = cli("train", "--out", tmp_path / "run", "--quiet")
    assert code == 130 and len(err.splitlines()) == 1 and f"bioprop resume {tmp_path / 'run'}" in err


def test_os_error_is_one_line_naming_the_file(cli, tmp_path, monkeypatch) -> None:
    from bioprop.report import tables

    def failing(run_dirs):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "summary.json"))

    monkeypatch.setattr(tables, "compare", failing)
    code, _, err = cli("compare", tmp_path)
    line = assert_one_line_error(code, err, str(tmp_path / "summary.json"), expected_code=74)
    assert "Input/output error" in line


# ------------------------------------------------------------------------------------------ numbers and YAML


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("lr: 1e-3\n", "lr", 0.001),  # YAML 1.1 reads this as the string '1e-3'
        ("lr: 1E-3\n", "lr", 0.001),
        ("lr: .5\n", "lr", 0.5),
        ("lr: '2.5e+1'\n", "lr", 25.0),
        ("momentum: 1\n", "momentum", 1.0),  # an integer for a float field
        ("epochs: 5.0\n", "epochs", 5),  # a whole YAML float for an integer field, as the rules' options do
        ("epochs: '12'\n", "epochs", 12),
        ("seed: -3\n", "seed", -3),
    ],
)
def test_numbers_as_the_readme_writes_them(tmp_path, text, key, expected) -> None:
    (tmp_path / "c.yaml").write_text(text)
    value = getattr(RunConfig.from_yaml(tmp_path / "c.yaml"), key)
    assert value == expected and type(value) is type(expected)


def test_flag_numbers_reach_the_run_and_threads_are_recorded(cli, tmp_path) -> None:
    code, _, err = cli("train", "--epochs", "1", "--limit", "100", "--arch", "mlp:8", "--lr", "1E-3",
                       "--threads", "1", "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (written["lr"], written["epochs"], written["threads"]) == (0.001, 1, 1)


@pytest.mark.parametrize(
    ("text", "token", "says"),
    [
        ("lr: nan\n", "nan", "lr must be a finite number"),
        ("lr: -inf\n", "-inf", "lr must be a finite number"),
        ("momentum: .inf\n", None, "momentum must be a finite number, not inf"),  # a YAML float, not a string
        ("lr: .NaN\n", None, "lr must be a finite number, not nan"),
        ("lr: fast\n", "fast", "lr must be a number"),
        ("lr: true\n", None, "lr must be a number, not True"),
        ("epochs: 1e3\n", "1e3", "epochs must be an integer"),
        ("epochs: 2.5\n", None, "epochs must be an integer, not 2.5"),
        ("epochs: 10**30\n", "10**30", "epochs must be an integer"),
        ("epochs: 1000000000000000000000000000000\n", None, "must be an integer from"),
        ("epochs: " + "9" * 5000 + "\n", None, "cannot parse config"),  # past Python's int-from-text limit
        ("epochs: null\n", None, "epochs must be an integer, not None"),
        ("rule: [fa, bp]\n", None, "rule must be a string"),
        ("download: maybe\n", None, "download must be true or false, not 'maybe'"),
        ("rule_opts: 3\n", None, "rule_opts must be a mapping"),
        ("epochz: 3\n", "epochz", "unknown key"),
        ("- rule: fa\n", None, "must be a mapping of key: value, not a list"),
        ("", None, "is empty"),
        ("# only a comment\n", None, "is empty"),
        ("rule: fa\nepochs: [1\n", None, "cannot parse config"),
        ("[" * 5000 + "\n", None, "cannot parse config"),  # nesting deeper than the parser's recursion
        ("lr: 0.1\nepochs: 2\nlr: 1e-3\n", "lr", "given twice (line 3)"),  # YAML's last-one-wins is refused
        ("rule_opts:\n  scale: 1\n  scale: 2\n", "scale", "given twice (line 3)"),
        ("lr: -0.5\n", "-0.5", "': lr must be positive"),  # a range error names the file and the key
    ],
)
def test_config_file_errors_are_one_line(cli, tmp_path, text, token, says) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, _, err = cli("train", "--config", path, "--out", tmp_path / "run")
    line = assert_one_line_error(code, err, token if token is not None else str(path))
    assert says in line and str(path) in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "blob",
    [bytes(range(256)), b"rule: fa\n\x00\x00", "lr: 0.1 # caf\u00e9\n".encode("latin-1")],
    ids=["bytes", "nul", "latin-1"],
)
def test_binary_config_is_named(cli, tmp_path, blob) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(blob)
    code, _, err = cli("train", "--config", path, "--out", tmp_path / "run")
    line = assert_one_line_error(code, err, str(path))
    assert line == f"bioprop: error: config '{path}' is not a text YAML file (it is binary or not UTF-8)"


def test_oversized_config_is_refused_before_parsing(cli, tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# padding\n" * 200_000)  # 2 MB of comments: valid YAML, but no config is that long
    code, _, err = cli("train", "--config", path, "--out", tmp_path / "run")
    assert "is larger than 1048576 bytes" in assert_one_line_error(code, err, str(path))


def test_directory_as_config(cli, tmp_path) -> None:
    code, _, err = cli("train", "--config", tmp_path, "--out", tmp_path / "run")
    line = assert_one_line_error(code, err, str(tmp_path))
    assert line == f"bioprop: error: cannot read config '{tmp_path}': Is a directory"


def test_binary_config_of_a_run_on_resume(cli, run_copy) -> None:
    (run_copy / "config.yaml").write_bytes(bytes(range(256)) * 4)
    code, _, err = cli("resume", run_copy)
    line = assert_one_line_error(code, err, str(run_copy / "config.yaml"))
    assert line.endswith("is not a text YAML file (it is binary or not UTF-8)")


def test_nonfinite_config_built_in_python_is_refused() -> None:
    """RunConfig(...) skips the parser; check() still refuses a non-finite value."""
    for field in ("lr", "momentum", "weight_decay"):
        with pytest.raises(BioPropError, match=f"{field} must be a finite number"):
            RunConfig(**{field: float("inf")}).check()


# --------------------------------------------------------------------------------------------------- threads


@pytest.fixture
def no_thread_env(monkeypatch):
    for name in cli_module.THREADS_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (16, 8)])
def test_default_threads_is_half_the_cpus(no_thread_env, cpus, expected) -> None:
    no_thread_env.setattr(cli_module.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert cli_module.default_threads() == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OMP_NUM_THREADS": "3"}, 3),
        ({"OMP_NUM_THREADS": "4,2"}, 4),
        ({"BIOPROP_THREADS": "5", "OMP_NUM_THREADS": "3"}, 5),
        ({"BIOPROP_THREADS": " ", "OMP_NUM_THREADS": "2"}, 2),
    ],
)
def test_default_threads_follows_the_environment(no_thread_env, env, expected) -> None:
    for name, value in env.items():
        no_thread_env.setenv(name, value)
    assert cli_module.default_threads() == expected


@pytest.mark.parametrize(
    ("value", "says"), [("abc", "must be an integer"), ("0", "between 1 and"), ("-2", "between 1")]
)
def test_bad_thread_variable_is_one_line(cli, no_thread_env, tmp_path, value, says) -> None:
    no_thread_env.setenv("BIOPROP_THREADS", value)
    code, _, err = cli("train", "--out", tmp_path / "run")
    line = assert_one_line_error(code, err, value)
    assert line.startswith("bioprop: error: BIOPROP_THREADS") and says in line


def _spy(monkeypatch, name: str) -> list[tuple[int, object]]:
    """Replace bioprop.train.<name> by a stand-in that records torch's thread count and its first argument."""
    from bioprop import train

    seen: list[tuple[int, object]] = []

    def spy(first, *args, **kwargs):
        seen.append((torch.get_num_threads(), first))
        return {"resumed_from": 1, "epochs": 1, "reported_only": True}

    monkeypatch.setattr(train, name, spy)
    return seen


def test_train_runs_with_the_chosen_threads_then_restores(cli, no_thread_env, tmp_path) -> None:
    seen = _spy(no_thread_env, "run")
    before = torch.get_num_threads()
    assert cli("train", "--threads", "3", "--quiet", "--out", tmp_path / "a")[0] == 0
    no_thread_env.setenv("BIOPROP_THREADS", "2")
    assert cli("train", "--quiet", "--out", tmp_path / "b")[0] == 0
    assert [(count, config.threads) for count, config in seen] == [(3, 3), (2, 2)]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("recorded", "flag", "env", "expected"),
    [("2", None, "3", 2), ("2", "1", "3", 1), ("null", None, "3", 3)],  # the run's count, unless --threads
)
def test_resume_reuses_the_recorded_threads(cli, no_thread_env, run_copy, recorded, flag, env, expected) -> None:
    config = run_copy / "config.yaml"
    config.write_text(re.sub(r"(?m)^threads: .*$", f"threads: {recorded}", config.read_text()))
    assert f"threads: {recorded}" in config.read_text()
    no_thread_env.setenv("BIOPROP_THREADS", env)
    seen = _spy(no_thread_env, "resume")
    code, _, err = cli("resume", run_copy, *(["--threads", flag] if flag else []))
    assert code == 0, err
    assert seen == [(expected, run_copy)]


def test_a_dataset_alias_is_recorded_by_its_canonical_name(cli, tmp_path) -> None:
    """`--data DIGITS` and `--data digits` are one dataset: the run records the registry's name, so compare
    groups them together."""
    code, _, err = cli("train", "--data", "DIGITS", "--arch", "mlp:8", "--epochs", "1", "--limit", "50",
                       "--quiet", "--out", tmp_path / "run")  # fmt: skip
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"] == "digits"


def test_resume_names_the_setting_that_differs_from_the_checkpoint(cli, run_copy) -> None:
    """A checkpoint whose config differs from config.yaml: the one line names the differing key."""
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.05", "lr: 0.07"))
    code, _, err = cli("resume", run_copy)
    line = assert_one_line_error(code, err, str(run_copy / "config.yaml"))
    assert "(lr differs)" in line
