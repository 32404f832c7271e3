"""``bellec2020``: e-prop learns evidence accumulation on an LSNN (ALIF neurons) but not on LIF neurons only
(Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020, Nat. Commun. 11:3625, Fig. 3).

The ``cue-accumulation`` task (:func:`bioprop.data.temporal.cue_accumulation`): ``cues`` left/right cues, then a
fixed 1,200 ms delay (the task's constant), then the network must name the side that had more cues (chance 50 %).
The ``eprop`` rule (rate regulariser 1e-6, as ``benchmarks/accuracy_temporal.py``'s cue-accumulation suite) trains
``lsnn:N/2+N/2`` (half LIF, half ALIF: the adaptation holds the evidence across the delay) and ``lif:N`` from the
same seed; each is an ordinary :func:`bioprop.train.run` in a temporary directory (deleted after its per-epoch test
accuracies are read), Adam, batch 64, one thread.

The paper's scale takes 30+ minutes per run on a CPU. The smaller scales keep the delay (it cannot be changed) and
shrink the rest: one cue, fewer neurons, a higher learning rate and far fewer batches. Measured on one core of the
development machine (seed 0, load ~1): ``default`` (one cue, 40 neurons, lr 1e-2, 70 batches, about 60 s) shows the
split beginning — ALIF 69 % against LIF 52 % test accuracy on 128 trials — not the paper's < 7 % error; ``quick``
(4 batches, a few seconds) is too short to learn anything and reports that honestly (its ``holds`` is normally
false). ``full`` is the benchmark's: 7 cues, ``lsnn:50+50`` against ``lif:100``, lr 5e-3, 2,000 iterations
(1,280 trials, 100 epochs), 512 test trials.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure

from bioprop import reproduce

NAME = "bellec2020"
FIGURE = "bellec2020.png"
NETWORKS = ("alif", "lif")
#: Our criterion: the ALIF network's final accuracy (mean of the last :data:`TAIL` epochs) at least this far above
#: the LIF network's, and at least this far above chance (0.5).
MARGIN = 0.1
TAIL = 3
#: Bellec et al.'s stopping criterion: test error below 7 % (reported, not required at the smaller scales).
ERROR_CRITERION = 0.07


class Setting(NamedTuple):
    """``cues`` per trial, ``n_train``/``n_test`` trials, ``neurons`` (the LSNN: half LIF, half ALIF), ``epochs``,
    Adam ``lr``, ``batch_size``, ``seeds``; the probe (update angles) batches and their size."""

    cues: int
    n_train: int
    n_test: int
    neurons: int
    epochs: int
    lr: float
    seeds: int = 1
    batch_size: int = 64
    probe_batches: int = 1
    probe_batch_size: int = 16


SETTINGS = {
    "quick": Setting(1, 128, 64, 20, 2, 1e-2),
    "default": Setting(1, 320, 128, 40, 14, 1e-2),
    "full": Setting(7, 1280, 512, 100, 100, 5e-3, probe_batch_size=64),
}


def config(setting: Setting, network: str, seed: int) -> Any:
    """The :class:`~bioprop.config.RunConfig` of e-prop on ``network`` (``alif``: ``lsnn:N/2+N/2``; ``lif``:
    ``lif:N``) at ``seed``."""
    from bioprop.config import RunConfig

    half = setting.neurons // 2
    arch = f"lsnn:{half}+{setting.neurons - half}" if network == "alif" else f"lif:{setting.neurons}"
    data = f"cue-accumulation:cues={setting.cues},n_train={setting.n_train},n_test={setting.n_test}"
    return RunConfig(rule="eprop", arch=arch, rule_opts={"rate_reg": 1e-6}, data=data, seed=seed, optimizer="adam",
                     lr=setting.lr, batch_size=setting.batch_size, epochs=setting.epochs, threads=1, device="cpu",
                     probe_batches=setting.probe_batches, probe_batch_size=setting.probe_batch_size)  # fmt: skip


def train_one(setting: Setting, network: str, seed: int) -> list[float]:
    """Train e-prop on ``network`` at ``seed`` (module docstring); returns its test accuracy (0–1) per epoch."""
    return reproduce.accuracy_per_epoch(config(setting, network, seed))


def final(curve: list[float]) -> float:
    """A run's final accuracy: the mean over its last :data:`TAIL` epochs (fewer if it has fewer)."""
    return statistics.fmean(curve[-TAIL:])


def summarise(curves: dict[str, list[list[float]]], setting: Setting) -> dict[str, Any]:
    """Per network, the final accuracy (:func:`final`) per seed and its mean, the best test error and the first
    iteration (batch) at which the test error fell below :data:`ERROR_CRITERION` (None: never); the smallest
    ALIF − LIF gap over seeds."""
    per_epoch = -(-setting.n_train // setting.batch_size)
    ours: dict[str, Any] = {}
    for network in NETWORKS:
        finals = [final(curve) for curve in curves[network]]
        ours[f"{network}_final_accuracy"] = statistics.fmean(finals)
        ours[f"{network}_final_accuracy_per_seed"] = finals
        ours[f"{network}_best_error"] = 1.0 - max(max(curve) for curve in curves[network])
        reached = [next(((e + 1) * per_epoch for e, a in enumerate(curve) if 1 - a < ERROR_CRITERION), None)
                   for curve in curves[network]]  # fmt: skip
        ours[f"{network}_iterations_to_7pct_error"] = reached
    ours["smallest_gap_alif_minus_lif"] = min(
        final(a) - final(b) for a, b in zip(curves["alif"], curves["lif"], strict=True)
    )
    ours["iterations"] = setting.epochs * per_epoch
    return ours


def holds_for(ours: dict[str, Any]) -> bool:
    """Our criterion: in every seed the ALIF network's final accuracy is :data:`MARGIN` above the LIF network's and
    :data:`MARGIN` above chance."""
    learns = min(ours["alif_final_accuracy_per_seed"]) >= 0.5 + MARGIN
    return learns and ours["smallest_gap_alif_minus_lif"] >= MARGIN


def figure(curves: dict[str, list[list[float]]], setting: Setting) -> Figure:
    """Test error (%) against training iterations for e-prop on ALIF and on LIF, one line per seed."""
    per_epoch = -(-setting.n_train // setting.batch_size)
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    half = setting.neurons // 2
    labels = {"alif": f"e-prop, LSNN lsnn:{half}+{setting.neurons - half} (ALIF)",
              "lif": f"e-prop, lif:{setting.neurons} (LIF only)"}  # fmt: skip
    for colour, network in enumerate(NETWORKS):
        for k, curve in enumerate(curves[network]):
            ax.plot([per_epoch * (e + 1) for e in range(len(curve))], [100 * (1 - a) for a in curve],
                    color=f"C{colour}", marker="o", markersize=3, linewidth=1,
                    label=labels[network] if k == 0 else None)  # fmt: skip
    ax.axhline(50, color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.axhline(100 * ERROR_CRITERION, color="grey", linestyle=":", linewidth=0.8, label="7 % (Bellec et al.)")
    ax.set(xlabel="training iterations (batches of 64)", ylabel="test error (%)", ylim=(0, 70),
           title=f"cue accumulation, {setting.cues} cue(s), 1,200 ms delay, {setting.n_test} test trials")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


@reproduce.register(
    NAME,
    paper="Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass 2020, Nat. Commun. 11:3625",
    source="Fig. 3 (evidence accumulation)",
    claim="e-prop learns to accumulate evidence across a delay on an LSNN (ALIF neurons), but not on a network of "
    "LIF neurons only",
    paper_value="a statement read off Fig. 3: e-prop on the LSNN reaches a low test error (they stop at < 7 %) where "
    "LIF-only networks stay near chance",
    summary="e-prop on an LSNN (ALIF) against LIF only on cue accumulation (smaller than the paper below --full)",
    figures=(FIGURE,),
)
def run(out: Path, seed: int, scale: str) -> dict[str, Any]:
    """The reproduction (module docstring): ``ours`` holds each network's final accuracy (0–1), best error and
    iterations to 7 % error, and the smallest ALIF − LIF gap; ``holds`` is :func:`holds_for`; ``curves`` the
    per-epoch test accuracies."""
    from bioprop.report import plots

    setting = SETTINGS[scale]
    curves = {network: [train_one(setting, network, seed + k) for k in range(setting.seeds)] for network in NETWORKS}
    plots.save(figure(curves, setting), reproduce.figure_path(out, NAME, FIGURE))
    ours = summarise(curves, setting)
    return {
        "ours": ours,
        "holds": holds_for(ours),
        "criterion": f"in every seed: e-prop on ALIF's final test accuracy (mean of the last {TAIL} epochs) at least "
        f"{MARGIN:.0%} points above chance (50 %) and above LIF's; the paper's < 7 % error is reported "
        f"(iterations_to_7pct_error), not required at the reduced scales",
        "setting": setting._asdict(),
        "curves": curves,
    }
