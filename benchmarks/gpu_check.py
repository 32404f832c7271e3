"""The GPU check, one prepared script for a machine with a CUDA GPU: the ``cuda`` tests, then CUDA timings of the
speed benchmarks' settings. Well under 10 minutes with the defaults (about 4-5: a minute of tests, four timings of
--budget seconds each).

1. ``pytest -m cuda tests/test_cuda.py``: every rule's update on the GPU against its CPU float64 result.
2. ``speed_ep.py --device cuda``: our ``ep`` against our ``bp`` (and Laborieux et al.'s code with ``--laborieux``).
3. Three round-robin timings of whole training steps on the GPU (float32, ``benchmarks/timing.py``, the device
   synchronised around every sample), each with its paired ratio to ``bp`` on the same network:

   - ``fa``: speed_fa.py's setting, 784-1000-10 ReLU, batch 128, SGD; bp fa dfa usf brsf frsf;
   - ``pc``: speed_pc.py's setting, 784-128-128-10 GELU, batch 64, T = 20, γ = 0.1, AdamW; bp, pc (se), pc-fpa;
   - ``rules``: every registered rule with its defaults on 784-512-10 (``mlp:512`` with the rule's activation,
     ``ebm:512`` for the rules that train energy nets), batch 128, Adam.

Everything goes to ``--out`` (default ``$OUT``, else ``runs/gpu-check``): ``summary.md`` (the tables for
benchmarks/README.md), ``env.json``, ``pytest-cuda.txt``, ``speed_ep.txt`` / ``.json`` and ``timings.json``.
The exit status is 1 when a cuda test failed, 0 otherwise. ``--device cpu`` runs the same timings on the CPU (the
tests then skip), to try the script on a machine without a GPU.

    python benchmarks/gpu_check.py [--out DIR] [--budget 40] [--laborieux PATH] [--device cuda]

Needs a Python with a CUDA build of torch and bioprop installed (``pip install -e .`` in the repository);
``src`` is put on ``PYTHONPATH`` for the subprocesses, so an uninstalled checkout works too when the dependencies
are there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import torch  # noqa: E402

import bioprop  # noqa: E402
import bioprop.errors  # noqa: E402
import timing  # noqa: E402

IN_FEATURES, N_CLASSES = 784, 10


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Contender:
    name: str
    rule: str
    arch: str
    act: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """Contenders timed together, round-robin, on one batch size and optimizer."""

    name: str
    title: str
    batch: int
    optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    contenders: tuple[Contender, ...]


def energy_rule(rule: str) -> bool:
    """Whether ``rule`` trains energy-based nets (it refuses a feedforward one)."""
    try:
        bioprop.rules.create(rule, bioprop.nets.build("mlp:4", (3,), 2, "relu"))
    except bioprop.errors.BioPropError:
        return True
    return False


def groups() -> list[Group]:
    fa_rules = ("bp", "fa", "dfa", "usf", "brsf", "frsf")
    pc = dict(steps=20, gamma=0.1)
    every = []
    for rule in bioprop.rules.names():
        if energy_rule(rule):
            every.append(Contender(rule, rule, "ebm:512", "hard_sigmoid"))
        else:
            act = getattr(bioprop.rules.entry(rule).cls, "activation", None) or "relu"
            every.append(Contender(rule, rule, "mlp:512", act))
    return [
        Group("fa", "speed_fa.py's setting: 784-1000-10 ReLU, batch 128, SGD lr 0.01", 128,
              lambda p: torch.optim.SGD(p, lr=0.01),
              tuple(Contender(r, r, "mlp:1000", "relu") for r in fa_rules)),
        Group("pc", "speed_pc.py's setting: 784-128-128-10 GELU, batch 64, T = 20, γ = 0.1, AdamW lr 1e-3 wd 1e-4",
              64, lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-4),
              (Contender("bp", "bp", "mlp:128x128", "gelu"),
               Contender("pc (se)", "pc", "mlp:128x128", "gelu", dict(pc, output="se")),
               Contender("pc-fpa", "pc-fpa", "mlp:128x128", "gelu", dict(steps=20)))),
        Group("rules", "every rule with its defaults on 784-512-10 (ebm:512 for energy-net rules), batch 128, "
              "Adam lr 1e-3", 128, lambda p: torch.optim.Adam(p, lr=1e-3), tuple(every)),
    ]  # fmt: skip


def make_step(group: Group, c: Contender, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    torch.manual_seed(0)
    net = bioprop.nets.build(c.arch, (IN_FEATURES,), N_CLASSES, c.act).to(device)
    rule = bioprop.rules.create(c.rule, net, **c.options)
    optimizer = group.optimizer(list(net.parameters()))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        rule.backward(x, y)
        optimizer.step()

    return step


def guarded(sample: timing.Sample, name: str, failed: dict[str, str]) -> timing.Sample:
    """``sample``, but an exception (e.g. a rule's divergence guard tripping after many steps on one batch) is
    recorded in ``failed`` and the contender gives NaN from then on instead of stopping the others' timing."""

    def run() -> tuple[float, float]:
        if name in failed:
            return float("nan"), float("nan")
        try:
            return sample()
        except Exception as exc:  # noqa: BLE001
            failed[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            log(f"  {name} left out: {failed[name]}")
            return float("nan"), float("nan")

    return run


def time_group(group: Group, device: torch.device, budget: float, inner: int, warmup: int) -> dict:
    """Warm up and time one group round-robin within ``budget`` seconds; a contender that raises (in warm-up or
    later) is left out and its error recorded."""
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(1234)
    x = torch.rand(group.batch, IN_FEATURES, generator=gen).to(device)
    y = torch.randint(0, N_CLASSES, (group.batch,), generator=gen).to(device)
    sampled, failed = {}, {}
    for c in group.contenders:
        try:
            step = make_step(group, c, device)
            for _ in range(warmup):
                step(x, y)
        except Exception as exc:  # noqa: BLE001  (record it, time the others)
            failed[c.name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            log(f"  {group.name}/{c.name} left out: {failed[c.name]}")
            continue
        sampled[c.name] = guarded(timing.timed(step, x, y, inner), c.name, failed)
    log(f"timing group {group.name}: {len(sampled)} contenders, {inner} steps per sample, budget {budget:.0f} s")
    timed = timing.round_robin_run(sampled, None, budget, log, started=started)
    bp = timed.samples.get("bp")
    results = {}
    for name, values in timed.samples.items():
        if name in failed:
            continue
        q1, med, q3 = timing.quartiles(values)
        results[name] = {
            "median_ms": med, "q1_ms": q1, "q3_ms": q3,
            "paired_to_bp": timing.paired(values, bp) if bp is not None and name != "bp" else None,
            "samples_ms": values,
        }  # fmt: skip
    arch = {c.name: f"{c.arch} {c.act}" + "".join(f", {k}={v}" for k, v in c.options.items()) for c in group.contenders}
    return {"title": group.title, "repeats": timed.repetitions, "wall_s": timed.elapsed_s, "arch": arch,
            "results": results, "failed": failed}  # fmt: skip


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "bioprop": bioprop.__version__,
        "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda, "device": str(device),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "cudnn": torch.backends.cudnn.version(),
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}  # fmt: skip
    return env


def subprocess_env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return dict(os.environ, PYTHONPATH=path)


def run_logged(cmd: list[str], out: Path, timeout: float) -> int:
    """Run ``cmd`` in the repository root, its stdout and stderr into ``out`` and onto our stderr; the exit code
    (124 when it ran past ``timeout`` seconds)."""
    log("$ " + " ".join(cmd))
    with out.open("w") as fh:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            text = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
            fh.write(text + f"\n[timed out after {timeout:.0f} s]\n")
            log(text[-3000:])
            return 124
        fh.write(proc.stdout)
    log(proc.stdout[-3000:])
    return proc.returncode


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def summary(env: dict, tests_rc: int | None, tests_tail: str, ep: dict | None, timings: dict) -> str:
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines = [f"# GPU check: {where}", "",
             f"torch {env['torch']} (CUDA {env['cuda']}), bioprop {env['bioprop']}, Python {env['python']}; "
             f"float32 timings, TF32 matmul {'on' if env.get('tf32_matmul') else 'off'}", ""]  # fmt: skip
    if tests_rc is not None:
        lines += [f"cuda tests (exit {tests_rc}): {tests_tail}", ""]
    if ep is not None:
        lines += ["## speed_ep.py --device " + ep["config"]["device"], "",
                  f"{ep['config']['repeats']} repetitions of {ep['config']['inner']} steps", "",
                  "| contender | ms/step median [IQR] | ÷ our BP (paired) | ÷ Laborieux (paired) |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, r in ep["results"].items():
            lines.append(f"| {name} | {r['median_ms']:.2f} [{r['q1_ms']:.2f}-{r['q3_ms']:.2f}] | "
                         f"{fmt(r['paired_to_bp'])} | {fmt(r['paired_to_laborieux'])} |")  # fmt: skip
        lines.append("")
    for name, g in timings.items():
        lines += [f"## {name}: {g['title']}", "", f"{g['repeats']} repetitions in {g['wall_s']:.0f} s", "",
                  "| contender | network | ms/step median [IQR] | ÷ bp (paired) |", "|---|---|---|---|"]  # fmt: skip
        for cname, r in g["results"].items():
            lines.append(f"| {cname} | {g['arch'][cname]} | {r['median_ms']:.3f} [{r['q1_ms']:.3f}-{r['q3_ms']:.3f}]"
                         f" | {fmt(r['paired_to_bp'])} |")  # fmt: skip
        lines += [f"| {cname} | {g['arch'][cname]} | failed: {why} | |" for cname, why in g["failed"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-check"))
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to try the script")
    parser.add_argument("--budget", type=float, default=40, help="seconds per timing (4 of them; default 40)")
    parser.add_argument("--inner", type=int, default=5, help="steps per timed sample (default 5)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--laborieux", metavar="PATH", default=os.environ.get("LABORIEUX_EP"),
                        help="checkout of Laborieux et al.'s code for speed_ep (default $LABORIEUX_EP)")  # fmt: skip
    parser.add_argument("--skip-tests", action="store_true", help="timings only")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU visible (torch.cuda.is_available() is false); --device cpu to try the "
              "timings on the CPU", file=sys.stderr)  # fmt: skip
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = environment(device)
    (args.out / "env.json").write_text(json.dumps(env, indent=1))
    log(json.dumps(env))

    tests_rc, tests_tail = None, ""
    if not args.skip_tests:
        report = args.out / "pytest-cuda.txt"
        tests_rc = run_logged([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
                               "tests/test_cuda.py"], report, timeout=300)  # fmt: skip
        tests_tail = (report.read_text().strip().splitlines() or [""])[-1]

    ep_json = args.out / "speed_ep.json"
    cmd = [sys.executable, "benchmarks/speed_ep.py", "--device", args.device, "--budget", str(args.budget + 20),
           "--json", str(ep_json)] + (["--laborieux", args.laborieux] if args.laborieux else [])  # fmt: skip
    ep_rc = run_logged(cmd, args.out / "speed_ep.txt", timeout=args.budget + 120)
    ep = json.loads(ep_json.read_text()) if ep_rc == 0 and ep_json.exists() else None

    timings = {}
    for group in groups():
        timings[group.name] = time_group(group, device, args.budget, args.inner, args.warmup)
    (args.out / "timings.json").write_text(json.dumps({"env": env, "groups": timings}, indent=1))
    text = summary(env, tests_rc, tests_tail, ep, timings)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    log(f"gpu_check: {time.perf_counter() - t0:.0f} s in all; results in {args.out}")
    return 0 if tests_rc in (None, 0) else 1  # all skipped is 0; none collected (5) is a failure


if __name__ == "__main__":
    sys.exit(main())
