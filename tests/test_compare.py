"""`bioprop compare`: which runs form a row (only seeds differ), what the rows show, and which inputs are refused.

Run directories are written by hand here (a config.yaml from `tiny_config`, a summary.json with numbers chosen by
the test), except where the layout of real runs matters; every expected mean ± std is computed in the test with the
statistics module from the numbers the test wrote. The malformed summaries are refused by the rule of the module
docstring (text, whole numbers, finite numbers or null, accuracies in [0, 1], angles in [0, 180], seconds ≥ 0): each
case writes one bad field and expects a one-line error naming the file and the field and quoting the value as it is
written in the JSON file.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioprop import train
from bioprop.errors import BioPropError
from bioprop.report import compare, logs, tables
from bioprop.report.tables import table
from conftest import tiny_config


def write_run(path: Path, seed: int = 0, acc: float = 0.8, status: str = "finished", angle: float = 40.0,
              rule_options: dict[str, Any] | None = None, **config: Any) -> Path:  # fmt: skip
    """A run directory as `bioprop train` leaves it, as far as compare reads it."""
    cfg = tiny_config(seed=seed, **{"rule": "fa", **config}).to_dict()
    if rule_options is None:
        rule_options = {"init": "xavier", "scale": 1.0, "seed": seed} if cfg["rule"] == "fa" else {}
    summary = {
        "rule": cfg["rule"], "dataset": cfg["data"], "arch": cfg["arch"], "seed": seed, "status": status,
        "epochs": cfg["epochs"], "epochs_done": cfg["epochs"] if status == "finished" else 1,
        "test_accuracy": acc, "best_test_accuracy": acc + 0.01, "epoch_seconds": [1.0 + seed, 2.0 + seed],
        "alignment_deg": {"1.weight": [60.0, angle], "1.bias": [10.0, 5.0], "3.weight": [0.0, 0.0]},
        "rule_options": rule_options,
    }  # fmt: skip
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def rows_of(paths: list[Path]) -> list[dict[str, str]]:
    header, body = table(paths)
    return [dict(zip(header, row, strict=True)) for row in body]


def mean_std(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


# ------------------------------------------------------------------------------------------------- grouping


def test_seeds_form_one_row_with_mean_and_std(tmp_path: Path) -> None:
    accs, angles = [0.81, 0.84, 0.90], [40.0, 44.0, 51.0]
    runs = [write_run(tmp_path / f"s{s}", seed=s, acc=accs[s], angle=angles[s]) for s in range(3)]
    [row] = rows_of(runs)
    assert (row["rule"], row["dataset"], row["arch"], row["runs"], row["epochs"]) == ("fa", "digits", "mlp:32", "3",
                                                                                      "2/2")  # fmt: skip
    assert row["test acc (%)"] == mean_std(accs)
    assert row["best acc (%)"] == mean_std([a + 0.01 for a in accs])
    assert row["final angle to reference (°)"] == f"1.weight {statistics.fmean(angles):.1f}, 3.weight 0.0"
    assert row["s/epoch"] == f"{statistics.fmean([1, 2, 2, 3, 3, 4]):.2f}"
    assert "settings" not in row  # nothing but the seed differs


def test_runs_that_differ_in_a_setting_get_rows_of_their_own(tmp_path: Path) -> None:
    """The fault seen: two learning rates merged into one '54.72 ± 37.71' row as if they were seeds."""
    low = [write_run(tmp_path / f"low{s}", seed=s, lr=0.01, acc=a) for s, a in ((0, 0.90), (1, 0.92))]
    high = [write_run(tmp_path / f"high{s}", seed=s, lr=0.1, acc=a) for s, a in ((0, 0.15), (1, 0.12))]
    rows = rows_of([low[0], high[0], low[1], high[1]])
    assert [(r["settings"], r["runs"], r["test acc (%)"]) for r in rows] == [
        ("lr=0.01", "2", mean_std([0.90, 0.92])),
        ("lr=0.1", "2", mean_std([0.15, 0.12])),
    ]
    assert mean_std([0.90, 0.15, 0.92, 0.12]) not in compare([*low, *high])


def test_epochs_and_rule_options_tell_rows_apart(tmp_path: Path) -> None:
    write_run(tmp_path / "fa-2", seed=0)
    write_run(tmp_path / "fa-3", seed=0, epochs=3)
    rows = rows_of([tmp_path / "fa-2", tmp_path / "fa-3"])
    assert [r["epochs"] for r in rows] == ["2/2", "3/3"] and "settings" not in rows[0]  # the epochs column says it
    write_run(tmp_path / "half", rule_options={"init": "xavier", "scale": 0.5, "seed": 0})
    write_run(tmp_path / "bp", rule="bp")
    rows = rows_of([tmp_path / "fa-2", tmp_path / "half", tmp_path / "bp"])
    # fa's options differ between its two rows; bp is told apart by its rule, not by fa's options.
    assert [(r["rule"], r["settings"]) for r in rows] == [("fa", "scale=1.0"), ("fa", "scale=0.5"), ("bp", "–")]


def test_settings_and_options_added_since_a_run_count_at_their_defaults(tmp_path: Path) -> None:
    """A run written before --validation and before one of its rule's options existed (both absent from its files)
    ran at their defaults: it shares a row with a run that records them at the defaults, and not with one that set
    them otherwise."""
    from bioprop import rules

    fa_options = {key: option.default for key, option in rules.entry("fa").cls.options.items()}
    old = write_run(tmp_path / "old", seed=0, rule_options={"init": "xavier", "scale": 1.0, "seed": 0})
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["validation"]
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_run(tmp_path / "new", seed=1, rule_options={**fa_options, "seed": 1})
    assert [r["runs"] for r in rows_of([tmp_path / "old", tmp_path / "new"])] == ["2"]
    write_run(tmp_path / "held", seed=2, validation=100, rule_options={**fa_options, "seed": 2})
    assert len(rows_of([tmp_path / "old", tmp_path / "held"])) == 2


def test_what_does_not_change_the_computation_does_not_split_a_row(tmp_path: Path) -> None:
    write_run(tmp_path / "a", seed=0, data_dir=str(tmp_path / "here"), download=False, activation="auto")
    write_run(tmp_path / "b", seed=1, data_dir=None, download=True, activation="relu")  # auto is relu on an mlp
    # The rule seed follows the run seed (given or not); a rule option given as text or as a number is one value.
    write_run(tmp_path / "c", seed=2, rule_opts={"seed": "2", "scale": "1.0"})
    write_run(tmp_path / "d", seed=3, data="DIGITS", rule_opts={"scale": 1})  # the dataset by another spelling
    [row] = rows_of([tmp_path / n for n in "abcd"])
    assert row["runs"] == "4"


def test_a_rule_seed_fixed_apart_from_the_run_seed_is_a_setting(tmp_path: Path) -> None:
    for name, seed, rule_seed in (("a", 0, 5), ("b", 1, 5), ("c", 0, 6)):
        write_run(tmp_path / name, seed=seed, rule_opts={"seed": rule_seed},
                  rule_options={"init": "xavier", "scale": 1.0, "seed": rule_seed})  # fmt: skip
    rows = rows_of([tmp_path / n for n in "abc"])
    assert [(r["settings"], r["runs"]) for r in rows] == [("seed=5", "2"), ("seed=6", "1")]


def test_unfinished_runs_are_counted_apart_and_left_out_of_the_numbers(tmp_path: Path) -> None:
    write_run(tmp_path / "s0", seed=0, acc=0.80)
    write_run(tmp_path / "s1", seed=1, acc=0.86)
    write_run(tmp_path / "s2", seed=2, acc=0.10, status="diverged", angle=89.0)
    write_run(tmp_path / "s3", seed=3, acc=0.50, status="interrupted")
    [row] = rows_of([tmp_path / f"s{s}" for s in range(4)])
    assert row["runs"] == "4 (1 diverged, 1 interrupted)"
    assert row["test acc (%)"] == mean_std([0.80, 0.86])
    assert row["final angle to reference (°)"] == "1.weight 40.0, 3.weight 0.0"
    assert row["s/epoch"] == f"{statistics.fmean([1, 2, 2, 3]):.2f}"
    assert row["epochs"] == "1/2, 2/2"
    write_run(tmp_path / "alone", lr=0.5, status="running")
    with logs.RunLock.acquire(tmp_path / "alone"):  # its process still trains
        [row] = rows_of([tmp_path / "alone"])
    assert row["runs"] == "1 (1 running)" and row["test acc (%)"] == row["s/epoch"] == "–"


def test_a_running_run_whose_process_died_counts_as_interrupted(tmp_path: Path) -> None:
    """SIGKILL, or a Ray worker of a stopped sweep, leaves summary.json at ``running`` (and perhaps the lock file,
    which the kernel unlocked): without a process holding the lock, it is interrupted, not running for good."""
    write_run(tmp_path / "killed", status="running")
    [row] = rows_of([tmp_path / "killed"])
    assert row["runs"] == "1 (1 interrupted)"
    run_dir = str(tmp_path / "killed")
    script = f"import os; from bioprop.report import logs; logs.RunLock.acquire({run_dir!r}); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9  # died holding it: the lock file stays
    assert (tmp_path / "killed" / logs.LOCK).is_file()
    [row] = rows_of([tmp_path / "killed"])
    assert row["runs"] == "1 (1 interrupted)"
    run = tables.read_run(tmp_path / "killed")
    assert run.summary["message"].endswith(f"`bioprop resume {tmp_path / 'killed'}` continues from its last checkpoint")


def test_a_moved_runs_resume_hint_names_where_it_is_now(tmp_path: Path) -> None:
    """summary.json records `bioprop resume <where the run was>`; read from a copy, the hint names the copy."""
    old = write_run(tmp_path / "old", status="interrupted")
    summary = json.loads((old / "summary.json").read_text())
    summary["message"] = f"terminated by SIGTERM; kept epoch 1; resume with `bioprop resume {old}`"
    (old / "summary.json").write_text(json.dumps(summary))
    moved = Path(shutil.copytree(old, tmp_path / "elsewhere" / "run"))
    assert tables.read_run(old).summary["message"] == summary["message"]
    assert tables.read_run(moved).summary["message"] == (
        f"terminated by SIGTERM; kept epoch 1; resume with `bioprop resume {moved}`"
    )


# ----------------------------------------------------------------------------------------- which runs are read


def test_directories_of_runs_are_searched_at_any_depth(tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "demo" / "bp", rule="bp")
    write_run(tmp_path / "runs" / "demo" / "fa")
    (tmp_path / "runs" / "demo" / "alignment.png").write_bytes(b"not a run")
    write_run(tmp_path / "runs" / "sweep" / "lr-0.1" / "s0", lr=0.1)
    write_run(tmp_path / "runs" / ".hidden" / "x", rule="dfa")  # hidden directories are not searched
    (tmp_path / "runs" / "latest").symlink_to(tmp_path / "runs" / "demo" / "fa")  # a run reached twice: once
    (tmp_path / "runs" / "demo" / "loop").symlink_to(tmp_path / "runs")  # a cycle ends
    rows = rows_of([tmp_path / "runs"])
    assert [(r["rule"], r["runs"], r["settings"]) for r in rows] == [("bp", "1", "lr=0.05"), ("fa", "1", "lr=0.05"),
                                                                     ("fa", "1", "lr=0.1")]  # fmt: skip


@pytest.mark.parametrize("how", ["same path", "spelled differently", "symlink", "inside a directory given"])
def test_a_run_given_twice_is_refused(tmp_path: Path, how: str) -> None:
    run = write_run(tmp_path / "runs" / "fa")
    other = {"same path": run, "spelled differently": tmp_path / "runs" / ".." / "runs" / "fa",
             "symlink": tmp_path / "link", "inside a directory given": tmp_path / "runs"}[how]  # fmt: skip
    if how == "symlink":
        other.symlink_to(run)
    with pytest.raises(BioPropError) as err:
        compare([run, other])
    message = str(err.value)
    assert "\n" not in message and "given twice" in message and f"'{run}'" in message


def test_paths_without_runs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "summary.json").write_text("{}")  # no config.yaml: not a run directory
    (tmp_path / "notes.txt").write_text("hello")
    cases = {
        tmp_path / "empty": f"no run directories in '{tmp_path / 'empty'}'",
        tmp_path / "half": f"no run directories in '{tmp_path / 'half'}'",
        tmp_path / "notes.txt": f"'{tmp_path / 'notes.txt'}' is not a run directory",
        tmp_path / "typo": f"run directory '{tmp_path / 'typo'}' does not exist",
    }
    for path, says in cases.items():
        with pytest.raises(BioPropError) as err:
            compare([path])
        assert str(err.value).startswith(says) and "\n" not in str(err.value)
    with pytest.raises(BioPropError, match="at least one"):
        compare([])


def test_cli_compare_warns_about_each_half_written_run_it_leaves_out(cli, tmp_path: Path) -> None:
    """A run killed before it wrote summary.json (or config.yaml) is not in the table, and compare says so on
    stderr, one line each, as `bioprop report` does; a folder holding none of a run's files is not mentioned."""
    write_run(tmp_path / "runs" / "fa-s0", acc=0.81)
    killed = tmp_path / "runs" / "fa-s1"
    killed.mkdir()
    (killed / "config.yaml").write_text("rule: fa\n")  # died before its first summary
    (killed / logs.MARKER).write_text("")
    no_config = write_run(tmp_path / "runs" / "deeper" / "bp-s0", rule="bp")
    (no_config / "config.yaml").unlink()
    (tmp_path / "runs" / "figures").mkdir()  # not a run at all: no warning
    code, out, err = cli("compare", tmp_path / "runs")
    assert code == 0 and "| fa " in out and "| bp " not in out and "81.00" in out
    assert err.splitlines() == [
        f"bioprop: warning: skipped '{no_config}' (no config.yaml: half-written or not a run)",
        f"bioprop: warning: skipped '{killed}' (no summary.json: half-written or not a run)",
    ]
    assert tables.half_written([tmp_path / "runs" / "fa-s0", tmp_path / "nowhere"]) == []
    code, out, err = cli("compare", tmp_path / "runs" / "deeper")  # nothing whole left: the error says why
    assert (code, out) == (2, "") and err == (
        f"bioprop: error: no run directories in '{tmp_path / 'runs' / 'deeper'}' (a run directory holds summary.json "
        f"and config.yaml); skipped '{no_config}' (no config.yaml: half-written or not a run)\n"
    )


def test_a_damaged_run_directory_is_named(tmp_path: Path) -> None:
    run = write_run(tmp_path / "fa")
    (run / "summary.json").write_text("{not json")
    with pytest.raises(BioPropError, match="cannot read .*summary.json"):
        compare([run])
    (run / "summary.json").write_text("[1, 2]")
    with pytest.raises(BioPropError, match="summary.json' is not a JSON object"):
        compare([run])
    (run / "summary.json").write_text(json.dumps({"rule": "fa"}))
    with pytest.raises(BioPropError, match="summary.json' has no dataset"):
        compare([run])


# (file, field as written, its value, the field as the error names it, the value as the error quotes it)
MALFORMED = [
    ("summary.json", "epoch_seconds", "x", "epoch_seconds", "'\"x\"'"),
    ("summary.json", "epoch_seconds", [1.0, -2.0], "epoch_seconds[1]", "'-2.0'"),  # seconds are ≥ 0
    ("summary.json", "epoch_seconds", [1.0, "x"], "epoch_seconds[1]", "'\"x\"'"),
    ("summary.json", "test_accuracy", "high", "test_accuracy", "'\"high\"'"),
    ("summary.json", "test_accuracy", "0.9", "test_accuracy", "'\"0.9\"'"),  # a number as text is text
    ("summary.json", "test_accuracy", 85.48, "test_accuracy", "'85.48'"),  # a percentage, not a fraction
    ("summary.json", "test_accuracy", float("nan"), "test_accuracy", "'NaN'"),
    ("summary.json", "test_accuracy", float("inf"), "test_accuracy", "'Infinity'"),
    ("summary.json", "test_accuracy", True, "test_accuracy", "'true'"),
    ("summary.json", "best_test_accuracy", -0.1, "best_test_accuracy", "'-0.1'"),
    ("summary.json", "alignment_deg", [1, 2], "alignment_deg", "'[1, 2]'"),
    ("summary.json", "alignment_deg", {"a": "x"}, "alignment_deg['a']", "'\"x\"'"),
    ("summary.json", "alignment_deg", {"1.weight": [60.0, "x"]}, "alignment_deg['1.weight'][1]", "'\"x\"'"),
    ("summary.json", "alignment_deg", {"1.weight": [60.0, 200.0]}, "alignment_deg['1.weight'][1]", "'200.0'"),
    ("summary.json", "epochs", "2", "epochs", "'\"2\"'"),
    ("summary.json", "epochs", 2.5, "epochs", "'2.5'"),
    ("summary.json", "epochs_done", -1, "epochs_done", "'-1'"),
    ("summary.json", "seed", "0", "seed", "'\"0\"'"),
    ("summary.json", "status", 3, "status", "'3'"),
    ("summary.json", "rule_options", [1], "rule_options", "'[1]'"),
    ("summary.json", "rule", 5, "rule", "'5'"),
    ("summary.json", "dataset", ["digits"], "dataset", "'[\"digits\"]'"),
    ("config.yaml", "seed", "abc", "seed", "'\"abc\"'"),
    ("config.yaml", "rule_opts", [1, 2], "rule_opts", "'[1, 2]'"),
]


@pytest.mark.parametrize("file, field, value, named, quoted", MALFORMED, ids=[f"{c[1]}={c[2]!r}" for c in MALFORMED])
def test_a_malformed_field_is_one_line_naming_file_field_and_value(
    cli, tmp_path: Path, file: str, field: str, value: Any, named: str, quoted: str
) -> None:
    good = write_run(tmp_path / "runs" / "s0", seed=0)
    bad = write_run(tmp_path / "runs" / "s1", seed=1)
    path = bad / file
    if file == "summary.json":
        path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    else:
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), field: value}))
    for given in ([good, bad], [tmp_path / "runs"]):  # named or found by searching
        code, out, err = cli("compare", *given)
        assert (code, out, err.count("\n")) == (2, "", 1), err
        assert err.startswith(f"bioprop: error: '{path}'") and f" {named} " in err and f"not {quoted}" in err, err
    with pytest.raises(BioPropError):
        compare([good, bad])


def test_null_and_boundary_values_are_read(tmp_path: Path) -> None:
    """Null is allowed wherever a number is (bioprop writes null for a non-finite value); 0 and 1 are accuracies,
    0 and 180 angles, 0 seconds a duration."""
    low = write_run(tmp_path / "s0", seed=0, acc=0.0, angle=0.0)
    high = write_run(tmp_path / "s1", seed=1, acc=0.99, angle=180.0)
    summary = json.loads((high / "summary.json").read_text())
    summary |= {"best_test_accuracy": 1.0, "epoch_seconds": [None, 0.0]}
    summary["alignment_deg"]["3.weight"] = [None, None]
    (high / "summary.json").write_text(json.dumps(summary))
    [row] = rows_of([low, high])
    assert row["runs"] == "2" and row["test acc (%)"] == mean_std([0.0, 0.99])
    assert row["best acc (%)"] == mean_std([0.01, 1.0])
    assert row["final angle to reference (°)"] == f"1.weight {statistics.fmean([0.0, 180.0]):.1f}, 3.weight 0.0"
    assert row["s/epoch"] == f"{statistics.fmean([1.0, 2.0, 0.0]):.2f}"  # s0 wrote 1 and 2 s; s1 null and 0 s
    for field in ("rule_options", "status", "test_accuracy", "epoch_seconds", "alignment_deg", "epochs"):
        summary[field] = None
    (high / "summary.json").write_text(json.dumps(summary))
    [row] = rows_of([high])
    assert (row["runs"], row["epochs"], row["test acc (%)"]) == ("1 (1 unknown)", "2/?", "–")


# ------------------------------------------------------------------------------- the same run counted twice


@pytest.mark.parametrize("how", ["copied", "repeated"])
def test_runs_with_the_same_configuration_and_seed_are_refused(cli, tmp_path: Path, how: str) -> None:
    """A row holds runs that differ only in their seed: a run copied (or run again with the same seed) is not a
    second seed, and counting it would show '2 runs, ± 0.00'."""
    first = write_run(tmp_path / "runs" / "s0", seed=0, acc=0.85)
    write_run(tmp_path / "runs" / "s1", seed=1, acc=0.87)
    if how == "copied":
        second = Path(shutil.copytree(first, tmp_path / "runs" / "s0-copy"))
    else:
        second = write_run(tmp_path / "runs" / "s0-again", seed=0, acc=0.86)
    with pytest.raises(BioPropError) as caught:
        compare([first, tmp_path / "runs" / "s1", second])
    message = str(caught.value)
    assert "\n" not in message and "same configuration and seed" in message
    assert f"'{first}'" in message and f"'{second}'" in message
    code, out, err = cli("compare", tmp_path / "runs")
    assert (code, out, err.count("\n")) == (2, "", 1) and err.startswith("bioprop: error: runs ")
    assert "same configuration and seed" in err and f"'{first}'" in err and f"'{second}'" in err


def test_the_same_seed_with_other_settings_is_not_a_duplicate(tmp_path: Path) -> None:
    write_run(tmp_path / "a", seed=0, lr=0.01)
    write_run(tmp_path / "b", seed=0, lr=0.1)
    write_run(tmp_path / "c", seed=0, rule_opts={"seed": 7}, rule_options={"init": "xavier", "scale": 1.0, "seed": 7})
    rows = rows_of([tmp_path / n for n in "abc"])
    assert [r["runs"] for r in rows] == ["1", "1", "1"]


# --------------------------------------------------------------------------- real runs, laid out as `make demo`


def test_cli_compare_of_a_demo_layout(cli, tmp_path: Path, finished_run: Path) -> None:
    """`make demo` nests its runs (runs/demo/<rule>) next to a figure; `bioprop compare runs/*` reads them."""
    demo = tmp_path / "runs" / "demo"
    shutil.copytree(finished_run, demo / "fa")
    train.run(tiny_config(rule="bp", epochs=1, limit=100), demo / "bp", quiet=True)
    (demo / "alignment.png").write_bytes(b"\x89PNG")
    code, out, err = cli("compare", *sorted((tmp_path / "runs").iterdir()))
    lines = out.strip().splitlines()
    assert code == 0 and err == "" and len(lines) == 4 and "| bp " in lines[2] and "| fa " in lines[3]
    assert "settings" in lines[0] and "epochs=" not in out and "limit=100" in lines[2] and "limit=300" in lines[3]
    fa = json.loads((demo / "fa" / "summary.json").read_text())
    assert f"| {100 * fa['test_accuracy']:.2f} " in lines[3]
    code, out, err = cli("compare", demo / "fa", demo)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"bioprop: error: run directory '{demo / 'fa'}' is given twice")
    code, out, err = cli("compare", tmp_path / "runs" / "demo" / "alignment.png")
    assert code == 2 and err.startswith("bioprop: error: ") and "alignment.png' is not a run directory" in err


def test_the_test_loss_column_gives_mean_and_std_with_the_losss_name(tmp_path: Path) -> None:
    """Regression runs have no accuracy: the final test loss is their figure (mean ± std over seeds, named)."""
    runs = [write_run(tmp_path / f"s{s}", seed=s, acc=0.5) for s in range(2)]
    for path, loss in zip(runs, (0.2, 0.4), strict=True):
        summary = json.loads((path / "summary.json").read_text())
        summary.update(test_loss=loss, loss="se")
        (path / "summary.json").write_text(json.dumps(summary))
    [row] = rows_of(runs)
    assert row["test loss"] == f"{statistics.fmean([0.2, 0.4]):.4g} ± {statistics.stdev([0.2, 0.4]):.3g} se"


def test_auto_counts_as_the_activation_the_run_recorded(tmp_path: Path) -> None:
    """A spiking run's `auto` is `spike` (recorded in summary.json), not the feedforward default relu; a run from
    before the summary recorded it falls back to the arch's default."""
    from bioprop.report.tables import settings_of

    config = {"rule": "eprop", "arch": "lsnn:50+50", "activation": "auto", "data": "cue-accumulation", "seed": 0}
    assert settings_of(config, {"activation": "spike"})["activation"] == "spike"
    assert settings_of({**config, "rule": "fa", "arch": "mlp:8"}, {})["activation"] == "relu"
