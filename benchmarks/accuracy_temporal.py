"""Temporal rules against backprop through time on sequence tasks, measured in one run (issue 11).

    taskset -c 1 .venv/bin/python benchmarks/accuracy_temporal.py                        # store-recall, ~30 min
    .venv/bin/python benchmarks/accuracy_temporal.py --suite pattern-generation --seeds 0
    .venv/bin/python benchmarks/accuracy_temporal.py --suite cue-accumulation --entries eprop-alif,eprop-lif
    .venv/bin/python benchmarks/accuracy_temporal.py --suite seq-fashion-mnist
    .venv/bin/python benchmarks/accuracy_temporal.py --suite cue-accumulation --report-only --json cue.json
    taskset -c 0-3 .venv/bin/python benchmarks/accuracy_temporal.py --suite cue-accumulation --jobs 4

Suites (one budget per suite, shared by its rules; only the rule, its options and its network change):

- ``store-recall`` (default): Ke et al. 2018's copy task with ``--delay`` silent steps (T = 20 + delay): ``sab``
  (``sab:32``, k_trunc = 20) should solve it where ``tbptt`` (``rnn:32``, k = 20) cannot reach back to the store
  cue; ``bptt`` (``rnn:32``) is the reference. Adam, the update clipped to norm 1, the final test accuracy over
  ``--seeds``. Eight values (chance 12.5 %): with the task's default of two, all three reached 100 % after one epoch
  (seed 0, 512 examples), the untrained leaky network keeping one bit over 200 steps well enough for the readout.
- ``pattern-generation``: Bellec et al. 2020, Fig. S7 (one frozen input, a sum of four sines as target, regression):
  ``bptt`` and ``eprop`` on ``lif:50``, ``rflo`` on ``rnn:50`` (rate networks only). The table gives the final
  test loss; each run's ``metrics.csv`` holds its curve.
- ``cue-accumulation``: Bellec et al. 2020, Fig. 3, with the official code's settings (Adam 5e-3, batch 64, the
  rate regulariser for e-prop, 2,000 iterations = 100 epochs of 20 batches): e-prop and BPTT on the LSNN
  (``lsnn:50+50``, ALIF) and on LIF neurons only (``lif:100``). The table adds the best test error and the first
  iteration at which the test error (512 trials) fell below 7 %, Bellec et al.'s stopping criterion.
- ``seq-fashion-mnist``: rows as 28 steps, the label at the last one, the first 12,800 training and 10,000 test
  images (``limit``), 5 epochs: ``bptt``, ``tbptt`` (k = 7) and ``rflo`` on a
  rate network ``rnn:100``; ``bptt`` and ``eprop`` on a spiking ``lsnn:50+50`` (each rule trains the networks it
  can; e-prop against BPTT on the same network).

``--jobs K`` trains up to K runs side by side, each in a worker process (``runpool.py``); pin to K CPUs.

Each (suite, entry, seed) is an ordinary run directory under ``--out`` (kept): rerunning the script reads a finished
run, resumes an interrupted one from its checkpoint (an hours-long suite survives a stop) and starts the rest. While
they train, a line every five minutes says where they stand (``cue-accumulation at 14:05: 2/12 runs finished,
310/1200 epochs, about 3.1 h left``). At the end the script prints the command line, a machine line (torch version,
threads, load average before and after), a Markdown table (entry, rule, network, mean ± std over seeds of the final
test accuracy or loss, the median seconds per epoch) and draws ``curves.png`` in the suite's directory: test error
(or loss) and the hidden weights' update angle to BPTT against training iterations, mean over seeds with their
range. ``--json OUT`` also writes the numbers behind the table to one JSON file (per entry its rule, network,
options and, per seed, the run directory's final numbers), which ``benchmarks/suite.py`` reads."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import NoReturn

import torch

import runpool
from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError
from bioprop.report import logs

# suite -> (the budget every entry of the suite shares, {entry: (rule, arch, rule options)}, data spec with {delay})
SUITES: dict[str, tuple[dict, dict[str, tuple[str, str, dict]], str]] = {
    "store-recall": (
        dict(optimizer="adam", lr=3e-3, batch_size=64, epochs=25, clip=1.0),
        {"sab": ("sab", "sab:32", {"truncation": 20}), "tbptt": ("tbptt", "rnn:32", {"truncation": 20}),
         "bptt": ("bptt", "rnn:32", {})},
        "store-recall:delay={delay},values=8,n_train=1024,n_test=512",
    ),
    "pattern-generation": (
        dict(optimizer="adam", lr=3e-3, batch_size=1, epochs=100),
        {"bptt": ("bptt", "lif:50", {}), "eprop": ("eprop", "lif:50", {}), "rflo": ("rflo", "rnn:50", {})},
        "pattern-generation",
    ),
    # Bellec et al. 2020, Fig. 3 (the official code's settings: Adam 5e-3, batch 64, rate regulariser 1 on rates in
    # kHz, i.e. 1e-6 on rates in Hz, target 10 Hz; 2,000 iterations): 20 batches an epoch, 100 epochs
    "cue-accumulation": (
        dict(optimizer="adam", lr=5e-3, batch_size=64, epochs=100, probe_batches=1, probe_batch_size=64),
        {"eprop-alif": ("eprop", "lsnn:50+50", {"rate_reg": 1e-6}),
         "eprop-lif": ("eprop", "lif:100", {"rate_reg": 1e-6}),
         "bptt-alif": ("bptt", "lsnn:50+50", {}), "bptt-lif": ("bptt", "lif:100", {})},
        "cue-accumulation:n_train=1280,n_test=512",
    ),
    # 28 rows of 28 pixels, the label at the last step; the rate network for bptt, tbptt and rflo (rate networks only),
    # the spiking one for bptt and eprop (spiking networks only)
    "seq-fashion-mnist": (
        dict(optimizer="adam", lr=2e-3, batch_size=64, epochs=5, limit=12800, probe_batches=1, probe_batch_size=64),
        {"bptt-rnn": ("bptt", "rnn:100", {}), "tbptt-rnn": ("tbptt", "rnn:100", {"truncation": 7}),
         "rflo-rnn": ("rflo", "rnn:100", {}), "bptt-lsnn": ("bptt", "lsnn:50+50", {}),
         "eprop-lsnn": ("eprop", "lsnn:50+50", {})},
        "seq-fashion-mnist",
    ),
}  # fmt: skip
ERROR_CRITERION = 0.07  # cue accumulation: Bellec et al.'s stopping criterion, test error below 7 %


def run_one(run_dir: Path, suite: str, entry: str, seed: int, epochs: int | None, delay: int, threads: int) -> dict:
    """Train one (suite, entry, seed) into ``run_dir`` with ``threads`` torch threads and return its summary: a
    finished run there is only read, an interrupted one resumed from its checkpoint, anything else (no checkpoint
    yet) started afresh. Raises :class:`BioPropError` for a run there made with other settings (kept as it is)."""
    budget, entries, data = SUITES[suite]
    rule, arch, opts = entries[entry]
    settings = dict(budget, rule=rule, arch=arch, rule_opts=opts, seed=seed, data=data.format(delay=delay),
                    threads=threads, device="cpu")  # fmt: skip
    if epochs:
        settings["epochs"] = epochs
    config = RunConfig(**settings)
    if (run_dir / train.CHECKPOINT).is_file():
        if RunConfig.from_yaml(run_dir / train.CONFIG).fingerprint() != config.fingerprint():
            raise BioPropError(f"{run_dir} holds a run with other settings; pass another --out or remove it")
        return train.resume(run_dir, quiet=True, threads=threads)  # other threads compute the same
    return train.run(config, run_dir, overwrite=True, quiet=True)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std; 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} ± {std:.2g}"


def curve(run_dir: Path, column: str) -> list[float]:
    """One column of a run's ``metrics.csv`` per epoch (NaN where empty)."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [float(row[column]) if row.get(column) else math.nan for row in csv.DictReader(handle)]


def iterations_to_criterion(run_dir: Path, per_epoch: int) -> int | None:
    """The first iteration (epoch end) at which the test error is below :data:`ERROR_CRITERION`, or None."""
    for epoch, accuracy in enumerate(curve(run_dir, "test_accuracy"), start=1):
        if 1.0 - accuracy < ERROR_CRITERION:
            return epoch * per_epoch
    return None


def table(suite: str, runs: dict[str, list[tuple[Path, dict]]], per_epoch: int) -> str:
    """The Markdown table: one row per entry, mean ± std over its seeds."""
    regression = suite == "pattern-generation"
    what = "final test loss (½ squared error)" if regression else "final test accuracy (%)"
    cue = suite == "cue-accumulation"
    extra = " best test error (%) | iterations to < 7 % error |" if cue else ""
    lines = [f"| entry | rule | arch | rule options | seeds | iterations done | {what} |{extra} s/epoch (median) |",
             "|---|---|---|---|---|---|---|" + ("---|---|" if cue else "") + "---|"]  # fmt: skip
    for entry, done in runs.items():
        if not done:
            continue
        rule, arch, opts = SUITES[suite][1][entry]
        values = [r["test_loss"] if regression else 100 * r["test_accuracy"] for _, r in done]
        seconds = statistics.median(s for _, r in done for s in r["epoch_seconds"])
        options = ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"
        iterations = ", ".join(str(r["epochs_done"] * per_epoch) for _, r in done)
        row = f"| {entry} | {rule} | {arch} | {options} | {len(done)} | {iterations} | {mean_std(values)} |"
        if cue:
            best = [100 * (1 - r["best_test_accuracy"]) for _, r in done]
            reached = [iterations_to_criterion(d, per_epoch) for d, _ in done]
            said = ", ".join("not reached" if it is None else str(it) for it in reached)
            row += f" {mean_std(best)} | {said} |"
        lines.append(row + f" {seconds:.2f} |")
    return "\n".join(lines)


def number(value: float | None) -> float | None:
    """``value``, or None where it is None or NaN (no accuracy on a regression task): JSON has no NaN."""
    return None if value is None or math.isnan(value) else value


def results(suite: str, runs: dict[str, list[tuple[Path, dict]]], per_epoch: int) -> dict:
    """The numbers behind :func:`table`, JSON-able: per entry its rule, network and options, and per run its seed,
    status, final test accuracy (fraction) and loss, best test accuracy, epochs done, seconds per epoch and, on
    cue accumulation, the first iteration below the error criterion (None: not reached); None for a NaN."""
    entries = {}
    for entry, done in runs.items():
        rule, arch, opts = SUITES[suite][1][entry]
        entries[entry] = {"rule": rule, "arch": arch, "options": opts, "runs": [
            {"seed": r.get("seed"), "run_dir": str(d), "status": r.get("status"),
             "test_accuracy": number(r["test_accuracy"]), "test_loss": number(r["test_loss"]),
             "best_test_accuracy": number(r.get("best_test_accuracy")),
             "epochs_done": r["epochs_done"], "epoch_seconds": r["epoch_seconds"],
             "iterations_to_criterion": iterations_to_criterion(d, per_epoch) if suite == "cue-accumulation" else None}
            for d, r in done]}  # fmt: skip
    return entries


def figure(suite: str, runs: dict[str, list[tuple[Path, dict]]], per_epoch: int, path: Path) -> None:
    """Test error (or loss) and the hidden weights' update angle to BPTT against training iterations, one line per
    entry (mean over seeds, the band their range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regression = suite == "pattern-generation"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for entry, done in runs.items():
        if not done:
            continue
        if regression:
            series = [curve(d, "test_loss") for d, _ in done]
        else:
            series = [[100 * (1 - a) for a in curve(d, "test_accuracy")] for d, _ in done]
        angles = [[statistics.fmean(pair) for pair in zip(curve(d, "angle/input.weight"),
                                                          curve(d, "angle/recurrent.weight"), strict=True)]
                  for d, _ in done]  # fmt: skip
        for axis, values in ((left, series), (right, angles)):
            length = min(len(v) for v in values)
            x = [per_epoch * (k + 1) for k in range(length)]
            columns = [[v[k] for v in values] for k in range(length)]
            seeds = f"{len(values)} seed{'' if len(values) == 1 else 's'}"
            line = axis.plot(x, [statistics.fmean(c) for c in columns], label=f"{entry} ({seeds})")[0]
            axis.fill_between(x, [min(c) for c in columns], [max(c) for c in columns], alpha=0.2,
                              color=line.get_color())  # fmt: skip
    left.set_ylabel("test loss (½ squared error)" if regression else "test error (%)")
    if suite == "cue-accumulation":
        left.axhline(100 * ERROR_CRITERION, color="grey", linestyle=":", label="7 % (Bellec et al.'s criterion)")
    if regression:
        left.set_yscale("log")
    right.set_ylabel("update angle to BPTT, W_in and W_rec (degrees)")
    for axis in (left, right):
        axis.set_xlabel("training iterations (batches)")
        axis.legend(fontsize=8)
    fig.suptitle(f"{suite}: temporal rules against BPTT")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2: the input is refused before anything is trained."""
    print(f"accuracy_temporal: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="store-recall")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=None, help="override the suite's epoch budget")
    parser.add_argument("--delay", type=int, default=200, help="store-recall's silent steps between store and recall")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-temporal"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, each in a worker process of its own "
                        "(default 1; pin to as many CPUs, e.g. taskset -c 0-3 with --jobs 4)")  # fmt: skip
    parser.add_argument("--entries", default=None, help="comma-separated entries of the suite (default: all)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the table's numbers to this JSON file")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table and figure of the runs "
                        "under --out as far as they got (a run not started is left out)")  # fmt: skip
    args = parser.parse_args()
    command = "python " + shlex.join(sys.argv)
    load_before, start = os.getloadavg(), time.perf_counter()
    budget, entries, data = SUITES[args.suite]
    chosen = args.entries.split(",") if args.entries is not None else list(entries)
    unknown = [e for e in chosen if e not in entries]
    if unknown:
        fail(f"unknown entry {unknown[0]!r} of {args.suite}; known: {', '.join(entries)}")
    if len(set(chosen)) < len(chosen):
        fail(f"--entries {args.entries!r} names an entry twice")
    try:
        seeds = runpool.parse_seeds(args.seeds)
    except ValueError as err:
        fail(str(err))
    for flag, value in (("--threads", args.threads), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            fail(f"{flag} {value}: at least 1")
    try:
        runpool.check_jobs(args.jobs, args.threads, len(os.sched_getaffinity(0)), "this process")
    except ValueError as err:
        fail(str(err))
    runs: dict[str, list[tuple[Path, dict]]] = {entry: [] for entry in chosen}

    def said(task: tuple, summary: dict) -> None:
        print(f"{args.suite} {task[2]} seed {task[3]}: accuracy {summary['test_accuracy']}, "
              f"loss {summary['test_loss']:.4g}", file=sys.stderr, flush=True)  # fmt: skip

    try:
        tasks = [(args.out / args.suite / f"{entry}-s{seed}", args.suite, entry, seed, args.epochs, args.delay,
                  args.threads) for seed in seeds for entry in runs]  # fmt: skip
        if args.report_only:
            tasks = [task for task in tasks if (task[0] / "metrics.csv").is_file()]
            summaries = [logs.read_summary(task[0]) for task in tasks]
            for task, summary in zip(tasks, summaries, strict=True):
                said(task, summary)
        else:
            progress = runpool.RunProgress([(task[0], args.epochs or budget["epochs"]) for task in tasks])
            summaries = runpool.run_tasks(run_one, tasks, args.jobs, done=said, tick=lambda: print(
                f"{args.suite} at {time.strftime('%H:%M')}: {progress()}", file=sys.stderr, flush=True))  # fmt: skip
        for task, summary in zip(tasks, summaries, strict=True):
            runs[task[2]].append((task[0], summary))
    except (BioPropError, ValueError, runpool.WorkerDied) as err:
        fail(str(err))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (bioprop.train.Terminated): every run kept its last checkpoint
        print(f"accuracy_temporal: interrupted; the same command resumes where the runs stopped ({args.out})",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
    load_after = os.getloadavg()
    started = [summary for done in runs.values() for _, summary in done]
    if not started:
        sys.exit(f"accuracy_temporal: no run of {args.suite} under {args.out} has finished an epoch yet")
    per_epoch = math.ceil(started[0]["n_train"] / budget["batch_size"])
    print(f"\n{command}\n")
    print(f"torch {torch.__version__}, {args.threads} thread(s) × {args.jobs} job(s), load average (1/5/15 min) before "
          f"{'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}; "
          f"wall {time.perf_counter() - start:.0f} s\n")  # fmt: skip
    print(f"{data.format(delay=args.delay)}; {budget | ({'epochs': args.epochs} if args.epochs else {})}\n")
    print(table(args.suite, runs, per_epoch))
    figure(args.suite, runs, per_epoch, args.out / args.suite / "curves.png")
    print(f"\nfigure: {args.out / args.suite / 'curves.png'}")
    if args.json:
        record = {"command": command, "suite": args.suite, "data": data.format(delay=args.delay),
                  "budget": budget | ({"epochs": args.epochs} if args.epochs else {}), "per_epoch": per_epoch,
                  "error_criterion": ERROR_CRITERION, "torch": torch.__version__, "threads": args.threads,
                  "jobs": args.jobs,
                  "load_before": list(load_before), "load_after": list(load_after),
                  "seconds": time.perf_counter() - start, "entries": results(args.suite, runs, per_epoch)}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
