"""Fashion-MNIST accuracy of the feedback-alignment family against backprop, same budget for every rule.

    python benchmarks/accuracy_fmnist.py --suite mlp --seeds 0 1 2       # ~1 min per run on 2 cores
    python benchmarks/accuracy_fmnist.py --suite lenet --seeds 0 1 2

Each (suite, rule, seed) is an ordinary bioprop run directory under ``--out``; finished runs are reused and
interrupted ones resumed, so the script can be stopped and restarted without losing work. At the end it
prints, per suite, ``bioprop compare``'s table: test accuracy (final and best epoch, mean ± std over seeds),
each layer's update angle to backprop at the last epoch, and seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError
from bioprop.report import tables

# One budget per suite, shared by every rule: the only thing that changes inside a suite is the rule.
SUITES = {
    "mlp": dict(arch="mlp:512x512", activation="tanh", optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                schedule="cosine", batch_size=128, epochs=20),
    # lr 2e-3 let FA's losses blow up on LeNet (81.6 % after 18 epochs); 5e-4 trains it smoothly.
    "lenet": dict(arch="lenet", activation="relu", optimizer="adamw", lr=5e-4, weight_decay=1e-4,
                  schedule="cosine", batch_size=64, epochs=20),
}  # fmt: skip
RULES = ["bp", "fa", "dfa", "usf", "brsf", "frsf"]


def run_one(run_dir: Path, suite: str, rule: str, seed: int, epochs: int | None, data_dir: str | None) -> dict:
    """Train one run, or reuse it when finished, or resume it from its checkpoint when interrupted."""
    settings = dict(SUITES[suite], rule=rule, seed=seed, data="fashion-mnist", data_dir=data_dir)
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
            return train.resume(run_dir, quiet=True)
    return train.run(config, run_dir, overwrite=True, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("--rules", nargs="+", default=RULES, choices=RULES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the suite's epoch budget (for a quick look)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fmnist"))
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    run_dirs: dict[str, list[Path]] = {suite: [] for suite in suites}
    try:
        for suite in suites:
            for rule in args.rules:
                for seed in args.seeds:
                    run_dir = args.out / suite / f"{rule}-s{seed}"
                    summary = run_one(run_dir, suite, rule, seed, args.epochs, args.data_dir)
                    print(f"{suite} {rule} seed {seed}: {100 * summary['test_accuracy']:.2f} %", file=sys.stderr)
                    run_dirs[suite].append(run_dir)
    except BioPropError as err:
        sys.exit(f"accuracy_fmnist: error: {err}")
    for suite in suites:
        print(f"\n{suite}: {json.dumps(SUITES[suite])}\n")
        print(tables.compare(run_dirs[suite]))


if __name__ == "__main__":
    main()
