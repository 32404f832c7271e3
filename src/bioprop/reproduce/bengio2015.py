"""``bengio2015``: STDP as approximate gradient descent (Bengio, Lee, Bornschein, Mesnard & Lin 2015,
arXiv:1502.04156, Sec. 1, eq. 1 and Fig. 1).

Two halves, each the experiment of :mod:`bioprop.experiments.stdp` of that name, called as it is (not copied): its
figure is written into a temporary folder and copied to ``bengio2015-window.png`` / ``bengio2015-gradient.png``.

- ``stdp-window``: a presynaptic spike at 0 meets postsynaptic potentials of random slope; the mean of
  ΔW = S_i V̇_j per spike-time difference ΔT has the sign of ΔT and decays with |ΔT| (the STDP window of Fig. 1).
- ``stdp-gradient``: one layer (digits, 64 → 10) trained by the ``stdp`` rule under nudged dynamics; the cosine
  between the accumulated S_i V̇_j and −∂J/∂W at every step, and J on the training set falling.

Scales: ``quick`` runs both experiments' quick versions (about 5 s); ``default`` and ``full`` both run their full
versions (100,000 window trials, 300 training steps: 21-38 s on one core, measured), the paper's setting as we
read it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bioprop import reproduce

NAME = "bengio2015"
WINDOW, GRADIENT = "bengio2015-window.png", "bengio2015-gradient.png"
COSINE = 0.95  # our threshold on the mean cosine: the paper states gradient descent, gives no number


@reproduce.register(
    NAME,
    paper="Bengio, Lee, Bornschein, Mesnard & Lin 2015, arXiv:1502.04156",
    source="Sec. 1, eq. 1 and Fig. 1",
    claim="ΔW_ij ∝ S_i V̇_j yields the STDP window (ΔW has the sign of ΔT = t_post − t_pre and decays with |ΔT|), "
    "and under nudged dynamics it is a gradient step on the objective J",
    paper_value="the window's sign follows ΔT and its size decays with |ΔT| (Fig. 1); the update approximates "
    "−∂J/∂W (no number given)",
    summary="the STDP window from S_i·V̇_j, and its cosine to −∂J/∂W in one layer with J falling",
    figures=(WINDOW, GRADIENT),
)
def run(out: Path, seed: int, scale: str) -> dict[str, Any]:
    """The reproduction (module docstring): ``ours`` holds the window's two properties and fitted time constants
    (ms), the mean and least cosine to −∂J/∂W over the training steps and J (½‖s − y‖², training-set mean) before
    and after; ``holds`` is the window's sign and decay, a mean cosine ≥ 0.95 and J falling."""
    from bioprop.experiments import stdp
    from bioprop.report import logs

    quick = scale == "quick"
    with tempfile.TemporaryDirectory(prefix="bioprop-bengio2015-") as folder:
        window = stdp.run_window(Path(folder), seed, quick)
        gradient = stdp.run_gradient(Path(folder), seed, quick)
        for theirs, ours in (("stdp-window.png", WINDOW), ("stdp-gradient.png", GRADIENT)):
            logs.write_atomic(reproduce.figure_path(out, NAME, ours), (Path(folder) / theirs).read_bytes())
    numbers = {
        "window_sign_follows_dt": window["sign_follows_dt"],
        "window_decays_with_abs_dt": window["decays_with_abs_dt"],
        "window_tau_plus_ms": window["fit"]["plus"]["tau_ms"],
        "window_tau_minus_ms": window["fit"]["minus"]["tau_ms"],
        "cosine_mean": gradient["cosine_mean"],
        "cosine_min": gradient["cosine_min"],
        "steps": len(gradient["cosine"]),
        "steps_with_cosine_below_0.95": gradient["steps_with_cosine_below_0.95"],
        "j_first": gradient["j_first"],
        "j_last": gradient["j_last"],
    }
    holds = (numbers["window_sign_follows_dt"] and numbers["window_decays_with_abs_dt"]
             and numbers["cosine_mean"] >= COSINE and numbers["j_last"] < numbers["j_first"])  # fmt: skip
    return {
        "ours": numbers,
        "holds": bool(holds),
        "criterion": "window sign follows ΔT and decays with |ΔT|; mean cosine(S_i·V̇_j, −∂J/∂W) ≥ 0.95 over the "
        "training steps; J after training < J before",
        "window": window,
        "gradient": gradient,
    }
