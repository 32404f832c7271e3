"""Speed of BPTT on a spiking network: our ``bptt`` against snnTorch's and Norse's surrogate-gradient BPTT, side by
side in one run.

The network of e-prop's cue accumulation (Bellec et al. 2020, Fig. 3), as LIF neurons only: 40 input channels →
100 recurrent LIF neurons (all-to-all, no self-connections) → 2 leaky readout units, T = 2250 steps of 1 ms,
batch 64, float32, CPU. Membrane decay α = e^{−1/20}, threshold 0.6, reset by subtraction, readout decay
κ = e^{−1/20}, the piecewise-linear surrogate ψ = (0.3/0.6) max(0, 1 − |v − 0.6|/0.6), cross-entropy of the
readout at the last 150 steps (bioprop.nets.recurrent has the equations). An update is the gradient of one batch,
without an optimizer step, on every side:

- ours: ``bioprop.rules.create("bptt", net).grads(x, y)`` on ``RecurrentNet(40, 100, 2, "spiking", 0,
  LIFParameters(n_ref=0))`` (``ours/bptt``: no refractory period, as the anchors have none) and on the default
  ``nets.build("lif:100", (2250, 40), 2)`` with the same weights (``ours/bptt-nref5``: 5 refractory steps);
- ``snntorch``, ``norse`` (its recurrent LIF layer, which resets to 0) and ``norse-box`` (Norse's box neurons in a
  loop written in the harness: our equation exactly): ``zero_grad``, forward, loss, ``backward()``, each in its own
  venv through ``benchmarks/snn_harness.py`` (JSON lines), whose docstring lists how each network is set up from
  our weights and every difference that remains.

All sides start from the same weights (those of ``ours/bptt``, converted to each library's parameters) and see the
same batch (``bioprop.data.load("cue-accumulation:n_train=64,n_test=1")``). Samples are taken round-robin, the
order rotated every repetition (``timing.py``); the table gives the median s/update [IQR], CPU time / wall time,
the float32 loss and firing rate of the timed update, and the paired ratios ours ÷ theirs (median over repetitions
of the ratio of two samples of the same repetition). Before timing, a float64 sanity check runs every network on
the whole batch (loss, rate, gradient norm) and on its last ``--sanity-steps`` 300 steps from rest, where it
compares the gradients, in our parameters, with ours and with our step functions run with the reset's spikes
detached (what snnTorch's RLeaky differentiates; Norse's LIFRecurrent detaches its reset too, a reset to 0);
W_rec's diagonal is left out (snnTorch trains it). Over the whole sequence a gradient with a detached reset explodes
on this network at initialisation (our step functions: ‖∇‖ ≈ 4e67 in float64; snnTorch's, through its float32
spikes, overflows to NaN), which is why the comparison uses the shorter stretch.

    .venv/bin/python benchmarks/speed_snn.py --snntorch-python /work/scratch/snntorch-venv/bin/python \\
        --norse-python /work/scratch/norse-venv/bin/python [--repeats 5] [--threads 1] [--json OUT]
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

import numpy as np
import torch

import bioprop
import timing
from bioprop import data, nets, rules
from bioprop.nets.recurrent import LIFParameters, ReadoutState, RecurrentNet, lif_step, readout_step

HARNESS = Path(__file__).with_name("snn_harness.py")
N_HIDDEN = 100
HINT = {
    "snntorch": "snnTorch not measured: pass --snntorch-python PATH, the python of a venv with snntorch (see "
    "benchmarks/README.md)",
    "norse": "Norse not measured: pass --norse-python PATH, the python of a venv with norse (see benchmarks/README.md)",
}
SYSTEMS = {"snntorch": ("snntorch",), "norse": ("norse", "norse-box")}  # harness systems per venv
OURS = ("ours/bptt", "ours/bptt-nref5")


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def start_anchor(python: str, system: str, folder: str, args: argparse.Namespace) -> timing.JsonLinesProcess:
    """One system of ``snn_harness.py`` as a subprocess in its library's venv, speaking JSON lines."""
    cmd = [python, str(HARNESS), "--system", system, "--data", folder, "--threads", str(args.threads)]
    cmd += ["--warmup", str(args.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    return timing.JsonLinesProcess(cmd, env, system)


def our_nets(steps: int, n_in: int, n_out: int) -> dict[str, RecurrentNet]:
    """``ours/bptt`` (n_ref = 0) and ``ours/bptt-nref5`` (the default ``lif:100``), with the same weights (torch's
    generator seeded with 0)."""
    torch.manual_seed(0)
    no_ref = RecurrentNet(n_in, N_HIDDEN, n_out, "spiking", 0, LIFParameters(n_ref=0))
    default = nets.build(f"lif:{N_HIDDEN}", (steps, n_in), n_out)
    default.load_state_dict(no_ref.state_dict())
    return {OURS[0]: no_ref, OURS[1]: default}


def write_batch(folder: str, x: torch.Tensor, y: torch.Tensor, net: RecurrentNet) -> None:
    """x.npy (T, B, C) float32, y.npy (T, B) int64 and weights.npz (our W_in, W_rec with its zero diagonal, W_out,
    b_out in float64) for the harnesses."""
    np.save(os.path.join(folder, "x.npy"), x.numpy())
    np.save(os.path.join(folder, "y.npy"), y.numpy())
    with torch.no_grad():
        weights = {"input": net.input.weight, "recurrent": net.recurrent_weight(), "readout_w": net.readout.weight,
                   "readout_b": net.readout.bias}  # fmt: skip
        np.savez(os.path.join(folder, "weights.npz"), **{k: v.double().numpy() for k, v in weights.items()})


def detached_reset_grads(net: RecurrentNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of our sequence loss through our step functions (``lif_step``, ``readout_step``) with the
    reset's spikes detached (``reset=z.detach()``): the gradient snnTorch's RLeaky computes (its reset is
    detached). x (T, B, C), y (T, B); keyed like ``net.named_parameters()``."""
    rule = rules.create("bptt", net)
    named = dict(net.named_parameters())
    with torch.enable_grad():
        state, out = net.initial_state(x.shape[1], x), ReadoutState(x.new_zeros(x.shape[1], net.n_out))
        w_rec, ys = net.recurrent_weight(), []
        for x_t in x:
            state = lif_step(net.input(x_t) + state.z @ w_rec.T, state, net.beta, net.params, reset=state.z.detach())
            out = readout_step(state.z, out, net.readout.weight, net.readout.bias, net.kappa)
            ys.append(out.y)
        loss = rule.loss.value(torch.stack(ys), y)
        found = torch.autograd.grad(loss, list(named.values()))
    return dict(zip(named, found, strict=True))


PARAMS = ("input.weight", "recurrent.weight", "readout.weight", "readout.bias")


def flat(grads: dict[str, np.ndarray | torch.Tensor]) -> np.ndarray:
    """The four gradients in one float64 vector, W_rec's diagonal left out (ours and Norse's have none; snnTorch's
    RLeaky trains one)."""
    parts = []
    for name in PARAMS:
        value = grads[name]
        value = value.detach().double().numpy().copy() if isinstance(value, torch.Tensor) else np.array(value, float)
        if name == "recurrent.weight":
            np.fill_diagonal(value, 0.0)
        parts.append(value.ravel())
    return np.concatenate(parts)


def compare(g: dict, ref: dict) -> dict[str, float]:
    """Cosine and relative error ‖g − ref‖ / ‖ref‖ of two gradients (:func:`flat`)."""
    a, b = flat(g), flat(ref)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"cos": cos, "rel_err": float(np.linalg.norm(a - b) / np.linalg.norm(b))}


def rate_hz(net: RecurrentNet, x: torch.Tensor) -> float:
    """Mean firing rate (Hz, 1 ms steps) of ``net`` on x (T, B, C)."""
    with torch.no_grad():
        return float(net.run(x).z.mean()) * 1000.0


def sanity(ours: dict[str, RecurrentNet], x: torch.Tensor, y: torch.Tensor, anchors: dict[str, timing.JsonLinesProcess],
           steps: int) -> dict:  # fmt: skip
    """Every network in float64 from the same weights, on the whole batch: loss, rate and gradient norm; and on its
    last ``steps`` steps (run from rest; the labels are there): the gradient compared with ours (n_ref = 0) and
    with our step functions with the reset detached. The whole sequence cannot serve for the comparison: there the
    gradient with a detached reset explodes (norm ≈ 4e67 in float64 on the default batch; snnTorch's overflows)."""
    x64, out = x.double(), {}
    short = slice(x.shape[0] - steps, None)
    ref_net = RecurrentNet(x.shape[2], N_HIDDEN, ours[OURS[0]].n_out, "spiking", 0, LIFParameters(n_ref=0)).double()
    ref_net.load_state_dict(ours[OURS[0]].state_dict())
    default = nets.build(f"lif:{N_HIDDEN}", tuple(x.shape[::2]), ref_net.n_out).double()
    default.load_state_dict(ref_net.state_dict())
    for name, net in ((OURS[0], ref_net), (OURS[1], default)):
        update = rules.create("bptt", net).grads(x64, y)
        norm = float(np.linalg.norm(flat(update.grads)))
        out[name] = {"loss": float(update.loss), "rate_hz": rate_hz(net, x64), "grad_norm": norm}
    reference = {
        "vs_ours": rules.create("bptt", ref_net).grads(x64[short], y[short]).grads,
        "vs_detached": detached_reset_grads(ref_net, x64[short], y[short]),
    }
    out[OURS[0]]["vs_detached"] = compare(reference["vs_ours"], reference["vs_detached"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "grads.npz")
        for name, anchor in anchors.items():
            out[name] = anchor.ask(cmd="sanity", dtype="float64", grads=path, steps=0)
            with np.load(path) as npz:
                out[name]["grad_norm"] = float(np.linalg.norm(flat({k: npz[k] for k in npz.files})))
            anchor.ask(cmd="sanity", dtype="float64", grads=path, steps=steps)
            with np.load(path) as npz:
                grads = {k: npz[k] for k in npz.files}
            out[name] |= {key: compare(grads, ref) for key, ref in reference.items()}
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    dataset = data.load(f"cue-accumulation:n_train={args.batch},n_test=1,cues={args.cues}")
    x = dataset.train_x.transpose(0, 1).float().contiguous()  # (T, B, 40)
    y = dataset.train_y.t().contiguous()  # (T, B), −1 where there is no target
    ours = our_nets(x.shape[0], x.shape[2], dataset.n_classes)
    pythons = {"snntorch": args.snntorch_python, "norse": args.norse_python}
    anchors: dict[str, timing.JsonLinesProcess] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        write_batch(folder, x, y, ours[OURS[0]])
        for library, python in pythons.items():
            if not python:
                notes.append(HINT[library])
                continue
            for system in SYSTEMS[library]:
                log(f"starting the {system} harness with {python} ({args.warmup} warm-up update(s))")
                anchors[system] = start_anchor(python, system, folder, args)
        sanity_out = sanity(ours, x, y, anchors, min(args.sanity_steps, x.shape[0])) if args.sanity_steps else {}

        contenders: dict[str, Callable[[], tuple[float, float]]] = {}
        losses: dict[str, list[float]] = {}
        rates = {name: rate_hz(net, x) for name, net in ours.items()}
        for name, net in ours.items():
            rule = rules.create("bptt", net)
            losses[name] = [float(rule.grads(x, y).loss)]  # the loss of the timed update, and a warm-up
            for _ in range(args.warmup - 1):
                rule.grads(x, y)
            contenders[name] = timing.timed(rule.grads, x, y, args.inner)
        for name, anchor in anchors.items():

            def ask(anchor: timing.JsonLinesProcess = anchor, name: str = name) -> tuple[float, float]:
                reply = anchor.ask(cmd="time", inner=args.inner)
                losses.setdefault(name, []).append(reply["loss"])
                rates[name] = reply["rate_hz"]
                return reply["s"] * 1e3, reply["cpu"]

            contenders[name] = ask

        load = [os.getloadavg()[0]]
        log(f"timing {len(contenders)} contenders round-robin, {args.inner} update(s) per sample, "
            f"at most {args.repeats} repetitions or {args.budget:.0f} s")  # fmt: skip
        samples, cpu = timing.round_robin(contenders, args.repeats, args.budget, log)
        load.append(os.getloadavg()[0])
        versions = {"torch": torch.__version__, "bioprop": getattr(bioprop, "__version__", "?")}
        for anchor in anchors.values():
            versions |= anchor.hello["versions"]
            anchor.close()

    cpu_ms = timing.cpu_ms(samples, cpu)
    results = {}
    for name in contenders:
        q1, med, q3 = timing.quartiles(samples[name])
        entry = {
            "median_s": med / 1e3,
            "q1_s": q1 / 1e3,
            "q3_s": q3 / 1e3,
            "samples_s": [v / 1e3 for v in samples[name]],
        }
        entry |= {"cpu_per_wall": statistics.median(cpu[name]), "loss_f32": losses[name][-1], "rate_hz": rates[name]}
        if name not in OURS:
            entry["ours_over_this"] = {o: timing.paired(samples[o], samples[name]) for o in OURS}
            entry["ours_over_this_cpu"] = {o: timing.paired(cpu_ms[o], cpu_ms[name]) for o in OURS}
        results[name] = entry
    return {
        "config": {"batch": args.batch, "steps": x.shape[0], "inputs": x.shape[2], "hidden": N_HIDDEN}
        | {"threads": args.threads, "inner": args.inner, "warmup": args.warmup, "repeats": len(samples[OURS[0]])},
        "versions": versions,
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_1min": load,
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sanity": sanity_out,
        "sanity_steps": min(args.sanity_steps, x.shape[0]),
        "results": results,
        "notes": notes,
    }


def report(out: dict) -> None:
    cfg, res = out["config"], out["results"]
    print(f"BPTT on the cue-accumulation LIF network: {cfg['inputs']} inputs → {cfg['hidden']} recurrent LIF → 2 "
          f"leaky readouts, T = {cfg['steps']}, batch {cfg['batch']}, float32 CPU, {cfg['threads']} thread(s); "
          f"gradient only (no optimizer step); {cfg['repeats']} round-robin repetitions of {cfg['inner']} "
          f"update(s); {out['when']}")  # fmt: skip
    print(f"versions: {', '.join(f'{k} {v}' for k, v in out['versions'].items())}; CPUs allowed: {out['affinity']}")
    print(
        "ours/bptt: n_ref = 0 (as the anchors); ours/bptt-nref5: the default lif:100 (5 refractory steps). "
        "norse: LIFRecurrent, resets to 0; norse-box: LIFBoxCell in a loop, our reset (snn_harness.py)"
    )
    head = (f"{'system':<16} | {'s/update [IQR]':>21} | {'CPU/wall':>8} | {'loss f32':>8} | {'rate Hz':>7} | "
            f"{'ours ÷ this':>11} | {'nref5 ÷ this':>12} | {'ours ÷ this, CPU':>16}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for name, r in res.items():
        cell = f"{r['median_s']:6.2f} [{r['q1_s']:.2f}-{r['q3_s']:.2f}]"
        ratio = r.get("ours_over_this", {})
        mine, default = (f"{ratio[o]:.2f}" if o in ratio else "" for o in OURS)
        by_cpu = f"{r['ours_over_this_cpu'][OURS[0]]:.2f}" if "ours_over_this_cpu" in r else ""
        print(f"{name:<16} | {cell:>21} | {r['cpu_per_wall']:8.2f} | {r['loss_f32']:8.4f} | {r['rate_hz']:7.1f} | "
              f"{mine:>11} | {default:>12} | {by_cpu:>16}")  # fmt: skip
    print(
        "ours ÷ this: paired ratio, ours/bptt's time over this system's (< 1: ours faster); CPU: the same ratio of"
        " CPU times (process time; on a shared core, another job's share of it does not count)"
    )
    if out["sanity"]:
        print(f"sanity, float64, same weights: on the whole batch loss, rate and ‖gradient‖; on its last "
              f"{out['sanity_steps']} steps (from rest) the gradient against ours/bptt's and against our step "
              "functions' with the reset detached (cosine, relative error; W_rec's diagonal left out)")  # fmt: skip
        for name, s in out["sanity"].items():
            parts = [f"loss {s['loss']:.6f}", f"rate {s['rate_hz']:6.1f} Hz", f"‖∇‖ {s['grad_norm']:.3g}"]
            for key, label in (("vs_ours", "vs ours"), ("vs_detached", "vs detached reset")):
                if key in s:
                    parts.append(f"{label}: cos {s[key]['cos']:.6f}, rel. err {s[key]['rel_err']:.1e}")
            print(f"  {name:<16} {'; '.join(parts)}")
    load = out["load_avg_1min"]
    print(f"load average (1 min) before/after timing: {load[0]:.1f}, {load[1]:.1f} on {out['cpus']} CPUs")
    for note in out["notes"]:
        print(note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snntorch-python", metavar="PATH", default=os.environ.get("SNNTORCH_PYTHON"),
                        help="python of a venv with snntorch (default $SNNTORCH_PYTHON); else skipped")  # fmt: skip
    parser.add_argument("--norse-python", metavar="PATH", default=os.environ.get("NORSE_PYTHON"),
                        help="python of a venv with norse (default $NORSE_PYTHON); else skipped")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="round-robin repetitions (default 5)")
    parser.add_argument("--budget", type=float, default=1800, help="at most this many seconds of timing (1800)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on every side (default 1)")
    parser.add_argument("--inner", type=int, default=1, help="updates per timed sample (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates per system first (default 1)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cues", type=int, default=7, help="cues per trial: T = 150 cues + 1200 (default 7: 2250)")
    parser.add_argument("--sanity-steps", type=int, default=300,
                        help="the float64 check compares gradients on the last N steps (300; 0: no check)")  # fmt: skip
    parser.add_argument("--json", metavar="OUT", help="write all results (samples included) to this JSON file")
    args = parser.parse_args(argv)
    out = run(args)
    report(out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
