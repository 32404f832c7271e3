"""Speed of target propagation: ms per training step of ``dtp`` and ``ddtp`` against our ``bp``, side by side.

A step is ``zero_grad`` + ``rule.backward(x, y)`` + an Adam step on a tanh MLP 784-256-256-10 (``--hidden``),
batch 64, random data of Fashion-MNIST's shape, float32 on the CPU, past the feedback pre-training
(``pretrain_batches=0``: every step computes targets, the forward update and ``feedback_iterations`` feedback SGD
steps, the rules' defaults otherwise). Every contender has its own network and optimizer; all are timed in this
one process, round-robin with the order rotated every repetition (``timing.py``), so that a noisy, shared machine
slows them alike. Printed: the median and IQR of ms/step, the CPU time / wall time, and the paired ratio to ``bp``
of wall times and of CPU times (on a shared core another job's share of it counts in the first, not the second).
Issue 12's target: each ≤ 3× bp (Meulemans et al.'s code is reported at up to ~30× bp).

    .venv/bin/python benchmarks/speed_tp.py [--repeats 50] [--budget 60] [--batch 64] [--hidden 256x256]
                                            [--iterations 1] [--threads 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import bioprop
import timing

RULES = ("bp", "dtp", "ddtp")
IN_SHAPE, N_CLASSES = (1, 28, 28), 10
TARGET = 3.0  # issue 12: each ≤ 3× bp per step


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def contender(name: str, hidden: str, iterations: int, seed: int = 0):
    """One training step of ``name`` on its own fresh network and Adam optimizer."""
    torch.manual_seed(seed)
    net = bioprop.nets.build(f"mlp:{hidden}", IN_SHAPE, N_CLASSES, "tanh")
    options = {} if name == "bp" else {"pretrain_batches": 0, "feedback_iterations": iterations}
    rule = bioprop.rules.create(name, net, **options)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        rule.backward(x, y)
        opt.step()

    return step


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *IN_SHAPE, generator=generator)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=generator)
    steps = {name: contender(name, args.hidden, args.iterations) for name in RULES}
    for step in steps.values():  # warm-up: allocations, the rules' one-time checks
        for _ in range(3):
            step(x, y)
    load = [os.getloadavg()[0]]
    sampled = {name: timing.timed(step, x, y, args.inner) for name, step in steps.items()}
    samples, cpu = timing.round_robin(sampled, args.repeats, args.budget, log)
    load.append(os.getloadavg()[0])
    cpu_ms = timing.cpu_ms(samples, cpu)
    results = {}
    for name in RULES:
        q1, med, q3 = timing.quartiles(samples[name])
        results[name] = {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "cpu_per_wall": statistics.median(cpu[name]),
                         "over_bp": timing.paired(samples[name], samples["bp"]),
                         "over_bp_cpu": timing.paired(cpu_ms[name], cpu_ms["bp"]),
                         "samples_ms": samples[name]}  # fmt: skip
    return {
        "config": {"hidden": args.hidden, "batch": args.batch, "threads": args.threads, "inner": args.inner,
                   "feedback_iterations": args.iterations, "repeats": len(samples["bp"])},  # fmt: skip
        "torch": torch.__version__, "bioprop": bioprop.__version__, "load_avg_1min": load,
        "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": results,
    }  # fmt: skip


def report(out: dict) -> bool:
    cfg = out["config"]
    print(f"tanh MLP 784-{cfg['hidden'].replace('x', '-')}-10, batch {cfg['batch']}, float32 CPU, {cfg['threads']} "
          f"thread(s), Adam; {cfg['feedback_iterations']} feedback iteration(s) per batch; {cfg['repeats']} "
          f"round-robin repetitions of {cfg['inner']} step(s); torch {out['torch']}; {out['when']}")  # fmt: skip
    head = f"{'rule':<6} | {'ms/step [IQR]':>21} | {'CPU/wall':>8} | {'÷ bp':>6} | {'÷ bp, CPU':>9} | target"
    print(head)
    print("-" * len(head))
    ok = True
    for name, r in out["results"].items():
        cell = f"{r['median_ms']:7.2f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}]"
        mark = ""
        if name != "bp":
            met = r["over_bp_cpu"] <= TARGET
            ok &= met
            mark = f"≤ {TARGET:g}× bp: {'met' if met else 'NOT met'}"
        print(f"{name:<6} | {cell:>21} | {r['cpu_per_wall']:8.2f} | {r['over_bp']:6.2f} | {r['over_bp_cpu']:9.2f} | "
              f"{mark}")  # fmt: skip
    load = out["load_avg_1min"]
    print(f"÷ bp: paired ratios (median over repetitions) of wall and of CPU times; load average (1 min) "
          f"before/after {load[0]:.1f}/{load[1]:.1f} on {out['cpus']} CPUs")  # fmt: skip
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="round-robin repetitions (default 50)")
    parser.add_argument("--budget", type=float, default=60, help="at most this many seconds of timing (60)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", default="256x256", help="hidden sizes, as in mlp:H1xH2 (default 256x256)")
    parser.add_argument("--iterations", type=int, default=1, help="feedback iterations per batch (default 1)")
    parser.add_argument("--inner", type=int, default=10, help="steps per timed sample (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", metavar="OUT", help="write all results (samples included) to this JSON file")
    args = parser.parse_args(argv)
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
