"""Speed of equilibrium propagation: ms per training step of our ``ep`` against backprop on the same-sized MLP and
against Laborieux et al.'s EP code, side by side in one process.

The setting of the issue: 784-512-10, hard sigmoid clip(x, 0, 1), batch 128, T1 = 30 free steps, T2 = 10 steps for
each nudged phase, symmetric nudging (±β, β = 0.5), squared-error output, Adam (lr 1e-3), float32 CPU, one thread
by default. A step is ``zero_grad`` + the update + ``optimizer.step()``. Contenders:

- ``bp``: our ``bp`` rule (``output=se``) on the feedforward ``mlp:512`` with the hard sigmoid: one forward and one
  backward pass of the same-sized network, the denominator of the "÷ BP" column.
- ``ep``: our ``ep`` rule on ``ebm:512`` with its defaults (energy traces every 20th batch), and ``ep-untraced``
  with ``trace_every=0``.
- ``laborieux`` and ``laborieux-bp``: their P_MLP's EP step (``train``'s loop body with ``thirdphase``) and a plain
  backprop step of theirs, both from a harness module kept outside this repository (their code is not ours to
  copy): ``--laborieux-harness PATH`` names a Python file whose ``contender(hidden, batch, T1, T2, beta, seed, lr,
  act)`` and ``bp_contender(hidden, batch, seed, lr, act)`` return ``step(x, y)`` functions (see benchmarks/README.md).

All contenders live in this process and are sampled round-robin (benchmarks/timing.py); the ratios are paired
medians. Before timing, ``--sanity-steps`` steps of each contender train on a random linear-teacher task and its
accuracy on held-out inputs of the same teacher, before and after, is printed.

    python benchmarks/speed_ep.py --laborieux-harness /path/to/ep_harness.py [--budget 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import bioprop
import timing

IN_FEATURES, N_CLASSES = 784, 10


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def ours(rule: str, args: argparse.Namespace, **opts: object) -> tuple[Callable, torch.nn.Module]:
    """A fresh network, rule and Adam optimizer; returns one training step as a user writes it, and the net."""
    torch.manual_seed(0)
    arch = f"mlp:{args.hidden}" if rule == "bp" else f"ebm:{args.hidden}"
    net = bioprop.nets.build(arch, (IN_FEATURES,), N_CLASSES, "hard_sigmoid")
    if rule == "bp":
        learner = bioprop.rules.create("bp", net, output="se")
    else:
        learner = bioprop.rules.create("ep", net, free_steps=args.t1, nudged_steps=args.t2, beta=args.beta,
                                       nudge="symmetric", **opts)  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.backward(x, y)
        optimizer.step()

    return step, net


def load_harness(path: str) -> object:
    spec = importlib.util.spec_from_file_location("laborieux_harness", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"speed_ep: error: cannot load the harness {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sanity(args: argparse.Namespace, builders: dict[str, Callable[[], tuple[Callable, Callable]]]) -> dict:
    """Train each contender for ``--sanity-steps`` steps on a linear-teacher task; accuracy on 2048 held-out inputs
    of the same teacher, before and after."""
    gen = torch.Generator().manual_seed(7)
    x, y, teacher = timing.linear_teacher_task(args.batch * 16, (IN_FEATURES,), N_CLASSES, gen)
    test_x, test_y, _ = timing.linear_teacher_task(2048, (IN_FEATURES,), N_CLASSES, gen, teacher)
    out = {}
    for name, build in builders.items():
        step, predict = build()
        before = float((predict(test_x).argmax(1) == test_y).float().mean())
        for i in range(args.sanity_steps):
            rows = slice((i % 16) * args.batch, (i % 16 + 1) * args.batch)
            step(x[rows], y[rows])
        after = float((predict(test_x).argmax(1) == test_y).float().mean())
        out[name] = {"before": before, "after": after}
        log(f"  sanity {name}: accuracy {before:.3f} -> {after:.3f} after {args.sanity_steps} steps")
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    harness = load_harness(args.laborieux_harness) if args.laborieux_harness else None
    if harness is None:
        log("Laborieux's code not measured: pass --laborieux-harness PATH (benchmarks/README.md)")

    def our_builder(rule: str, **opts: object) -> Callable[[], tuple[Callable, Callable]]:
        def build() -> tuple[Callable, Callable]:
            step, net = ours(rule, args, **opts)
            return step, lambda x: net(x).detach()

        return build

    builders: dict[str, Callable[[], tuple[Callable, Callable]]] = {
        "bp": our_builder("bp"),
        "ep": our_builder("ep"),
        "ep-untraced": our_builder("ep", trace_every=0),
    }
    if harness is not None:
        settings = dict(hidden=args.hidden, batch=args.batch, seed=0, lr=args.lr, act="hard_sigmoid")

        def theirs(bp: bool) -> tuple[Callable, Callable]:
            if bp:
                made = harness.bp_contender(**settings)
            else:
                made = harness.contender(T1=args.t1, T2=args.t2, beta=args.beta, **settings)
            return made, getattr(made, "predict", None) or (lambda x: torch.zeros(len(x), N_CLASSES))

        builders["laborieux"] = lambda: theirs(False)
        builders["laborieux-bp"] = lambda: theirs(True)

    sanity_out = sanity(args, builders) if args.sanity_steps else {}
    gen = torch.Generator().manual_seed(1234)
    x = torch.rand(args.batch, IN_FEATURES, generator=gen)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=gen)
    contenders = {}
    for name, build in builders.items():
        step, _ = build()
        for _ in range(args.warmup):
            step(x, y)
        contenders[name] = timing.timed(step, x, y, args.inner)
    load = [os.getloadavg()[0]]
    started = time.perf_counter()
    log(f"timing {len(contenders)} contenders round-robin, {args.inner} steps per sample, budget {args.budget:.0f} s")
    samples, cpu = timing.round_robin(contenders, args.repeats, args.budget, log)
    load.append(os.getloadavg()[0])
    results = {}
    for name in contenders:
        q1, med, q3 = timing.quartiles(samples[name])
        results[name] = {
            "median_ms": med, "q1_ms": q1, "q3_ms": q3, "cpu_per_wall": statistics.median(cpu[name]),
            "paired_to_bp": timing.paired(samples[name], samples["bp"]) if name != "bp" else None,
            "paired_to_laborieux": timing.paired(samples[name], samples["laborieux"])
            if "laborieux" in samples and name != "laborieux" else None,
            "samples_ms": samples[name],
        }  # fmt: skip
    return {
        "config": {k: getattr(args, k) for k in ("hidden", "batch", "t1", "t2", "beta", "lr", "threads", "inner")}
        | {"repeats": len(samples["bp"])},
        "versions": {"torch": torch.__version__, "bioprop": getattr(bioprop, "__version__", "?")},
        "load_avg_1min": load,
        "wall_s": time.perf_counter() - started,
        "sanity": sanity_out,
        "results": results,
    }


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:6.2f}"


def report(out: dict) -> None:
    cfg, res = out["config"], out["results"]
    print(
        f"EP speed: 784-{cfg['hidden']}-10 hard sigmoid, batch {cfg['batch']}, T1={cfg['t1']}, T2={cfg['t2']}, "
        f"symmetric ±β={cfg['beta']}, se output, Adam lr {cfg['lr']}, float32 CPU, {cfg['threads']} thread(s); "
        f"{cfg['repeats']} round-robin repetitions of {cfg['inner']} steps; torch {out['versions']['torch']}"
    )
    print("ms/step median [IQR]; paired = median over repetitions of the ratio of two samples taken together")
    head = f"{'contender':<14} | {'ms/step':>20} | {'÷ our BP (paired)':>17} | {'÷ Laborieux (paired)':>20}"
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        cell = f"{r['median_ms']:7.2f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}]"
        print(f"{name:<14} | {cell:>20} | {fmt(r['paired_to_bp']):>17} | {fmt(r['paired_to_laborieux']):>20}")
    load = out["load_avg_1min"]
    print(f"load average (1 min) before/after: {load[0]:.1f}, {load[1]:.1f} on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--laborieux-harness", metavar="PATH", default=os.environ.get("LABORIEUX_HARNESS"),
                        help="harness file driving Laborieux et al.'s code (default $LABORIEUX_HARNESS)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=60, help="seconds of timing after warm-up (default 60)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--inner", type=int, default=2, help="steps per sample (default 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--t1", type=int, default=30)
    parser.add_argument("--t2", type=int, default=10)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sanity-steps", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results (with every sample) here")
    args = parser.parse_args(argv)
    out = run(args)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
