"""Temporal rules against backprop through time on sequence tasks, measured in one run (issue 11).

    taskset -c 1 .venv/bin/python benchmarks/accuracy_temporal.py                        # store-recall, ~10 min
    .venv/bin/python benchmarks/accuracy_temporal.py --suite pattern-generation --seeds 0

Suites (one budget per suite, shared by its rules; only the rule, its options and its network change):

- ``store-recall`` (default): Ke et al. 2018's copy task with ``--delay`` silent steps (T = 20 + delay): ``sab``
  (``sab:32``, k_trunc = 20) should solve it where ``tbptt`` (``rnn:32``, k = 20) cannot reach back to the store
  cue; ``bptt`` (``rnn:32``) is the reference. Adam, the final test accuracy over ``--seeds``. Eight values
  (chance 12.5 %): with the task's default of two, all three reached 100 % after one epoch (seed 0, 512 examples),
  the untrained leaky network keeping one bit over 200 steps well enough for the readout alone.
- ``pattern-generation``: Bellec et al. 2020, Fig. S7 (one frozen input, a sum of four sines as target, regression):
  ``bptt`` and ``eprop`` on ``lif:50``, ``rflo`` on ``rnn:50`` (rate networks only). The table gives the final
  test loss; each run's ``metrics.csv`` holds its curve.

Each (suite, rule, seed) is an ordinary run directory under ``--out`` (kept); a directory already there is
overwritten. The script prints the command line, a machine line (torch version, threads, load average before and
after) and a Markdown table: rule, network, mean ± std over seeds of the final test accuracy (or loss), and the
median seconds per epoch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError

# suite -> (the budget every rule of the suite shares, {rule: (arch, rule options)}, data spec with {delay} to fill)
SUITES: dict[str, tuple[dict, dict[str, tuple[str, dict]], str]] = {
    "store-recall": (
        dict(optimizer="adam", lr=3e-3, batch_size=64, epochs=25),
        {"sab": ("sab:32", {"truncation": 20}), "tbptt": ("rnn:32", {"truncation": 20}), "bptt": ("rnn:32", {})},
        "store-recall:delay={delay},values=8,n_train=1024,n_test=512",
    ),
    "pattern-generation": (
        dict(optimizer="adam", lr=3e-3, batch_size=1, epochs=100),
        {"bptt": ("lif:50", {}), "eprop": ("lif:50", {}), "rflo": ("rnn:50", {})},
        "pattern-generation",
    ),
}  # fmt: skip


def run_one(run_dir: Path, suite: str, rule: str, seed: int, epochs: int | None, delay: int, threads: int) -> dict:
    """Train one (suite, rule, seed) from scratch into ``run_dir`` and return its summary."""
    budget, rules, data = SUITES[suite]
    arch, opts = rules[rule]
    settings = dict(budget, rule=rule, arch=arch, rule_opts=opts, seed=seed, data=data.format(delay=delay),
                    threads=threads, device="cpu")  # fmt: skip
    if epochs:
        settings["epochs"] = epochs
    return train.run(RunConfig(**settings), run_dir, overwrite=True, quiet=True)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std; 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} ± {std:.2g}"


def table(suite: str, summaries: dict[str, list[dict]]) -> str:
    """The Markdown table: one row per rule, mean ± std over its seeds."""
    regression = suite == "pattern-generation"
    what = "final test loss (½ squared error)" if regression else "final test accuracy (%)"
    lines = [f"| rule | arch | rule options | seeds | {what} | s/epoch (median) |", "|---|---|---|---|---|---|"]
    for rule, runs in summaries.items():
        arch, opts = SUITES[suite][1][rule]
        values = [r["test_loss"] if regression else 100 * r["test_accuracy"] for r in runs]
        seconds = statistics.median(s for r in runs for s in r["epoch_seconds"])
        options = ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"
        lines.append(f"| {rule} | {arch} | {options} | {len(runs)} | {mean_std(values)} | {seconds:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="store-recall")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override the suite's epoch budget")
    parser.add_argument("--delay", type=int, default=200, help="store-recall's silent steps between store and recall")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-temporal"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    command = "python " + shlex.join(sys.argv)
    load_before, start = os.getloadavg(), time.perf_counter()
    summaries: dict[str, list[dict]] = {rule: [] for rule in SUITES[args.suite][1]}
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            for rule in summaries:
                summary = run_one(args.out / args.suite / f"{rule}-s{seed}", args.suite, rule, seed, args.epochs,
                                  args.delay, args.threads)  # fmt: skip
                summaries[rule].append(summary)
                print(f"{args.suite} {rule} seed {seed}: accuracy {summary['test_accuracy']}, "
                      f"loss {summary['test_loss']:.4g}", file=sys.stderr)  # fmt: skip
    except (BioPropError, ValueError) as err:
        sys.exit(f"accuracy_temporal: error: {err}")
    load_after = os.getloadavg()
    budget, _, data = SUITES[args.suite]
    print(f"\n{command}\n")
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average (1/5/15 min) before "
          f"{'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}; "
          f"wall {time.perf_counter() - start:.0f} s\n")  # fmt: skip
    print(f"{data.format(delay=args.delay)}; {budget | ({'epochs': args.epochs} if args.epochs else {})}\n")
    print(table(args.suite, summaries))


if __name__ == "__main__":
    main()
