"""benchmarks/suite.py: the tables it writes from stored results, the README markers it rewrites (and --check's
detection of a stale table), anchors.md's published numbers, the machine line, a crash that does not stop the
others, reuse of a finished result, and one real (tiny) benchmark run end to end.

Every expected cell is computed here by hand from the synthetic inputs, never read from the code's output."""

from __future__ import annotations

import json
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite  # noqa: E402
from bioprop.errors import BioPropError  # noqa: E402

PUBLISHED_ROWS = [
    {"source": "BioTorch Benchmarks.md (file)", "network": "LeNet, SGD, 100 ep", "approx": [],
     "values": {"bp": 90.80, "fa": 86.94}},
    {"source": "PCX tuning configs (file, best single run)", "network": "MLP gelu", "approx": [],
     "values": {"pc": 89.88}},
]  # fmt: skip


def cells(lines: list[str]) -> list[list[str]]:
    """The rows of the first Markdown table in ``lines``, header first, as lists of stripped cells."""
    rows = [line for line in lines if line.startswith("| ")]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]


def lenet_run(seed: int, acc: float, best: float, angles: list[float], seconds: list[float], status="finished"):
    names = ["0.weight", "3.weight", "6.weight", "9.weight", "10.weight"]
    return {"seed": seed, "status": status, "test_accuracy": acc, "best_test_accuracy": best, "epochs": 20,
            "epochs_done": 20, "epoch_seconds": seconds, "final_angles": dict(zip(names, angles, strict=True)),
            "arch": "lenet", "torch": "2.13.0+cpu", "finished_at": 0.0}  # fmt: skip


def lenet_result() -> dict:
    budget, entries = suite.accuracy_fmnist.SUITES["lenet"]
    fa = [lenet_run(0, 0.90, 0.905, [70, 60, 50, 40, 0], [10, 20]),
          lenet_run(1, 0.91, 0.915, [72, 62, 52, 42, 0], [30]),
          lenet_run(2, 0.92, 0.925, [74, 64, 54, 44, 0], [40, 50]),
          lenet_run(3, 0.10, 0.10, [90, 90, 90, 90, 0], [99], status="diverged")]  # fmt: skip
    bp = [lenet_run(0, 0.8, 0.8, [0, 0, 0, 0, 0], [5]), lenet_run(1, 0.9, 0.9, [0, 0, 0, 0, 0], [7])]
    return {"suite": "lenet", "folder": "x", "budget": budget, "epochs": 20, "options": entries,
            "entries": {"bp": bp, "fa": fa, "usf": [lenet_run(0, 0.5, 0.5, [1, 2, 3, 4, 0], [1])]},
            "missing": ["x/usf-s1"]}  # fmt: skip


def test_accuracy_table_cells_by_hand():
    """Mean ± sample std over finished seeds only, per-seed column, mean final angles of the hidden tensors (the
    output's dropped on LeNet), s/epoch pooled over every epoch, and BioTorch's published numbers beside ours."""
    lines = suite.render_fmnist(lenet_result(), PUBLISHED_ROWS, "test")
    header, bp, fa, usf = cells(lines)
    assert header == [
        "rule",
        "test acc (%)",
        "best epoch (%)",
        "per seed, last epoch (%)",
        "angle to backprop at the end, conv1 / conv2 / conv3 / fc1 (°)",
        "s/epoch",
        "published (%), BioTorch Benchmarks.md",
    ]
    # fa: 90, 91, 92 % -> mean 91, sample std 1; best 90.5, 91.5, 92.5; the diverged seed 3 is left out
    assert fa[1:3] == ["91.00 ± 1.00", "91.50 ± 1.00"]
    assert fa[3] == "90.00, 91.00, 92.00, diverged (seed 3)"
    assert fa[4] == "72.0 / 62.0 / 52.0 / 42.0"  # means of (70, 72, 74), (60, 62, 64), ...
    assert fa[5] == "30.0"  # (10 + 20 + 30 + 40 + 50) / 5
    assert fa[6] == "86.94"
    # bp: 80 and 90 % -> 85 ± 7.07 (sample std of two values a, b is |a − b| / √2)
    assert bp[1] == f"85.00 ± {10 / 2**0.5:.2f}" and bp[5] == "6.0" and bp[6] == "90.80"
    assert usf[1] == "50.00" and usf[6] == "–"  # one seed: no ±; no published usf in these rows
    text = "\n".join(lines)
    assert "BioTorch Benchmarks.md (file), LeNet, SGD, 100 ep (from test)" in text and "x/usf-s1" in text


def test_accuracy_table_without_a_published_source():
    """A suite on a network no source reports (mlp) has no published column; one whose rules differ in network
    (ep-mlp: ebm:512 and mlp:512) gets a network column."""
    result = lenet_result()
    result["suite"] = "mlp"
    assert cells(suite.render_fmnist(result, PUBLISHED_ROWS, "test"))[0][-1] == "s/epoch"
    result["entries"]["bp"] = [dict(r, arch="mlp:512") for r in result["entries"]["bp"]]
    assert cells(suite.render_fmnist(result, [], ""))[0][1] == "network"


def test_accuracy_table_names_each_entry_s_rule_options():
    """Entries with options (variants such as dtp/tl1) get them in a note under the table; entries without
    options, and options of entries that have no runs, are not listed."""
    result = lenet_result()
    result["options"] = {"bp": {}, "fa": {"seed": 3, "feedback": "random"}, "usf": {}, "dfa": {"x": 1}}
    text = "\n".join(suite.render_fmnist(result, [], ""))
    assert "Rule options: fa seed=3, feedback=random." in text and "dfa" not in text


def speed_fa_output(biotorch: bool) -> dict:
    res = {"ours/bp": {"median_ms": 4.0, "q1_ms": 3.5, "q3_ms": 4.5, "paired_ratio_to_bp": 1.0, "gflops": 100.0,
                       "pct_of_peak": 50.0},
           "ours/fa": {"median_ms": 4.2, "q1_ms": 4.0, "q3_ms": 4.4, "paired_ratio_to_bp": 1.04, "gflops": 95.0,
                       "pct_of_peak": 47.5}}  # fmt: skip
    if biotorch:
        res["ours/bp"]["paired_ratio_to_biotorch"], res["ours/fa"]["paired_ratio_to_biotorch"] = 0.99, 0.5
        res["biotorch/bp"], res["biotorch/fa"] = {"median_ms": 4.1}, {"median_ms": 8.4}
    config = {"hidden": 1000, "batch": 128, "threads": 1, "repeats": 10, "inner": 3, "biotorch": biotorch}
    return {"config": config, "step_flops": 409e6, "gemm_peak_gflops": 200.0, "results": res}


def test_speed_fa_table_and_the_missing_anchor():
    """Without BioTorch its columns are absent and a note says it was not measured; with it, its cells."""
    lines = suite.render_speed_fa({"outputs": [speed_fa_output(False)]}, [], "")
    header, bp, fa = cells(lines)
    assert header == ["rule", "ours ms/step, median [IQR]", "ours / our BP (paired)", "GFLOP/s (% of the matmul peak)"]
    assert fa == ["fa", "4.20 [4.00–4.40]", "1.040", "95.0 (48 %)"]
    assert any(line.startswith("BioTorch: not measured") for line in lines)
    lines = suite.render_speed_fa({"outputs": [speed_fa_output(True)]}, [], "")
    header, bp, fa = cells(lines)
    assert header[2] == "BioTorch ms/step" and fa[2] == "8.40" and fa[4] == "0.500"
    assert not any("not measured" in line for line in lines)


def test_speed_temporal_table_one_row_per_network():
    outs = [{"config": {"arch": arch, "batch": 64, "steps": 2250, "threads": 1, "repeats": 5},
             "load_avg_1min": [0.5, 1.5], "results": {"bptt": {"median_s": b, "paired_to_bptt": None},
                                                      "eprop": {"median_s": e, "paired_to_bptt": e / b}}}
            for arch, b, e in (("lsnn:50+50", 0.8, 1.0), ("lif:100", 1.0, 0.75))]  # fmt: skip
    header, lsnn, lif = cells(suite.render_speed_temporal({"outputs": outs}, [], ""))
    assert header == ["network", "load", "`bptt` s/update", "`eprop` s/update", "eprop ÷ bptt (paired)"]
    assert lsnn == ["lsnn:50+50", "0.5–1.5", "0.80", "1.00", "1.25"] and lif[-1] == "0.75"


def speed_tp_record(quick: bool = False, median: float = 2.0) -> dict:
    results = {name: {"median_ms": median * k, "q1_ms": 1.0, "q3_ms": 9.0, "cpu_per_wall": 1.0, "over_bp": k,
                      "over_bp_cpu": k} for name, k in (("bp", 1.0), ("dtp", 2.0))}  # fmt: skip
    out = {"config": {"hidden": "256x256", "batch": 64, "threads": 1, "inner": 10, "feedback_iterations": 1,
                      "repeats": 50}, "results": results}  # fmt: skip
    m = {"cpu": "Test CPU", "cores": 2, "torch": "2.13.0+cpu", "threads": 1, "load_before": [0.5, 0, 0],
         "load_after": [1.0, 0, 0], "date": "2026-12-01T12:00:00+00:00", "seconds": 30.0}  # fmt: skip
    return {
        "name": "speed-tp",
        "kind": "speed",
        "quick": quick,
        "source": "run",
        "status": "finished",
        "commands": ["python benchmarks/speed_tp.py --json x.json"],
        "machine": m,
        "result": {"outputs": [out]},
    }


README_TEXT = """# title

Some prose the suite must not touch.

<!-- bench:speed-tp -->
| old | table |
|---|---|
<!-- /bench:speed-tp -->

More prose.
<!-- bench:fmnist-mlp -->
| hand-made | table |
<!-- /bench:fmnist-mlp -->
tail
"""


def test_check_detects_a_stale_table_and_tables_rewrites_only_inside_markers(tmp_path, capsys):
    readme, out = tmp_path / "README.md", tmp_path / "out"
    readme.write_text(README_TEXT)
    suite.write_record(out, speed_tp_record())
    none = tmp_path / "absent"
    assert suite.tables(out, readme, check=True, anchors=none, copy=none) == 1
    assert readme.read_text() == README_TEXT  # --check writes nothing
    assert "speed-tp" in capsys.readouterr().err
    assert suite.tables(out, readme, anchors=none, copy=none) == 0
    text = readme.read_text()
    before, after = text.partition("<!-- bench:speed-tp -->\n")[0], text.partition("<!-- /bench:speed-tp")[2]
    assert before == README_TEXT.partition("<!-- bench:speed-tp -->\n")[0]
    assert after == README_TEXT.partition("<!-- /bench:speed-tp")[2]  # the fmnist block (no result) and the rest
    assert "| hand-made | table |" in text
    assert "Command: `python benchmarks/speed_tp.py --json x.json`." in text
    assert "Machine: Test CPU, 2 cores; torch 2.13.0+cpu, 1 thread; load average (1 min) 0.5 before, 1.0 after; " \
           "2026-12-01 12:00 UTC; 30 s." in text  # fmt: skip
    assert "| dtp | 4.00 [1.00–9.00] | 1.00 | 2.00 | 2.00 |" in text
    assert suite.tables(out, readme, check=True, anchors=none, copy=none) == 0  # now up to date
    suite.write_record(out, speed_tp_record(median=3.0))  # a new measurement: stale again
    assert suite.tables(out, readme, check=True, anchors=none, copy=none) == 1
    assert (out / "suite" / "tables.md").is_file()


def test_quick_results_stay_out_of_the_readme(tmp_path):
    readme, out, none = tmp_path / "README.md", tmp_path / "out", tmp_path / "absent"
    readme.write_text(README_TEXT)
    suite.write_record(out, speed_tp_record(quick=True))
    assert suite.tables(out, readme, anchors=none, copy=none) == 0
    assert readme.read_text() == README_TEXT
    assert suite.tables(out, readme, allow_quick=True, anchors=none, copy=none) == 0
    assert "**A --quick run" in readme.read_text()


@pytest.mark.parametrize(
    ("text", "token"),
    [("<!-- bench:speed-tp -->\n", "never closed"), ("<!-- bench:nope -->\n<!-- /bench:nope -->\n", "'nope'"),
     ("<!-- bench:speed-tp -->\n<!-- /bench:speed-tp -->\n<!-- bench:speed-tp -->\n<!-- /bench:speed-tp -->\n",
      "twice"), ("<!-- /bench:speed-tp -->\n", "not open"), ("x <!-- bench:speed-tp -->\n", "alone")],
)  # fmt: skip
def test_malformed_markers_are_refused(text, token):
    with pytest.raises(BioPropError, match=token):
        suite.find_blocks(text, "R.md")


def test_the_readme_markers_are_well_formed():
    """README.md's bench markers parse and each names a benchmark of the suite."""
    spans = suite.find_blocks((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    assert set(spans) <= set(suite.BENCHES)


ANCHORS_TEXT = """# Anchors

## Fashion-MNIST (top-1 accuracy %)
| source | network / budget | BP | FA | PC | other |
|---|---|---|---|---|---|
| Lib A (file) | LeNet, 100 ep | 90.80 | 86.94 | | |
| Paper B (paper) | MLP | ≈ 89 | | 88.5 | DTP 1-2 points below |

## MNIST
| source | network / budget | BP |
|---|---|---|
| ignored | x | 99.0 |
"""


def test_anchors_parsing():
    rows = suite.parse_anchors(ANCHORS_TEXT)
    assert [r["source"] for r in rows] == ["Lib A (file)", "Paper B (paper)"]
    assert rows[0]["values"] == {"bp": 90.80, "fa": 86.94} and rows[0]["network"] == "LeNet, 100 ep"
    assert rows[1]["values"] == {"bp": 89.0, "pc": 88.5} and rows[1]["approx"] == ["bp"]
    assert rows[1]["other"] == "DTP 1-2 points below"
    with pytest.raises(BioPropError, match="'n/a'"):
        suite.parse_anchors(ANCHORS_TEXT.replace("86.94", "n/a"))
    with pytest.raises(BioPropError, match="no section"):
        suite.parse_anchors("# nothing here\n")


def test_published_copy_is_anchors_table(tmp_path):
    """benchmarks/published.json holds anchors.md's Fashion-MNIST rows (refresh: suite.py published); the suite reads
    the copy when anchors.md is absent."""
    copy = json.loads(suite.PUBLISHED.read_text(encoding="utf-8"))
    rows, where = suite.read_published(tmp_path / "absent.md", suite.PUBLISHED)
    assert rows == copy["rows"] and where == "benchmarks/published.json, the project's anchors"
    for suite_name in suite.PUBLISHED_FOR:
        assert suite.published_row(suite_name, rows) is not None
    if not suite.ANCHORS.is_file():
        pytest.skip("../shared/anchors.md is not beside this checkout")
    fresh = suite.parse_anchors(suite.ANCHORS.read_text(encoding="utf-8"))
    for suite_name in suite.PUBLISHED_FOR:  # the rows the tables use: refresh the copy when this fails
        assert suite.published_row(suite_name, fresh) == suite.published_row(suite_name, copy["rows"])


def test_machine_record_and_line(tmp_path):
    assert suite.cpu_model("processor : 0\nmodel name\t: AMD  EPYC 7B13\nflags : x\n") == "AMD EPYC 7B13"
    assert suite.cpu_model("processor : 0\nModel : Raspberry Pi 4\n") == "Raspberry Pi 4"
    info = tmp_path / "cpuinfo"
    info.write_text("model name : Test CPU 9000\n")
    m = suite.machine(2, "1", info)
    assert m["cpu"] == "Test CPU 9000" and m["threads"] == 2 and m["cpus"] == "1" and len(m["load_before"]) == 3
    m.update(load_before=[0.25, 0, 0], load_after=[1.75, 0, 0], date="2026-12-01T13:05:00+01:00", seconds=61.4)
    m["cores"] = 2
    assert suite.machine_line(m) == ("Machine: Test CPU 9000, 2 cores (pinned to CPU 1); torch "
                                     f"{m['torch']}, 2 threads; load average (1 min) 0.2 before, 1.8 after; "
                                     "2026-12-01 12:05 UTC; 61 s.")  # fmt: skip
    line = suite.machine_line({"torch": "2.13.0", "threads": 1, "imported_from": "runs/x"})
    assert line == "Machine: torch 2.13.0, 1 thread; imported from runs/x, the rest of the machine not recorded."


def test_bad_input_names_the_token(tmp_path, capsys):
    with pytest.raises(BioPropError, match="'speed-nope'"):
        suite.pick("speed-fa,speed-nope")
    assert [b.name for b in suite.pick("speed")] == [n for n in suite.BENCHES if n.startswith("speed-")]
    with pytest.raises(BioPropError, match="'x'"):
        suite.parse_seeds("0,x")
    assert suite.main(["run", "--only", "fmnist-nope", "--out", str(tmp_path)]) == 2
    assert "'fmnist-nope'" in capsys.readouterr().err
    assert suite.main(["run", "--only", "speed-fa", "--biotorch-python", str(tmp_path / "none")]) == 2


@pytest.mark.parametrize(("args", "token"), [
    (["--only", ""], "--only ''"), (["--only", "speed-fa,"], "an empty name"), (["--seeds", "0,-1"], "'-1'"),
    (["--seeds", "0,0"], "given twice"), (["--cpus", "99999"], "CPU 99999"), (["--cpus", "a"], "'a'"),
    (["--cpus", "1-0"], "'1-0'"),
])  # fmt: skip
def test_bad_run_input_is_refused_before_any_benchmark_starts(tmp_path, capsys, args, token):
    assert suite.main(["run", "--only", "speed-tp", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and token in err
    assert not (tmp_path / "suite").exists()  # nothing ran, nothing written


def test_cpus_are_checked_against_the_allowed_set():
    assert suite.parse_cpus("0,2-3", allowed={0, 2, 3}) == "0,2-3"
    assert suite.parse_cpus(None) is None
    with pytest.raises(BioPropError, match="CPU 1 is not one this process may use"):
        suite.parse_cpus("0-1", allowed={0, 2})


def test_tables_says_when_there_is_nothing_stored(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    assert suite.tables(tmp_path / "empty", readme, check=True) == 1
    assert suite.tables(tmp_path / "empty", readme) == 0
    assert "no stored results under" in capsys.readouterr().err and readme.read_text() == README_TEXT


def fake_bench(name: str, code: str, out: Path) -> suite.Bench:
    """A benchmark whose one command runs ``code`` in Python and whose result is the JSON it writes."""
    target = out / "suite" / "raw" / f"{name}.json"

    def commands(opts):
        return [suite.Command([sys.executable, "-c", code, str(target)], {"OMP_NUM_THREADS": "1"}, target)]

    return suite.Bench("speed-tp", "speed", name, commands, suite.speed_collect, lambda result, rows, where: [])


def test_a_crash_is_recorded_and_a_finished_result_is_reused(tmp_path):
    opts = suite.Options(tmp_path)
    crash = fake_bench("crash", "import sys; print('boom at step 3'); sys.exit(3)", tmp_path)
    record = suite.run_bench(crash, opts)
    assert record["status"] == "failed" and "exit status 3" in record["error"] and "boom at step 3" in record["error"]
    assert suite.read_record(tmp_path, "speed-tp")["status"] == "failed"
    counter = tmp_path / "count"
    code = (f"import json, sys, pathlib; c = pathlib.Path({str(counter)!r}); c.write_text(c.read_text() + 'x' if "
            "c.exists() else 'x'); json.dump({'n': 1}, open(sys.argv[1], 'w'))")  # fmt: skip
    ok = fake_bench("ok", code, tmp_path)
    first = suite.run_bench(ok, opts)
    assert first["status"] == "finished" and first["result"] == {"outputs": [{"n": 1}]}
    assert first["machine"]["load_after"] and first["machine"]["seconds"] >= 0
    assert suite.run_bench(ok, opts)["machine"] == first["machine"] and counter.read_text() == "x"  # reused
    suite.run_bench(ok, opts, force=True)
    assert counter.read_text() == "xx"


def test_a_failed_rerun_keeps_the_finished_result(tmp_path, capsys):
    """A rerun that fails (here: other commands, so the stored result is not reused) never replaces a finished
    record: its own record goes to NAME.failed.json beside it."""
    opts = suite.Options(tmp_path)
    finished = suite.run_bench(fake_bench("ok", "import json, sys; json.dump({'n': 1}, open(sys.argv[1], 'w'))",
                                          tmp_path), opts)  # fmt: skip
    crash = fake_bench("crash", "import sys; sys.exit(3)", tmp_path)
    assert suite.run_bench(crash, opts)["status"] == "failed"
    assert suite.read_record(tmp_path, "speed-tp") == finished
    kept = json.loads((tmp_path / "suite" / "speed-tp.failed.json").read_text())
    assert kept["status"] == "failed" and "exit status 3" in kept["error"]
    assert "is kept" in capsys.readouterr().err


def test_import_of_accuracy_runs(tmp_path):
    """Run directories of accuracy_fmnist.py become a record whose machine line says where they came from; a run
    with another epoch budget is refused, naming it."""
    folder = tmp_path / "fm" / "pc-mlp"
    for entry, accs in (("bp", (0.89, 0.90)), ("pc", (0.88, 0.91))):
        for seed, acc in enumerate(accs):
            (folder / f"{entry}-s{seed}").mkdir(parents=True)
            summary = {
                "rule": entry,
                "epochs": 25,
                "epochs_done": 25,
                "status": "finished",
                "test_accuracy": acc,
                "best_test_accuracy": acc,
                "epoch_seconds": [2.0],
                "arch": "mlp:128x128x128",
                "alignment_deg": {"1.weight": [3.0, 1.0], "1.bias": [9.0]},
                "torch_version": "2.13.0+cpu",
            }
            (folder / f"{entry}-s{seed}" / "summary.json").write_text(json.dumps(summary))  # fmt: skip
    out = tmp_path / "out"
    assert suite.import_results(out, tmp_path / "fm", {}) == ["fmnist-pc-mlp"]
    record = suite.read_record(out, "fmnist-pc-mlp")
    lines = suite.block(record, PUBLISHED_ROWS, "test")
    assert "imported from" in lines[2] and "accuracy_fmnist.py --suite pc-mlp --seeds 0 1" in lines[0]
    header, bp, pc = cells(lines)
    assert pc[1] == f"89.50 ± {statistics.stdev([88, 91]):.2f}" and pc[-1] == "89.88" and bp[-1] == "–"
    assert pc[4] == "1.0"  # the last angle of the one weight tensor (the bias left out)
    summary = json.loads((folder / "pc-s1" / "summary.json").read_text())
    (folder / "pc-s1" / "summary.json").write_text(json.dumps(dict(summary, epochs=1)))
    with pytest.raises(BioPropError, match="pc-s1"):
        suite.import_results(out, tmp_path / "fm", {})


def test_real_tiny_run_end_to_end(tmp_path):
    """speed_tp.py --quick through the suite: stored with its command and machine, its table made from it; the
    stored medians are the medians of the stored samples."""
    out, readme = tmp_path / "out", tmp_path / "README.md"
    assert suite.main(["run", "--only", "speed-tp", "--quick", "--out", str(out)]) == 0
    record = suite.read_record(out, "speed-tp")
    assert record["status"] == "finished" and "speed_tp.py" in record["commands"][0]
    results = record["result"]["outputs"][0]["results"]
    for r in results.values():
        assert r["median_ms"] == pytest.approx(statistics.median(r["samples_ms"]))
    readme.write_text(README_TEXT)
    assert suite.main(["tables", "--out", str(out), "--readme", str(readme), "--allow-quick"]) == 0
    assert f"| bp | {results['bp']['median_ms']:.2f} [" in readme.read_text()
    assert suite.main(["tables", "--out", str(out), "--readme", str(readme), "--allow-quick", "--check"]) == 0


def test_speed_ep_table_with_and_without_laborieux():
    def entry(ms, to_bp, to_labo):
        return {"median_ms": ms, "q1_ms": ms - 1, "q3_ms": ms + 1, "paired_to_bp": to_bp,
                "paired_to_laborieux": to_labo}  # fmt: skip

    config = {"hidden": 512, "batch": 128, "t1": 30, "t2": 10, "beta": 0.5, "threads": 1, "repeats": 9, "inner": 2,
              "stopped_by": "budget"}  # fmt: skip
    ours = {"bp": entry(4.0, None, None), "ep": entry(9.0, 2.25, None)}
    out = {"config": config, "laborieux": None, "results": ours}
    header, bp, ep = cells(lines := suite.render_speed_ep({"outputs": [out]}, [], ""))
    assert header[-1] == "÷ our BP (paired)" and bp == ["bp (feedforward 784-512-10)", "4.00 [3.00–5.00]", "1"]
    assert ep[-1] == "2.25" and any("not measured" in line for line in lines)
    ours = {"bp": entry(4.0, None, 0.05), "ep": entry(9.0, 2.25, 0.11), "laborieux": entry(80.0, 20.0, None)}
    out = {"config": config, "laborieux": {"commit": "93660ed0"}, "agreement": {"w": 8.4e-6}, "results": ours}
    header, bp, ep, labo = cells(lines := suite.render_speed_ep({"outputs": [out]}, [], ""))
    assert header[-1] == "÷ Laborieux (paired)" and ep[-1] == "0.11" and labo == [
        "Laborieux's EP (`thirdphase`)", "80.00 [79.00–81.00]", "20.00", "1"]  # fmt: skip
    assert any("commit 93660ed" in line and "8.4e-06" in line for line in lines)


def test_an_anchor_venv_python_is_kept_as_given_not_resolved_to_its_base_interpreter(tmp_path):
    link = tmp_path / "venv-python"
    link.symlink_to(sys.executable)  # as a venv's bin/python links to the base interpreter
    assert suite.existing(str(link), "--biotorch-python") == str(link)


def pc_entry(ms: float, to_bp: float | None, to_pcx: float | None, adamw: float | None = None) -> dict:
    entry = {"median_ms": ms, "q1_ms": ms - 0.5, "q3_ms": ms + 0.5, "cpu_per_wall": 1.0, "paired_to_bp": to_bp,
             "paired_to_pcx": to_pcx}  # fmt: skip
    return entry | ({"paired_to_pcx_adamw": adamw} if adamw is not None else {})


def speed_pc_output(pcx: bool) -> dict:
    config = {"batch": 64, "hidden": "128x128", "steps": 20, "gamma": 0.1, "lr": 1e-3, "weight_decay": 1e-4,
              "unfused_adamw": False, "inner": 3, "warmup": 10, "threads": 1, "outputs": ["se"], "pcx_gelu": "exact",
              "repeats": 67, "pinned_cpus": [1], "ipc": {"hidden": "512", "batch": 128, "outputs": ["se"],
                                                          "weight_lr": 0.01}}  # fmt: skip
    res = {"ours/pc-se": pc_entry(5.81, 3.43, 1.00 if pcx else None), "ours/bp": pc_entry(1.75, None, 1.09 if pcx
           else None), "ours/pc-se+compile(rule)": pc_entry(4.29, 2.45, 0.72 if pcx else None),
           "ours/ipc-se": pc_entry(19.5, 5.29, 0.28 if pcx else None, 0.08 if pcx else None),
           "ours/bp-ipc": pc_entry(3.66, None, 0.82 if pcx else None)}  # fmt: skip
    if pcx:
        res |= {"pcx/pc-se": pc_entry(6.02, 3.73, None), "pcx/ipc-se-adamw": pc_entry(241.0, 53.9, None)}
    return {"config": config, "versions": {"torch": "2.13.0+cpu", **({"pcx": "0.6.3"} if pcx else {})},
            "results": res}  # fmt: skip


def test_speed_pc_table_with_and_without_pcx():
    """Labels per contender, median [q1–q3], the same side's BP ratio (– for BP itself), ours ÷ PCX with ipc's ratio
    to PCX's AdamW iPC beside; without PCX its column is gone and a note says it was not measured."""
    header, pc, bp, compiled, ipc, bp_ipc = cells(lines := suite.render_speed_pc({"outputs": [speed_pc_output(False)]},
                                                                                  [], ""))  # fmt: skip
    assert header == ["contender", "ms/step, median [IQR]", "÷ same side's BP (paired)", "CPU/wall"]
    assert pc == ["ours `pc`, se", "5.81 [5.31–6.31]", "3.43", "1.00"]
    assert bp == ["ours `bp` (784-128-128-10)", "1.75 [1.25–2.25]", "–", "1.00"]
    assert compiled[0] == "ours `pc` se, `compile=true`" and ipc[0] == "ours `ipc`, se (784-512-10, batch 128)"
    assert bp_ipc[0] == "ours `bp` (784-512-10, batch 128)"
    assert any(line.startswith("PCX: not measured") for line in lines)
    lines = suite.render_speed_pc({"outputs": [speed_pc_output(True)]}, [], "")
    header, pc, bp, compiled, ipc, bp_ipc, pcx_pc, pcx_ipc = cells(lines)
    assert header[3] == "÷ PCX (paired)" and pc[3] == "1.00" and bp[3] == "1.09" and compiled[3] == "0.72"
    assert ipc[3] == "0.28 (0.08 to PCX's AdamW iPC)"
    assert pcx_pc == ["PCX pc, se", "6.02 [5.52–6.52]", "3.73", "–", "1.00"]
    assert pcx_ipc[:3] == ["PCX iPC, se, AdamW weight steps (its examples)", "241.00 [240.50–241.50]", "53.90"]
    assert not any("not measured" in line for line in lines) and any("pcx 0.6.3" in line for line in lines)


def snn_entry(s: float, loss: float, rate: float, over: dict | None = None) -> dict:
    entry = {"median_s": s, "q1_s": s - 0.01, "q3_s": s + 0.02, "cpu_per_wall": 1.0, "loss_f32": loss, "rate_hz": rate}
    if over is not None:
        entry |= {"ours_over_this": over, "ours_over_this_cpu": {k: v + 0.01 for k, v in over.items()}}
    return entry


def test_speed_snn_table_and_the_missing_library():
    """One row per system; ours ÷ this for both of our networks (– on our own rows) and by CPU time; a library not
    timed (Norse here) has a note, not a row."""
    res = {"ours/bptt": snn_entry(0.77, 1.96361, 210.04), "ours/bptt-nref5": snn_entry(0.77, 0.79491, 10.2),
           "snntorch": snn_entry(1.5, 1.95624, 210.0, {"ours/bptt": 0.5, "ours/bptt-nref5": 0.51})}  # fmt: skip
    out = {"config": {"batch": 64, "steps": 2250, "inputs": 40, "hidden": 100, "threads": 1, "inner": 1, "warmup": 1,
                      "repeats": 5}, "versions": {"torch": "2.13.0+cpu", "snntorch": "1.0.0"}, "sanity_steps": 300,
           "sanity": {"snntorch": {"loss": 1.9, "rate_hz": 210.0, "grad_norm": 58.6,
                                   "vs_ours": {"cos": 0.9, "rel_err": 4.7e-6}}}, "results": res}  # fmt: skip
    lines = suite.render_speed_snn({"outputs": [out]}, [], "")
    header, ours, nref5, snntorch = cells(lines)
    assert header == ["contender", "s/update [IQR]", "loss (f32)", "rate (Hz)", "ours `bptt`, n_ref = 0 ÷ this",
                      "ours `bptt`, n_ref = 5 ÷ this", "ours `bptt`, n_ref = 0 ÷ this, CPU time"]  # fmt: skip
    assert ours == ["ours `bptt`, n_ref = 0", "0.77 [0.76–0.79]", "1.9636", "210.0", "–", "–", "–"]
    assert nref5[0] == "ours `bptt`, n_ref = 5 (default)"
    assert snntorch == ["snnTorch 1.0.0", "1.50 [1.49–1.52]", "1.9562", "210.0", "0.50", "0.51", "0.51"]
    assert any(line.startswith("Norse: not measured") for line in lines)
    assert not any(line.startswith("snnTorch: not measured") for line in lines)
    assert any("snnTorch 1.0.0 4.7e-06" in line for line in lines)


def scaling_row(rule: str, arch: str, steps: int, seconds: list[float], mib: float, **extra) -> dict:
    return {"rule": rule, "arch": arch, "T": steps, "seconds": seconds, "extra_mib": mib, "peak_source": "reset",
            **extra}  # fmt: skip


def test_scaling_table_one_row_per_length():
    """µs per step = median seconds ÷ T × 1e6; MiB whole from 10 up, one decimal below; eprop ÷ bptt and
    rflo ÷ bptt are ratios of medians at the same T; a skipped case shows its note and its ratio –."""
    cases = [["bptt", "lsnn:50+50"], ["eprop", "lsnn:50+50"], ["bptt", "rnn:100"], ["rflo", "rnn:100"]]
    rows = [scaling_row("bptt", "lsnn:50+50", 100, [0.03, 0.0294, 0.05], 19.6),  # median 0.03 → 300 µs/step
            scaling_row("eprop", "lsnn:50+50", 100, [0.04, 0.039, 0.041], 37.2),  # 0.04 → 400; ÷ bptt 4/3
            scaling_row("bptt", "rnn:100", 100, [0.025], 2.54, peak_source="since start"),
            scaling_row("rflo", "rnn:100", 100, [0.15], 0.04),  # 1500 µs/step; ÷ bptt 6
            {"rule": "bptt", "arch": "lsnn:50+50", "T": 10000, "note": "skipped: BPTT estimate 9 GiB > --max-gib 8"},
            scaling_row("eprop", "lsnn:50+50", 10000, [3.0, 4.0], 59.0),  # median 3.5 → 350 µs/step
            scaling_row("bptt", "rnn:100", 10000, [2.0, 2.0, 2.0], 1502.4),
            scaling_row("rflo", "rnn:100", 10000, [16.5], 36.4)]  # fmt: skip
    config = {"lengths": [100, 10000], "cases": cases, "batch": 64, "repeats": 3, "threads": 1, "case_budget": 60,
              "clock": "cpu", "malloc": "default", "flush_denormal": False}  # fmt: skip
    out = {"config": config, "torch": "2.13.0+cpu", "load_avg_1min": [2.5, 3.1], "rows": rows}
    lines = suite.render_scaling_temporal({"outputs": [out]}, [], "")
    header, short, long = cells(lines)
    assert header == ["T", "bptt lsnn:50+50 µs/step, MiB", "eprop lsnn:50+50 µs/step, MiB", "eprop ÷ bptt",
                      "bptt rnn:100 µs/step, MiB", "rflo rnn:100 µs/step, MiB", "rflo ÷ bptt"]  # fmt: skip
    assert short == ["100", "300, 20", "400, 37", "1.33", "250, 2.5 (peak since start)", "1500, 0.0", "6.00"]
    assert long == ["10,000", "skipped: BPTT estimate 9 GiB > --max-gib 8", "350, 59", "–", "200, 1502", "1650, 36",
                    "8.25"]  # fmt: skip
    text = "\n".join(lines)
    assert "cpu clock" in text and "2.5 before, 3.1 after" in text
    assert "Fewer calls (--case-budget 60 s): bptt rnn:100 T = 100: 1; rflo rnn:100 T = 100: 1; eprop " \
           "lsnn:50+50 T = 10,000: 2; rflo rnn:100 T = 10,000: 1." in text  # fmt: skip


def temporal_run(seed: int, acc: float, loss: float, best: float, epochs_done: int, seconds: list[float],
                 reached: int | None = None) -> dict:  # fmt: skip
    return {"seed": seed, "run_dir": f"x/s{seed}", "status": "finished", "test_accuracy": acc, "test_loss": loss,
            "best_test_accuracy": best, "epochs_done": epochs_done, "epoch_seconds": seconds,
            "iterations_to_criterion": reached}  # fmt: skip


def test_accuracy_temporal_tables_by_hand():
    """Final accuracy in % as mean ± sample std (4 significant digits ± 2), iterations = epochs done × batches an
    epoch, the median of every epoch's seconds; cue accumulation adds the best test error and the iterations to
    the criterion; pattern generation shows the final test loss instead."""
    entries = {"eprop-alif": {"rule": "eprop", "arch": "lsnn:50+50", "options": {"rate_reg": 1e-6}, "runs": [
        temporal_run(0, 0.96, 0.1, 0.97, 100, [19.0, 21.0], 380), temporal_run(1, 0.98, 0.1, 0.99, 100, [20.0], 260),
        temporal_run(2, 0.97, 0.1, 0.98, 100, [30.0], None)]},
        "bptt-lif": {"rule": "bptt", "arch": "lif:100", "options": {}, "runs": [
            temporal_run(0, 0.5, 0.7, 0.55, 50, [10.0])]}}  # fmt: skip
    out = {"suite": "cue-accumulation", "data": "cue-accumulation:n_train=1280,n_test=512", "per_epoch": 20,
           "error_criterion": 0.07, "budget": {"optimizer": "adam", "lr": 5e-3, "batch_size": 64, "epochs": 100},
           "torch": "2.13.0+cpu", "threads": 1, "entries": entries}  # fmt: skip
    lines = suite.render_temporal({"outputs": [out]}, [], "")
    header, alif, lif = cells(lines)
    assert header == ["entry", "rule", "arch", "rule options", "seeds", "iterations done", "final test accuracy (%)",
                      "best test error (%)", "iterations to < 7 % error", "s/epoch (median)"]  # fmt: skip
    # 96, 98, 97 % → mean 97, sample std 1; best errors 3, 1, 2 % → 2 ± 1; seconds 19, 21, 20, 30 → median 20.5
    assert alif == ["eprop-alif", "eprop", "lsnn:50+50", "rate_reg=1e-06", "3", "2000, 2000, 2000", "97 ± 1",
                    "2 ± 1", "380, 260, not reached", "20.50"]  # fmt: skip
    assert lif == ["bptt-lif", "bptt", "lif:100", "-", "1", "1000", "50 ± 0", "45 ± 0", "not reached", "10.00"]
    assert any("Per seed (final test accuracy, %): eprop-alif 96/98/97; bptt-lif 50." == line for line in lines)
    assert any("seeds 0, 1, 2;" in line and "lr 0.005" in line for line in lines)
    out |= {
        "suite": "pattern-generation",
        "entries": {
            "eprop": {
                "rule": "eprop",
                "arch": "lif:50",
                "options": {},
                "runs": [temporal_run(0, 0.0, 0.03, 0.0, 100, [0.1]), temporal_run(1, 0.0, 0.02, 0.0, 100, [0.2])],
            }
        },
    }
    header, eprop = cells(suite.render_temporal({"outputs": [out]}, [], ""))
    assert header[6] == "final test loss (½ squared error)" and len(header) == 8
    assert eprop[6] == f"0.025 ± {statistics.stdev([0.03, 0.02]):.2g}" and eprop[7] == "0.15"  # fmt: skip


def test_new_benchmarks_commands_pass_their_anchors_and_shorten_with_quick(tmp_path):
    """The anchors' flags reach the scripts as given; --quick shortens each and puts the temporal runs in their own
    folders; each script writes its --json under OUT/suite/raw."""
    anchors = {"pcx_python": "/p/pcx", "snntorch_python": "/p/snn", "norse_python": "/p/norse"}
    full, quick = suite.Options(tmp_path, anchors=anchors), suite.Options(tmp_path, quick=True, seeds=[4, 5])
    pc = suite.BENCHES["speed-pc"].commands(full)[0].argv
    assert pc[pc.index("--pcx-python") + 1] == "/p/pcx" and "--compile" in pc and pc[-2] == "--json"
    assert "--pcx-python" not in suite.BENCHES["speed-pc"].commands(quick)[0].argv
    snn = suite.BENCHES["speed-snn"].commands(full)[0].argv
    assert snn[snn.index("--snntorch-python") + 1] == "/p/snn" and snn[snn.index("--norse-python") + 1] == "/p/norse"
    assert "--cues" in suite.BENCHES["speed-snn"].commands(quick)[0].argv
    scaling = suite.BENCHES["scaling-temporal"].commands(quick)[0].argv
    assert scaling[scaling.index("--out") + 1] == str(tmp_path / "scaling-quick")
    temporal = suite.BENCHES["temporal-store-recall"].commands(quick)[0]
    argv = temporal.argv
    assert argv[argv.index("--seeds") + 1] == "4" and argv[argv.index("--epochs") + 1] == "1"
    assert argv[argv.index("--out") + 1] == str(tmp_path / "temporal-quick")
    assert temporal.json == tmp_path / "suite" / "raw" / "temporal-store-recall.json"
    full_argv = suite.BENCHES["temporal-cue-accumulation"].commands(suite.Options(tmp_path))[0].argv
    assert full_argv[full_argv.index("--seeds") + 1] == "0,1,2" and "--epochs" not in full_argv
    assert suite.pick("temporal") == [suite.BENCHES[n] for n in suite.BENCHES if n.startswith("temporal-")
                                      or n == "scaling-temporal"]  # fmt: skip


def test_heartbeat_counts_runs_and_epochs_and_times_what_is_left(tmp_path, monkeypatch):
    """An accuracy suite's heartbeat reads its run directories (those its command trains: ``--out``/suite/entry-sSEED):
    runs finished, epochs trained over all runs, and the time left at the rate trained since this command began."""
    clock = [1000.0]
    monkeypatch.setattr(suite.time, "perf_counter", lambda: clock[0])
    opts = suite.Options(tmp_path)
    bench = suite.BENCHES["temporal-cue-accumulation"]
    argv = bench.commands(opts)[0].argv
    folder = Path(argv[argv.index("--out") + 1]) / "cue-accumulation"
    header = "epoch,loss,test_accuracy\n"
    for name in ("eprop-alif-s0", "bptt-lif-s2"):  # finished: all 100 epochs, whatever their metrics hold
        (folder / name).mkdir(parents=True)
        (folder / name / "summary.json").write_text(json.dumps({"status": "finished"}))
    partial = folder / "eprop-lif-s1"
    partial.mkdir()
    (partial / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    (partial / "metrics.csv").write_text(header + "".join(f"{e},ce,0.5\n" for e in range(1, 6)))
    (folder / "bptt-alif-s1").mkdir()  # started, nothing written yet
    progress = suite.heartbeat_progress(bench, opts)
    assert progress() == ", 2/12 runs finished, 205/1200 epochs"  # no rate yet: no time left shown
    clock[0] += 100.0
    with open(partial / "metrics.csv", "a") as rows:
        rows.write("".join(f"{e},ce,0.5\n" for e in range(6, 16)))
    # 10 epochs in 100 s; 1200 - 215 = 985 left: 9850 s = 2.7 h
    assert progress() == ", 2/12 runs finished, 215/1200 epochs, about 2.7 h left"
    clock[0] += 1900.0  # 10 epochs in 2000 s: 985 left take 197,000 s
    assert progress().endswith("about 54.7 h left")
    (partial / "summary.json").write_text(json.dumps({"status": "finished"}))
    clock[0] = 1100.0  # 95 epochs since the start in 100 s: 900 left at 0.95 epochs/s take 947 s = 15.8 min
    assert progress() == ", 3/12 runs finished, 300/1200 epochs, about 16 min left"
    run_dir = suite.fmnist_folder(suite.Options(tmp_path, quick=True)) / "lenet" / "fa-s3"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
    fmnist = suite.heartbeat_progress(suite.BENCHES["fmnist-lenet"], suite.Options(tmp_path, quick=True, seeds=[3, 4]))
    assert fmnist() == ", 1/6 runs finished, 1/6 epochs"  # quick: one seed, one epoch each
    (run_dir.parent / "bp-s3").mkdir()
    (run_dir.parent / "bp-s3" / "summary.json").write_text(json.dumps({"status": "finished"}))
    clock[0] += 30.0  # 1 epoch in 30 s, 4 left
    assert fmnist() == ", 2/6 runs finished, 2/6 epochs, about 2 min left"
    clock[0] += 60000.0
    assert fmnist().endswith(", about 66.7 h left")
    for name in ("dfa-s3", "usf-s3", "brsf-s3"):
        (run_dir.parent / name).mkdir()
        (run_dir.parent / name / "summary.json").write_text(json.dumps({"status": "finished"}))
    clock[0] = 1100.0 + 30.0 + 4 * 10.0  # 4 epochs in 40 s: the last one takes 10 s
    assert fmnist() == ", 5/6 runs finished, 5/6 epochs, under a minute left"
    assert suite.heartbeat_progress(suite.BENCHES["speed-fa"], opts)() == ""


def test_import_of_an_accuracy_temporal_json(tmp_path):
    """accuracy_temporal.py --json files are stored under their suite's name, their load and threads kept; a second
    file for the same suite and a file that is not one are refused, naming the file."""
    runs = [temporal_run(0, 0.9, 0.2, 0.9, 25, [3.5])]
    out = {"suite": "store-recall", "data": "store-recall:delay=200", "per_epoch": 16, "budget": {"epochs": 25},
           "torch": "2.13.0+cpu", "threads": 1, "load_before": [1.8, 0, 0], "load_after": [3.3, 0, 0],
           "entries": {"sab": {"rule": "sab", "arch": "sab:32", "options": {}, "runs": runs}}}  # fmt: skip
    path = tmp_path / "store.json"
    path.write_text(json.dumps(out))
    assert suite.main(["import", "--out", str(tmp_path / "o"), "--temporal", str(path)]) == 0
    record = suite.read_record(tmp_path / "o", "temporal-store-recall")
    assert record["kind"] == "accuracy" and record["machine"]["load_before"] == [1.8]
    assert record["machine"]["load_after"] == [3.3] and record["machine"]["threads"] == 1
    assert cells(suite.block(record, [], ""))[1][6] == "90 ± 0"
    assert suite.main(["import", "--out", str(tmp_path / "o"), "--temporal", str(path), str(path)]) == 2
    (tmp_path / "bad.json").write_text(json.dumps({"suite": "nope"}))
    assert suite.main(["import", "--out", str(tmp_path / "o"), "--temporal", str(tmp_path / "bad.json")]) == 2


def test_list_into_a_pipe_closed_early_says_nothing_more(tmp_path):
    """`suite.py list | true`: the reader is gone before the first line is written (python takes longer to start
    than `true` to end); no traceback, exit 141 as for SIGPIPE."""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'benchmarks' / 'suite.py'))} list --out " \
              f"{shlex.quote(str(tmp_path))} | true"  # fmt: skip
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 141 and result.stderr == "", result.stderr


def test_sigterm_stops_the_running_script_and_ends_the_suite(tmp_path):
    """`suite.py run` sent SIGTERM (as by a batch system) while a benchmark's script runs: the script is stopped
    too, not left running, and the suite ends with exit 130 and one line saying how to resume; no record is stored."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    script = tmp_path / "run_suite.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import suite\n"
        "def commands(opts):\n"
        f"    return [suite.Command([sys.executable, '-c', {child!r}], {{}}, None)]\n"
        "suite.BENCHES = {'speed-tp': suite.Bench('speed-tp', 'speed', 'sleeps', commands, suite.speed_collect,\n"
        "                                         lambda result, rows, where: [])}\n"
        f"sys.exit(suite.main(['run', '--only', 'speed-tp', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "the benchmark's script did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and "suite: interrupted during speed-tp (0 of 1 done)" in err, err
    child_pid = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child_pid}").exists() or "zombie" in Path(f"/proc/{child_pid}/status").read_text().lower()
    assert suite.read_record(tmp_path / "out", "speed-tp") is None
