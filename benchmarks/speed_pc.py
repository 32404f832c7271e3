"""Speed of predictive coding: ms per training step, our ``pc`` rule against PCX 0.6.3 (JAX), side by side.

The same network in both: an MLP 784-128-128-10 (GELU after each hidden layer, linear output), batch 64, float32,
CPU. A step is one batch's inference (T = 20 plain gradient steps of size γ = 0.1 on the value nodes, no momentum)
plus one AdamW weight update (lr 1e-3): for us ``zero_grad`` + ``rule.backward(x, y)`` + ``optimizer.step()``; for
PCX its ``pxf.jit``-compiled ``train_on_batch``, written as PCX's examples write it (benchmarks/pcx_harness.py).
Both output energies are timed: squared error (output node clamped to the one-hot target) and cross-entropy.
Backprop on the same network is timed on both sides too (ours ``bp``; PCX's plain-JAX tutorial-0b step), for the
pc/BP ratios.

Incremental PC is timed on its own network, 784-512-10 GELU, batch 128, T = 20 (``--ipc-hidden``, ``--ipc-batch``;
``--no-ipc`` skips it): ours ``ipc`` (output se, inner weight step η = ``--weight-lr`` 0.01, one AdamW step per
batch) against PCX's iPC, whose weights step at every inference step: ``pcx/ipc-se`` with plain SGD steps of size η
(the arithmetic of ours) and ``pcx/ipc-se-adamw`` with the AdamW steps of PCX's own iPC examples; backprop on that
network is ``bp-ipc``.

PCX runs in its own venv: this script starts ``--pcx-python benchmarks/pcx_harness.py`` as a subprocess (after
JIT compilation and a warm-up, it times the steps it is asked for, ending on ``block_until_ready``) and
interleaves its samples with ours, round-robin with the order rotated every repetition, so that a noisy, shared
machine slows all contenders alike. Thread settings are equal on both sides (default one thread: torch
``set_num_threads``, OMP_NUM_THREADS, and XLA's ``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``), and both processes are pinned to that many CPUs, since XLA's CPU client
otherwise runs its computations on extra worker threads; each sample's CPU time / wall time is recorded to check
it. Before timing,
``--sanity-steps`` steps train fresh networks on both sides on a learnable random task and report the losses.

    python benchmarks/speed_pc.py --pcx-python /work/scratch/pcx-venv/bin/python [--budget 60] [--threads 1]
                                  [--no-pin] [--outputs se ce] [--no-ipc] [--compile] [--profile 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

import bioprop
import timing

IN_SHAPE, N_CLASSES = (1, 28, 28), 10
HARNESS = Path(__file__).with_name("pcx_harness.py")
PCX_HINT = "PCX not measured: pass --pcx-python PATH, the python of a venv with pcx==0.6.3 (benchmarks/README.md)"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


class Group(NamedTuple):
    """Contenders timed on one network: ``systems`` ours (``pc-se``, ``ipc-se``, ``bp``, ...) and ``pcx_systems``,
    each ``(contender name, harness system)``."""

    name: str
    hidden: str  # as in mlp:128x128
    batch: int
    systems: list[str]
    pcx_systems: list[tuple[str, str]]


def groups_of(args: argparse.Namespace) -> list[Group]:
    """The pc network's contenders and, unless ``--no-ipc``, the ipc network's."""
    pc = [f"pc-{o}" for o in args.outputs] + ["bp"]
    groups = [Group("pc", args.hidden, args.batch, pc, [(name, name) for name in pc])]
    if not args.no_ipc:
        ipc = [f"ipc-{o}" for o in args.ipc_outputs]
        pcx = [(n, n) for n in ipc] + [(f"{n}-adamw", f"{n}-adamw") for n in ipc] + [("bp-ipc", "bp")]
        groups.append(Group("ipc", args.ipc_hidden, args.ipc_batch, [*ipc, "bp-ipc"], pcx))
    return groups


class Ours:
    """A fresh network, rule and AdamW optimizer; ``step(x, y)`` is one training step as a user writes it."""

    def __init__(self, rule: str, hidden: str, args: argparse.Namespace, seed: int = 0, compile: str = "") -> None:
        torch.manual_seed(seed)
        self.net = bioprop.nets.build(f"mlp:{hidden}", IN_SHAPE, N_CLASSES, "gelu")
        kind, _, output = rule.partition("-")
        if kind == "bp":
            self.rule = bioprop.rules.create("bp", self.net)
        elif kind == "ipc":
            self.rule = bioprop.rules.create("ipc", self.net, steps=args.steps, gamma=args.gamma, output=output,
                                             weight_lr=args.weight_lr, compile=compile == "rule")  # fmt: skip
        else:
            self.rule = bioprop.rules.create("pc", self.net, steps=args.steps, gamma=args.gamma, output=output,
                                             compile=compile == "rule")  # fmt: skip
        # fused: one kernel for all tensors, as optax's AdamW is fused into PCX's jit-compiled step
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                     fused=not args.unfused_adamw)  # fmt: skip
        self.step: Callable[[torch.Tensor, torch.Tensor], None] = self._step
        if compile == "step":  # the whole step, optimizer included
            self.step = torch.compile(self._step)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.opt.zero_grad()
        self.rule.backward(x, y)
        self.opt.step()


def pcx_harness(python: str, args: argparse.Namespace, group: Group, env: dict[str, str]) -> timing.JsonLinesProcess:
    """The PCX harness as a subprocess in its own venv, speaking JSON lines."""
    cmd = [python, str(HARNESS), "--hidden", *group.hidden.split("x"), "--batch", str(group.batch)]
    cmd += ["--steps", str(args.steps), "--gamma", str(args.gamma), "--lr", str(args.lr)]
    cmd += ["--weight-decay", str(args.weight_decay), "--gelu", args.pcx_gelu, "--warmup", str(args.warmup)]
    cmd += ["--weight-lr", str(args.weight_lr), "--systems", *sorted({system for _, system in group.pcx_systems})]
    return timing.JsonLinesProcess(cmd, env, "PCX", quit_timeout=30.0)


def thread_env(threads: int) -> dict[str, str]:
    """The environment for the PCX subprocess: JAX on the CPU with the same thread count as torch."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads))
    xla = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
    if threads > 1:
        xla = f"intra_op_parallelism_threads={threads}"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla).strip()
    return env


def losses(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Batch-mean ½‖z − onehot‖², cross-entropy and accuracy of the feedforward prediction z (as the harness)."""
    with torch.no_grad():
        z = net(x).double()
    onehot = F.one_hot(y, N_CLASSES).double()
    return {
        "se": float(0.5 * (z - onehot).square().sum(1).mean()),
        "ce": float(F.cross_entropy(z, y)),
        "acc": float((z.argmax(1) == y).double().mean()),
    }


def sanity(args: argparse.Namespace, group: Group, pcx: timing.JsonLinesProcess | None) -> dict:
    """Train fresh networks of every contender of ``group`` for ``--sanity-steps`` steps on the same 16 batches."""
    gen = torch.Generator().manual_seed(99)
    x, y, _ = timing.linear_teacher_task(16 * group.batch, IN_SHAPE, N_CLASSES, gen)
    out: dict[str, dict] = {}
    for name in group.systems:
        ours = Ours(name, group.hidden, args, seed=1)
        before = losses(ours.net, x, y)
        for i in range(args.sanity_steps):
            batch = slice((i % 16) * group.batch, (i % 16 + 1) * group.batch)
            ours.step(x[batch], y[batch])
        out[f"ours/{name}"] = {"before": before, "after": losses(ours.net, x, y)}
    if pcx is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "data.npz")
            np.savez(path, x=x.flatten(1).numpy(), y=y.numpy())
            reply = pcx.ask(cmd="sanity", steps=args.sanity_steps, data=path)
        names = {system: name for name, system in group.pcx_systems}
        out.update({f"pcx/{names[k]}": v for k, v in reply["sanity"].items()})
    return out


def profile(args: argparse.Namespace, name: str, x: torch.Tensor, y: torch.Tensor) -> str:
    """torch.profiler's table of our ``name`` step, by self CPU time, over ``--profile`` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ours = Ours(name, args.hidden, args)
    for _ in range(args.warmup):
        ours.step(x, y)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile):
            ours.step(x, y)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return f"torch.profiler, ours/{name}, {args.profile} steps (times are totals over them):\n{table}"


def pin(args: argparse.Namespace) -> list[int] | None:
    """Restrict this process, and so the PCX subprocess it starts, to ``--threads`` CPUs (``--cpus`` or the first
    ones allowed). XLA's CPU client runs each computation on worker threads of its own while Python dispatches the
    next one; unpinned, PCX then uses 1.3-1.6 cores where torch uses 1, whatever the thread flags say."""
    if args.no_pin or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def run(args: argparse.Namespace) -> dict:
    cpus = pin(args)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    groups = groups_of(args)
    pcx: dict[str, timing.JsonLinesProcess] = {}
    if args.pcx_python:
        for group in groups:
            log(f"starting the PCX harness for {group.name} with {args.pcx_python} (JIT compilation: seconds)")
            pcx[group.name] = pcx_harness(args.pcx_python, args, group, thread_env(args.threads))
    else:
        log(PCX_HINT)

    sanity_out: dict[str, dict] = {}
    for group in groups if args.sanity_steps else ():
        sanity_out |= sanity(args, group, pcx.get(group.name))

    contenders: dict[str, Callable[[], tuple[float, float]]] = {}
    t_start = time.perf_counter()
    compile_s: dict[str, float] = {}
    for group in groups:
        gen = torch.Generator().manual_seed(1234)
        x = torch.rand((group.batch, *IN_SHAPE), generator=gen)
        y = torch.randint(0, N_CLASSES, (group.batch,), generator=gen)
        for name in group.systems:
            ours = Ours(name, group.hidden, args)
            for _ in range(args.warmup):
                ours.step(x, y)
            contenders[f"ours/{name}"] = timing.timed(ours.step, x, y, args.inner)
        first = group.systems[0]
        for what in ("rule", "step") if args.compile and group.name == "pc" else ():  # compile=True; whole step
            log(f"torch.compile of our {first} {what} (compiles on the first calls; a minute on 2 busy cores)...")
            t0 = time.perf_counter()
            try:
                compiled = Ours(first, group.hidden, args, compile=what)
                for _ in range(max(args.warmup, 3)):
                    compiled.step(x, y)
            except Exception as exc:  # noqa: BLE001  (report what failed, time the rest)
                log(f"torch.compile of the {what} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            contenders[f"ours/{first}+compile({what})"] = timing.timed(compiled.step, x, y, args.inner)
            compile_s[what] = time.perf_counter() - t0
        harness = pcx.get(group.name)
        for name, system in group.pcx_systems if harness is not None else ():

            def ask(system: str = system, harness: timing.JsonLinesProcess = harness) -> tuple[float, float]:
                reply = harness.ask(cmd="time", system=system, inner=args.inner)
                return reply["ms"], reply["cpu"]

            contenders[f"pcx/{name}"] = ask

    names = list(contenders)
    load = [os.getloadavg()[0]]
    log(f"timing {len(names)} contenders round-robin, {args.inner} steps per sample, budget {args.budget:.0f} s")
    samples, cpu = timing.round_robin(contenders, args.repeats, args.budget, log)
    load.append(os.getloadavg()[0])
    versions = {"torch": torch.__version__, "bioprop": getattr(bioprop, "__version__", "?")}
    for harness in pcx.values():
        versions |= harness.hello["versions"]
        harness.close()
    bp_of = {name: "bp-ipc" if name.startswith(("ipc", "bp-ipc")) else "bp" for group in groups
             for name in [*group.systems, *(n for n, _ in group.pcx_systems)]}  # fmt: skip

    def paired(a: str, b: str) -> float | None:
        return timing.paired(samples[a], samples[b]) if a in samples and b in samples else None

    ipc_config = None
    if not args.no_ipc:
        ipc_config = {"hidden": args.ipc_hidden, "batch": args.ipc_batch, "outputs": args.ipc_outputs}
        ipc_config["weight_lr"] = args.weight_lr
    results: dict[str, dict] = {}
    for name in names:
        q1, med, q3 = timing.quartiles(samples[name])
        system, rule = name.split("/")
        base = rule.split("+")[0]
        entry = {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "cpu_per_wall": statistics.median(cpu[name])}
        entry["samples_ms"] = samples[name]
        entry["paired_to_bp"] = paired(name, f"{system}/{bp_of[base]}") if base != bp_of[base] else None
        entry["paired_to_pcx"] = paired(name, f"pcx/{base}") if system == "ours" else None
        if system == "ours" and base.startswith("ipc"):
            entry["paired_to_pcx_adamw"] = paired(name, f"pcx/{base}-adamw")
        results[name] = entry
    return {
        "config": {
            k: getattr(args, k)
            for k in (
                "batch",
                "hidden",
                "steps",
                "gamma",
                "lr",
                "weight_decay",
                "unfused_adamw",
                "inner",
                "warmup",
                "threads",
            )
        }
        | {"outputs": args.outputs, "pcx_gelu": args.pcx_gelu, "repeats": len(samples[names[0]]), "pinned_cpus": cpus}
        | {"ipc": ipc_config},
        "versions": versions,
        "pcx_compile_s": {f"{g}:{k}": v for g, harness in pcx.items() for k, v in harness.hello["compile_s"].items()}
        or None,
        "torch_compile_s": compile_s,
        "pcx_xla_flags": thread_env(args.threads)["XLA_FLAGS"],
        "load_avg_1min": load,
        "cpus": os.cpu_count(),
        "wall_s": time.perf_counter() - t_start,
        "sanity": sanity_out,
        "results": results,
    }


def fmt(value: float | None, spec: str = "6.2f") -> str:
    return "n/a" if value is None else format(value, spec)


def report(out: dict) -> None:
    cfg, res, ver = out["config"], out["results"], out["versions"]
    have_pcx = any(name.startswith("pcx/") for name in res)
    print(
        f"PC speed: MLP 784-{cfg['hidden'].replace('x', '-')}-10 GELU, batch {cfg['batch']}, T={cfg['steps']}, "
        f"γ={cfg['gamma']}, AdamW lr {cfg['lr']} wd {cfg['weight_decay']} "
        f"({'unfused' if cfg['unfused_adamw'] else 'fused'} on our side), float32 CPU, {cfg['threads']} thread(s); "
        f"{cfg['repeats']} round-robin repetitions of {cfg['inner']} steps"
    )
    if cfg["ipc"]:
        ipc = cfg["ipc"]
        net = f"784-{ipc['hidden'].replace('x', '-')}-10"
        print(f"ipc / bp-ipc: MLP {net} GELU, batch {ipc['batch']}, T={cfg['steps']}, "
              f"inner weight step η={ipc['weight_lr']} (pcx/ipc-*: SGD η at each step; pcx/ipc-*-adamw: AdamW at each "
              "step, as PCX's iPC examples)")  # fmt: skip
    pinned = cfg["pinned_cpus"]
    where = f"both pinned to CPU(s) {','.join(map(str, pinned))}" if pinned else "not pinned (--no-pin)"
    print(f"versions: {', '.join(f'{k} {v}' for k, v in ver.items())}; PCX GELU: {cfg['pcx_gelu']}; {where}")
    print("ms/step median [IQR]; paired = median over repetitions of the ratio of two samples taken together")
    head = f"{'contender':<28} | {'ms/step':>20} | {'÷ same-side BP':>14} | {'÷ PCX (paired)':>14} | {'CPU/wall':>8}"
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        cell = f"{r['median_ms']:7.3f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}]"
        print(
            f"{name:<28} | {cell:>20} | {fmt(r['paired_to_bp']):>14} | {fmt(r['paired_to_pcx']):>14} | "
            f"{r['cpu_per_wall']:8.2f}"
        )
    for name, r in res.items():
        if r.get("paired_to_pcx_adamw") is not None:
            print(f"{name} ÷ pcx/{name.split('/')[1]}-adamw (paired): {r['paired_to_pcx_adamw']:.2f}")
    print()
    if out["sanity"]:
        print("sanity: fresh networks, feedforward prediction on 16 batches of a random linear-teacher task")
        for name, s in out["sanity"].items():
            b, a = s["before"], s["after"]
            print(
                f"  {name:<18} se {b['se']:.3f} -> {a['se']:.3f}   ce {b['ce']:.3f} -> {a['ce']:.3f}   "
                f"acc {b['acc']:.3f} -> {a['acc']:.3f}"
            )
    if out["pcx_compile_s"]:
        print(f"PCX JIT compile: {', '.join(f'{k} {v:.1f} s' for k, v in out['pcx_compile_s'].items())}")
    if out["torch_compile_s"]:
        spent = ", ".join(f"{k} {v:.0f} s" for k, v in out["torch_compile_s"].items())
        print(f"torch.compile warm-up (compilation + {cfg['warmup']} steps): {spent}; graph breaks at .item()/bool()")
    load = out["load_avg_1min"]
    print(f"PCX XLA_FLAGS={out['pcx_xla_flags']!r}; load average (1 min) before/after: {load[0]:.1f}, {load[1]:.1f} "
          f"on {out['cpus']} CPUs")  # fmt: skip
    if not have_pcx:
        print(PCX_HINT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pcx-python", metavar="PATH", default=os.environ.get("PCX_PYTHON"),
                        help="python of PCX's venv (default $PCX_PYTHON); without it, ours only")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and XLA alike (default 1)")
    parser.add_argument("--cpus", help="comma-separated CPUs to pin both sides to (default: the first --threads)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin (PCX's XLA then uses extra cores)")
    parser.add_argument("--budget", type=float, default=60, help="seconds of timing after warm-up (default 60)")
    parser.add_argument("--repeats", type=int, default=200, help="at most this many repetitions (default 200)")
    parser.add_argument("--inner", type=int, default=3, help="steps per timed sample (default 3)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per contender first (default 10)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", default="128x128", help="hidden sizes, as in mlp:128x128")
    parser.add_argument("--steps", type=int, default=20, help="inference steps T (default 20)")
    parser.add_argument("--gamma", type=float, default=0.1, help="value-node step size γ (default 0.1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay, both sides (1e-4)")
    parser.add_argument("--unfused-adamw", action="store_true", help="ours: torch's default AdamW, not fused=True")
    parser.add_argument("--outputs", nargs="+", choices=("se", "ce"), default=["se", "ce"], help="output energies")
    parser.add_argument("--no-ipc", action="store_true", help="do not time incremental PC (ipc) and its network")
    parser.add_argument("--ipc-hidden", default="512", help="ipc's hidden sizes (default 512: 784-512-10)")
    parser.add_argument("--ipc-batch", type=int, default=128, help="ipc's batch size (default 128)")
    parser.add_argument("--ipc-outputs", nargs="+", choices=("se", "ce"), default=["se"], help="ipc's output energies")
    parser.add_argument("--weight-lr", type=float, default=0.01, help="ipc's inner weight step η (default 0.01)")
    parser.add_argument("--pcx-gelu", choices=("exact", "tanh"), default="exact",
                        help="PCX's GELU: exact (erf, as torch's nn.GELU) or tanh (jax.nn.gelu's default)")  # fmt: skip
    parser.add_argument("--sanity-steps", type=int, default=200, help="training steps of the sanity check (0: skip)")
    parser.add_argument("--compile", action="store_true",
                        help="also time our first pc rule under torch.compile: the rule's compile=True option (its "
                             "inference compiled), and the whole training step")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="then print torch.profiler's table of our first pc rule over STEPS steps")  # fmt: skip
    parser.add_argument("--json", metavar="OUT", help="write all results (samples included) to this JSON file")
    args = parser.parse_args(argv)
    out = run(args)
    report(out)
    if args.profile:
        gen = torch.Generator().manual_seed(1234)
        x = torch.rand((args.batch, *IN_SHAPE), generator=gen)
        y = torch.randint(0, N_CLASSES, (args.batch,), generator=gen)
        text = profile(args, f"pc-{args.outputs[0]}", x, y)
        print()
        print(text)
        out["profile"] = text
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
