"""Seconds per update of the temporal rules on one cue-accumulation batch, side by side in one process.

    .venv/bin/python benchmarks/speed_temporal.py [--arch lsnn:50+50] [--batch 64] [--cues 7] [--repeats 3]
        [--rules bptt,eprop,tbptt] [--threads 1] [--json OUT]

Each repetition times ``rule.grads(x, y)`` once per rule, in a rotated order, on the same batch (Bellec et al.
2020's cue accumulation: 40 channels, T = 150·cues + 1200 steps); the table gives the median seconds per update,
and the median of the paired ratios to ``bptt`` (samples taken in the same repetition). The load average before and
after is printed with the table: the machine is shared. ``--json OUT`` also writes the settings, every sample (s),
the medians, the paired ratios and the load averages to OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from bioprop import data, nets, rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="lsnn:50+50")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cues", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rules", default="bptt,eprop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="also write the settings and every sample to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    dataset = data.load(f"cue-accumulation:n_train={args.batch},n_test=1,cues={args.cues}")
    x = dataset.train_x.transpose(0, 1).float().contiguous()
    y = dataset.train_y.t().contiguous()
    torch.manual_seed(0)
    net = nets.build(args.arch, dataset.in_shape, dataset.n_classes)
    names = args.rules.split(",")
    learners = {name: rules.create(name, net) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            start = time.perf_counter()
            learners[name].grads(x, y)
            samples[name].append(time.perf_counter() - start)
    print(f"cue accumulation, {args.arch}, batch {args.batch}, T = {x.shape[0]}, {args.threads} thread(s), "
          f"{args.repeats} repetitions; torch {torch.__version__}")  # fmt: skip
    print(f"{'rule':<10} {'s/update (median)':>18} {'÷ bptt (paired)':>16}")
    paired = {}
    for name in names:
        ratio = ""
        if "bptt" in samples and name != "bptt":
            paired[name] = statistics.median(a / b for a, b in zip(samples[name], samples["bptt"], strict=True))
            ratio = f"{paired[name]:.2f}"
        print(f"{name:<10} {statistics.median(samples[name]):>18.2f} {ratio:>16}")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before/after: {load_before:.1f}, {load_after:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        config = {"arch": args.arch, "batch": args.batch, "cues": args.cues, "steps": x.shape[0],
                  "repeats": args.repeats, "rules": names, "threads": args.threads}  # fmt: skip
        results = {name: {"median_s": statistics.median(samples[name]), "samples_s": samples[name],
                          "paired_to_bptt": paired.get(name)} for name in names}  # fmt: skip
        out = {"config": config, "torch": torch.__version__, "load_avg_1min": [load_before, load_after],
               "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": results}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
