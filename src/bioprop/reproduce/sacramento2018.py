"""``sacramento2018``: the self-predicting state, then apical errors that give backprop's update with W^down in
place of Wᵀ (Sacramento, Costa, Bengio & Senn 2018, NeurIPS, "Dendritic cortical microcircuits approximate the
backpropagation algorithm", Fig. 1 and the analysis of §3).

A tanh network 64 → 20 → 10 (``nets.mlp``, float64, ``torch.manual_seed(seed)`` inside a forked random state) on the
digits data set (8×8, bundled with scikit-learn), squared error to one-hot targets (the ``microcircuit`` rule's
``output=se``: the teaching current pulls the output towards u_tgt = onehot(y)). The rule is the paper's own
(``baseline=none``: W^up learns from φ(u) − φ(v̂_B)), in its steady-state mode, g_som = 0.1 (weak nudging); its
equations and the library's folding of the basal attenuation into the net's weights are in
:mod:`bioprop.rules.microcircuit`. Two circuits on copies of one net, W^ip and W^pi random at first:

- ``random``: W^down fixed random (the rule's own draw), as in the paper's simulations;
- ``transposed``: W^down = W̃₂ᵀ, set by hand before the phase: the condition of the paper's analysis (W^down = W^upᵀ).

1. **Self-predicting phase** (``rule.prepare()``, no target): ``prepare_steps`` steps of ``prepare_batch`` random
   inputs N(0, 1), only W^ip, b^ip and W^pi learn. Recorded: the rule's trace (mean ‖v_A‖ per step, over examples,
   without target); mean ‖v_A‖ on ``probe`` held-out random inputs before and after; the angles W^pi∠−W^down and
   Ŵ^ip∠W̃₂ (the rule's diagnostics) before and after.
2. **Apical errors at the self-predicting state**, the output nudged by the target: the angle between the hidden
   layer's weight update (``rule.grads``, the first Linear's weight) and (a) feedback alignment's update with
   B = W^downᵀ (the ``fa`` rule, its feedback set to that matrix), (b) backprop's (``rule.reference_grads``: the
   microcircuit rule approximates backprop of the run's loss). Why both: the analysis says the apical potential
   carries the output error sent down through W^down, so the update is backprop's with W^down in place of W^upᵀ;
   that is backprop's own only when W^down = W^upᵀ (``transposed``, where (a) = (b)), and feedback alignment's when
   W^down is fixed random (``random``), whose update comes within 90° of backprop's only as W^up aligns with it.
   Mean over the probe: the first ``probe`` examples of the digits test split.
3. **Training** (the ``random`` circuit, as the paper's simulations): SGD with learning rate ``lr``, ``steps``
   batches of ``batch`` training digits; W^ip and W^pi keep learning (``lr_ip``, ``lr_pi``). Beside it, from the
   same initial weights and on the same batches, an ``fa`` twin with B = W^downᵀ and a backprop twin. Every ``every``
   steps: the hidden update's angles (a) and (b) at the microcircuit's current weights on the probe, the test loss
   (½‖z − onehot(y)‖², mean over the test split) and accuracy of the three networks, and the microcircuit's mean
   ‖v_A‖ on the probe without and with the target.

Our choices, not the paper's: sizes, data set, learning rates, the steady-state mode (the paper integrates the
dynamics with plasticity on), the phase's rate prepare_lr = 1.5 (the rule's default is 1) and the interneuron rates
during training, lr_ip = 1 and lr_pi = 0.01 (normalised LMS). Two things measured once here, not part of the run
(seeds 0 and 1, default scale otherwise):

- The approximation needs a thorough self-predicting state: the error in v_A is only λ(1 − m) ≈ 0.08 times the
  output error, so a residual apical potential swamps it. With prepare_lr = 1, a 200-step phase (‖v_A‖ down 22–25×)
  left the update 55–73° from FA's; 400 steps (down 100–150×) 11–12°; 1,000 steps (down 3,000–15,000×) 0.6–0.7°.
- With the rule's default training rates (lr_ip = lr_pi = 0.05) the interneurons lag behind the learning W̃₂: the
  residual ‖v_A‖ without target jumps from 1e-5 to 0.2–0.9 within 50 steps, the angle to FA's update rises to
  40–106° and the test loss stalls (0.41–0.43 after 500 steps, FA's twin 0.23–0.25). The rule's default
  ``baseline=free`` (not the paper's) exists to cancel that residual.

The paper states these results in figures and an analysis, not numbers: the thresholds of :func:`holds_for` are ours.

Scales: ``quick`` one seed, a 400-step phase, 400 training steps; ``default`` three seeds, 1,000 and 1,500; ``full``
five seeds, 3,000 and 4,000 (seeds ``seed``, ``seed + 1``, ...: each draws its own net, W^down, W^ip, W^pi, phase
inputs and batch order).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from bioprop import reproduce

NAME = "sacramento2018"
FIGURE = "sacramento2018.png"
#: The claim's thresholds (ours): the apical potential falls by at least this factor in the phase; the update at
#: the self-predicting state lies within this angle of the analysis's prediction; during training the angle to
#: feedback alignment's update stays below 90° with a mean below this one and its angle to backprop's ends below 90°;
#: the final test loss is at most this multiple of backprop's and at most half the initial.
MIN_APICAL_FALL = 10.0
MAX_START_ANGLE_DEG = 10.0
MAX_MEAN_TRAINING_ANGLE_DEG = 45.0
MAX_LOSS_RATIO = 1.25


class Setting(NamedTuple):
    """Self-predicting phase of ``prepare_steps`` steps of ``prepare_batch`` random inputs; ``steps`` training
    steps of ``batch`` digits at SGD rate ``lr``, measured every ``every`` steps; ``seeds`` seeds; ``hidden`` units;
    interneuron rates ``lr_ip``, ``lr_pi`` during training; nudging ``g_som``; ``probe`` held-out examples (digits
    for the angles, random inputs for the apical norms)."""

    prepare_steps: int
    steps: int
    every: int
    seeds: int
    hidden: int = 20
    prepare_batch: int = 64
    prepare_lr: float = 1.5
    batch: int = 32
    lr: float = 0.01
    lr_ip: float = 1.0
    lr_pi: float = 0.01
    g_som: float = 0.1
    probe: int = 256


SETTINGS = {
    "quick": Setting(400, 400, 40, 1, probe=128),
    "default": Setting(1000, 1500, 50, 3),
    "full": Setting(3000, 4000, 100, 5),
}
CIRCUITS = ("random", "transposed")
LABELS = {"microcircuit": "microcircuit", "fa": "FA twin (B = W^downᵀ)", "bp": "backprop twin"}


def make_net(setting: Setting, seed: int, n_in: int, n_out: int) -> nn.Sequential:
    """The tanh MLP n_in → hidden → n_out in float64, drawn with ``torch.manual_seed(seed)`` in a forked state."""
    from bioprop import nets

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nets.mlp(n_in, [setting.hidden], n_out, "tanh").double()


def make_circuit(net: nn.Module, setting: Setting, seed: int, circuit: str) -> Any:
    """The ``microcircuit`` rule on ``net`` with the module's options (the paper's plain rule, ``output=se``);
    ``circuit`` ``"transposed"`` sets W^down = W̃₂ᵀ (a new tensor; the rule's synapses are replaced, not changed in
    place), ``"random"`` keeps the rule's random draw."""
    from bioprop import rules

    rule = rules.create("microcircuit", net, output="se", baseline="none", g_som=setting.g_som, lr_ip=setting.lr_ip,
                        lr_pi=setting.lr_pi, prepare_lr=setting.prepare_lr, prepare_steps=setting.prepare_steps,
                        prepare_batch=setting.prepare_batch, tol=1e-6, sweeps=300, seed=seed)  # fmt: skip
    if circuit == "transposed":
        rule.circuit = rule.circuit._replace(w_down=[rule.linears[1].weight.detach().T.clone()])
    return rule


def random_probe(setting: Setting, seed: int, n_in: int) -> Tensor:
    """The held-out random inputs N(0, 1) (probe, n_in) on which the apical norms are measured (float64)."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn(setting.probe, n_in, generator=generator, dtype=torch.float64)


def self_predicting_phase(rule: Any, x_random: Tensor) -> dict[str, Any]:
    """Run the rule's self-predicting phase; returns its trace (``trace``: mean ‖v_A‖ per step), the mean ‖v_A‖ on
    ``x_random`` before and after (``apical_before``, ``apical_after``) and the angles (degrees) W^pi∠−W^down and
    Ŵ^ip∠W̃₂ before and after."""
    before = rule.apical_norms(x_random)[0]
    angles_before = rule.diagnostics()
    trace = rule.prepare()["apical_norm"]
    angles_after = rule.diagnostics()
    return {
        "trace": trace,
        "apical_before": before,
        "apical_after": rule.apical_norms(x_random)[0],
        "w_pi_down_angle_before_deg": angles_before["w_pi_down_angle_deg_l1"],
        "w_pi_down_angle_after_deg": angles_after["w_pi_down_angle_deg_l1"],
        "w_ip_up_angle_before_deg": angles_before["w_ip_up_angle_deg_l1"],
        "w_ip_up_angle_after_deg": angles_after["w_ip_up_angle_deg_l1"],
    }


def feedback_twin(net: nn.Module, rule: Any) -> Any:
    """The ``fa`` rule on ``net`` with its feedback B = W^downᵀ (n_out, hidden), the microcircuit's top-down weights
    in the forward weight's orientation: FA's update is then backprop's with W^down in place of W₂ᵀ."""
    from bioprop import rules

    fa = rules.create("fa", net, output="se")
    (position,) = fa.feedback  # one hidden layer: one feedback matrix
    fa.feedback[position] = rule.circuit.w_down[0].T.clone()
    return fa


def hidden_angles(rule: Any, fa: Any, x: Tensor, y: Tensor) -> tuple[float, float]:
    """The angles (degrees) between the microcircuit's update of the hidden layer's weight (``rule.grads``) and FA's
    (``fa.grads``, B = W^downᵀ) and backprop's (``rule.reference_grads``) for the batch ``x`` (B, 64), ``y`` (B,)."""
    from bioprop.metrics import angle_deg

    name = rule.param_name(rule.linears[0].weight)
    ours = rule.grads(x, y).grads[name]
    return angle_deg(ours, fa.grads(x, y).grads[name]), angle_deg(ours, rule.reference_grads(x, y)[name])


def run_seed(setting: Setting, seed: int) -> dict[str, Any]:
    """One seed: the phase of both circuits, the angles at the self-predicting state and the training curves
    (module docstring)."""
    from bioprop import data, rules

    dataset = data.load("digits", dtype=torch.float64)
    x_train, y_train = dataset.train_x.flatten(1), dataset.train_y
    x_test, y_test = dataset.test_x.flatten(1), dataset.test_y
    x_probe, y_probe = x_test[: setting.probe], y_test[: setting.probe]
    n_in = x_train.shape[1]
    x_random = random_probe(setting, seed, n_in)
    net = make_net(setting, seed, n_in, dataset.n_classes)
    phase, start, circuits = {}, {}, {}
    for kind in CIRCUITS:
        circuits[kind] = make_circuit(copy.deepcopy(net), setting, seed, kind)
        phase[kind] = self_predicting_phase(circuits[kind], x_random)
        rule = circuits[kind]
        to_fa, to_bp = hidden_angles(rule, feedback_twin(rule.net, rule), x_probe, y_probe)
        start[kind] = {"to_fa_deg": to_fa, "to_bp_deg": to_bp}
    rule = circuits["random"]
    probe_fa = feedback_twin(rule.net, rule)  # the FA direction at the microcircuit's own weights
    fa_net, bp_net = copy.deepcopy(net), copy.deepcopy(net)
    twins = {"fa": feedback_twin(fa_net, rule), "bp": rules.create("bp", bp_net, output="se")}
    nets_ = {"microcircuit": rule.net, "fa": fa_net, "bp": bp_net}
    optimizers = {key: torch.optim.SGD(n.parameters(), lr=setting.lr) for key, n in nets_.items()}
    order = torch.Generator().manual_seed(20_000 + seed)
    curves: dict[str, list[float]] = {key: [] for key in ("step", "to_fa_deg", "to_bp_deg", "apical_free",
                                                           "apical_nudged")}  # fmt: skip
    for key in nets_:
        curves[f"loss_{key}"], curves[f"accuracy_{key}"] = [], []
    for step in range(setting.steps + 1):
        if step % setting.every == 0 or step == setting.steps:
            to_fa, to_bp = hidden_angles(rule, probe_fa, x_probe, y_probe)
            curves["step"].append(step)
            curves["to_fa_deg"].append(to_fa)
            curves["to_bp_deg"].append(to_bp)
            curves["apical_free"].append(rule.apical_norms(x_probe)[0])
            curves["apical_nudged"].append(rule.apical_norms(x_probe, y_probe)[0])
            with torch.no_grad():
                for key, n in nets_.items():
                    z = n(x_test)
                    curves[f"loss_{key}"].append(float(rule.loss.value(z, y_test)))
                    curves[f"accuracy_{key}"].append(float((z.argmax(1) == y_test).double().mean()))
        if step == setting.steps:
            break
        at = torch.randint(0, len(x_train), (setting.batch,), generator=order)
        x, y = x_train[at], y_train[at]
        for key, optimizer in optimizers.items():
            optimizer.zero_grad()
            (rule if key == "microcircuit" else twins[key]).backward(x, y)
            optimizer.step()
    return {"phase": phase, "start": start, "curves": curves, "diagnostics_end": rule.diagnostics()}


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """One seed's numbers: per circuit the fall of mean ‖v_A‖ on held-out random inputs over the phase
    (before/after) and the angles at the self-predicting state; over training, the mean and largest angle of the
    hidden update to FA's, its angle to backprop's at the start and at the end, and the test losses."""
    out: dict[str, Any] = {}
    for kind in CIRCUITS:
        p = record["phase"][kind]
        out[f"{kind}_apical_before"] = p["apical_before"]
        out[f"{kind}_apical_after"] = p["apical_after"]
        out[f"{kind}_apical_fall"] = p["apical_before"] / p["apical_after"]
        out[f"{kind}_w_pi_down_angle_after_deg"] = p["w_pi_down_angle_after_deg"]
        out[f"{kind}_start_to_fa_deg"] = record["start"][kind]["to_fa_deg"]
        out[f"{kind}_start_to_bp_deg"] = record["start"][kind]["to_bp_deg"]
    c = record["curves"]
    out["training_to_fa_mean_deg"] = sum(c["to_fa_deg"]) / len(c["to_fa_deg"])
    out["training_to_fa_max_deg"] = max(c["to_fa_deg"])
    out["training_to_bp_start_deg"] = c["to_bp_deg"][0]
    out["training_to_bp_end_deg"] = c["to_bp_deg"][-1]
    for key in ("microcircuit", "fa", "bp"):
        out[f"loss_{key}_end"] = c[f"loss_{key}"][-1]
    out["loss_start"] = c["loss_microcircuit"][0]
    out["accuracy_microcircuit_end"] = c["accuracy_microcircuit"][-1]
    out["accuracy_bp_end"] = c["accuracy_bp"][-1]
    return out


def holds_for(s: dict[str, Any]) -> bool:
    """The claim for one seed: in both circuits the phase lowers mean ‖v_A‖ by at least :data:`MIN_APICAL_FALL`;
    at the self-predicting state the hidden update is within :data:`MAX_START_ANGLE_DEG` of FA's (random W^down)
    and of backprop's (W^down = W̃₂ᵀ); during training its angle to FA's stays below 90° with a mean below
    :data:`MAX_MEAN_TRAINING_ANGLE_DEG`, and its angle to backprop's ends below 90°; the final test loss is at most
    half the initial one and at most :data:`MAX_LOSS_RATIO` times backprop's."""
    fell = all(s[f"{kind}_apical_fall"] >= MIN_APICAL_FALL for kind in CIRCUITS)
    start = s["random_start_to_fa_deg"] < MAX_START_ANGLE_DEG and s["transposed_start_to_bp_deg"] < MAX_START_ANGLE_DEG
    training = s["training_to_fa_max_deg"] < 90 and s["training_to_fa_mean_deg"] < MAX_MEAN_TRAINING_ANGLE_DEG
    training = training and s["training_to_bp_end_deg"] < 90
    loss = s["loss_microcircuit_end"] <= 0.5 * s["loss_start"] and (
        s["loss_microcircuit_end"] <= MAX_LOSS_RATIO * s["loss_bp_end"]
    )
    return fell and start and training and loss


def figure(records: list[dict[str, Any]], setting: Setting) -> Figure:
    """(a) mean ‖v_A‖ over the self-predicting phase; (b) the hidden update's angle to FA's and backprop's over
    training; (c) test loss of the microcircuit, FA and backprop; (d) mean ‖v_A‖ without and with the target over
    training. One line per seed."""
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (phase_ax, angle_ax), (loss_ax, apical_ax) = fig.subplots(2, 2)
    for k, record in enumerate(records):
        first = k == 0
        for kind, color in zip(CIRCUITS, ("C0", "C3"), strict=True):
            trace = record["phase"][kind]["trace"]
            label = "W^down fixed random" if kind == "random" else "W^down = W̃₂ᵀ"
            phase_ax.plot(range(1, len(trace) + 1), trace, color=color, linewidth=1, label=label if first else None)
        c = record["curves"]
        angle_ax.plot(c["step"], c["to_fa_deg"], color="C2", linewidth=1,
                      label="to FA's (B = W^downᵀ)" if first else None)  # fmt: skip
        angle_ax.plot(c["step"], c["to_bp_deg"], color="C1", linewidth=1, linestyle="--",
                      label="to backprop's" if first else None)  # fmt: skip
        for key, color, style in (("microcircuit", "C2", "-"), ("fa", "C0", ":"), ("bp", "C1", "--")):
            loss_ax.plot(c["step"], c[f"loss_{key}"], color=color, linestyle=style, linewidth=1,
                         label=LABELS[key] if first else None)  # fmt: skip
        apical_ax.plot(c["step"], c["apical_free"], color="C4", linewidth=1, label="without target" if first else None)
        apical_ax.plot(c["step"], c["apical_nudged"], color="C5", linewidth=1,
                       label="with the target nudging the output" if first else None)  # fmt: skip
    angle_ax.axhline(90, color="k", linestyle="--", linewidth=0.8, label="90° (orthogonal)")
    phase_ax.set(yscale="log", xlabel="self-predicting phase step (batches of random inputs)",
                 ylabel="mean ‖v_A‖, hidden layer (model potential units)",
                 title="(a) interneurons learn to cancel the top-down input")  # fmt: skip
    angle_ax.set(xlabel="training step (batches of digits)", ylabel="angle of the hidden weight update (°)",
                 ylim=(0, 120), title="(b) hidden update, W^down fixed random")  # fmt: skip
    loss_ax.set(yscale="log", xlabel="training step (batches of digits)",
                ylabel="test loss ½‖z − onehot(y)‖² (mean)", title="(c) learning digits")  # fmt: skip
    apical_ax.set(yscale="log", xlabel="training step (batches of digits)",
                  ylabel="mean ‖v_A‖, hidden layer (model potential units)",
                  title="(d) apical potential on held-out digits during training")  # fmt: skip
    for ax in (phase_ax, angle_ax, loss_ax, apical_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.suptitle(f"dendritic microcircuit (Sacramento et al. 2018), tanh 64–{setting.hidden}–10 on digits, the "
                 f"paper's rule (baseline=none), g_som = {setting.g_som}, {len(records)} seed(s)\nself-predicting "
                 f"phase: {setting.prepare_steps} steps of {setting.prepare_batch} random inputs; training: "
                 f"{setting.steps} steps of {setting.batch} digits, SGD lr {setting.lr}")  # fmt: skip
    return fig


@reproduce.register(
    NAME,
    paper="Sacramento, Costa, Bengio & Senn 2018, NeurIPS",
    source="Fig. 1 (self-predicting state, learning with apical errors) and the analysis of §3 (backprop with "
    "W^down in place of Wᵀ in the self-predicting state, weak nudging)",
    claim="with no target, interneuron plasticity (W^IP, W^PI) silences the apical dendrites (the self-predicting "
    "state); then, with the target nudging the output, the apical potentials carry the output error and the hidden "
    "layer's update is backprop's with W^down in place of Wᵀ (feedback alignment's for fixed random W^down) and "
    "learns like backprop",
    paper_value="apical potentials decay towards zero as W^IP, W^PI learn on random inputs, and the network then "
    "learns with errors in the apical dendrites, approximating backprop (shown in figures and derived analytically "
    "for weak nudging; no single number)",
    summary="microcircuit 64-32-10 on digits: apical ‖v_A‖ falls in the self-predicting phase; hidden update ≈ FA's",
    figures=(FIGURE,),
)
def run(out: Path, seed: int, scale: str) -> dict[str, Any]:
    """The reproduction (module docstring): ``ours`` holds the means over seeds of :func:`summarise`'s numbers
    (‖v_A‖ in model potential units, angles in degrees, losses ½‖z − onehot‖²); ``holds`` is :func:`holds_for` for
    every seed."""
    from bioprop.report import plots

    setting = SETTINGS[scale]
    records = [run_seed(setting, seed + k) for k in range(setting.seeds)]
    per_seed = [summarise(record) for record in records]
    plots.save(figure(records, setting), reproduce.figure_path(out, NAME, FIGURE))
    ours: dict[str, Any] = {key: sum(s[key] for s in per_seed) / len(per_seed) for key in per_seed[0]}
    ours["seeds_holding"] = sum(holds_for(s) for s in per_seed)
    ours["seeds"] = len(per_seed)
    return {
        "ours": ours,
        "holds": all(holds_for(s) for s in per_seed),
        "criterion": f"for every seed: mean ‖v_A‖ on held-out random inputs falls ≥ {MIN_APICAL_FALL:g}x over the "
        f"phase in both circuits; at the self-predicting state the hidden update is within {MAX_START_ANGLE_DEG:g}° "
        "of FA's (W^down random) and of backprop's (W^down = W̃₂ᵀ); in training its angle to FA's stays below 90° "
        f"with a mean below {MAX_MEAN_TRAINING_ANGLE_DEG:g}° and its angle to backprop's ends below 90°; the final "
        f"test loss is ≤ half the initial and ≤ {MAX_LOSS_RATIO:g}x backprop's",
        "reference": "FA's update with B = W^downᵀ (the fa rule) is what the analysis predicts for W^down ≠ W^upᵀ; "
        "backprop's (rule.reference_grads) for W^down = W^upᵀ; both are reported for both",
        "setting": setting._asdict(),
        "per_seed": per_seed,
        "records": records,
    }
