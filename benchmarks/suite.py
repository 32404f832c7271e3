"""One entry point for the benchmarks: rerun them, keep their results, regenerate the README's tables from them.

    python benchmarks/suite.py list                                   # the benchmarks and what is stored
    python benchmarks/suite.py run [--only NAME,...] [--out runs/bench] [--seeds 0,1,2] [--quick] [--cpus 1]
                                   [--threads 1] [--jobs 1] [--force] [--biotorch-python PATH] [--laborieux PATH]
                                   [--pcx-python PATH] [--snntorch-python PATH] [--norse-python PATH]
    python benchmarks/suite.py tables [--out runs/bench] [--readme README.md] [--check] [--allow-quick]
    python benchmarks/suite.py import [--out runs/bench] [--fmnist DIR] [--speed-fa FILE] [--speed-tp FILE]
                                      [--speed-ep FILE] [--speed-temporal FILE ...] [--speed-pc FILE]
                                      [--speed-snn FILE] [--scaling-temporal FILE] [--temporal FILE ...]
    python benchmarks/suite.py published [--anchors ../shared/anchors.md]   # refresh benchmarks/published.json

``run`` starts each benchmark's script (``accuracy_fmnist.py``, ``speed_fa.py``, ``accuracy_temporal.py``, ...) as a
subprocess, its output
echoed and kept in ``OUT/suite/NAME.log`` (with a progress line every minute: for an accuracy suite, runs finished,
epochs trained and the time left), and stores ``OUT/suite/NAME.json``: the exact command(s), a machine
record (CPU model from /proc/cpuinfo, cores, pinned CPUs, torch version, threads, load average before and after,
date, seconds) and the results (the script's ``--json`` output; for an accuracy suite, each run directory's final
numbers). A benchmark that crashes is stored as failed (exit status, the log's last lines) and the others go on. A
stored finished result with the same command is reused (``--force`` reruns it); the accuracy suites' run
directories are reused by ``accuracy_fmnist.py`` and ``accuracy_temporal.py`` themselves, so an interrupted suite
resumes. ``--quick`` runs short versions (one epoch and one seed for accuracy, in their own folder; small budgets
for speed; T = 100 and 300 for the scaling): a check that everything runs, whose tables are kept out of the README
unless ``tables --allow-quick``.

``tables`` renders every stored result as Markdown (``OUT/suite/tables.md``) and rewrites the README's blocks
between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (each marker alone on its line): the command, a
machine line, the table and its notes. Nothing outside the markers changes; a block whose benchmark has no stored
finished result is left as it is (said so). ``--check`` writes nothing and exits 1 when a block differs from what
would be written.

Published numbers: the Fashion-MNIST table of ``../shared/anchors.md`` (one row per source, a column per rule: BP,
FA, DFA, uSF, brSF, frSF, PC) gives a "published" column to the accuracy suites run on the same network as a source
(:data:`PUBLISHED_FOR`). That file lives outside the repository; ``benchmarks/published.json`` is a copy of its
rows (written by ``suite.py published``) used when it is absent. An anchor system that is not given (BioTorch's,
PCX's, snnTorch's or Norse's venv, Laborieux et al.'s checkout) is not measured: its columns or rows are left out,
with a note, never filled in.

Errors in the input (an unknown benchmark, a bad seed, a missing anchor path, malformed markers) end with a one-line
message naming the bad token, exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # the scripts beside this one (accuracy_fmnist's suites) import as modules
    sys.path.insert(0, str(HERE))

import accuracy_fmnist  # noqa: E402
import accuracy_temporal  # noqa: E402
import runpool  # noqa: E402
from bioprop import rules as rule_registry  # noqa: E402
from bioprop.errors import BioPropError  # noqa: E402

ANCHORS = REPO.parent / "shared" / "anchors.md"
PUBLISHED = HERE / "published.json"
#: Where the tables say their published numbers come from, whether read from the anchors or from the copy (the
#: same words either way, so that a table does not change with the machine it is made on).
PUBLISHED_FROM = "benchmarks/published.json, the project's anchors"
README = REPO / "README.md"
HEARTBEAT_S = 60.0  # seconds between progress lines while a benchmark runs
TAIL_LINES = 15  # lines of a failed benchmark's output kept in its record
ANCHORS_SECTION = "## Fashion-MNIST"
# Accuracy suites run on the network of a published source: suite -> the start of that row's source cell.
PUBLISHED_FOR = {"lenet": "BioTorch Benchmarks.md", "pc-mlp": "PCX tuning configs"}
# Per accuracy suite: the reference gradient's name, the labels of the weight tensors whose final angle is shown
# (in the network's order) and whether the last (output) layer's is among them; a run whose tensors do not match
# the labels in number shows the tensors' own names.
ANGLES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "mlp": ("backprop", ("layer 1", "layer 2"), False),
    "lenet": ("backprop", ("conv1", "conv2", "conv3", "fc1"), False),
    "pc-mlp": ("backprop", ("layer 1", "layer 2", "layer 3", "output"), True),
    "pc-lenet": ("backprop", ("conv1", "conv2", "conv3", "fc1", "fc2"), True),
    "microcircuit": ("backprop", ("hidden", "output"), True),
    "ep-mlp": ("BPTT", ("W₀", "W₁"), True),
    "ep-conv": ("BPTT", ("W₀", "W₁", "W₂"), True),
    "tp-mlp": ("backprop", ("layer 1", "layer 2"), False),
}
MARK = re.compile(r"<!-- (/?)bench:([A-Za-z0-9_.-]+) -->")


# ------------------------------------------------------------------------------------------------ the benchmarks


@dataclass
class Options:
    """What ``run`` was asked for: the output folder, seeds, quick mode, torch threads, CPUs to pin to (``taskset
    -c``), anchor paths by option name (``biotorch_python``, ``laborieux``, ``pcx_python``, ``snntorch_python``,
    ``norse_python``) and the Fashion-MNIST folder."""

    out: Path
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    quick: bool = False
    threads: int = 1
    cpus: str | None = None
    jobs: int = 1  # accuracy suites: runs side by side, each in a worker process (accuracy_*.py --jobs)
    anchors: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None
    invocation: str = ""  # the suite.py command line that ran the benchmarks, as shown above their tables


@dataclass
class Command:
    """One subprocess of a benchmark: its argv (pinning and interpreter included), the environment variables it
    sets, and where the script writes its ``--json`` (None for the accuracy suites, read from run directories)."""

    argv: list[str]
    env: dict[str, str]
    json: Path | None = None

    def shown(self) -> str:
        """The command as one types it in the repository root: paths inside it relative, ``VAR=value`` first."""
        env = [f"{key}={value}" for key, value in self.env.items()]
        return " ".join(shlex.quote(part) for part in env + [shown_path(arg) for arg in self.argv])


@dataclass(frozen=True)
class Bench:
    """A benchmark of the suite: its kind (``accuracy`` or ``speed``), what it measures, its commands for given
    options, how its results are read after they ran, and its table."""

    name: str
    kind: str
    about: str
    commands: Callable[[Options], list[Command]]
    collect: Callable[[Options, list[Command]], dict]
    render: Callable[[dict, list[dict], str], list[str]]  # (result, published rows, where they come from) -> lines


def shown_path(arg: str) -> str:
    """``arg`` relative to the repository root when it is a path inside it."""
    path = Path(arg)
    if path.is_absolute():
        try:
            return str(path.relative_to(REPO))
        except ValueError:
            return arg
    return arg


def python_for(opts: Options, anchor: str | None = None) -> str:
    """The interpreter: the anchor's venv when one is given for this benchmark (it imports the anchor), else ours."""
    return opts.anchors.get(anchor) if anchor and opts.anchors.get(anchor) else sys.executable


def script_command(opts: Options, script: str, args: list[str], json_name: str | None, anchor: str | None = None):
    """``[taskset -c CPUS] PYTHON benchmarks/SCRIPT ARGS [--json OUT/suite/raw/JSON_NAME]`` with OMP_NUM_THREADS."""
    pin = ["taskset", "-c", opts.cpus] if opts.cpus else []
    out = opts.out / "suite" / "raw" / json_name if json_name else None
    argv = [*pin, python_for(opts, anchor), str(HERE / script), *args, *(["--json", str(out)] if out else [])]
    return Command(argv, {"OMP_NUM_THREADS": str(opts.threads)}, out)


def fmnist_folder(opts: Options) -> Path:
    """Where the Fashion-MNIST runs go: ``OUT/fmnist``, or ``OUT/fmnist-quick`` for the one-epoch versions (another
    folder, as accuracy_fmnist refuses a run directory made with other settings)."""
    return opts.out / ("fmnist-quick" if opts.quick else "fmnist")


def fmnist_commands(suite: str) -> Callable[[Options], list[Command]]:
    def commands(opts: Options) -> list[Command]:
        seeds = opts.seeds[:1] if opts.quick else opts.seeds
        args = ["--suite", suite, "--seeds", *map(str, seeds), "--out", str(fmnist_folder(opts))]
        args += ["--epochs", "1"] if opts.quick else []
        args += ["--data-dir", opts.data_dir] if opts.data_dir else []
        args += ["--jobs", str(opts.jobs)] if opts.jobs > 1 else []
        return [script_command(opts, "accuracy_fmnist.py", args, None)]

    return commands


def fmnist_collect(suite: str) -> Callable[[Options, list[Command]], dict]:
    def collect(opts: Options, commands: list[Command]) -> dict:
        seeds = opts.seeds[:1] if opts.quick else opts.seeds
        return collect_fmnist(suite, fmnist_folder(opts) / suite, seeds, 1 if opts.quick else None)

    return collect


def torch_of(output: dict) -> str | None:
    """The torch version a speed script's JSON records (its keys differ from script to script), or None."""
    found = output.get("torch") or output.get("config", {}).get("torch") or output.get("versions", {}).get("torch")
    return found if isinstance(found, str) else None


def speed_collect(opts: Options, commands: list[Command]) -> dict:
    """The scripts' ``--json`` outputs, in command order."""
    outputs = []
    for command in commands:
        if command.json is None or not command.json.is_file():
            raise BioPropError(f"the benchmark wrote no {shown_path(str(command.json))}")
        outputs.append(json.loads(command.json.read_text()))
    return {"outputs": outputs}


def speed_fa_commands(opts: Options) -> list[Command]:
    budget = ["--budget", "15"] if opts.quick else ["--budget", "150"]
    args = [*budget, "--threads", str(opts.threads)]
    return [script_command(opts, "speed_fa.py", args, "speed-fa.json", anchor="biotorch_python")]


def speed_tp_commands(opts: Options) -> list[Command]:
    budget = ["--repeats", "5", "--budget", "5", "--inner", "2"] if opts.quick else []
    return [script_command(opts, "speed_tp.py", [*budget, "--threads", str(opts.threads)], "speed-tp.json")]


TEMPORAL_ARCHS = ("lsnn:50+50", "lif:100")


def speed_temporal_commands(opts: Options) -> list[Command]:
    repeats = ["--repeats", "2", "--batch", "16"] if opts.quick else ["--repeats", "5"]
    return [script_command(opts, "speed_temporal.py", ["--arch", arch, *repeats, "--threads", str(opts.threads)],
                           f"speed-temporal-{i}.json") for i, arch in enumerate(TEMPORAL_ARCHS)]  # fmt: skip


def speed_ep_commands(opts: Options) -> list[Command]:
    limits = ["--budget", "20", "--sanity-steps", "10"] if opts.quick else ["--budget", "150", "--repeats", "300"]
    labo = ["--laborieux", opts.anchors["laborieux"]] if opts.anchors.get("laborieux") else []
    return [script_command(opts, "speed_ep.py", [*labo, *limits, "--threads", str(opts.threads)], "speed-ep.json")]


def speed_pc_commands(opts: Options) -> list[Command]:
    limits = ["--budget", "5", "--repeats", "5", "--warmup", "2", "--sanity-steps", "5"] if opts.quick else [
        "--budget", "75", "--compile"]  # fmt: skip
    pcx = ["--pcx-python", opts.anchors["pcx_python"]] if opts.anchors.get("pcx_python") else []
    return [script_command(opts, "speed_pc.py", [*pcx, *limits, "--threads", str(opts.threads)], "speed-pc.json")]


def speed_snn_commands(opts: Options) -> list[Command]:
    limits = ["--repeats", "1", "--batch", "8", "--cues", "1", "--sanity-steps", "50"] if opts.quick else [
        "--repeats", "5"]  # fmt: skip
    anchors = [part for flag, key in (("--snntorch-python", "snntorch_python"), ("--norse-python", "norse_python"))
               if opts.anchors.get(key) for part in (flag, opts.anchors[key])]  # fmt: skip
    return [script_command(opts, "speed_snn.py", [*anchors, *limits, "--threads", str(opts.threads)], "speed-snn.json")]


def scaling_temporal_commands(opts: Options) -> list[Command]:
    """Short sequences, one call per case and batch 8 with ``--quick``, in their own folder (``OUT/scaling-quick``)."""
    if opts.quick:
        args = ["--lengths", "100,300", "--repeats", "1", "--batch", "8", "--out", str(opts.out / "scaling-quick")]
    else:
        args = ["--repeats", "3", "--clock", "cpu", "--out", str(opts.out / "scaling")]
    return [script_command(opts, "scaling_temporal.py", [*args, "--threads", str(opts.threads)],
                           "scaling-temporal.json")]  # fmt: skip


def temporal_commands(suite: str) -> Callable[[Options], list[Command]]:
    """accuracy_temporal.py's suite ``suite``; ``--quick``: one seed, one epoch, in ``OUT/temporal-quick`` (the
    script would retrain a run directory made with another budget)."""

    def commands(opts: Options) -> list[Command]:
        seeds = opts.seeds[:1] if opts.quick else opts.seeds
        folder = opts.out / ("temporal-quick" if opts.quick else "temporal")
        args = ["--suite", suite, "--seeds", ",".join(map(str, seeds)), "--out", str(folder)]
        args += ["--epochs", "1"] if opts.quick else []
        args += ["--jobs", str(opts.jobs)] if opts.jobs > 1 else []
        return [script_command(opts, "accuracy_temporal.py", [*args, "--threads", str(opts.threads)],
                               f"temporal-{suite}.json")]  # fmt: skip

    return commands


# ------------------------------------------------------------------------------------------- reading the results


def final_angles(alignment: dict[str, list[float | None]] | None) -> dict[str, float]:
    """Each weight tensor's last measured angle (degrees); biases left out when weights exist."""
    last = {name: next((v for v in reversed(values or []) if v is not None), None)
            for name, values in (alignment or {}).items()}  # fmt: skip
    last = {name: value for name, value in last.items() if value is not None}
    weights = {name: value for name, value in last.items() if not name.endswith(".bias")}
    return weights or last


def collect_fmnist(suite: str, folder: Path, seeds: Sequence[int], epochs: int | None) -> dict:
    """Per entry of the accuracy suite ``suite``, one record per seed from ``folder/ENTRY-sSEED/summary.json``:
    status, final and best test accuracy (fractions), epochs, seconds per epoch, final angle per weight tensor,
    arch and torch version. A run directory that is missing is listed under ``missing``; one whose rule or epoch
    budget is not the suite's (``epochs`` overrides the budget) is a :class:`BioPropError` naming it."""
    if suite not in accuracy_fmnist.SUITES:
        raise BioPropError(f"unknown accuracy suite {suite!r}; known: {', '.join(accuracy_fmnist.SUITES)}")
    budget, entries = accuracy_fmnist.SUITES[suite]
    want_epochs = epochs or budget["epochs"]
    result: dict[str, Any] = {"suite": suite, "folder": shown_path(str(folder.resolve())), "budget": budget,
                              "epochs": want_epochs, "options": entries, "entries": {}, "missing": []}  # fmt: skip
    for entry in entries:
        runs = []
        for seed in seeds:
            run_dir = folder / f"{entry.replace('/', '-')}-s{seed}"
            summary_path = run_dir / "summary.json"
            if not summary_path.is_file():
                result["missing"].append(shown_path(str(run_dir.resolve())))
                continue
            summary = json.loads(summary_path.read_text())
            if summary.get("rule") != entry.split("/")[0] or summary.get("epochs") != want_epochs:
                raise BioPropError(f"{shown_path(str(run_dir.resolve()))} is not suite {suite}'s {entry} run "
                                   f"(rule {summary.get('rule')!r}, epochs {summary.get('epochs')!r}, wanted "
                                   f"{entry.split('/')[0]!r} and {want_epochs})")  # fmt: skip
            runs.append({
                "seed": seed, "status": summary.get("status"), "test_accuracy": summary.get("test_accuracy"),
                "best_test_accuracy": summary.get("best_test_accuracy"), "epochs": summary.get("epochs"),
                "epochs_done": summary.get("epochs_done"), "epoch_seconds": summary.get("epoch_seconds") or [],
                "final_angles": final_angles(summary.get("alignment_deg")), "arch": summary.get("arch"),
                "torch": summary.get("torch_version"), "finished_at": summary_path.stat().st_mtime,
            })  # fmt: skip
        if runs:
            result["entries"][entry] = runs
    if not result["entries"]:
        raise BioPropError(f"no runs of suite {suite} in {shown_path(str(folder.resolve()))}")
    return result


# ----------------------------------------------------------------------------------------- the machine record


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model from the text of /proc/cpuinfo (``model name``; ``Model`` or ``Hardware`` on ARM)."""
    for key in ("model name", "Model", "Hardware"):
        for line in cpuinfo.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(threads: int, cpus: str | None, cpuinfo: Path = Path("/proc/cpuinfo"), jobs: int = 1) -> dict:
    """The machine record taken before a benchmark: CPU model, cores, pinned CPUs, torch version, torch threads,
    the load averages (1, 5, 15 min) and the date (UTC, ISO 8601). :func:`finish` adds the after part."""
    import torch

    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    return {"cpu": cpu_model(text), "cores": os.cpu_count(), "cpus": cpus, "torch": torch.__version__,
            "threads": threads, **({"jobs": jobs} if jobs > 1 else {}), "load_before": list(os.getloadavg()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def finish(record: dict, started: float) -> None:
    record["load_after"] = list(os.getloadavg())
    record["seconds"] = round(time.perf_counter() - started, 1)


def machine_line(m: dict | None) -> str:
    """One line saying where and when a result was measured, e.g. ``Machine: Intel Xeon, 2 cores (pinned to CPU 1),
    torch 2.13.0+cpu, 1 thread; load average (1 min) 0.5 before, 1.0 after; 2026-12-01 12:00 UTC; 73 s.``
    Fields a record lacks (imported results) are left out, and the line says where it was imported from."""
    if not m:
        return "Machine: not recorded."
    parts = []
    if m.get("cpu") or m.get("cores"):
        pinned = f" (pinned to CPU {m['cpus']})" if m.get("cpus") else ""
        cores = f"{m['cores']} cores{pinned}" if m.get("cores") else ""
        parts.append(", ".join(part for part in (m.get("cpu"), cores) if part))
    what = [f"torch {m['torch']}"] if m.get("torch") else []
    if m.get("threads"):
        what.append(f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}")
        if m.get("jobs", 1) > 1:  # an accuracy suite's runs side by side
            what[-1] += f" per run, {m['jobs']} runs at a time"
    parts += [", ".join(what)] if what else []
    before, after = m.get("load_before"), m.get("load_after")
    if before and after:
        parts.append(f"load average (1 min) {before[0]:.1f} before, {after[0]:.1f} after")
    if m.get("date"):
        when = datetime.datetime.fromisoformat(m["date"]).astimezone(datetime.timezone.utc)
        parts.append(when.strftime("%Y-%m-%d %H:%M UTC"))
    if m.get("seconds") is not None:
        parts.append(f"{m['seconds']:.0f} s")
    if m.get("imported_from"):
        parts.append(f"imported from {m['imported_from']}, the rest of the machine not recorded")
    return "Machine: " + "; ".join(parts) + "."


# ---------------------------------------------------------------------------------------------- running them


def suite_dir(out: Path) -> Path:
    return out / "suite"


def read_record(out: Path, name: str) -> dict | None:
    path = suite_dir(out) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise BioPropError(f"cannot read {path}: {exc}") from None


def write_record(out: Path, record: dict, suffix: str = "") -> Path:
    """Write ``record`` to ``OUT/suite/NAME{suffix}.json`` through a temporary file; returns the path."""
    path = suite_dir(out) / f"{record['name']}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    tmp.replace(path)
    return path


def accuracy_runs(bench: Bench, opts: Options) -> list[tuple[Path, int]] | None:
    """The run directories an accuracy suite (``fmnist-*`` or ``temporal-*``) trains, each with the epochs it is
    given, or None for any other benchmark."""
    seeds = opts.seeds[:1] if opts.quick else opts.seeds
    if bench.name.startswith("fmnist-"):
        suite = bench.name.removeprefix("fmnist-")
        budget, entries = accuracy_fmnist.SUITES[suite][:2]
        folder, names = fmnist_folder(opts) / suite, [entry.replace("/", "-") for entry in entries]
    elif bench.name.startswith("temporal-") and bench.name.removeprefix("temporal-") in accuracy_temporal.SUITES:
        suite = bench.name.removeprefix("temporal-")
        budget, entries = accuracy_temporal.SUITES[suite][:2]
        folder, names = opts.out / ("temporal-quick" if opts.quick else "temporal") / suite, list(entries)
    else:
        return None
    epochs = 1 if opts.quick else budget["epochs"]
    return [(folder / f"{name}-s{seed}", epochs) for name in names for seed in seeds]


def heartbeat_progress(bench: Bench, opts: Options) -> Callable[[], str]:
    """What an accuracy suite's heartbeat line adds (:class:`runpool.RunProgress`, e.g. ``, 2/12 runs finished,
    310/1200 epochs, about 3.1 h left``), counted from the start of this command; empty for other benchmarks."""
    runs = accuracy_runs(bench, opts)
    if runs is None:
        return lambda: ""
    counter = runpool.RunProgress(runs)
    return lambda: ", " + counter()


def execute(command: Command, log_path: Path, label: str, progress: Callable[[], str]) -> int:
    """Run ``command`` from the repository root, its output (stdout and stderr) appended to ``log_path`` and echoed
    to stderr prefixed with ``label``; a progress line every :data:`HEARTBEAT_S` seconds; its exit status."""
    env = {**os.environ, **command.env, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {command.shown()}\n")
        log.flush()
        with subprocess.Popen(command.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:  # fmt: skip

            def pump() -> None:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    print(f"  {label} | {line}", end="", file=sys.stderr, flush=True)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                while True:
                    try:
                        status = proc.wait(timeout=HEARTBEAT_S)
                        break
                    except subprocess.TimeoutExpired:
                        minutes = (time.perf_counter() - started) / 60
                        print(f"{label}: running, {minutes:.1f} min{progress()}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait()
                raise
            reader.join()
    return status


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_bench(bench: Bench, opts: Options, force: bool = False) -> dict:
    """Run one benchmark (or reuse its stored result) and store its record; see the module docstring."""
    commands = bench.commands(opts)
    shown = [command.shown() for command in commands]
    old = read_record(opts.out, bench.name)
    if old and not force and old.get("status") == "finished" and old.get("commands") == shown:
        print(f"{bench.name}: reusing the stored result of {old['machine'].get('date', '?')}", file=sys.stderr)
        return old
    folder = suite_dir(opts.out)
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{bench.name}.log"
    log_path.write_text("")
    for command in commands:  # a stale output must not pass for this run's
        if command.json is not None and command.json.exists():
            command.json.unlink()
    jobs = opts.jobs if bench.kind == "accuracy" else 1
    record: dict[str, Any] = {"name": bench.name, "kind": bench.kind, "about": bench.about, "quick": opts.quick,
                              "source": "run", "commands": shown, "suite_command": opts.invocation,
                              "status": "running", "result": None,
                              "error": None, "log": shown_path(str(log_path.resolve())),
                              "machine": machine(opts.threads, opts.cpus, jobs=jobs)}  # fmt: skip
    started = time.perf_counter()
    print(f"{bench.name}: {bench.about}", file=sys.stderr, flush=True)
    progress = heartbeat_progress(bench, opts)
    for command in commands:
        print(f"{bench.name}: $ {command.shown()}", file=sys.stderr, flush=True)
        status = execute(command, log_path, bench.name, progress)
        if status != 0:
            record.update(status="failed", error=f"exit status {status}; the log ends:\n{tail(log_path)}")
            break
    if record["status"] == "running":
        try:
            record["result"] = bench.collect(opts, commands)
            bench.render(record["result"], [], "")  # a result its table cannot be made from fails here, not later
            record["status"] = "finished"
            ran = {torch_of(output) for output in record["result"].get("outputs", [])} - {None}
            if ran:  # the interpreter that ran them (an anchor's venv) may hold another torch than this one
                record["machine"]["torch"] = ", ".join(sorted(ran))
        except (BioPropError, OSError, ValueError, KeyError) as exc:
            record.update(status="failed", error=f"reading the results: {exc}")
    finish(record["machine"], started)
    if record["status"] != "finished" and old and old.get("status") == "finished":
        # a failed rerun never replaces a finished result: its record goes beside it
        failed_path = write_record(opts.out, record, ".failed")
        print(f"{bench.name}: failed in {record['machine']['seconds']:.0f} s; the stored result of "
              f"{old['machine'].get('date', '?')} is kept ({shown_path(str(failed_path))} has this run's record)",
              file=sys.stderr, flush=True)  # fmt: skip
        return record
    write_record(opts.out, record)
    print(f"{bench.name}: {record['status']} in {record['machine']['seconds']:.0f} s", file=sys.stderr, flush=True)
    return record


# ---------------------------------------------------------------------------------------------- published numbers


def _published_value(cell: str, where: str) -> tuple[float, bool] | None:
    """A cell of the anchors table: None when empty, else (value, approximate)."""
    text = cell.strip()
    if not text:
        return None
    approx = text.startswith("≈")
    try:
        return float(text.lstrip("≈~ ").rstrip("%").strip()), approx
    except ValueError:
        raise BioPropError(f"{where}: not a number in a rule's column: {text!r}") from None


def parse_anchors(text: str, where: str = "anchors.md") -> list[dict]:
    """The rows of the Fashion-MNIST table of anchors.md (the section whose heading starts with
    :data:`ANCHORS_SECTION`): per row its ``source``, ``network`` (network / budget), ``values`` {rule: accuracy
    in %} for the columns that name a registered rule (BP, FA, DFA, uSF, brSF, frSF, PC), the rules whose value is
    approximate (``≈``), and ``other``. Raises :class:`BioPropError` when the section or its table is missing or a
    rule's cell is not a number."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(ANCHORS_SECTION)), None)
    if start is None:
        raise BioPropError(f"{where} has no section {ANCHORS_SECTION!r}")
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.strip().startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    if len(table) < 3:
        raise BioPropError(f"{where}: the section {ANCHORS_SECTION!r} holds no table")
    header = [cell.lower() for cell in table[0]]
    if header[:2] != ["source", "network / budget"]:
        raise BioPropError(f"{where}: the Fashion-MNIST table must start with the columns source, network / budget; "
                           f"it starts with {', '.join(table[0][:2])}")  # fmt: skip
    known = set(rule_registry.names())
    rows = []
    for cells in table[2:]:
        cells = cells + [""] * (len(header) - len(cells))
        row: dict[str, Any] = {"source": cells[0], "network": cells[1], "values": {}, "approx": []}
        for name, cell in zip(header[2:], cells[2:], strict=False):
            if name in known:
                value = _published_value(cell, f"{where}, row {cells[0]!r}, column {name}")
                if value is not None:
                    row["values"][name] = value[0]
                    if value[1]:
                        row["approx"].append(name)
            elif cell:
                row[name] = cell
        rows.append(row)
    return rows


def read_published(anchors: Path = ANCHORS, copy: Path = PUBLISHED) -> tuple[list[dict], str]:
    """The published rows and where they come from: ``anchors`` when it exists, else the repository's copy."""
    if anchors.is_file():
        return parse_anchors(anchors.read_text(encoding="utf-8"), str(anchors)), PUBLISHED_FROM
    if copy.is_file():
        return json.loads(copy.read_text(encoding="utf-8"))["rows"], PUBLISHED_FROM
    return [], "nowhere (neither ../shared/anchors.md nor benchmarks/published.json is there)"


def published_row(suite: str, rows: list[dict]) -> dict | None:
    prefix = PUBLISHED_FOR.get(suite)
    return next((row for row in rows if prefix and row["source"].startswith(prefix)), None)


# ------------------------------------------------------------------------------------------------------ tables


def mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    """``mean ± sample std`` of ``values`` × ``scale``, two decimals; the value alone for one; ``–`` for none."""
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) * scale:.2f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def angle_cell(suite: str, runs: list[dict]) -> tuple[str, str]:
    """(column label, cell): the mean over ``runs`` of each shown weight tensor's final angle, `` / ``-joined."""
    reference, labels, with_output = ANGLES.get(suite, ("the reference", (), True))
    names = list(runs[0]["final_angles"]) if runs else []
    shown = names if with_output else names[:-1]
    means = [statistics.fmean(r["final_angles"][n] for r in runs if n in r["final_angles"]) for n in shown]
    label = " / ".join(labels if len(labels) == len(shown) else shown)
    return f"angle to {reference} at the end, {label} (°)", " / ".join(f"{m:.1f}" for m in means) or "–"


def render_fmnist(result: dict, published: list[dict], published_from: str) -> list[str]:
    """An accuracy suite's table: per entry, final and best-epoch test accuracy (mean ± std over finished seeds,
    in %), the last epoch's accuracy per seed, the final update angle per weight tensor, seconds per epoch (mean over
    every epoch of the finished runs), and the published accuracy where a source on the same network has one."""
    suite, entries = result["suite"], result["entries"]
    source = published_row(suite, published)
    archs = {runs[0]["arch"] for runs in entries.values() if runs}
    angle_label = ""
    rows = []
    for entry, runs in entries.items():
        done = [r for r in runs if r["status"] == "finished"]
        label, angles = angle_cell(suite, done)
        angle_label = angle_label or label
        per_seed = ", ".join(f"{100 * r['test_accuracy']:.2f}" if r["status"] == "finished" else
                             f"{r['status'] or 'unfinished'} (seed {r['seed']})" for r in runs)  # fmt: skip
        seconds = [s for r in done for s in r["epoch_seconds"] if s is not None]
        row = [entry, *([runs[0]["arch"]] if len(archs) > 1 else []),
               mean_std([r["test_accuracy"] for r in done]), mean_std([r["best_test_accuracy"] for r in done]),
               per_seed, angles, f"{statistics.fmean(seconds):.1f}" if seconds else "–"]  # fmt: skip
        if source:
            rule = entry.split("/")[0]
            value = source["values"].get(rule)
            row.append("–" if value is None else f"{'≈ ' if rule in source['approx'] else ''}{value:.2f}")
        rows.append(row)
    header = ["rule", *(["network"] if len(archs) > 1 else []), "test acc (%)", "best epoch (%)",
              "per seed, last epoch (%)", angle_label or "angle (°)", "s/epoch",
              *([f"published (%), {source['source'].split(' (')[0]}"] if source else [])]  # fmt: skip
    lines = markdown(header, rows)
    done_seeds = sorted({r["seed"] for runs in entries.values() for r in runs})
    budget = result["budget"]
    notes = [f"Seed{'s' if len(done_seeds) > 1 else ''} {', '.join(map(str, done_seeds))}; mean ± sample standard "
             f"deviation over the finished runs; {result['epochs']} epoch{'s' if result['epochs'] != 1 else ''} of "
             f"{budget['arch']}, "
             f"{budget['optimizer']} lr {budget['lr']:g}, batch {budget['batch_size']}."]  # fmt: skip
    options = [f"{entry} {', '.join(f'{k}={v}' for k, v in opts.items())}"
               for entry, opts in result.get("options", {}).items() if opts and entry in entries]  # fmt: skip
    if options:
        notes.append(f"Rule options: {'; '.join(options)}.")
    if source:
        notes.append(f"Published: {source['source']}, {source['network']} (from {published_from}).")
    if result.get("missing"):
        notes.append(f"Not run yet: {', '.join(result['missing'])}.")
    return [*lines, "", *notes]


def render_speed_fa(result: dict, published: list[dict], published_from: str) -> list[str]:
    """speed_fa.py's table: ours ms/step median [IQR] per rule, the paired ratio to our bp, GFLOP/s and the share
    of the measured matmul peak; BioTorch's ms/step and the paired ratio to it when BioTorch was timed."""
    out = result["outputs"][0]
    res, cfg = out["results"], out["config"]
    have = bool(cfg.get("biotorch"))
    rows = []
    for name, r in res.items():
        if not name.startswith("ours/"):
            continue
        rule = name.split("/", 1)[1]
        them = res.get(f"biotorch/{rule}")
        rows.append([rule, f"{r['median_ms']:.2f} [{r['q1_ms']:.2f}–{r['q3_ms']:.2f}]",
                     *([f"{them['median_ms']:.2f}" if them else "–"] if have else []),
                     f"{r['paired_ratio_to_bp']:.3f}",
                     *([f"{r['paired_ratio_to_biotorch']:.3f}" if them else "–"] if have else []),
                     f"{r['gflops']:.1f} ({r['pct_of_peak']:.0f} %)"])  # fmt: skip
    header = ["rule", "ours ms/step, median [IQR]", *(["BioTorch ms/step"] if have else []),
              "ours / our BP (paired)", *(["ours / BioTorch (paired)"] if have else []),
              "GFLOP/s (% of the matmul peak)"]  # fmt: skip
    notes = [f"784-{cfg['hidden']}-10 ReLU MLP, batch {cfg['batch']}, float32, {cfg['threads']} thread(s); "
             f"{cfg['repeats']} round-robin repetitions of {cfg['inner']} steps; a step is "
             f"{out['step_flops'] / 1e9:.3f} GFLOP; peak = a 2048×2048 float32 matmul, "
             f"{out['gemm_peak_gflops']:.0f} GFLOP/s in the same run."]  # fmt: skip
    if not have:
        notes.append("BioTorch: not measured (`suite.py run --biotorch-python PATH`, its venv: benchmarks/README.md).")
    return [*markdown(header, rows), "", *notes]


def render_speed_tp(result: dict, published: list[dict], published_from: str) -> list[str]:
    """speed_tp.py's table: ms/step median [IQR], CPU time / wall time, paired ratios to bp of wall and CPU time."""
    out = result["outputs"][0]
    cfg = out["config"]
    rows = [[name, f"{r['median_ms']:.2f} [{r['q1_ms']:.2f}–{r['q3_ms']:.2f}]", f"{r['cpu_per_wall']:.2f}",
             f"{r['over_bp']:.2f}", f"{r['over_bp_cpu']:.2f}"] for name, r in out["results"].items()]  # fmt: skip
    header = ["rule", "ms/step, median [IQR]", "CPU/wall", "÷ bp (paired)", "÷ bp, CPU time (paired)"]
    notes = [f"tanh MLP 784-{cfg['hidden'].replace('x', '-')}-10, batch {cfg['batch']}, Adam, "
             f"{cfg['feedback_iterations']} feedback iteration(s) per batch, {cfg['threads']} thread(s); "
             f"{cfg['repeats']} round-robin repetitions of {cfg['inner']} steps."]  # fmt: skip
    return [*markdown(header, rows), "", *notes]


def render_speed_ep(result: dict, published: list[dict], published_from: str) -> list[str]:
    """speed_ep.py's table: ms/step median [IQR], the paired ratios to our bp and to Laborieux et al.'s EP."""
    out = result["outputs"][0]
    cfg, res = out["config"], out["results"]
    have = out.get("laborieux") is not None
    ratio = lambda v: "1" if v is None else f"{v:.2f}"  # noqa: E731 (None: the contender itself)
    labels = {"bp": f"bp (feedforward 784-{cfg['hidden']}-10)", "ep-untraced": "ep, `trace_every=0`",
              "laborieux": "Laborieux's EP (`thirdphase`)", "laborieux-bp": "Laborieux's backprop"}  # fmt: skip
    rows = [[labels.get(name, name), f"{r['median_ms']:.2f} [{r['q1_ms']:.2f}–{r['q3_ms']:.2f}]",
             ratio(r["paired_to_bp"]), *([ratio(r["paired_to_laborieux"])] if have else [])]
            for name, r in res.items()]  # fmt: skip
    header = ["contender", "ms/step, median [IQR]", "÷ our BP (paired)", *(["÷ Laborieux (paired)"] if have else [])]
    notes = [f"784-{cfg['hidden']}-10 hard sigmoid, batch {cfg['batch']}, T1 = {cfg['t1']}, T2 = {cfg['t2']}, "
             f"symmetric ±β = {cfg['beta']}, Adam, {cfg['threads']} thread(s); {cfg['repeats']} round-robin "
             f"repetitions of {cfg['inner']} steps, stopped by the {cfg['stopped_by']}."]  # fmt: skip
    if have:
        agree = max(out["agreement"].values())
        notes.append(f"Laborieux et al.'s code at commit {(out['laborieux'].get('commit') or 'unknown')[:7]}; our "
                     f"ep update against their gradient: max relative error {agree:.1e}.")  # fmt: skip
    else:
        notes.append("Laborieux et al.'s code: not measured (`suite.py run --laborieux PATH`, benchmarks/README.md).")
    return [*markdown(header, rows), "", *notes]


def render_speed_temporal(result: dict, published: list[dict], published_from: str) -> list[str]:
    """speed_temporal.py's table, one row per network: seconds per update of each rule and the paired ratio of
    each other rule to bptt."""
    outputs = result["outputs"]
    names = list(outputs[0]["results"])
    others = [n for n in names if n != "bptt"]
    rows = []
    for out in outputs:
        res, cfg = out["results"], out["config"]
        rows.append([cfg["arch"], f"{out['load_avg_1min'][0]:.1f}–{out['load_avg_1min'][1]:.1f}",
                     *(f"{res[n]['median_s']:.2f}" for n in names),
                     *(f"{res[n]['paired_to_bptt']:.2f}" for n in others if "bptt" in res)])  # fmt: skip
    header = ["network", "load", *(f"`{n}` s/update" for n in names),
              *(f"{n} ÷ bptt (paired)" for n in others if "bptt" in names)]  # fmt: skip
    cfg = outputs[0]["config"]
    notes = [f"Cue accumulation, batch {cfg['batch']}, T = {cfg['steps']}, {cfg['threads']} thread(s), "
             f"{cfg['repeats']} repetitions; one update = `rule.grads(x, y)`."]  # fmt: skip
    return [*markdown(header, rows), "", *notes]


def iqr_cell(median: float, q1: float, q3: float) -> str:
    return f"{median:.2f} [{q1:.2f}–{q3:.2f}]"


def pc_label(name: str, cfg: dict) -> str:
    """A speed_pc.py contender's row label: ``ours/pc-se`` → ours `pc`, se; ``pcx/ipc-se-adamw`` → PCX iPC, se,
    AdamW weight steps; ``ours/pc-se+compile(rule)`` → ours `pc` se, `compile=true`."""
    system, rule = name.split("/", 1)
    base, _, compiled = rule.partition("+")
    ipc = cfg.get("ipc") or {}
    ipc_net = f"784-{str(ipc.get('hidden', '?')).replace('x', '-')}-10, batch {ipc.get('batch', '?')}"
    if system == "ours":
        if compiled:
            how = "`compile=true`" if compiled == "compile(rule)" else "whole step under torch.compile"
            return f"ours `{base.split('-')[0]}` {base.split('-', 1)[1]}, {how}"
        if base == "bp":
            return f"ours `bp` (784-{cfg['hidden'].replace('x', '-')}-10)"
        if base == "bp-ipc":
            return f"ours `bp` ({ipc_net})"
        kind, _, output = base.partition("-")
        return f"ours `{kind}`, {output}" + (f" ({ipc_net})" if kind == "ipc" else "")
    if base == "bp":
        return "PCX bp (plain JAX)"
    if base == "bp-ipc":
        return f"PCX bp ({ipc_net})"
    if base.startswith("ipc-"):
        output = base.split("-")[1]
        return f"PCX iPC, {output}, " + ("AdamW weight steps (its examples)" if base.endswith("-adamw") else
                                         "SGD weight steps")  # fmt: skip
    return f"PCX pc, {base.split('-', 1)[1]}" if base.startswith("pc-") else f"PCX {base}"


def render_speed_pc(result: dict, published: list[dict], published_from: str) -> list[str]:
    """speed_pc.py's table: per contender ms/step median [IQR], the paired ratio to the same side's BP on the same
    network, ours ÷ PCX's same contender (paired; ipc also against PCX's AdamW iPC) and CPU time / wall time. PCX's
    column is left out, with a note, when PCX was not timed."""
    out = result["outputs"][0]
    cfg, res = out["config"], out["results"]
    have = any(name.startswith("pcx/") for name in res)
    dash = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731

    def to_pcx(r: dict) -> str:
        cell = dash(r.get("paired_to_pcx"))
        if r.get("paired_to_pcx_adamw") is not None:
            cell += f" ({r['paired_to_pcx_adamw']:.2f} to PCX's AdamW iPC)"
        return cell

    rows = [[pc_label(name, cfg), iqr_cell(r["median_ms"], r["q1_ms"], r["q3_ms"]), dash(r.get("paired_to_bp")),
             *([to_pcx(r)] if have else []), f"{r['cpu_per_wall']:.2f}"] for name, r in res.items()]  # fmt: skip
    header = ["contender", "ms/step, median [IQR]", "÷ same side's BP (paired)", *(["÷ PCX (paired)"] if have else []),
              "CPU/wall"]  # fmt: skip
    pinned = cfg.get("pinned_cpus")
    notes = [f"pc: MLP 784-{cfg['hidden'].replace('x', '-')}-10 GELU (PCX's: {cfg['pcx_gelu']}), batch {cfg['batch']},"
             f" T = {cfg['steps']} inference steps of γ = {cfg['gamma']:g}, then one AdamW step (lr {cfg['lr']:g}, "
             f"weight decay {cfg['weight_decay']:g}, {'unfused' if cfg['unfused_adamw'] else 'fused'} on our side); "
             f"{cfg['threads']} thread(s) on each side, "
             + (f"pinned to CPU(s) {','.join(map(str, pinned))}" if pinned else "not pinned")
             + f"; {cfg['repeats']} round-robin repetitions of {cfg['inner']} steps."]  # fmt: skip
    if cfg.get("ipc"):
        notes.append(f"ipc: its weights stepped at every inference step, η = {cfg['ipc']['weight_lr']:g}; PCX's iPC "
                     "steps its weights by SGD (the arithmetic of ours) or by AdamW (its examples).")  # fmt: skip
    versions = ", ".join(f"{k} {v}" for k, v in out.get("versions", {}).items())
    notes.append(f"Versions: {versions}." if versions else "Versions: not recorded.")
    if not have:
        notes.append("PCX: not measured (`suite.py run --pcx-python PATH`, its venv: benchmarks/README.md).")
    return [*markdown(header, rows), "", *notes]


SNN_LABELS = {"ours/bptt": "ours `bptt`, n_ref = 0", "ours/bptt-nref5": "ours `bptt`, n_ref = 5 (default)",
              "snntorch": "snnTorch {snntorch}", "norse": "Norse {norse} `LIFRecurrent`",
              "norse-box": "Norse {norse} box cell, our equation"}  # fmt: skip
SNN_ANCHORS = {"snntorch": ("snnTorch", "--snntorch-python"), "norse": ("Norse", "--norse-python")}


def render_speed_snn(result: dict, published: list[dict], published_from: str) -> list[str]:
    """speed_snn.py's table: per system s/update median [IQR], the float32 loss and firing rate of the timed update,
    and the paired ratios ours ÷ this (ours with n_ref = 0 and with the default n_ref = 5, wall time; n_ref = 0 by CPU
    time). A library that was not timed has no row, and a note says so."""
    out = result["outputs"][0]
    cfg, res, versions = out["config"], out["results"], out.get("versions", {})
    ours = [name for name in res if name.startswith("ours/")]

    def label(name: str) -> str:
        template = SNN_LABELS.get(name, name)
        return template.format(**{k: versions.get(k, "") for k in ("snntorch", "norse")}).replace("  ", " ")

    rows = []
    for name, r in res.items():
        ratio, by_cpu = r.get("ours_over_this", {}), r.get("ours_over_this_cpu", {})
        rows.append([label(name), iqr_cell(r["median_s"], r["q1_s"], r["q3_s"]), f"{r['loss_f32']:.4f}",
                     f"{r['rate_hz']:.1f}", *(f"{ratio[o]:.2f}" if o in ratio else "–" for o in ours),
                     f"{by_cpu[ours[0]]:.2f}" if ours[0] in by_cpu else "–"])  # fmt: skip
    header = ["contender", "s/update [IQR]", "loss (f32)", "rate (Hz)",
              *(f"{label(o).split(' (')[0]} ÷ this" for o in ours), f"{label(ours[0])} ÷ this, CPU time"]  # fmt: skip
    notes = [f"{cfg['inputs']} inputs → {cfg['hidden']} recurrent LIF → 2 leaky readouts, T = {cfg['steps']}, batch "
             f"{cfg['batch']}, float32, {cfg['threads']} thread(s) on every side; gradient only; {cfg['repeats']} "
             f"round-robin repetitions of {cfg['inner']} update(s); ours ÷ this: paired ratio of the times "
             "(< 1: ours faster)."]  # fmt: skip
    checks = [f"{label(name)} {s['vs_ours']['rel_err']:.1e}" for name, s in out.get("sanity", {}).items()
              if "vs_ours" in s]  # fmt: skip
    if checks:
        notes.append(f"Float64 check on the last {out['sanity_steps']} steps, the gradient's relative error to ours: "
                     f"{', '.join(checks)}.")  # fmt: skip
    for library, (shown, flag) in SNN_ANCHORS.items():
        if not any(name.split("-")[0] == library for name in res):
            notes.append(f"{shown}: not measured (`suite.py run {flag} PATH`, its venv: benchmarks/README.md).")
    return [*markdown(header, rows), "", *notes]


def mib_cell(value: float) -> str:
    """Megabytes as the scaling table writes them: whole numbers from 10 up, one decimal below."""
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def render_scaling_temporal(result: dict, published: list[dict], published_from: str) -> list[str]:
    """scaling_temporal.py's table, one row per sequence length T: per case (rule, network) the median µs per step
    and the peak extra memory (MiB), and after each rule other than bptt the ratio of its time to bptt's on the same
    network at that T. A case that was skipped, killed or failed shows its note."""
    out = result["outputs"][0]
    cfg, rows = out["config"], out["rows"]
    cases = [tuple(case) for case in cfg["cases"]]
    found = {(r["rule"], r["arch"], r["T"]): r for r in rows}
    median = {key: statistics.median(r["seconds"]) for key, r in found.items() if "note" not in r}
    header, columns = ["T"], []
    for rule, arch in cases:
        header.append(f"{rule} {arch} µs/step, MiB")
        columns.append(("case", rule, arch))
        if rule != "bptt" and ("bptt", arch) in cases:
            header.append(f"{rule} ÷ bptt")
            columns.append(("ratio", rule, arch))
    table = []
    for steps in cfg["lengths"]:
        row = [f"{steps:,}"]
        for what, rule, arch in columns:
            if what == "ratio":
                a, b = median.get((rule, arch, steps)), median.get(("bptt", arch, steps))
                row.append(f"{a / b:.2f}" if a and b else "–")
                continue
            r = found.get((rule, arch, steps))
            if r is None:
                row.append("–")
            elif "note" in r:
                row.append(r["note"])
            else:
                mark = "" if r["peak_source"] == "reset" else " (peak since start)"
                row.append(f"{median[(rule, arch, steps)] / steps * 1e6:.0f}, {mib_cell(r['extra_mib'])}{mark}")
        table.append(row)
    fewer = [f"{r['rule']} {r['arch']} T = {r['T']:,}: {len(r['seconds'])}" for r in rows
             if "note" not in r and len(r["seconds"]) < cfg["repeats"]]  # fmt: skip
    load = out["load_avg_1min"]
    notes = [
        f"Median of at most {cfg['repeats']} call(s) of `rule.grads(x, y)` per case, each case in a fresh "
        f"process; batch {cfg['batch']}, float32, {cfg['threads']} thread(s), {cfg['clock']} clock, malloc "
        f"{cfg['malloc']}, subnormals {'flushed' if cfg['flush_denormal'] else 'kept'}; MiB: peak resident set "
        f"during the calls minus before them; load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after."
    ]
    if fewer:
        notes.append(f"Fewer calls (--case-budget {cfg['case_budget']:g} s): {'; '.join(fewer)}.")
    return [*markdown(header, table), "", *notes]


def render_temporal(result: dict, published: list[dict], published_from: str) -> list[str]:
    """accuracy_temporal.py's table for one suite, one row per entry: rule, network, options, seeds, iterations
    done per seed, the final test accuracy (%) or, on pattern generation, the final test loss (mean ± sample std
    over the seeds, as the script writes it), on cue accumulation the best test error (%) and the first iteration
    below the error criterion per seed, and the median seconds per epoch."""
    out = result["outputs"][0]
    suite, per_epoch = out["suite"], out["per_epoch"]
    regression, cue = suite == "pattern-generation", suite == "cue-accumulation"
    criterion = f"{100 * out.get('error_criterion', accuracy_temporal.ERROR_CRITERION):g}"
    header = ["entry", "rule", "arch", "rule options", "seeds", "iterations done",
              "final test loss (½ squared error)" if regression else "final test accuracy (%)",
              *(["best test error (%)", f"iterations to < {criterion} % error"] if cue else []),
              "s/epoch (median)"]  # fmt: skip
    rows, per_seed = [], []
    for entry, e in out["entries"].items():
        runs = e["runs"]
        if not runs:
            continue
        values = [r["test_loss"] if regression else 100 * r["test_accuracy"] for r in runs]
        seconds = [s for r in runs for s in r["epoch_seconds"] if s is not None]
        row = [entry, e["rule"], e["arch"], ", ".join(f"{k}={v}" for k, v in e["options"].items()) or "-",
               str(len(runs)), ", ".join(str(r["epochs_done"] * per_epoch) for r in runs),
               accuracy_temporal.mean_std(values)]  # fmt: skip
        if cue:
            reached = [r["iterations_to_criterion"] for r in runs]
            row += [accuracy_temporal.mean_std([100 * (1 - r["best_test_accuracy"]) for r in runs]),
                    ", ".join("not reached" if it is None else str(it) for it in reached)]  # fmt: skip
        rows.append([*row, f"{statistics.median(seconds):.2f}" if seconds else "–"])
        per_seed.append(f"{entry} " + "/".join(f"{v:.4g}" for v in values))
    seeds = sorted({r["seed"] for e in out["entries"].values() for r in e["runs"] if r.get("seed") is not None})
    budget = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in out["budget"].items())
    notes = [
        f"{out['data']}; {budget}; {per_epoch} iterations an epoch; seed{'s' if len(seeds) != 1 else ''} "
        f"{', '.join(map(str, seeds))}; mean ± sample standard deviation over the seeds.",
        f"Per seed ({'final test loss' if regression else 'final test accuracy, %'}): {'; '.join(per_seed)}.",
    ]
    return [*markdown(header, rows), "", *notes]


def _benches() -> dict[str, Bench]:
    benches = {}
    for suite, (budget, entries) in accuracy_fmnist.SUITES.items():
        about = (f"Fashion-MNIST accuracy, suite {suite}: {', '.join(entries)} on {budget['arch']}, "
                 f"{budget['epochs']} epochs")  # fmt: skip
        benches[f"fmnist-{suite}"] = Bench(f"fmnist-{suite}", "accuracy", about, fmnist_commands(suite),
                                           fmnist_collect(suite), render_fmnist)  # fmt: skip
    speed = [
        ("speed-fa", "ms/step of bp and the FA family on 784-1000-10 (BioTorch beside with --biotorch-python)",
         speed_fa_commands, render_speed_fa),
        ("speed-tp", "ms/step of dtp and ddtp against bp on 784-256-256-10", speed_tp_commands, render_speed_tp),
        ("speed-ep", "ms/step of ep against bp (Laborieux et al.'s code beside with --laborieux)", speed_ep_commands,
         render_speed_ep),
        ("speed-temporal", "s/update of bptt and eprop on cue accumulation (lsnn:50+50, lif:100)",
         speed_temporal_commands, render_speed_temporal),
        ("speed-pc", "ms/step of pc and ipc against bp (PCX beside with --pcx-python)", speed_pc_commands,
         render_speed_pc),
        ("speed-snn", "s/update of bptt on 40-100 LIF-2, T = 2250 (snnTorch and Norse beside with --snntorch-python, "
         "--norse-python)", speed_snn_commands, render_speed_snn),
        ("scaling-temporal", "peak memory and time per step of bptt, eprop, rflo against T = 100 ... 10,000",
         scaling_temporal_commands, render_scaling_temporal),
    ]  # fmt: skip
    for name, about, commands, render in speed:
        benches[name] = Bench(name, "speed", about, commands, speed_collect, render)
    for suite, (budget, entries, data) in accuracy_temporal.SUITES.items():
        about = (f"temporal accuracy, suite {suite}: {', '.join(entries)} on {data.split(':')[0]}, "
                 f"{budget['epochs']} epochs")  # fmt: skip
        benches[f"temporal-{suite}"] = Bench(f"temporal-{suite}", "accuracy", about, temporal_commands(suite),
                                             speed_collect, render_temporal)  # fmt: skip
    return benches


BENCHES = _benches()
GROUPS = {
    "fmnist": [n for n in BENCHES if n.startswith("fmnist-")],
    "speed": [n for n in BENCHES if "speed" in n],
    "temporal": [n for n in BENCHES if n.startswith("temporal-") or n == "scaling-temporal"],
}


def pick(only: str | None) -> list[Bench]:
    """The benchmarks named in ``only`` (comma-separated names or groups: ``fmnist``, ``speed``, ``temporal``), in
    suite order;
    all when None. An empty or unknown name is a :class:`BioPropError` naming it."""
    if only is None:
        return list(BENCHES.values())
    chosen: set[str] = set()
    for token in (t.strip() for t in only.split(",")):
        if not token:
            raise BioPropError(f"--only {only!r}: an empty name; leave --only out to run every benchmark")
        if token in BENCHES:
            chosen.add(token)
        elif token in GROUPS:
            chosen.update(GROUPS[token])
        else:
            raise BioPropError(f"unknown benchmark {token!r}; known: {', '.join([*GROUPS, *BENCHES])}")
    return [bench for name, bench in BENCHES.items() if name in chosen]


def block(record: dict, published: list[dict], published_from: str) -> list[str]:
    """The lines between a benchmark's markers: its command(s), the machine line, its table and notes."""
    bench = BENCHES[record["name"]]
    commands = "; ".join(f"`{c}`" for c in record["commands"]) or "not recorded"
    if record.get("source") == "import":
        how = f"Command: {commands} (imported by `python benchmarks/suite.py import`)."
    else:
        how = f"Command: {commands}" + (
            f" (run by `{record['suite_command']}`)." if record.get("suite_command") else "."
        )
    quick = ["**A --quick run: a check that the benchmark runs, not its result.**"] if record.get("quick") else []
    return [how, "", machine_line(record.get("machine")), *quick, "",
            *bench.render(record["result"], published, published_from)]  # fmt: skip


def find_blocks(text: str, where: str) -> dict[str, tuple[int, int]]:
    """{name: (start line, end line)} of the README's marker pairs. Each marker must be alone on its line, each name
    opened once and closed once after it, without nesting, and name a benchmark; else :class:`BioPropError`."""
    found: dict[str, tuple[int, int]] = {}
    open_at: tuple[str, int] | None = None
    for i, line in enumerate(text.split("\n")):
        match = MARK.search(line)
        if not match:
            continue
        closing, name = bool(match.group(1)), match.group(2)
        if line.strip() != match.group(0):
            raise BioPropError(f"{where}:{i + 1}: the marker {match.group(0)!r} must be alone on its line")
        if name not in BENCHES:
            raise BioPropError(f"{where}:{i + 1}: unknown benchmark {name!r} in a marker")
        if not closing:
            if open_at is not None:
                raise BioPropError(f"{where}:{i + 1}: bench:{name} opens inside bench:{open_at[0]}")
            if name in found:
                raise BioPropError(f"{where}:{i + 1}: bench:{name} appears twice")
            open_at = (name, i)
        else:
            if open_at is None or open_at[0] != name:
                raise BioPropError(f"{where}:{i + 1}: /bench:{name} closes a block that is not open")
            found[name] = (open_at[1], i)
            open_at = None
    if open_at is not None:
        raise BioPropError(f"{where}:{open_at[1] + 1}: bench:{open_at[0]} is never closed")
    return found


def regenerate(text: str, blocks: dict[str, list[str]], where: str) -> tuple[str, list[str]]:
    """``text`` with each marked block whose name is in ``blocks`` replaced by those lines, and a list of what
    happened to each marked block (rewritten, up to date, or left as it is)."""
    lines = text.split("\n")
    spans = find_blocks(text, where)
    said = []
    for name, (start, end) in sorted(spans.items(), key=lambda item: -item[1][0]):
        if name not in blocks:
            said.append(f"{name}: no stored finished result; left as it is")
            continue
        if lines[start + 1 : end] == blocks[name]:
            said.append(f"{name}: up to date")
            continue
        lines[start + 1 : end] = blocks[name]
        said.append(f"{name}: regenerated")
    return "\n".join(lines), sorted(said)


def stored(out: Path) -> dict[str, dict]:
    return {name: record for name in BENCHES if (record := read_record(out, name)) is not None}


def tables(out: Path, readme: Path, check: bool = False, allow_quick: bool = False,
           anchors: Path = ANCHORS, copy: Path = PUBLISHED) -> int:  # fmt: skip
    """The ``tables`` command: 0 when done (or, with ``check``, up to date), 1 when ``check`` finds a stale block."""
    published, published_from = read_published(anchors, copy)
    records = stored(out)
    if not records:
        print(f"suite: no stored results under {shown_path(str(suite_dir(out)))}; run `python benchmarks/suite.py "
              "run` first (or pass --out)", file=sys.stderr)  # fmt: skip
        return 1 if check else 0
    rendered, for_readme = [], {}
    for name, record in records.items():
        if record.get("status") != "finished":
            print(f"{name}: the stored run {record.get('status')}; no table ({record.get('error', '')[-200:]})",
                  file=sys.stderr)  # fmt: skip
            continue
        lines = block(record, published, published_from)
        rendered += [f"## {name}", "", *lines, ""]
        if record.get("quick") and not allow_quick:
            print(f"{name}: a --quick result; kept out of {readme.name} (--allow-quick puts it there)", file=sys.stderr)
            continue
        for_readme[name] = lines
    text = readme.read_text(encoding="utf-8")
    updated, said = regenerate(text, for_readme, str(readme))
    for line in said:
        print(f"{readme.name}: {line}")
    if check:
        stale = [line.split(":")[0] for line in said if line.endswith("regenerated")]
        if stale:
            print(f"{readme}: out of date: {', '.join(stale)}; run python benchmarks/suite.py tables", file=sys.stderr)
            return 1
        return 0
    if rendered:
        suite_dir(out).mkdir(parents=True, exist_ok=True)
        (suite_dir(out) / "tables.md").write_text("\n".join(rendered) + "\n", encoding="utf-8")
        print(f"every stored table: {shown_path(str((suite_dir(out) / 'tables.md').resolve()))}")
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    return 0


# ------------------------------------------------------------------------------------------------- importing


def import_results(out: Path, fmnist: Path | None, speed: dict[str, list[Path]]) -> list[str]:
    """Store records built from results made outside ``run``: an ``accuracy_fmnist.py --out`` folder (every suite
    found in it, the seeds found) and speed scripts' ``--json`` files. Their machine was not recorded; the record
    says where they were imported from. Returns the names stored."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    names = []
    if fmnist is not None:
        if not fmnist.is_dir():
            raise BioPropError(f"--fmnist {str(fmnist)!r} is not a folder")
        for suite in accuracy_fmnist.SUITES:
            folder = fmnist / suite
            seeds = sorted({int(m.group(1)) for p in folder.glob("*-s*") if (m := re.search(r"-s(\d+)$", p.name))})
            if not seeds:
                continue
            result = collect_fmnist(suite, folder, seeds, None)
            torches = sorted({r["torch"] for runs in result["entries"].values() for r in runs if r.get("torch")})
            last = max(r["finished_at"] for runs in result["entries"].values() for r in runs)
            command = Command(
                [
                    sys.executable,
                    str(HERE / "accuracy_fmnist.py"),
                    "--suite",
                    suite,
                    "--seeds",
                    *map(str, seeds),
                    "--out",
                    str(fmnist.resolve()),
                ],
                {"OMP_NUM_THREADS": "1"},
            )
            m = {
                "torch": ", ".join(torches) or None,
                "threads": 1,
                "imported_from": shown_path(str(folder.resolve())),
                "date": datetime.datetime.fromtimestamp(last, datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            names.append(_store_import(out, f"fmnist-{suite}", [command.shown()], m, result, stamp))  # fmt: skip
    for name, files in speed.items():
        outputs = []
        for path in files:
            if not path.is_file():
                raise BioPropError(f"--{name} {str(path)!r} does not exist")
            outputs.append(json.loads(path.read_text()))
        first = outputs[0]
        threads = first.get("config", {}).get("threads") or first.get("threads")
        torch_version = torch_of(first)
        load = first.get("load_avg_1min")
        if load is None and first.get("load_before") and first.get("load_after"):  # accuracy_temporal.py's
            load = [first["load_before"][0], first["load_after"][0]]
        last = outputs[-1].get("load_avg_1min") or load
        m = {
            "torch": torch_version,
            "threads": threads,
            "cores": first.get("cpus"),
            "imported_from": ", ".join(shown_path(str(p.resolve())) for p in files),
            **({"load_before": [load[0]], "load_after": [last[-1]]} if load else {}),
        }
        names.append(_store_import(out, name, [], m, {"outputs": outputs}, stamp))  # fmt: skip
    return names


def _store_import(out: Path, name: str, commands: list[str], m: dict, result: dict, stamp: str) -> str:
    record = {"name": name, "kind": BENCHES[name].kind, "about": BENCHES[name].about, "quick": False,
              "source": "import", "imported": stamp, "commands": commands, "status": "finished", "result": result,
              "error": None, "machine": m}  # fmt: skip
    BENCHES[name].render(result, [], "")  # refuse now, not at `tables`, a file this table cannot be made from
    write_record(out, record)
    return name


# ---------------------------------------------------------------------------------------------------- the CLI


def parse_seeds(text: str) -> list[int]:
    """Comma-separated seeds: whole numbers ≥ 0, each once (:func:`runpool.parse_seeds`, as the accuracy scripts
    read them); a :class:`BioPropError` naming the bad token otherwise."""
    try:
        return runpool.parse_seeds(text)
    except ValueError as exc:
        raise BioPropError(str(exc)) from None


def cpu_set(text: str) -> set[int]:
    """The CPUs of a ``--cpus`` list (``1``, ``0,1``, ``0-1``, ``0,2-3``); a :class:`BioPropError` naming a token
    taskset would not read (ASCII digits only, a range low-high with low ≤ high) or a CPU named twice."""
    cpus: set[int] = set()
    for token in text.split(","):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", token)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise BioPropError(f"--cpus: {token!r} is not a CPU number or range (e.g. 1, 0,1 or 0-1)")
        low = int(match.group(1))
        named = set(range(low, int(match.group(2) or low) + 1))
        if named & cpus:
            raise BioPropError(f"--cpus: CPU {min(named & cpus)} is named twice in {text!r}")
        cpus |= named
    return cpus


def parse_cpus(text: str | None, allowed: set[int] | None = None) -> str | None:
    """``--cpus`` as taskset reads it (``1``, ``0,1``, ``0-1``), checked against the CPUs this process may use
    (``allowed``, default :func:`os.sched_getaffinity`) before any benchmark starts."""
    if text is None:
        return None
    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    missing = sorted(cpu_set(text) - allowed)
    if missing:
        raise BioPropError(f"--cpus: CPU {missing[0]} is not one this process may use "
                           f"({', '.join(map(str, sorted(allowed)))})")  # fmt: skip
    return text


def cpu_count(cpus: str | None) -> int:
    """How many CPUs a checked ``--cpus`` names (``0,2-3``: 3); without pinning, those this process may use."""
    return len(os.sched_getaffinity(0)) if cpus is None else len(cpu_set(cpus))


def check_jobs(jobs: int, threads: int, cpus: str | None) -> None:
    """``--jobs``: at least 1, and ``jobs`` × ``threads`` no more than the CPUs the benchmarks run on
    (:func:`runpool.check_jobs`)."""
    try:
        runpool.check_jobs(jobs, threads, cpu_count(cpus), f"--cpus {cpus}" if cpus else "this process")
    except ValueError as err:
        raise BioPropError(str(err)) from None


def existing(path: str | None, flag: str) -> str | None:
    if path is not None and not Path(path).exists():
        raise BioPropError(f"{flag}: {path!r} does not exist")
    # absolute, links kept: a venv's python is a link to the base interpreter, which would not see the venv
    return os.path.abspath(path) if path is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the benchmarks and their stored results").add_argument("--out", default="runs/bench")
    run = sub.add_parser("run", help="run benchmarks and store their results")
    run.add_argument("--only", help="comma-separated benchmarks or groups (fmnist, speed); default: all")
    run.add_argument("--out", default="runs/bench", help="results folder (default runs/bench)")
    run.add_argument("--seeds", default="0,1,2", help="accuracy seeds, comma-separated (default 0,1,2)")
    run.add_argument("--quick", action="store_true", help="short versions: 1 epoch and 1 seed, small time budgets")
    run.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per benchmark (default 1)")
    run.add_argument("--cpus", help="pin every benchmark to these CPUs (taskset -c), e.g. 1")
    run.add_argument("--jobs", type=int, default=1, help="accuracy suites: runs side by side, one worker process "
                     "and --threads threads each (default 1); at most one per CPU of --cpus")  # fmt: skip
    run.add_argument("--force", action="store_true", help="rerun benchmarks whose stored result is finished")
    run.add_argument("--data-dir", help="Fashion-MNIST's folder, passed to accuracy_fmnist.py")
    run.add_argument("--biotorch-python", help="python of a venv with BioTorch 0.0.16 and bioprop (speed-fa)")
    run.add_argument("--laborieux", help="checkout of Laborieux et al.'s Equilibrium-Propagation (speed-ep)")
    run.add_argument("--pcx-python", help="python of a venv with pcx 0.6.3 (speed-pc)")
    run.add_argument("--snntorch-python", help="python of a venv with snntorch (speed-snn)")
    run.add_argument("--norse-python", help="python of a venv with norse (speed-snn)")
    tab = sub.add_parser("tables", help="regenerate the README's marked tables from the stored results")
    tab.add_argument("--out", default="runs/bench")
    tab.add_argument("--readme", default=str(README))
    tab.add_argument("--check", action="store_true", help="write nothing; exit 1 when a marked table is stale")
    tab.add_argument("--allow-quick", action="store_true", help="let --quick results into the README")
    imp = sub.add_parser("import", help="store results made outside `run` (run folders, speed JSON files)")
    imp.add_argument("--out", default="runs/bench")
    imp.add_argument("--fmnist", help="an accuracy_fmnist.py --out folder (SUITE/RULE-sSEED run directories)")
    for name in ("speed-fa", "speed-tp", "speed-ep", "speed-pc", "speed-snn", "scaling-temporal"):
        imp.add_argument(f"--{name}", metavar="FILE", help=f"{name.replace('-', '_')}.py's --json output")
    imp.add_argument("--speed-temporal", nargs="+", metavar="FILE", help="speed_temporal.py --json outputs")
    imp.add_argument(
        "--temporal",
        nargs="+",
        metavar="FILE",
        help="accuracy_temporal.py --json outputs, one per suite (--report-only makes one from its runs)",
    )
    pub = sub.add_parser("published", help="copy anchors.md's Fashion-MNIST table into benchmarks/published.json")
    pub.add_argument("--anchors", default=str(ANCHORS))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.cmd](args)
    except BioPropError as exc:
        print(f"suite: error: {exc}", file=sys.stderr)
        return 2


def cmd_list(args: argparse.Namespace) -> int:
    for name, bench in BENCHES.items():
        record = read_record(Path(args.out), name)
        state = "not run" if record is None else f"{record['status']}{' (quick)' if record.get('quick') else ''}"
        print(f"{name:<27} {state:<16} {bench.about}")
    return 0


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM handled as Ctrl-C: :func:`execute` then stops the running script before the suite ends."""
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    invocation = " ".join(["python benchmarks/suite.py", *map(shlex.quote, args.argv)])
    if args.cpus and shutil.which("taskset") is None:
        raise BioPropError("--cpus needs taskset (util-linux), which is not on PATH")
    if args.threads < 1:
        raise BioPropError(f"--threads must be at least 1, not {args.threads}")
    keys = ("biotorch_python", "laborieux", "pcx_python", "snntorch_python", "norse_python")
    anchors = {key: existing(getattr(args, key), "--" + key.replace("_", "-")) for key in keys}
    seeds, cpus, chosen = parse_seeds(args.seeds), parse_cpus(args.cpus), pick(args.only)
    check_jobs(args.jobs, args.threads, cpus)
    opts = Options(Path(args.out).resolve(), seeds, args.quick, args.threads, cpus, args.jobs,
                   {k: v for k, v in anchors.items() if v}, args.data_dir, invocation)  # fmt: skip
    records = []
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        for i, bench in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {bench.name}", file=sys.stderr, flush=True)
            records.append(run_bench(bench, opts, args.force))
    except KeyboardInterrupt:  # the benchmark's script was stopped first (execute); its runs kept their checkpoints
        print(f"suite: interrupted during {bench.name} ({len(records)} of {len(chosen)} done); the same command "
              "resumes: stored results and the accuracy suites' runs are kept", file=sys.stderr)  # fmt: skip
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [r["name"] for r in records if r["status"] != "finished"]
    print(f"{len(records) - len(failed)} of {len(records)} finished" + (f"; failed: {', '.join(failed)}" if failed
          else "") + f"; results in {shown_path(str(suite_dir(opts.out)))}", file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


def cmd_tables(args: argparse.Namespace) -> int:
    readme = Path(args.readme)
    if not readme.is_file():
        raise BioPropError(f"--readme: {args.readme!r} does not exist")
    return tables(Path(args.out), readme, args.check, args.allow_quick)


def cmd_import(args: argparse.Namespace) -> int:
    speed = {}
    for name in ("speed-fa", "speed-tp", "speed-ep", "speed-temporal", "speed-pc", "speed-snn", "scaling-temporal"):
        given = getattr(args, name.replace("-", "_"))
        if given:
            speed[name] = [Path(p) for p in ([given] if isinstance(given, str) else given)]
    for path in map(Path, args.temporal or []):
        try:
            suite = json.loads(path.read_text()).get("suite")
        except (OSError, ValueError) as exc:
            raise BioPropError(f"--temporal {str(path)!r}: {exc}") from None
        if f"temporal-{suite}" not in BENCHES:
            raise BioPropError(f"--temporal {str(path)!r}: not an accuracy_temporal.py --json output (suite {suite!r})")
        if f"temporal-{suite}" in speed:
            raise BioPropError(f"--temporal {str(path)!r}: a second file for suite {suite!r}")
        speed[f"temporal-{suite}"] = [path]
    if args.fmnist is None and not speed:
        raise BioPropError("import needs --fmnist DIR or a speed --json file (--speed-fa FILE, ...)")
    names = import_results(Path(args.out), Path(args.fmnist) if args.fmnist else None, speed)
    print(f"stored: {', '.join(names) or 'nothing (no runs found)'}")
    return 0


def cmd_published(args: argparse.Namespace) -> int:
    anchors = Path(args.anchors)
    if not anchors.is_file():
        raise BioPropError(f"--anchors: {args.anchors!r} does not exist")
    rows = parse_anchors(anchors.read_text(encoding="utf-8"), str(anchors))
    copy = {"about": "The Fashion-MNIST table (top-1 accuracy %) of ../shared/anchors.md, copied by `python "
                     "benchmarks/suite.py published`: suite.py reads it when anchors.md (outside the repository) "
                     "is absent. Each row keeps its source as anchors.md gives it: (file) read from the system's "
                     "own repository, (paper) from the paper.",
            "copied": datetime.date.today().isoformat(), "rows": rows}  # fmt: skip
    PUBLISHED.write_text(json.dumps(copy, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {shown_path(str(PUBLISHED))}: {len(rows)} rows from {anchors}")
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "tables": cmd_tables, "import": cmd_import, "published": cmd_published}

if __name__ == "__main__":
    try:
        status = main()
        sys.stdout.flush()  # here, not at exit, so that a reader gone early is caught below
    except BrokenPipeError:  # `suite.py list | head`: the reader has gone; stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 141
    sys.exit(status)
