"""bioprop sweep (issue 13, item 3): the sweep file's checks (no Ray needed), the best configuration per rule, and on
local Ray: 4 tiny trials complete; a sweep killed midway and resumed trains every run exactly once; a trial whose
worker dies is retried and its run resumes from its checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bioprop import sweep as sweeps
from bioprop.errors import BioPropError

TINY = {"data": "digits", "arch": "mlp:16", "epochs": 2, "limit": 300, "optimizer": "adam", "probe_batches": 1,
        "probe_batch_size": 64}  # fmt: skip


def spec(**changes):
    raw = {"base": dict(TINY), "rules": {"bp": {}, "fa": {}}, "search": {"lr": [0.003, 0.01]}, "seeds": [0]}
    raw.update(changes)
    return raw


def write(tmp_path: Path, raw, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# --------------------------------------------------------------------------------------------- the file


def test_counts_configurations_and_builds_the_space():
    sweep = sweeps.parse(spec(rules={"bp": {}, "fa": {"scale": [0.5, 1.0, 2.0]}}, samples=2,
                              search={"lr": {"loguniform": [1e-3, 1e-1]}, "batch_size": [32, 64]}))  # fmt: skip
    # bp: 1 option point, fa: 3; times 2 batch sizes, times 2 samples
    assert sweep.configurations() == (1 + 3) * 2 * 2
    assert sweep.metric == "test_accuracy"  # no validation split: the test accuracy
    assert sweeps.parse(spec(base={**TINY, "validation": 50})).metric == "val_accuracy"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"serach": {}}, "unknown key 'serach'"),
        ({"search": {"lrr": [0.1, 0.2]}}, "search.lrr: unknown setting 'lrr'"),
        ({"search": {"seed": [0, 1]}}, "search.seed: seed is set by the section 'seeds'"),
        ({"search": {"lr": []}}, "search.lr: grid has no values: the search space is empty"),
        ({"search": {"lr": {"loguniform": [0, 0.1]}}}, "search.lr: loguniform needs 0 < low"),
        ({"search": {"lr": {"uniform": [0.1, 0.01]}}}, "search.lr: uniform needs finite low < high"),
        ({"search": {"lr": {"normal": [0, 1]}}}, "search.lr: unknown search domain 'normal'"),
        ({"search": {"lr": [0.1, 0.1]}}, "search.lr: grid gives 0.1 twice"),
        ({"rules": {}}, "rules is empty: the search space is empty"),
        ({"rules": {"bp": {}, "nope": {}}}, "unknown rule 'nope'; known: bp,"),
        ({"rules": {"bp": {}}, "search": {}}, "holds 1 configuration; a sweep needs at least two"),
        ({"seeds": [0, 0]}, "seeds gives 0 twice"),
        ({"seeds": []}, "seeds is empty"),
        ({"metric": "accuracy"}, "metric 'accuracy' is not one of"),
        ({"metric": "val_accuracy"}, "metric val_accuracy needs base.validation"),
        ({"samples": 0}, "samples must be an integer ≥ 1, not 0"),
        ({"retries": -1}, "retries must be an integer from 0 to 100, not -1"),
        ({"metric": ["val_accuracy"]}, "metric ['val_accuracy'] is not one of"),
        ({"samples": 3}, "samples 3 would draw the same configurations again"),
        ({"search": {"lr": {"choice": [0.1, 0.2]}}, "samples": 2}, "without a uniform, loguniform or randint domain"),
        ({"base": {**TINY, "threads": 2}}, "base.threads: threads is set by the section 'cpus_per_trial'"),
    ],
)
def test_the_file_is_refused_naming_the_key(change, says):
    with pytest.raises(BioPropError, match=None) as caught:
        sweeps.parse(spec(**change), source="sweep file 's.yaml'")
    assert says in str(caught.value)
    assert str(caught.value).startswith("sweep file 's.yaml'")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"search": {"lr": [0.01, "fast"]}}, "search.lr: --lr must be a number, not 'fast'"),
        ({"search": {"batch_size": {"randint": [0, 3]}}}, "search.batch_size: --batch-size"),  # its low end
        ({"rules": {"bp": {}, "fa": {"scale": [1.0, "big"]}}}, "rules.fa.scale"),
        ({"rules": {"bp": {}, "fa": {"scael": 2.0}}}, "rules.fa: "),
        ({"base": {**TINY, "arch": "mlp:0"}}, "rule bp: bad arch 'mlp:0'"),
        ({"base": {**TINY, "epochs": "ten"}}, "base: --epochs must be"),
        # YAML 1.1 reads 1e-3 as a string: the two values would train the same runs twice
        ({"search": {"lr": ["1e-3", 0.001]}}, "search.lr: '1e-3' and 0.001 mean the same, 0.001: give it once"),
        ({"rules": {"fa": {"scale": [1, "1.0", 2]}}}, "rules.fa.scale: 1 and '1.0' mean the same, 1.0: give it once"),
        ({"search": {"batch_size": {"choice": [32, " 32"]}}}, "search.batch_size: 32 and ' 32' mean the same, 32"),
    ],
)
def test_what_a_value_means_is_checked_before_ray(tmp_path, change, says):
    sweep = sweeps.parse(spec(**change), source="sweep file 's.yaml'")
    with pytest.raises(BioPropError) as caught:
        sweeps.check(sweep, tmp_path / "out")
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_range_whose_ends_mean_one_value_is_no_value_listed_twice(tmp_path):
    """randint [32, 33] draws 32 only: its ends, both checked, are 32 and 32, which no one listed twice."""
    sweep = sweeps.parse(spec(search={"batch_size": {"randint": [32, 33]}}), source="sweep file 's.yaml'")
    sweeps.check(sweep, tmp_path / "out")  # no error


def test_a_run_directory_or_a_path_under_a_file_or_more_cpus_than_there_are_is_refused_before_ray(tmp_path):
    from bioprop import train
    from bioprop.config import RunConfig

    path = write(tmp_path, spec())
    run = tmp_path / "run"
    train.run(RunConfig(**{**TINY, "epochs": 1}), run, quiet=True)
    with pytest.raises(BioPropError, match="is a run directory; give a folder of its own"):
        sweeps.run_sweep(path, run)
    (tmp_path / "f").write_text("x")
    with pytest.raises(BioPropError, match="'.*f' is a file, not a folder"):
        sweeps.run_sweep(path, tmp_path / "f" / "sub")
    many = write(tmp_path, spec(cpus_per_trial=1024), "many.yaml")
    with pytest.raises(BioPropError, match="cpus_per_trial 1024 is more than the"):
        sweeps.run_sweep(many, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_resume_accepts_a_file_that_changes_only_the_retries(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.yaml").write_text(sweeps.MARK + "\n" + yaml.safe_dump(spec(retries=1)))
    sweeps._check_folder(sweeps.parse(spec(retries=5)), out, resume=True)  # no error
    with pytest.raises(BioPropError, match="search differs"):
        sweeps._check_folder(sweeps.parse(spec(search={"lr": [0.1, 0.2]})), out, resume=True)


def test_trial_names_are_the_configuration_hash():
    a = sweeps.trial_name("fa", {"scale": 0.5}, {"lr": 0.01, "batch_size": 32})
    b = sweeps.trial_name("fa", {"scale": 0.5}, {"batch_size": 32, "lr": 0.01})  # key order does not matter
    c = sweeps.trial_name("fa", {"scale": 1.0}, {"lr": 0.01, "batch_size": 32})
    assert a == b != c and a.startswith("fa-") and len(a) == len("fa-") + 8


def test_best_per_rule_takes_the_best_finished_mean():
    sweep = sweeps.parse(spec(metric="test_loss"))
    rows = [  # (name, rule, status, mean)
        ("a", "bp", "finished", 0.30), ("b", "bp", "finished", 0.20), ("c", "bp", "failed", 0.01),
        ("d", "fa", "finished", 0.50), ("e", "fa", "diverged", None),
    ]  # fmt: skip
    records = [{"name": n, "rule": r, "status": s, "mean": m} for n, r, s, m in rows]
    best = sweeps.best_per_rule(sweep, records)
    assert {rule: record["name"] for rule, record in best.items()} == {"bp": "b", "fa": "d"}  # lowest loss
    maximise = sweeps.parse(spec())
    assert {r: x["name"] for r, x in sweeps.best_per_rule(maximise, records).items()} == {"bp": "a", "fa": "d"}


def test_an_unreachable_address_is_one_line_naming_it(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = write(tmp_path, spec())
    done = subprocess.run([sys.executable, "-m", "bioprop.cli", "sweep", str(path), "--out", str(tmp_path / "o"),
                           "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bioprop: error: cannot reach the Ray cluster at --address")
    assert f"'127.0.0.1:{port}'" in lines[0]
    with pytest.raises(BioPropError, match="is not host:port"):
        sweeps.check_address("nowhere")


def test_without_ray_it_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(BioPropError, match=r"pip install 'bioprop\[sweep\]'"):
        sweeps._ray()


def test_the_folder_of_another_sweep_or_a_foreign_file_is_refused(tmp_path):
    path = write(tmp_path, spec())
    sweep = sweeps.load(path)
    out = tmp_path / "out"
    with pytest.raises(BioPropError, match="holds no sweep to continue"):
        sweeps._check_folder(sweep, out, resume=True)
    out.mkdir()
    (out / "best.md").write_text("my notes\n")
    with pytest.raises(BioPropError, match="best.md' was not written by bioprop sweep"):
        sweeps._check_folder(sweep, out, resume=False)
    (out / "best.md").unlink()
    (out / "sweep.yaml").write_text(sweeps.MARK + "\n" + yaml.safe_dump(spec(seeds=[1])))
    with pytest.raises(BioPropError, match="holds a sweep already; add --resume"):
        sweeps._check_folder(sweep, out, resume=False)
    with pytest.raises(BioPropError, match=r"holds a sweep of another file \(seeds differs\)"):
        sweeps._check_folder(sweep, out, resume=True)
    assert (out / "sweep.yaml").read_text().startswith(sweeps.MARK)  # untouched


# Sweep files as a person writes them (yaml.safe_dump would write 1e-3 as 0.001, which YAML 1.1 reads as a number)
HEAD = "base: {data: digits, arch: mlp:16, epochs: 2, limit: 300, optimizer: adam}\n"


def test_a_range_written_1e_3_is_read_as_its_numbers(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string: the bounds of a range are read as the settings read a number (the
    README: numbers may be written 1e-3 in YAML too), and so are samples and the other counts."""
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "rules: {bp: {}, fa: {scale: {uniform: [5e-1, 2]}}}\n"
                    "search: {lr: {loguniform: [1e-3, 1e-2]}, batch_size: {randint: ['16', 64.0]}}\n"
                    "samples: '2'\nretries: 1.0\n")  # fmt: skip
    sweep = sweeps.load(path)
    assert sweep.search == {"lr": sweeps.Domain("loguniform", (0.001, 0.01)),
                            "batch_size": sweeps.Domain("randint", (16, 64))}  # fmt: skip
    assert sweep.rules["fa"] == {"scale": sweeps.Domain("uniform", (0.5, 2.0))}
    assert (sweep.samples, sweep.retries) == (2, 1) and sweep.configurations() == 4
    sweeps.check(sweep, tmp_path / "out")  # every bound is a value its setting or option takes


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("search: {lr: {uniform: [abc, 1e-2]}}",
         "search.lr: uniform takes [low, high], two numbers, not ['abc', '1e-2']"),
        ("search: {lr: {loguniform: [1e-2, 1e-3]}}",
         "search.lr: loguniform needs finite low < high, not ['1e-2', '1e-3']"),
        ("search: {lr: {loguniform: [0e0, 1e-3]}}", "search.lr: loguniform needs 0 < low, not '0e0'"),
        ("search: {lr: {uniform: [1e-3, 1e999]}}",  # not finite: not a number as the settings read one
         "search.lr: uniform takes [low, high], two numbers, not ['1e-3', '1e999']"),
        ("search: {batch_size: {randint: [1e1, 64]}}",
         "search.batch_size: randint takes two integers, not ['1e1', 64]"),
        ("search: {lr: {uniform: [1e-3, 1e-2]}}\nsamples: 2e0", "samples must be an integer ≥ 1, not '2e0'"),
    ],
)  # fmt: skip
def test_a_range_of_strings_that_are_no_numbers_is_refused_naming_them(tmp_path, text, says):
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "rules: {bp: {}}\n" + text + ("" if "samples" in text else "\nsamples: 2") + "\n")
    with pytest.raises(BioPropError) as caught:
        sweeps.load(path)
    assert str(caught.value) == f"sweep file '{path}': {says}"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("rules: {bp: {}}\nsearch: {lr: [0.01, 0.1]}\nrules: {fa: {}}\n", "rules", 4),  # the last one won: fa alone
        ("rules:\n  bp: {}\n  fa:\n    scale: 1\n    init: uniform\n    scale: 2\n", "scale", 7),
        ("rules: {bp: {}, fa: {}}\nsearch:\n  lr: {grid: [0.1, 0.2], grid: [0.3, 0.4]}\n", "grid", 4),
        ("rules: {bp: {}, fa: {}}\nsearch: {lr: [0.01, 0.1]}\nbase: {epochs: 1}\n", "base", 4),
    ],
)
def test_a_key_given_twice_is_refused_at_every_level(tmp_path, text, key, line):
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + text)
    with pytest.raises(BioPropError) as caught:
        sweeps.load(path)
    assert str(caught.value) == f"sweep file '{path}': key {key!r} given twice (line {line})"


def test_randint_alone_is_a_random_search_whose_bounds_are_checked(tmp_path):
    """randint is drawn from as uniform and loguniform are: searched alone with samples > 1 (more samples than it
    holds values would repeat them), and both its ends are checked against the setting."""
    alone = sweeps.parse(spec(rules={"bp": {}}, search={"batch_size": {"randint": [16, 64]}}, samples=2))
    assert alone.configurations() == 2
    sweeps.check(alone, tmp_path / "out")
    opt = sweeps.parse(spec(rules={"bp": {}, "fa": {"seed": {"randint": [0, 2]}}}, search={}, samples=2))
    assert opt.configurations() == 4  # bp drawn twice: one configuration, trained once (on local Ray, below)
    with pytest.raises(BioPropError) as caught:
        sweeps.parse(spec(rules={"bp": {}}, search={"batch_size": {"randint": [16, 18]}, "lr": {"choice": [0.1, 0.2]}},
                          samples=5), source="sweep file 's.yaml'")  # fmt: skip
    assert str(caught.value) == ("sweep file 's.yaml': samples 5 would draw the same configurations again: the randint "
                                 "and choice domains hold 4 combinations; list the values as a grid")  # fmt: skip
    low = sweeps.parse(spec(rules={"bp": {}}, search={"batch_size": {"randint": [0, 10]}}, samples=2),
                       source="sweep file 's.yaml'")  # fmt: skip
    with pytest.raises(BioPropError) as caught:
        sweeps.check(low, tmp_path / "out")
    assert (
        str(caught.value) == "sweep file 's.yaml': search.batch_size: --batch-size must be a positive integer, not '0'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("rules: {bp: {}}\nsearch: {lr: [0.01, 0.1]}\nrules: {fa: {}}\n", "key 'rules' given twice (line 4)"),
        ("rules: {bp: {}}\nsearch: {batch_size: {randint: [0, 10]}}\nsamples: 2\n",
         "search.batch_size: --batch-size must be a positive integer, not '0'"),
    ],
)  # fmt: skip
def test_the_newcomers_files_are_one_line_before_ray(cli, tmp_path, text, says):
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + text)
    code, _, err = cli("sweep", path, "--out", tmp_path / "out")
    assert (code, err) == (2, f"bioprop: error: sweep file '{path}': {says}\n")
    assert not (tmp_path / "out").exists()


def test_a_configuration_drawn_twice_waits_for_its_first_trial(tmp_path):
    """Two trials of one configuration never train at once: the second waits for the first's lock (then finds its
    runs finished and skips them); the kernel's flock, so another configuration does not wait."""
    entered = []

    def second(name):
        with sweeps._one_trial_of(tmp_path, name, poll=0.01):
            entered.append((name, time.monotonic()))

    with sweeps._one_trial_of(tmp_path, "bp-00000000"):
        held = time.monotonic()
        other = threading.Thread(target=second, args=("fa-00000000",))
        other.start()
        other.join(5)
        same = threading.Thread(target=second, args=("bp-00000000",))
        same.start()
        time.sleep(0.3)
        assert [name for name, _ in entered] == ["fa-00000000"]  # the same configuration still waits
    same.join(5)
    assert [name for name, _ in entered] == ["fa-00000000", "bp-00000000"] and entered[1][1] - held >= 0.3


# ------------------------------------------------------------------------------------------ on local Ray

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="bioprop[sweep] (Ray Tune) not installed"
)


def bioprop(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "BIOPROP_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bioprop.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, **kwargs)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def summaries(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*-s*/summary.json"))}


def epochs_trained(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.csv").read_text().strip().splitlines()[1:]
    return [int(line.split(",")[0]) for line in lines]


@needs_ray
def test_a_sweep_of_four_tiny_trials_completes_and_picks_the_best(tmp_path):
    path = write(tmp_path, spec())
    code, stdout, stderr = finish(bioprop("sweep", str(path), "--out", str(tmp_path / "out")))
    assert code == 0, stderr
    runs = summaries(tmp_path / "out")
    assert len(runs) == 4 and all(s["status"] == "finished" for s in runs.values())
    assert sorted((s["rule"], s["lr"]) for s in runs.values()) == [("bp", 0.003), ("bp", 0.01), ("fa", 0.003),
                                                                   ("fa", 0.01)]  # fmt: skip
    assert stderr.count("finished, test_accuracy") == 4  # a line per trial
    record = json.loads((tmp_path / "out" / "best.json").read_text())
    for rule in ("bp", "fa"):  # recomputed from the runs' summaries
        mine = {name: s["test_accuracy"] for name, s in runs.items() if s["rule"] == rule}
        winner = max(mine, key=lambda name: mine[name])
        assert record["best"][rule]["name"] + "-s0" == winner
        assert math.isclose(record["best"][rule]["mean"], mine[winner])
        assert f"| {rule} | {mine[winner]:.4f} ± 0.0000 |" in stdout
    assert (tmp_path / "out" / "report.html").is_file() and "## Leaderboard" in (
        tmp_path / "out" / "report.md"
    ).read_text()


@needs_ray
def test_a_killed_sweep_resumes_and_trains_every_run_exactly_once(tmp_path):
    raw = spec(base={**TINY, "epochs": 6, "limit": None}, search={"lr": [0.003, 0.01, 0.03]})  # 6 configurations
    path = write(tmp_path, raw)
    out = tmp_path / "out"
    process = bioprop("sweep", str(path), "--out", str(out))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it once a first run has finished, before the last one can have
        if any(s.get("status") == "finished" for s in summaries(out).values()):
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, Ray's processes and its workers: as a kill -9 of the job
    process.communicate()
    before = {name: s for name, s in summaries(out).items() if s["status"] == "finished"}
    assert 1 <= len(before) < 6
    stamps = {name: (out / name / "summary.json").stat().st_mtime_ns for name in before}
    code, _, stderr = finish(bioprop("sweep", str(path), "--out", str(out), "--resume"))
    assert code == 0, stderr
    after = summaries(out)
    assert len(after) == 6 and all(s["status"] == "finished" for s in after.values())
    for name in before:  # not trained again
        assert (out / name / "summary.json").stat().st_mtime_ns == stamps[name]
    for name in after:  # each epoch trained once (a resumed run continues after its checkpoint)
        assert epochs_trained(out / name) == [1, 2, 3, 4, 5, 6]
    assert len(json.loads((out / "best.json").read_text())["trials"]) == 6


@needs_ray
def test_a_trial_whose_worker_dies_is_retried_and_its_run_resumes(tmp_path):
    raw = spec(base={**TINY, "epochs": 8, "limit": None}, rules={"bp": {}}, retries=1)  # 2 configurations
    path = write(tmp_path, raw)
    out = tmp_path / "out"
    process = bioprop("sweep", str(path), "--out", str(out))
    deadline, victim = time.monotonic() + 300, None
    while time.monotonic() < deadline and victim is None:  # the worker training a run, after its first epoch
        for run_dir in sorted(out.glob("bp-*-s0")):
            lock, metrics = run_dir / ".bioprop-lock", run_dir / "metrics.csv"
            try:
                if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                    victim, killed_run = json.loads(lock.read_text())["pid"], run_dir
                    break
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.1)
    assert victim is not None and victim != process.pid
    os.kill(victim, signal.SIGKILL)
    code, _, stderr = finish(process)
    assert code == 0, stderr
    assert "retrying it" in stderr
    after = summaries(out)
    assert len(after) == 2 and all(s["status"] == "finished" for s in after.values())
    trained = epochs_trained(killed_run)
    assert trained == list(range(1, 9))  # resumed from its checkpoint: no epoch twice, none missing


@needs_ray
def test_a_trial_that_raises_is_retried(tmp_path):
    """A trial whose run directory is in use (held by this test) raises; Ray Tune retries it, and once the directory
    is free the retry trains the run."""
    from bioprop.report import logs

    path = write(tmp_path, spec(rules={"bp": {}}, retries=20))  # 2 configurations
    out = tmp_path / "out"
    held = out / f"{sweeps.trial_name('bp', {}, {'lr': 0.003})}-s0"
    held.mkdir(parents=True)
    lock = logs.RunLock.acquire(held)
    process = bioprop("sweep", str(path), "--out", str(out))
    said = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            said.append(line)
            if "retrying it" in line or not line:
                break
    finally:
        lock.release()
    assert "retrying it" in said[-1] and "is in use" in said[-1], "".join(said)
    code, _, stderr = finish(process)
    assert code == 0, "".join(said) + stderr
    after = summaries(out)
    assert len(after) == 2 and all(s["status"] == "finished" for s in after.values())
    assert epochs_trained(held) == [1, 2]


@needs_ray
def test_a_configuration_drawn_twice_is_trained_once_and_the_sweep_ends(tmp_path):
    """samples 2 draws bp's one configuration twice (it has no domain of its own) and fa.seed from randint: the
    sweep ends (exit 0, not "interrupted": each configuration is one record), each run trained once."""
    raw = spec(rules={"bp": {}, "fa": {"seed": {"randint": [0, 1000]}}}, search={}, samples=2)  # 4 trials
    path = write(tmp_path, raw)
    out = tmp_path / "out"
    code, _, stderr = finish(bioprop("sweep", str(path), "--out", str(out)))
    assert code == 0, stderr
    runs = summaries(out)
    assert stderr.count("bp-") == 2 and "finished before; skipped" in stderr  # two trials, one trains
    assert sorted(s["rule"] for s in runs.values()).count("bp") == 1
    assert all(s["status"] == "finished" for s in runs.values())
    for name in runs:
        assert epochs_trained(out / name) == [1, 2]
    assert len(json.loads((out / "best.json").read_text())["trials"]) == len(runs)


@needs_ray
def test_the_callers_sigterm_handler_is_back_after_the_sweep(tmp_path, monkeypatch):
    """While a sweep runs in this process SIGTERM acts as Ctrl-C (Ray's core would abort on it); afterwards the
    caller's handler is back, also when the sweep raised: a script or notebook that ran one keeps its own."""
    import ray
    from ray import tune

    seen = []

    class Refused:
        def __init__(self, *args, **kwargs):
            seen.append(signal.getsignal(signal.SIGTERM))
            raise BioPropError("no trials here")

    def mine(signum, frame):
        return None

    monkeypatch.setattr(sweeps, "_start_ray", lambda ray, address: None)  # no Ray started: the Tuner refuses first
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: seen.append("shutdown"))
    monkeypatch.setattr(tune, "Tuner", Refused)
    before = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(BioPropError, match="no trials here"):
            sweeps.run_sweep(write(tmp_path, spec()), tmp_path / "out")
        assert len(seen) == 2 and seen[0] not in (mine, signal.SIG_DFL) and seen[1] == "shutdown"
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
