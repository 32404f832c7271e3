"""Speed of equilibrium propagation: ms per training step of our ``ep`` against backprop on the same-sized MLP and
against Laborieux et al.'s EP code, side by side in one process.

The setting of the issue: 784-512-10, hard sigmoid clip(x, 0, 1), batch 128, T1 = 30 free steps, T2 = 10 steps for
each nudged phase, symmetric nudging (±β, β = 0.5), squared-error output, Adam (lr 1e-3), float32, one CPU thread
by default (``--device cuda`` times on the GPU). A step is ``zero_grad`` + the update + ``optimizer.step()``.
Contenders:

- ``bp``: our ``bp`` rule (``output=se``) on the feedforward ``mlp:512`` with the hard sigmoid: one forward and one
  backward pass of the same-sized network, the denominator of the "÷ our BP" column.
- ``ep``: our ``ep`` rule on ``ebm:512`` with its defaults (energy traces every 20th batch), and ``ep-untraced``
  with ``trace_every=0``.
- ``laborieux`` and ``laborieux-bp`` (with ``--laborieux PATH``, a checkout of their repository): their P_MLP's
  EP step and backprop through the same network in their modules, driven by ``ep_harness.py`` (which imports
  their code from PATH and copies none of it).

With their code, two checks come first: agreement (their weights copied into our network, our ``ep`` update
against their ``compute_syn_grads`` gradient on one batch: the relative error per tensor) and sanity (each
contender trained ``--sanity-steps`` steps on a random linear-teacher task; accuracy on held-out inputs of the same
teacher, before and after). All contenders are then sampled round-robin (benchmarks/timing.py); the ratios are
paired medians.

Time: ``--budget`` seconds bound the whole run from the first check to the last sample (imports aside); the
timing gets what the checks and warm-up leave, and stops early at ``--repeats`` repetitions if that is given.

    python benchmarks/speed_ep.py [--laborieux PATH] [--budget 60] [--repeats N] [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import bioprop
import ep_harness
import timing

IN_FEATURES, N_CLASSES = 784, 10
Builder = Callable[[], tuple[Callable, Callable]]  # () -> (step(x, y), predict(x))


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def ours(rule: str, args: argparse.Namespace, seed: int = 0, **opts: object) -> tuple[Callable, torch.nn.Module]:
    """A fresh network, rule and Adam optimizer on ``args.device``; returns one training step as a user writes it,
    and the net."""
    torch.manual_seed(seed)
    arch = f"mlp:{args.hidden}" if rule == "bp" else f"ebm:{args.hidden}"
    net = bioprop.nets.build(arch, (IN_FEATURES,), N_CLASSES, "hard_sigmoid").to(args.device)
    if rule == "bp":
        learner = bioprop.rules.create("bp", net, output="se")
    else:
        learner = bioprop.rules.create("ep", net, free_steps=args.t1, nudged_steps=args.t2, beta=args.beta,
                                       nudge="symmetric", output="se", **opts)  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.backward(x, y)
        optimizer.step()

    step.rule = learner  # type: ignore[attr-defined]  (for the agreement check)
    return step, net


def agreement(labo: object, args: argparse.Namespace) -> dict[str, float]:
    """Their P_MLP's weights copied into our ``ebm`` net; on one random batch, ‖ours − theirs‖ / ‖theirs‖ per
    tensor between our ``ep`` update (``rule.grads``) and the gradient their ``compute_syn_grads`` writes."""
    theirs = ep_harness.TheirEP(labo, hidden=args.hidden, T1=args.t1, T2=args.t2, beta=args.beta, lr=args.lr,
                                seed=3, device=args.device)  # fmt: skip
    step, net = ours("ep", args, trace_every=0)
    net.load_state_dict(theirs.model.state_dict())
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(args.batch, IN_FEATURES, generator=gen).to(args.device)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=gen).to(args.device)
    expected = theirs.gradient(x, y)
    got = step.rule.grads(x, y).grads
    if set(got) != set(expected):
        raise ep_harness.HarnessError(f"parameter names differ: ours {sorted(got)}, theirs {sorted(expected)}")
    return {name: float((got[name] - g).norm() / g.norm()) for name, g in expected.items()}


def sanity(args: argparse.Namespace, builders: dict[str, Builder]) -> dict:
    """Train each contender for ``--sanity-steps`` steps on a linear-teacher task; accuracy on 2048 held-out inputs
    of the same teacher, before and after."""
    gen = torch.Generator().manual_seed(7)
    x, y, teacher = timing.linear_teacher_task(args.batch * 16, (IN_FEATURES,), N_CLASSES, gen)
    test_x, test_y, _ = timing.linear_teacher_task(2048, (IN_FEATURES,), N_CLASSES, gen, teacher)
    x, y, test_x, test_y = (t.to(args.device) for t in (x, y, test_x, test_y))
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


def builders_for(args: argparse.Namespace, labo: object | None) -> dict[str, Builder]:
    def our_builder(rule: str, **opts: object) -> Builder:
        def build() -> tuple[Callable, Callable]:
            step, net = ours(rule, args, **opts)
            return step, lambda x: net(x).detach()

        return build

    builders: dict[str, Builder] = {
        "bp": our_builder("bp"),
        "ep": our_builder("ep"),
        "ep-untraced": our_builder("ep", trace_every=0),
    }
    if labo is not None:
        common = dict(hidden=args.hidden, lr=args.lr, seed=0, device=args.device)

        def their_ep() -> tuple[Callable, Callable]:
            made = ep_harness.TheirEP(labo, T1=args.t1, T2=args.t2, beta=args.beta, **common)
            return made.step, made.predict

        def their_bp() -> tuple[Callable, Callable]:
            made = ep_harness.TheirBP(labo, **common)
            return made.step, made.predict

        builders["laborieux"] = their_ep
        builders["laborieux-bp"] = their_bp
    return builders


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    labo, source, agree = None, None, None
    if args.laborieux:
        labo = ep_harness.load(args.laborieux)
        source = ep_harness.describe(args.laborieux)
        if not source["same"]:
            log(f"note: their checkout is at {source['commit'] or 'an unknown commit (not a git checkout)'}; the "
                f"README's figures were measured at {ep_harness.COMMIT[:7]}")  # fmt: skip
        agree = agreement(labo, args)
        log(f"  agreement with their compute_syn_grads (relative error per tensor): max {max(agree.values()):.1e}")
    else:
        log(f"Laborieux et al.'s code not measured; to time it: {ep_harness.FETCH}, then --laborieux PATH")
    builders = builders_for(args, labo)
    sanity_out = sanity(args, builders) if args.sanity_steps else {}
    gen = torch.Generator().manual_seed(1234)
    x = torch.rand(args.batch, IN_FEATURES, generator=gen).to(args.device)
    y = torch.randint(0, N_CLASSES, (args.batch,), generator=gen).to(args.device)
    contenders = {}
    for name, build in builders.items():
        step, _ = build()
        for _ in range(args.warmup):
            step(x, y)
        contenders[name] = timing.timed(step, x, y, args.inner)
    setup_s = time.perf_counter() - started
    load = [os.getloadavg()[0]]
    log(f"timing {len(contenders)} contenders round-robin, {args.inner} steps per sample; {setup_s:.0f} s of the "
        f"{args.budget:.0f} s budget went to the checks and warm-up")  # fmt: skip
    timed = timing.round_robin_run(contenders, args.repeats, args.budget, log, started=started)
    samples, cpu = timed.samples, timed.cpu
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
    device = torch.device(args.device)
    return {
        "config": {k: getattr(args, k) for k in ("hidden", "batch", "t1", "t2", "beta", "lr", "threads", "inner")}
        | {"device": str(device), "budget_s": args.budget, "repeats_cap": args.repeats}
        | {"repeats": timed.repetitions, "stopped_by": timed.stopped_by},
        "versions": {"torch": torch.__version__, "bioprop": getattr(bioprop, "__version__", "?")}
        | ({"cuda_device": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        "laborieux": source,
        "agreement": agree,
        "load_avg_1min": load,
        "setup_s": setup_s,
        "wall_s": time.perf_counter() - started,
        "sanity": sanity_out,
        "results": results,
    }


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:6.2f}"


def report(out: dict) -> None:
    cfg, res = out["config"], out["results"]
    where = out["versions"].get("cuda_device") or f"CPU, {cfg['threads']} thread(s)"
    print(
        f"EP speed: 784-{cfg['hidden']}-10 hard sigmoid, batch {cfg['batch']}, T1={cfg['t1']}, T2={cfg['t2']}, "
        f"symmetric ±β={cfg['beta']}, se output, Adam lr {cfg['lr']}, float32 on {where}; "
        f"{cfg['repeats']} round-robin repetitions of {cfg['inner']} steps; torch {out['versions']['torch']}"
    )
    print("ms/step median [IQR]; paired = median over repetitions of the ratio of two samples taken together")
    head = f"{'contender':<14} | {'ms/step':>22} | {'÷ our BP (paired)':>17} | {'÷ Laborieux (paired)':>20}"
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        cell = f"{r['median_ms']:7.2f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}]"
        print(f"{name:<14} | {cell:>22} | {fmt(r['paired_to_bp']):>17} | {fmt(r['paired_to_laborieux']):>20}")
    if out["laborieux"] is None:
        print(f"Laborieux et al.'s code: not measured. {ep_harness.FETCH}, then rerun with --laborieux PATH.")
    else:
        src = out["laborieux"]
        print(f"Laborieux et al.'s code from {src['path']} at commit {(src['commit'] or 'unknown')[:7]}; our ep update "
              f"vs their compute_syn_grads: max relative error {max(out['agreement'].values()):.1e}")  # fmt: skip
    load = out["load_avg_1min"]
    print(f"load average (1 min) before/after: {load[0]:.1f}, {load[1]:.1f} on {os.cpu_count()} CPUs")
    print(f"wall time {out['wall_s']:.0f} s of the {cfg['budget_s']:.0f} s budget ({out['setup_s']:.0f} s checks and "
          f"warm-up); stopped by the {'repeat cap' if cfg['stopped_by'] == 'repeats' else 'budget'}")  # fmt: skip


def positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--laborieux", metavar="PATH", default=os.environ.get("LABORIEUX_EP"),
                        help=f"checkout of their repository ({ep_harness.FETCH}); default $LABORIEUX_EP")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=positive(int), default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--budget", type=positive(float), default=60,
                        help="seconds the whole run may take, checks and warm-up included (default 60)")  # fmt: skip
    parser.add_argument("--repeats", type=positive(int), default=None,
                        help="stop timing after this many round-robin repetitions (default: no cap)")  # fmt: skip
    parser.add_argument("--inner", type=positive(int), default=2, help="steps per sample (default 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--hidden", type=positive(int), default=512)
    parser.add_argument("--batch", type=positive(int), default=128)
    parser.add_argument("--t1", type=positive(int), default=30)
    parser.add_argument("--t2", type=positive(int), default=10)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--lr", type=positive(float), default=1e-3)
    parser.add_argument("--sanity-steps", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results (with every sample) here")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: not a device: {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    try:
        out = run(args)
    except ep_harness.HarnessError as exc:
        print(f"speed_ep: error: {exc}", file=sys.stderr)
        return 2
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
