"""Fashion-MNIST accuracy of each rule against backprop, the same budget for every rule of a suite.

    python benchmarks/accuracy_fmnist.py --suite mlp --seeds 0 1 2       # FA family, ~1 min per run on 2 cores
    python benchmarks/accuracy_fmnist.py --suite lenet --seeds 0 1 2
    python benchmarks/accuracy_fmnist.py --suite pc-mlp --seeds 0 1 2    # predictive coding (PCX's MLP)
    python benchmarks/accuracy_fmnist.py --suite pc-lenet --seeds 0 1 2
    python benchmarks/accuracy_fmnist.py --suite microcircuit --seeds 0 1 2
    python benchmarks/accuracy_fmnist.py --suite ep-mlp --seeds 0 1 2    # ep, chl; bp = BPTT on the same net
    python benchmarks/accuracy_fmnist.py --suite ep-conv --seeds 0 1 2   # conv: 3.5-4.5 min per epoch and run
    python benchmarks/accuracy_fmnist.py --suite tp-mlp --seeds 0 1 2    # dtp, ddtp

Each (suite, rule, seed) is an ordinary bioprop run directory under ``--out``; finished runs are reused and
interrupted ones resumed, so the script can be stopped and restarted without losing work. While they train, a
line every five minutes gives the runs finished, the epochs trained and the time left. At the end it
prints, per suite, ``bioprop compare``'s table: test accuracy (final and best epoch, mean ± std over seeds),
each layer's update angle to backprop at the last epoch, and seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import runpool
from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError
from bioprop.report import plots, tables

# One budget per suite, shared by every rule: the only thing that changes inside a suite is the rule (and its
# options, listed with it).
FA_FAMILY = {"bp": {}, "fa": {}, "dfa": {}, "usf": {}, "brsf": {}, "frsf": {}}
SUITES: dict[str, tuple[dict, dict[str, dict]]] = {
    "mlp": (dict(arch="mlp:512x512", activation="tanh", optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                 schedule="cosine", batch_size=128, epochs=20), FA_FAMILY),
    # lr 2e-3 let FA's losses blow up on LeNet (81.6 % after 18 epochs); 5e-4 trains it smoothly.
    "lenet": (dict(arch="lenet", activation="relu", optimizer="adamw", lr=5e-4, weight_decay=1e-4,
                   schedule="cosine", batch_size=64, epochs=20), FA_FAMILY),
    # PCX's Fashion-MNIST MLP (784-128-128-128-10 gelu, 25 epochs). Seed 0 while choosing: weight decay 0.1 beat
    # 1e-4 and 0.3 for bp; pc with T = 8, γ = 0.1 reached only 86-87 % (more relaxation, updates further from
    # the gradient), T = 5, γ = 0.05 89.62 %, and squared error in place of cross-entropy did worse.
    "pc-mlp": (dict(arch="mlp:128x128x128", activation="gelu", optimizer="adamw", lr=1e-3, weight_decay=0.1,
                    schedule="cosine", batch_size=64, epochs=25), {"bp": {}, "pc": {"steps": 5, "gamma": 0.02}}),
    # The inference's stability bound 2/λ_max falls as LeNet's weights grow: γ = 0.1 (T = 5, weight decay 1e-4)
    # let the energy rise in epoch 4 of seed 0, γ = 0.05 (T = 8, weight decay 0.1) in epoch 5 of seed 1.
    "pc-lenet": (dict(arch="lenet", activation="relu", optimizer="adamw", lr=1e-3, weight_decay=0.1,
                      schedule="cosine", batch_size=64, epochs=10), {"bp": {}, "pc": {"steps": 8, "gamma": 0.02}}),
    # Sacramento et al.'s microcircuit: one hidden layer of 500 softplus units (their MNIST net had two), a stronger
    # teaching conductance than the paper's 0.1 (g_som = 1), Adam.
    "microcircuit": (dict(arch="mlp:500", activation="softplus", optimizer="adam", lr=1e-3, weight_decay=0.0,
                          schedule="cosine", batch_size=64, epochs=20), {"bp": {}, "microcircuit": {"g_som": 1.0}}),
    # Energy-based 784-512-10 (hard sigmoid, squared-error output): T1 = 30, T2 = 10, symmetric ±β = 0.5 for ep;
    # chl clamps the output for 10 steps; bp is backprop through time over the same net's 30 free steps (ep's
    # reference gradient). Seed 0 while choosing: Adam lr 1e-3 trained ep to 80.4 % in 10 epochs (hard-sigmoid units
    # saturate), 5e-4 to 88.8 %, 2e-4 to 89.2 %.
    "ep-mlp": (dict(arch="ebm:512", optimizer="adam", lr=2e-4, schedule="cosine", batch_size=64, epochs=15),
               {"bp": {"output": "se"}, "bp/feedforward": {}, "ep": {"output": "se"}, "chl": {}}),
    # Laborieux's ConvNet pattern at a width one CPU core trains in minutes per epoch: conv 16 and 32 channels
    # (5x5, each with 2x2 max-pooling inside Φ), output 10; T1 = 30, T2 = 8, symmetric ±β = 0.5. Seed 0 on 20k
    # examples, 1 epoch, T1 = 20: lr 1e-3 81.7 %, 2e-4 75.1 %; with a ce readout the free phase no longer settled in
    # 20 steps (mean |Δs| 1.1e-3 at step 20), and the conv free phase's residual decays slowly: 30 steps. bp is BPTT
    # over the same net's 30 free steps with the last layer as a softmax readout: with the clipped se output (as
    # on ep-mlp) BPTT reached 55 % after the first epoch, output units clipped at 0 getting no gradient.
    "ep-conv": (dict(arch="ebm-conv:16x32", optimizer="adam", lr=1e-3, schedule="cosine", batch_size=64,
                     epochs=3),
                {"bp": {"output": "ce"}, "ep": {"free_steps": 30, "nudged_steps": 8, "output": "se"}}),
    # Target propagation (Lee et al. 2015; Meulemans et al. 2020) on a tanh 784-256-256-10 MLP, Adam; the feedback
    # pre-trained on the first 200 batches (a fifth of an epoch), then trained one SGD step per batch. Seed 0 over
    # 10 epochs: bp 89.39, dtp 87.90, ddtp 88.80 %; dtp with target_lr 0.3 87.48 %, with 3 feedback iterations no
    # better by epoch 7; so 20 epochs.
    "tp-mlp": (dict(arch="mlp:256x256", activation="tanh", optimizer="adam", lr=1e-3, schedule="cosine",
                    batch_size=64, epochs=20),
               # dtp/tl1: of twelve dtp settings, the highest validation accuracy (--validation 5000, seed 0, 20 epochs;
               # README): target_lr 1.0 (val 89.04 %, defaults 88.64 %, within about one standard error of each other)
               # dtp/lee: Lee et al.'s own first target, at the top hidden layer (first_target=hidden), defaults
               # otherwise (not tuned).
               {"bp": {}, "dtp": {"pretrain_batches": 200}, "ddtp": {"pretrain_batches": 200},
                "dtp/tl1": {"pretrain_batches": 200, "target_lr": 1.0},
                "dtp/lee": {"pretrain_batches": 200, "first_target": "hidden"}}),
}  # fmt: skip
# Entries named RULE/VARIANT run RULE with these settings in place of the suite's (same budget otherwise): here
# backprop on the feedforward network of the same sizes (hard-sigmoid hidden layer, linear output, cross-entropy).
VARIANTS: dict[str, dict[str, dict]] = {"ep-mlp": {"bp/feedforward": dict(arch="mlp:512", activation="hard_sigmoid")}}


def run_one(run_dir: Path, suite: str, rule: str, seed: int, epochs: int | None, data_dir: str | None,
            threads: int) -> dict:  # fmt: skip
    """Train one run with ``threads`` torch threads, or reuse it when finished, or resume it from its checkpoint when
    interrupted."""
    budget, rules = SUITES[suite]
    settings = dict(budget, rule=rule.split("/")[0], rule_opts=rules[rule], seed=seed, data="fashion-mnist",
                    data_dir=data_dir, threads=threads, **VARIANTS.get(suite, {}).get(rule, {}))  # fmt: skip
    if epochs:
        settings["epochs"] = epochs
    config = RunConfig(**settings)
    if (run_dir / "config.yaml").is_file():
        if RunConfig.from_yaml(run_dir / "config.yaml").fingerprint() != config.fingerprint():
            raise BioPropError(f"{run_dir} holds a run with other settings; pass another --out or remove it")
        summary_path = run_dir / "summary.json"
        if summary_path.is_file() and json.loads(summary_path.read_text()).get("status") == "finished":
            return json.loads(summary_path.read_text())
        if (run_dir / "checkpoint.safetensors").is_file():
            return train.resume(run_dir, quiet=True, threads=threads)
    return train.run(config, run_dir, overwrite=True, quiet=True)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    print(f"accuracy_fmnist: error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("--rules", nargs="+", default=None, help="a subset of the suite's rules (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the suite's epoch budget (for a quick look)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fmnist"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, each in a worker process of its own "
                        "(default 1; pin to as many CPUs, e.g. taskset -c 0-3 with --jobs 4)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: $OMP_NUM_THREADS, "
                        "else the CPUs this process may use ÷ --jobs)")  # fmt: skip
    args = parser.parse_args()
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    run_dirs: dict[str, list[Path]] = {suite: [] for suite in suites}
    for flag, value in (("--threads", args.threads), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            fail(f"{flag} {value}: at least 1")
    threads = args.threads if args.threads is not None else runpool.default_threads(args.jobs)
    try:
        runpool.check_jobs(args.jobs, threads, len(os.sched_getaffinity(0)), "this process")
    except ValueError as err:
        fail(str(err))
    for flag, values in (("--seeds", args.seeds), ("--rules", args.rules or [])):
        if len(set(values)) < len(values):
            fail(f"{flag} {' '.join(map(str, values))}: a value is named twice")
    if any(seed < 0 for seed in args.seeds):
        fail(f"--seeds {' '.join(map(str, args.seeds))}: seeds are non-negative")
    tasks = []
    for suite in suites:
        for rule in args.rules or SUITES[suite][1]:
            if rule not in SUITES[suite][1]:
                fail(f"suite {suite} has no rule {rule!r}; it has {', '.join(SUITES[suite][1])}")
            for seed in args.seeds:
                run_dir = args.out / suite / f"{rule.replace('/', '-')}-s{seed}"
                tasks.append((run_dir, suite, rule, seed, args.epochs, args.data_dir, threads))
                run_dirs[suite].append(run_dir)

    def said(task: tuple, summary: dict) -> None:
        accuracy = 100 * summary["test_accuracy"]
        print(f"{task[1]} {task[2]} seed {task[3]}: {accuracy:.2f} %", file=sys.stderr, flush=True)

    try:
        progress = runpool.RunProgress([(task[0], args.epochs or SUITES[task[1]][0]["epochs"]) for task in tasks])
        runpool.run_tasks(run_one, tasks, args.jobs, done=said, tick=lambda: print(
            f"accuracy_fmnist at {time.strftime('%H:%M')}: {progress()}", file=sys.stderr, flush=True))  # fmt: skip
    except (BioPropError, runpool.WorkerDied) as err:
        fail(str(err))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every run kept its last checkpoint
        print(f"accuracy_fmnist: interrupted; the same command resumes where the runs stopped ({args.out})",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
    for suite in suites:
        budget, rules = SUITES[suite]
        print(f"\n{suite}: {json.dumps(budget)}; rule options {json.dumps(rules)}\n")
        print(tables.compare(run_dirs[suite]))
        first_seed = [d for d in run_dirs[suite] if d.name.endswith(f"-s{args.seeds[0]}") and "bp-" not in d.name]
        if first_seed:  # bp's angle to its own reference is 0
            figure = args.out / suite / "alignment.png"
            plots.alignment_comparison(first_seed, figure)
            print(f"\nupdate angles of seed {args.seeds[0]} over training: {figure}")


if __name__ == "__main__":
    main()
