"""Peak memory and time per step of bptt, e-prop (online) and rflo against the sequence length T (issue 11).

    .venv/bin/python benchmarks/scaling_temporal.py [--lengths 100,300,1000,3000,10000] [--batch 64] [--repeats 3]
        [--threads 1] [--max-gib 8] [--case-budget 60] [--child-timeout 300] [--malloc default|mmap]
        [--clock wall|cpu] [--out runs/bench-scaling] [--json OUT]

Cases: ``bptt`` and ``eprop`` (its default online route, traces advanced in blocks of 50 steps) on ``lsnn:50+50``;
``rflo`` on ``rnn:100`` (rflo trains rate networks only) and ``bptt`` on ``rnn:100``, rflo's own BPTT baseline.

Each (rule, network, T) runs in a fresh subprocess of the same interpreter (this script with ``--child``), so that
one measurement's memory is not another's: it seeds torch, builds the network with ``bioprop.nets.build(arch,
(T, 40), 2)``, makes one float32 batch (40 channels of Poisson spikes at 10 Hz, p = 0.01 per step of 1 ms, from a
seeded ``torch.Generator``; labels (T, B) of 2 classes at the last 10 % of the steps, −1 elsewhere), warms up with
one untimed update on the batch's last 10 steps and runs the rule's input check on the whole batch once (its
one-example forward, done once per input shape; both are left out of the two numbers), then times
``rules.create(rule, net).grads(x, y)`` ``--repeats`` times (the median is reported), fewer when the calls so far
took ``--case-budget`` seconds (60 by default: rflo at T = 10,000 takes over a minute a call; the table counts
them). Memory: the peak resident set size during the calls minus the resident set size just before the first call,
i.e. what the update itself needs. The peak is read from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after
resetting the kernel's high-water mark (writing 5 to ``/proc/self/clear_refs``, Linux ≥ 4.0) right before the first
call; where that cannot be reset, the peak since the process started is used and the table says so. The child
reports one JSON line; the parent writes ``scaling.md`` (the table), ``scaling.csv``, ``scaling.jsonl`` (every
sample) and ``scaling.png`` (two log-log panels: peak extra memory and time per step against T) under ``--out``;
``--json OUT`` also writes the settings, the load average before and after, the torch version and every case's row
(the samples included) to one JSON file, which ``benchmarks/suite.py`` reads.

A case that would not fit is not started: BPTT keeps ~``STATES_KEPT`` values per neuron and step (the estimate of
``bioprop.train.check_memory``), T × B × n × 12 × 4 bytes in float32; a bptt case whose estimate exceeds
``--max-gib`` is skipped with a note; a child that runs past ``--child-timeout`` seconds is killed and noted.
The load average before and after is printed: the machine may be shared.

Memory is the process's resident set, so it includes what the C allocator keeps: with glibc's default malloc, a loop
that allocates and frees large temporaries at every step can grow the heap well past the live tensors (glibc raises
its mmap threshold after the first large free, so later large blocks come from the heap, which may keep them).
``--malloc mmap`` runs the children with ``MALLOC_MMAP_THRESHOLD_=131072`` held fixed, so every block of 128 KiB or
more is mapped and unmapped on its own and the resident set tracks the live tensors; it costs time (a page fault per
page of each fresh block), so take time per step from the default run and the tensors' memory from that one.

Time can depend on the values: arithmetic on subnormal floats (below 1.2e-38 in float32) is many times slower on x86.
Traces that decay through that range (e-prop's p̄ and filtered traces of a neuron that has gone silent) slow the
products that read them; ``--flush-denormal`` makes the children flush subnormals to zero
(``torch.set_flush_denormal(True)``), to tell that cost apart from the rule's own.

Time is wall-clock time by default. ``--clock cpu`` reads the CPU time of the process instead
(``time.process_time``): on a shared machine another job's share of a core then does not count against the case,
while a cache that job evicts still does. Compare rules within one clock; the table says which.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

CASES = (("bptt", "lsnn:50+50"), ("eprop", "lsnn:50+50"), ("bptt", "rnn:100"), ("rflo", "rnn:100"))
HIDDEN = {"lsnn:50+50": 100, "rnn:100": 100}  # n, for the memory estimate
NOTES = {"eprop": " (online, blocks of 50 steps)", "rflo": " (rflo trains rate networks only)"}
CHANNELS, CLASSES, RATE_HZ, DT_MS, TARGET_SHARE = 40, 2, 10.0, 1.0, 0.1
STATES_KEPT = 12  # values BPTT keeps per neuron and step: bioprop.train.STATES_KEPT (the idea, not the code path)
FLOAT32 = 4
MIB, GIB = 2**20, 2**30
CLEAR_REFS = Path("/proc/self/clear_refs")
MMAP_THRESHOLD = 128 * 1024  # --malloc mmap: glibc's initial threshold, held fixed
WARM_UP_STEPS = 10  # an untimed first call on the batch's last steps, before the memory baseline


# ------------------------------------------------------------------------------------------------- the child


def rss_bytes() -> int:
    """The resident set size now (VmRSS of /proc/self/status), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes() -> int:
    """The peak resident set size (ru_maxrss, kilobytes on Linux), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batch(steps: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """x (T, B, 40) float32 Poisson spikes at RATE_HZ (p = RATE_HZ · DT_MS / 1000 per step) and labels y (T, B)
    int64: one class in [0, 2) per example at the last ceil(T / 10) steps, −1 before. From a generator seeded by
    ``seed`` (the global one is left alone)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(steps, size, CHANNELS, generator=generator) < RATE_HZ * DT_MS / 1000.0).float()  # (T, B, C)
    y = torch.full((steps, size), -1, dtype=torch.int64)  # (T, B)
    targeted = math.ceil(TARGET_SHARE * steps)
    y[steps - targeted :] = torch.randint(0, CLASSES, (size,), generator=generator)
    return x, y


def child(args: argparse.Namespace, rule: str, arch: str, steps: int) -> dict:
    """Measure one case (module docstring) and return it as a JSON-able dict: at most ``--repeats`` timed calls, a
    further one only while the calls so far took less than ``--case-budget`` seconds (the first always runs)."""
    import torch

    from bioprop import nets, rules

    size, repeats, threads, seed, budget = args.batch, args.repeats, args.threads, args.seed, args.case_budget
    torch.set_num_threads(threads)
    torch.set_flush_denormal(args.flush_denormal)
    torch.manual_seed(seed)
    net = nets.build(arch, (steps, CHANNELS), CLASSES)
    x, y = batch(steps, size, seed)
    learner = rules.create(rule, net)
    warm = min(steps, WARM_UP_STEPS)
    learner.grads(x[-warm:], y[-warm:])  # torch's one-time set-up, on a few steps: not part of the measured update
    learner.check_batch(x, y)  # the one-example forward a rule runs once per input shape: not part of the update
    before = rss_bytes()
    try:
        CLEAR_REFS.write_text("5")  # reset the peak RSS (ru_maxrss and VmHWM) to the current RSS
        peak_source = "reset"
    except OSError:
        peak_source = "since start"
    seconds = []
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    while len(seconds) < repeats and sum(seconds) < budget:
        start = clock()
        update = learner.grads(x, y)
        seconds.append(clock() - start)
        del update  # the next call's peak must not include this one's result
    peak = peak_rss_bytes()
    return {
        "rule": rule, "arch": arch, "T": steps, "batch": size, "threads": threads, "seconds": seconds,
        "rss_before_mib": before / MIB, "peak_mib": peak / MIB, "extra_mib": max(0, peak - before) / MIB,
        "peak_source": peak_source, "torch": torch.__version__,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ the parent


def estimate_gib(rule: str, arch: str, steps: int, size: int) -> float:
    """BPTT's kept states, T · B · n · STATES_KEPT · 4 bytes, in GiB; 0 for the online rules (flat in T by design;
    a linear term they have is what this benchmark measures)."""
    return steps * size * HIDDEN[arch] * STATES_KEPT * FLOAT32 / GIB if rule == "bptt" else 0.0


def run_case(args: argparse.Namespace, rule: str, arch: str, steps: int) -> dict:
    """One case in a fresh subprocess; its JSON line, or a row with a ``note`` when skipped, killed or failed."""
    row = {"rule": rule, "arch": arch, "T": steps}
    estimate = estimate_gib(rule, arch, steps, args.batch)
    if estimate > args.max_gib:
        return {**row, "note": f"skipped: BPTT estimate {estimate:.3g} GiB > --max-gib {args.max_gib:g}"}
    command = [sys.executable, __file__, "--child", f"{rule},{arch},{steps}", "--batch", str(args.batch),
               "--repeats", str(args.repeats), "--threads", str(args.threads), "--seed", str(args.seed),
               "--case-budget", str(args.case_budget), "--clock", args.clock]  # fmt: skip
    command += ["--flush-denormal"] * args.flush_denormal
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.malloc == "mmap":  # glibc: a fixed threshold turns off its dynamic adjustment (mallopt(3))
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {**row, "note": f"killed after --child-timeout {args.child_timeout:g} s"}
    wall = time.perf_counter() - started
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {**row, "note": f"failed: {said}"}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "child_wall_s": wall}


def table(rows: list[dict]) -> list[str]:
    """The Markdown table: rule, network, T, s/update (median), µs per step, peak extra MiB (or the note), the
    number of timed calls."""
    lines = ["| rule | network | T | s/update | µs per step | peak extra MiB | calls |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        network = row["arch"] + NOTES.get(row["rule"], "")
        if "note" in row:
            lines.append(f"| {row['rule']} | {network} | {row['T']:,} | – | – | {row['note']} | 0 |")
            continue
        s = statistics.median(row["seconds"])
        mark = "" if row["peak_source"] == "reset" else " (peak since start)"
        lines.append(f"| {row['rule']} | {network} | {row['T']:,} | {s:.3g} | {s / row['T'] * 1e6:.0f} | "
                     f"{row['extra_mib']:.1f}{mark} | {len(row['seconds'])} |")  # fmt: skip
    return lines


def ratios(rows: list[dict], lengths: list[int]) -> list[str]:
    """Time per step of eprop ÷ bptt (lsnn:50+50) and rflo ÷ bptt (rnn:100) at each T."""
    found = {(r["rule"], r["arch"], r["T"]): statistics.median(r["seconds"]) for r in rows if "note" not in r}
    lines = []
    for rule, arch in (("eprop", "lsnn:50+50"), ("rflo", "rnn:100")):
        parts = []
        for steps in lengths:
            a, b = found.get((rule, arch, steps)), found.get(("bptt", arch, steps))
            parts.append(f"T={steps:,}: {a / b:.2f}" if a and b else f"T={steps:,}: –")
        lines.append(f"time per step, {rule} ÷ bptt on {arch}: " + ", ".join(parts))
    return lines


def plot(rows: list[dict], path: Path, setting: str) -> None:
    """Two log-log panels, one line per (rule, network): peak extra memory (MiB) and time per step (µs) against T;
    ``setting`` (the allocator and subnormal mode) goes into the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, per_step) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rule, arch in CASES:
        got = [r for r in rows if r["rule"] == rule and r["arch"] == arch and "note" not in r]
        if not got:
            continue
        steps = [r["T"] for r in got]
        style = {"marker": "o", "linestyle": "--" if arch.startswith("rnn") else "-", "label": f"{rule} ({arch})"}
        mem.plot(steps, [max(r["extra_mib"], 0.1) for r in got], **style)
        per_step.plot(steps, [statistics.median(r["seconds"]) / r["T"] * 1e6 for r in got], **style)
    for ax, ylabel in ((mem, "peak extra memory (MiB, RSS; floor 0.1)"), (per_step, "time per step (µs)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (steps)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    mem.set_title(f"memory of one update (grads); {setting}")
    per_step.set_title(f"time of one update ÷ T; {setting}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parent(args: argparse.Namespace) -> None:
    lengths = [int(v) for v in args.lengths.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before, started, rows = os.getloadavg()[0], time.perf_counter(), []
    for steps in lengths:  # T by T, so that a change of load hits every case of a length alike
        for rule, arch in CASES:
            row = run_case(args, rule, arch, steps)
            rows.append(row)
            said = row.get("note") or f"{statistics.median(row['seconds']):.3g} s/update, {row['extra_mib']:.1f} MiB"
            print(f"  {rule:<6} {arch:<11} T={steps:<6,} {said}", file=sys.stderr, flush=True)
    torch_version = next((r["torch"] for r in rows if "torch" in r), "?")
    load_after, seconds = os.getloadavg()[0], time.perf_counter() - started
    machine = ", ".join([
        f"torch {torch_version}", f"{args.threads} thread(s)", f"batch {args.batch}",
        f"median of at most {args.repeats} call(s) per case (--case-budget {args.case_budget:g} s)", "float32",
        f"{args.clock} clock", f"malloc {args.malloc}", f"subnormals {'flushed' if args.flush_denormal else 'kept'}",
        platform.machine(),
        f"{os.cpu_count()} CPUs; load average (1 min) before/after {load_before:.1f}/{load_after:.1f}",
        f"{seconds:.0f} s in all",
    ])  # fmt: skip
    lines = [*table(rows), "", machine, "", *ratios(rows, lengths)]
    print("\n".join(lines))
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    with open(out / "scaling.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rule", "network", "T", "s_per_update", "us_per_step", "peak_extra_mib", "calls", "note"])
        for r in rows:
            s = statistics.median(r["seconds"]) if "seconds" in r else None
            writer.writerow([r["rule"], r["arch"], r["T"], "" if s is None else f"{s:.6g}",
                             "" if s is None else f"{s / r['T'] * 1e6:.4g}",
                             f"{r['extra_mib']:.2f}" if "extra_mib" in r else "", len(r.get("seconds", [])),
                             r.get("note", "")])  # fmt: skip
    plot(rows, out / "scaling.png", f"malloc {args.malloc}, subnormals {'flushed' if args.flush_denormal else 'kept'}")
    print(f"wrote {out}/scaling.md, scaling.csv, scaling.jsonl, scaling.png")
    if args.json:
        config = {"lengths": lengths, "cases": [list(case) for case in CASES], "batch": args.batch,
                  "repeats": args.repeats, "threads": args.threads, "case_budget": args.case_budget,
                  "max_gib": args.max_gib, "child_timeout": args.child_timeout, "seed": args.seed,
                  "clock": args.clock, "malloc": args.malloc, "flush_denormal": args.flush_denormal}  # fmt: skip
        record = {"config": config, "torch": torch_version, "machine": platform.machine(), "cpus": os.cpu_count(),
                  "load_avg_1min": [load_before, load_after], "seconds": seconds, "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1))
        print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="100,300,1000,3000,10000", help="sequence lengths T, comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    parser.add_argument("--max-gib", type=float, default=8.0, help="skip a bptt case whose estimate exceeds this")
    parser.add_argument(
        "--case-budget",
        type=float,
        default=60.0,
        help="a case repeats its call only while its calls so far took less than this (s)",
    )
    parser.add_argument("--child-timeout", type=float, default=300.0, help="seconds before a case is killed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--malloc", choices=("default", "mmap"), default="default",
                        help="mmap: children get MALLOC_MMAP_THRESHOLD_=131072 (see the module docstring)")  # fmt: skip
    parser.add_argument("--flush-denormal", action="store_true",
                        help="children flush subnormal floats to zero (torch.set_flush_denormal)")  # fmt: skip
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time a call by the wall clock or by the CPU time of the process")  # fmt: skip
    parser.add_argument("--out", default="runs/bench-scaling")
    parser.add_argument("--json", metavar="OUT", help="also write the settings and every case's row to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "rule,arch,T": measure one case, print one JSON line
    args = parser.parse_args()
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        parser.error(f"--lengths {args.lengths!r} must be comma-separated integers, e.g. 100,1000")
    for name, value in (
        ("--lengths", min(lengths)),
        ("--batch", args.batch),
        ("--repeats", args.repeats),
        ("--threads", args.threads),
        ("--max-gib", args.max_gib),
        ("--child-timeout", args.child_timeout),
        ("--case-budget", args.case_budget),
    ):
        if not value > 0:
            parser.error(f"{name} must be positive, not {value!r}")
    if args.child:
        rule, arch, steps = args.child.split(",")
        print(json.dumps(child(args, rule, arch, int(steps))))
    else:
        parent(args)


if __name__ == "__main__":
    main()
