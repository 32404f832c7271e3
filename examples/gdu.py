"""The GDU property of equilibrium propagation (Ernoult et al. 2019, NeurIPS), drawn.

On an energy-based net settled at its free fixed point, EP's update after K nudged steps is compared, for K = 1..T2,
with backprop through time over the free dynamics' last K steps (autograd through the relaxation). With symmetric
nudging and a small β the two coincide step by step; one-sided nudging with a larger β is biased. One panel per
weight tensor shows ‖update‖ against K (solid: EP, dashed: BPTT) and, below, the angle between them.

β must be small against the distance of every unit's input to the hard sigmoid's corners (0 and 1): a unit pushed
across one by the nudge breaks the linearisation the theorem rests on. On these 64 digits the closest unit sits
2e-5 from a corner: β = 1e-3 leaves EP 4° from BPTT, 1e-4 3.4°, 1e-5 matches to rounding.

    python examples/gdu.py --out docs/ep-gdu.png [--hidden 64] [--steps 15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from matplotlib.figure import Figure
from sklearn.datasets import load_digits

from bioprop import losses, rules
from bioprop.metrics import angle_deg
from bioprop.nets.energy import EnergyNet, prediction, relax, zero_states


def bptt_last_steps(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, fixed: list[torch.Tensor], k: int) -> dict:
    """Gradient of the cost after k steps taken from the free fixed point, through those k steps."""
    named = dict(net.named_parameters())
    with torch.enable_grad():
        states = relax(net, x, [s.detach() for s in fixed], k).states
        loss = losses.get("se").value(prediction(net, states, "se"), y)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), grads, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("ep-gdu.png"))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="nudged steps K shown")
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data[:64] / 16.0, dtype=torch.float64)
    y = torch.tensor(digits.target[:64])
    net = EnergyNet((64,), [args.hidden], 10).double()
    with torch.no_grad():  # a contraction, so that the free phase settles to a fixed point
        for synapse in net.synapses:
            synapse.weight.mul_(0.6 / torch.linalg.matrix_norm(synapse.weight, 2))
    fixed = relax(net, x, zero_states(net, x), 300).states
    settings = {"symmetric, β = 1e-5": dict(nudge="symmetric", beta=1e-5),
                "one-sided, β = 0.2": dict(nudge="one-sided", beta=0.2)}  # fmt: skip
    ks = range(1, args.steps + 1)
    bptt = [bptt_last_steps(net, x, y, fixed, k) for k in ks]
    ep = {label: [rules.create("ep", net, free_steps=300, nudged_steps=k, output="se", **opts).grads(x, y).grads
                  for k in ks] for label, opts in settings.items()}  # fmt: skip
    names = [n for n, _ in net.named_parameters() if n.endswith("weight")]
    fig = Figure(figsize=(5 * len(names), 6.5), layout="constrained")
    axes = fig.subplots(2, len(names), sharex=True, squeeze=False)
    for column, name in enumerate(names):
        top, bottom = axes[0][column], axes[1][column]
        top.plot(ks, [float(g[name].norm()) for g in bptt], "k--", label="BPTT, last K free steps")
        for label, updates in ep.items():
            top.plot(ks, [float(u[name].norm()) for u in updates], label=f"EP {label}")
            angles = [max(angle_deg(u[name], g[name]), 1e-6) if g[name].any() else float("nan")
                      for u, g in zip(updates, bptt, strict=True)]  # fmt: skip
            bottom.plot(ks, angles, label=f"EP {label}")
        top.set(title=name, ylabel="‖update‖")
        bottom.set(xlabel="nudged steps K", ylabel="angle EP vs BPTT (degrees, floor 1e-6)", yscale="log")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"GDU: EP after K nudged steps vs BPTT over the last K free steps (digits, 64-{args.hidden}-10)")
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
