"""Fashion-MNIST accuracy of the feedback-alignment family against backprop, same budget for every rule.

    python benchmarks/accuracy_fmnist.py --suite mlp --seeds 0 1 2       # ~1 min per run on 2 cores
    python benchmarks/accuracy_fmnist.py --suite lenet --seeds 0 1 2

Each (suite, rule, seed) is an ordinary bioprop run directory under ``--out``; finished runs are reused and
interrupted ones resumed, so the script can be stopped and restarted without losing work. At the end it prints a
markdown table of test accuracy (final epoch, mean ± std over seeds), best epoch, the hidden layers' update angle
to backprop (last epoch) and seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bioprop import train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError

# One budget per suite, shared by every rule: the only thing that changes inside a suite is the rule.
SUITES = {
    "mlp": dict(arch="mlp:512x512", activation="tanh", optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                schedule="cosine", batch_size=128, epochs=20),
    "lenet": dict(arch="lenet", activation="relu", optimizer="adamw", lr=2e-3, weight_decay=1e-4,
                  schedule="cosine", batch_size=64, epochs=20),
}  # fmt: skip
RULES = ["bp", "fa", "dfa", "usf", "brsf", "frsf"]


def run_one(out: Path, suite: str, rule: str, seed: int, epochs: int | None, data_dir: str | None) -> dict:
    run_dir = out / suite / f"{rule}-s{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("status") == "finished":
        return json.loads(summary_path.read_text())
    if (run_dir / "checkpoint.safetensors").is_file():
        return train.resume(run_dir, quiet=True)
    settings = dict(SUITES[suite], rule=rule, seed=seed, data="fashion-mnist", data_dir=data_dir)
    if epochs:
        settings["epochs"] = epochs
    return train.run(RunConfig(**settings), run_dir, overwrite=True, quiet=True)


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * spread:.2f}"


def table(results: dict[tuple[str, str], list[dict]]) -> str:
    lines = [
        "| suite | rule | seeds | test acc % (final) | best epoch % | hidden angles to BP (°, last) | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for (suite, rule), runs in results.items():
        finals = [r["test_accuracy"] for r in runs]
        bests = [r["best_test_accuracy"] for r in runs]
        weights = [name for name in runs[0]["alignment_deg"] if name.endswith("weight")][:-1]  # output layer exact
        angles = ", ".join(
            f"{statistics.mean(r['alignment_deg'][name][-1] for r in runs):.0f}" for name in weights
        )
        seconds = statistics.median(s for r in runs for s in r["epoch_seconds"])
        accuracy = f"{mean_std(finals)} | {mean_std(bests)}"
        lines.append(f"| {suite} | {rule} | {len(runs)} | {accuracy} | {angles} | {seconds:.1f} |")
    return "\n".join(lines)


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
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for suite in suites:
            for rule in args.rules:
                for seed in args.seeds:
                    summary = run_one(args.out, suite, rule, seed, args.epochs, args.data_dir)
                    print(f"{suite} {rule} seed {seed}: {100 * summary['test_accuracy']:.2f} %", file=sys.stderr)
                    results.setdefault((suite, rule), []).append(summary)
    except BioPropError as err:
        sys.exit(f"accuracy_fmnist: error: {err}")
    for suite in suites:
        print(f"\n{suite}: {json.dumps(SUITES[suite])}")
    print(table(results))


if __name__ == "__main__":
    main()
