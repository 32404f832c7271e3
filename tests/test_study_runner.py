"""bioprop.study_runner: every rule × seed under one budget in worker processes, skipped when finished, resumed when
interrupted, refused before any work on bad input, a failing run leaving the others alone, then the report.

The runs are tiny (200 digits, mlp:16, 1 epoch: about 0.3 s each once torch is loaded); the study in worker
processes pays for starting them (a fresh interpreter importing torch per worker), so it runs once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bioprop import study_runner
from bioprop.errors import BioPropError
from bioprop.study_runner import StudyInterrupted, run_study

TINY = {"limit": 200, "device": "cpu"}


def study(out: Path, rules: str = "bp,fa", seeds: str = "0,1", opts: list[str] | None = None, jobs: int = 1,
          epochs: int = 1, lines: list[str] | None = None, **given) -> dict:  # fmt: skip
    return run_study(rules, "digits", "mlp:16", epochs, seeds, opts or [], out, jobs=jobs,
                     progress=None if lines is None else lines.append, **{**TINY, **given})  # fmt: skip


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """Two rules × two seeds in two worker processes (read only)."""
    out = tmp_path_factory.mktemp("pooled") / "study"
    lines: list[str] = []
    return out, study(out, jobs=2, lines=lines), lines


def test_two_rules_two_seeds_in_two_workers_make_four_finished_runs_and_the_report(pooled) -> None:
    out, result, lines = pooled
    names = ["bp-s0", "bp-s1", "fa-s0", "fa-s1"]
    assert [run["name"] for run in result["runs"]] == names
    assert result["workers"] == 2 and result["threads"] == max(1, study_runner.cores() // 2)
    assert result["failed"] == []
    for name in names:
        run = out / name
        assert summary(run)["status"] == "finished" and (run / "model.safetensors").is_file()
        config = (run / "config.yaml").read_text()
        assert f"rule: {name[:2]}" in config and f"seed: {name[-1]}" in config and "limit: 200" in config
        assert f"threads: {result['threads']}" in config
    assert all(run["action"] == "train" and run["status"] == "finished" for run in result["runs"])
    assert sorted(line.split(":")[0].split("] ")[1] for line in lines if line.startswith("[")) == names
    assert sorted(line.split("]")[0] for line in lines) == ["[1/4", "[2/4", "[3/4", "[4/4"]
    md, html = result["report"]
    assert md == out / "report.md" and html == out / "report.html"
    text = md.read_text()
    assert "## Leaderboard" in text and "## Implausibility matrix" in text and "## Figures" in text
    board = text.split("## Leaderboard")[1].split("## Implausibility matrix")[0]
    assert [line.split("|")[1].strip() for line in board.splitlines() if line.startswith("| b") or
            line.startswith("| f")] == ["bp", "fa"]  # fmt: skip
    assert "Skipped runs" not in text and html.read_text().count("data:image/png;base64,") >= 3
    header, *body = [line for line in result["table"].splitlines() if line.startswith("| ")]
    assert "test acc (%)" in header and [row.split("|")[1].strip() for row in body] == ["bp", "fa"]
    assert all("| 2 " in row for row in body)  # two seeds per row


def test_a_second_study_skips_the_finished_runs_without_training(pooled) -> None:
    out, _, _ = pooled
    models = {run: (run / "model.safetensors").stat().st_mtime_ns for run in out.iterdir() if run.is_dir()}
    lines: list[str] = []
    again = study(out, jobs=2, lines=lines)
    assert [run["action"] for run in again["runs"]] == ["skip"] * 4 and again["workers"] == 0
    assert {run: (run / "model.safetensors").stat().st_mtime_ns for run in models} == models
    assert sum("finished before" in line and "skipped" in line for line in lines) == 4
    assert again["report"][0].is_file()


def test_a_study_of_other_settings_is_refused_before_any_work(pooled) -> None:
    out, _, _ = pooled
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    with pytest.raises(BioPropError, match=r"bp-s0' holds a run with other settings \(lr differs\)") as caught:
        study(out, lr="0.5")
    assert "\n" not in str(caught.value)
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_an_interrupted_run_is_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the second epoch of the first run (in this process: jobs=1) stops the study with the epoch-1
    checkpoint kept; the same study again resumes that run from it and trains the other."""
    honest, steps = torch.optim.SGD.step, {"n": 0}

    def step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] == 6:  # 200 examples, batches of 64: 4 steps per epoch
            raise KeyboardInterrupt
        return honest(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(StudyInterrupted) as stop:
        study(tmp_path, rules="bp", epochs=2)
    assert [(run["name"], run["status"]) for run in stop.value.results] == [("bp-s0", "interrupted")]
    stopped = summary(tmp_path / "bp-s0")
    assert stopped["status"] == "interrupted" and stopped["epochs_done"] == 1
    assert (tmp_path / "bp-s0" / "checkpoint.safetensors").is_file() and not (tmp_path / "bp-s1").exists()
    first_epoch = (tmp_path / "bp-s0" / "metrics.csv").read_text().splitlines()
    assert len(first_epoch) == 2  # the header and epoch 1
    monkeypatch.setattr(torch.optim.SGD, "step", honest)
    lines: list[str] = []
    result = study(tmp_path, rules="bp", epochs=2, lines=lines)
    assert [(run["action"], run["status"]) for run in result["runs"]] == [("resume", "finished"), ("train", "finished")]
    assert summary(tmp_path / "bp-s0")["epochs_done"] == 2
    rows = (tmp_path / "bp-s0" / "metrics.csv").read_text().splitlines()
    assert rows[:2] == first_epoch and len(rows) == 3  # epoch 1 kept from the checkpoint, epoch 2 trained
    assert lines[0].startswith("[1/2] bp-s0: resumed and finished")


def test_a_diverging_run_does_not_stop_the_others(tmp_path: Path) -> None:
    lines: list[str] = []
    result = study(tmp_path, rules="fa,bp", seeds="0", opts=["fa.scale=1e30"], lines=lines)
    assert [(run["name"], run["status"]) for run in result["runs"]] == [("fa-s0", "diverged"), ("bp-s0", "finished")]
    assert result["failed"] == ["fa-s0"] and "scale=1e+30" in result["runs"][0]["message"]
    assert summary(tmp_path / "bp-s0")["status"] == "finished" and result["report"][1].is_file()
    assert lines[0].startswith("[1/2] fa-s0: diverged") and lines[1].startswith("[2/2] bp-s0: finished")
    again = study(tmp_path, rules="fa,bp", seeds="0", opts=["fa.scale=1e30"])  # a divergence is not retried
    assert [run["action"] for run in again["runs"]] == ["skip", "skip"] and again["failed"] == ["fa-s0"]


@pytest.mark.parametrize(
    ("rules", "seeds", "opts", "jobs", "given", "message"),
    [
        ("bp,nope", "0", [], 1, {}, "--rules: unknown rule 'nope'; known: bp, "),
        ("", "0", [], 1, {}, "--rules needs at least one value"),
        ("bp,bp", "0", [], 1, {}, "--rules gives 'bp' twice"),
        ("bp", "0,-1", [], 1, {}, "--seeds must be an integer from 0 to 4294967295 .* not '-1'"),
        ("bp", "0,x", [], 1, {}, "--seeds must be an integer .* not 'x'"),
        ("bp", "0,0", [], 1, {}, "--seeds gives '0' twice"),
        ("bp", "0", ["fa.scale=2"], 1, {}, "--rule-opt 'fa.scale=2' is for rule 'fa', which is not in --rules"),
        ("fa", "0", ["scale=2"], 1, {}, "malformed --rule-opt 'scale=2'; expected rule.key=value"),
        ("fa", "0", ["fa.scale"], 1, {}, "malformed --rule-opt 'fa.scale'"),
        ("fa", "0", ["fa.scale=2", "fa.scale=3"], 1, {}, "--rule-opt fa.scale given twice"),
        ("fa", "0", ["fa.scale=big"], 1, {}, "rule fa: option scale='big'"),
        ("fa", "0", ["fa.nope=1"], 1, {}, "rule fa: unknown option 'nope'"),
        ("bp", "0", [], 0, {}, "--jobs must be between 1 and 1024, not 0"),
        ("bp", "0", [], "two", {}, "--jobs must be an integer, not 'two'"),
        ("bp", "0", [], 1, {"lr": "-1"}, "--lr must be positive, not '-1'"),
        ("bp", "0", [], 1, {"nope": 1}, "unknown setting 'nope'"),
        ("bp", "0", [], 1, {"seed": 1}, "setting 'seed' is an argument of run_study"),
        ("bp", "0", [], 1, {"data": "nope"}, "nope"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path: Path, rules, seeds, opts, jobs, given, message) -> None:
    out = tmp_path / "study"
    with pytest.raises(BioPropError, match=message) as caught:
        if "data" in given:
            run_study(rules, given["data"], "mlp:16", 1, seeds, opts, out, jobs=jobs, **TINY)
        else:
            study(out, rules=rules, seeds=seeds, opts=opts, jobs=jobs, **given)
    assert "\n" not in str(caught.value)
    assert not out.exists()


def test_an_arch_the_data_cannot_take_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(BioPropError, match="lenet") as caught:
        run_study("bp,fa", "digits", "lenet", 1, "0", [], tmp_path / "study", **TINY)
    assert "\n" not in str(caught.value) and not (tmp_path / "study").exists()


def test_a_study_into_a_run_directory_is_refused_before_any_work(run_copy: Path) -> None:
    """Its runs and report inside the run would be files that the run's own ``--overwrite`` refuses to clear."""
    before = sorted(path.name for path in run_copy.iterdir())
    with pytest.raises(BioPropError, match=r"^--out '.*copy' is a run directory; give a folder of its own$"):
        study(run_copy, rules="bp", seeds="0")
    assert sorted(path.name for path in run_copy.iterdir()) == before


def test_foreign_files_are_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "fa-s0").mkdir()
    (tmp_path / "fa-s0" / "notes.txt").write_text("mine")
    with pytest.raises(BioPropError, match="notes.txt"):
        study(tmp_path, rules="bp,fa", seeds="0")
    assert not (tmp_path / "bp-s0").exists() and (tmp_path / "fa-s0" / "notes.txt").read_text() == "mine"
    (tmp_path / "fa-s0" / "notes.txt").unlink()
    (tmp_path / "report.md").write_text("my report")
    with pytest.raises(BioPropError, match="report.md"):
        study(tmp_path, rules="bp,fa", seeds="0")
    assert not (tmp_path / "bp-s0").exists() and (tmp_path / "report.md").read_text() == "my report"


# ------------------------------------------------------------------------------------ the command line (cli.py)

CLI_HAS_STUDY = "study_rules" in __import__("inspect").signature(__import__("bioprop.cli").cli.compare).parameters
needs_cli = pytest.mark.skipif(not CLI_HAS_STUDY, reason="bioprop.cli.compare has no --rules yet")
FLAGS = ["--data", "digits", "--arch", "mlp:16", "--epochs", "1", "--limit", "200", "--device", "cpu"]


@needs_cli
def test_compare_with_rules_runs_the_study_and_without_them_compares_as_before(tmp_path: Path, cli, pooled) -> None:
    code, out, err = cli("compare", "--rules", "bp", "--seeds", "0,1", *FLAGS, "--out", tmp_path / "s")
    assert code == 0, err
    assert "[1/2] bp-s0: finished" in err and "[2/2] bp-s1: finished" in err
    assert out.splitlines()[0].startswith("| rule ") and f"report: {tmp_path / 's' / 'report.html'}" in out
    code, again, err = cli("compare", "--rules", "bp", "--seeds", "0,1", *FLAGS, "--out", tmp_path / "s")
    assert code == 0 and err.count("finished before") == 2
    code, table, err = cli("compare", pooled[0])  # existing runs, no --rules: the table alone, as before
    assert code == 0 and err == "" and table.splitlines()[2].startswith("| bp ") and "report" not in table


@needs_cli
def test_compare_says_which_runs_did_not_finish_and_exits_3(tmp_path: Path, cli) -> None:
    code, out, err = cli("compare", "--rules", "fa,bp", "--rule-opt", "fa.scale=1e30", *FLAGS, "--out", tmp_path)
    assert code == 3 and err.splitlines()[-1] == "bioprop: error: 1 of 2 runs did not finish: fa-s0 (diverged)"
    assert "| bp " in out and "report:" in out


@needs_cli
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0.1", "runs"], "--lr needs --rules (a study)"),
        ([], "missing argument 'DIR...'"),
        (["--rules", "bp", "runs"], "give directories to compare ('runs') or --rules for a study, not both"),
        (["--rules", "bp"], "--rules needs --out DIR"),
        (["--rules", "bp,zz", "--out", "x"], "--rules: unknown rule 'zz'; known: bp, "),
        (["--rules", "bp", "--out", "x", "--jobs", "0"], "--jobs must be between 1 and 1024, not '0'"),
        (["--rules", "bp", "--out", "x", "--seeds", ""], "--seeds needs at least one value"),  # was seed 0
        (["--rules", "bp", "--out", "x", "--jobs", ""], "--jobs must be an integer, not ''"),  # was 1 job
    ],
)
def test_compare_refuses_bad_study_flags_in_one_line(tmp_path: Path, cli, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("compare", *args)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("bioprop: error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_a_job_trains_at_its_threads_also_when_it_resumes_a_run_recorded_with_others(tmp_path, monkeypatch):
    """execute trains a job with ``job.threads`` (the study's count per worker), also when it resumes a run whose
    config.yaml recorded another count (train.resume would otherwise apply that one), and puts the caller's back."""
    from bioprop import train
    from conftest import threads_per_epoch, tiny_config

    before = torch.get_num_threads()
    recorded, wanted = (1, 2) if before != 1 else (2, 3)
    seen = threads_per_epoch(monkeypatch)  # Ctrl-C in epoch 2, after epoch 1's checkpoint
    config = tiny_config(threads=recorded)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, tmp_path / "run", quiet=True)
    assert seen == [recorded, recorded]
    job = study_runner.Job("run", config, tmp_path / "run", "resume", threads=wanted)
    assert study_runner.execute(job)["status"] == "finished"
    assert seen[2:] == [wanted] and torch.get_num_threads() == before
