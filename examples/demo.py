"""`make demo`: bp, fa, dfa, usf, frsf and brsf on Fashion-MNIST, side by side.

Each rule trains the same 784-256-256-10 tanh network with the same budget (AdamW 1e-3, cosine schedule,
batch 128, a few epochs) and measures its update angle to backprop every 50 steps. The script prints a table
(test accuracy, per-layer angle to backprop, seconds per epoch) and draws ``alignment.png`` with every rule's
hidden-layer angles: feedback alignment starts near 90° and falls well below it (Lillicrap et al. 2016, Fig. 1).

    python examples/demo.py --out runs/demo [--epochs 3] [--data-dir DIR]

Runs go to ``<out>/<rule>``; ``bioprop compare <out>`` (or ``bioprop compare runs/*``) finds them there. Bad input
ends with one line, ``demo: error: ...``, and the exit code of ``bioprop`` (2; 3 when a run diverges).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError
from bioprop.report import plots, tables

RULES = ["bp", "fa", "dfa", "usf", "frsf", "brsf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rules", nargs="+", default=RULES)
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        repeated = next((rule for i, rule in enumerate(args.rules) if rule in args.rules[:i]), None)
        if repeated is not None:  # both would train into <out>/<rule>, and compare would count one run twice
            raise BioPropError(f"rule {repeated!r} is given twice in --rules")
        configs = [RunConfig(rule=rule, data="fashion-mnist", data_dir=args.data_dir, arch="mlp:256x256",
                             activation="tanh", optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine",
                             batch_size=128, epochs=args.epochs, probe_every=50).check()
                   for rule in args.rules]  # fmt: skip
        for config in configs:
            print(f"training {config.rule} ...", file=sys.stderr, flush=True)
            train.run(config, args.out / config.rule, overwrite=True, quiet=not sys.stderr.isatty())
        run_dirs = [args.out / config.rule for config in configs]
        figure = plots.alignment_comparison(run_dirs, args.out / "alignment.png")
        print(tables.compare(run_dirs))
    except BioPropError as err:
        print(f"demo: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(err.exit_code)
    print(f"\nalignment plot: {figure}   run directories: {args.out}/<rule>   "
          f"total {time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
