"""``microcircuit``: Sacramento, Costa, Bengio & Senn 2018, NeurIPS, "Dendritic cortical microcircuits approximate
the backpropagation algorithm". Pyramidal neurons of layer k (basal, apical, somatic compartments), one interneuron
per pyramidal neuron of layer k+1 in each hidden layer (Eqs. 1–3; the functions are in
:mod:`bioprop.rules.microcircuit_dynamics`):

.. math::
    \\dot u_k = -g_l u_k + g_B (v_{B,k} - u_k) + g_A (v_{A,k} - u_k) + σ ξ, \\quad
    v_{B,k} = W^{up}_k φ(u_{k-1}), \\quad v_{A,k} = W^{down}_k φ(u_{k+1}) + W^{pi}_k φ(u^I_k)

    \\dot u^I_k = -g_l u^I_k + g_D (v_{I,k} - u^I_k) + g_{som} (u_{k+1} - u^I_k), \\quad v_{I,k} = W^{ip}_k φ(u_k)

The output layer N has g_A = 0 and a teaching current g_som (u_tgt − u_N). Plasticity, with
v̂_B = g_B v_B / (g_l + g_B + g_A) and v̂_I = g_D v_I / (g_l + g_D):
ΔW^up ∝ (φ(u_k) − φ(v̂_{B,k})) φ(u_{k−1})^T, ΔW^ip ∝ (φ(u^I) − φ(v̂_I)) φ(u_k)^T, ΔW^pi ∝ −v_A φ(u^I)^T.

Implementation choices (documented, not the paper's):

- Folding. The network's Linear layers hold the attenuated weights W̃_k = c_k W^up_k (and biases), with
  c_k = g_B/(g_l+g_B+g_A) for hidden layers and g_B/(g_l+g_B) for the output, so Linear_k(φ(u_{k−1})) = v̂_{B,k}
  and ``net(x)`` is exactly the microcircuit's output without a target in the self-predicting state (v_A = 0):
  test-time prediction is the feedforward pass. Likewise the rule stores Ŵ^ip = g_D/(g_l+g_D) W^ip (and a bias),
  so v̂_I = Ŵ^ip φ(u_k) + b^ip; the self-predicting state is Ŵ^ip = W̃_{k+1}, b^ip = b̃_{k+1}, W^pi = −W^down.
- The output layer is linear (the net's logits are u_N), so φ_N is the identity, and so is the rate of the
  interneurons that mirror it: an interneuron's rate function is that of the pyramidal neuron it predicts.
- Target: u_tgt = v̂_N − ∂ℓ/∂v̂_N for the run's output loss ℓ (:mod:`bioprop.losses`): ``se`` the one-hot target,
  ``ce`` v̂_N − (softmax(v̂_N) − onehot), so that u_N − v̂_N is −λ ∂ℓ/∂v̂_N, λ = g_som/(g_l+g_B+g_som). The loss
  reported (``Update.loss``) is ℓ of ``net(x)``, the batch mean.
- ``steady`` mode solves the noiseless steady state, u_k = v̂_{B,k} + a v_{A,k} (a = g_A/(g_l+g_B+g_A)),
  u_N = v̂_N + λ(u_tgt − v̂_N), u^I_k = v̂_{I,k} + m (u_{k+1} − v̂_{I,k}) (m = g_som/(g_l+g_D+g_som)), by
  Gauss–Seidel sweeps from the feedforward pass until max|Δu| < tol; ``dynamic`` Euler-integrates the equations
  above with dt and noise σ for ``steps`` steps. Plasticity is applied at the end, on the settled potentials.
- ``normalize``: W̃_k's update is divided by the attenuation the error suffers on its way down, s_N = λ and
  s_k = s_{k+1}·a(1−m), so that with W^down = W̃^T it matches backprop's scale and one learning rate serves all
  layers (a layer-specific plasticity rate). The interneuron rates are normalised LMS: Ŵ^ip's rate is divided by
  m and by the presynaptic power mean‖φ(u_k)‖² + 1, W^pi's by mean‖φ(u^I)‖² + 1.
- ``feedback=learned``: W^down learns Kolen–Pollack style (Akrout et al. 2019, NeurIPS): the feedback synapse
  sees the forward synapse's pre/post product, ΔW^down_k = −η_down (∂W̃_{k+1}^T + decay W^down_k), so with weight
  decay on both W^down → W̃^T. bioprop's optimizer (momentum, Adam) applies W̃'s update, so the match is
  approximate; the diagnostics report the angle.
- ``baseline=free`` (not in the paper): W^up's postsynaptic term is φ(u_k) − φ(v̂_B,k + a v_A,k^free), i.e. the
  apical input's change caused by the target, v_A,k^free settled without a target (a second settling per batch;
  the basal v̂_B,k stays the nudged state's, as in the paper's rule). An imperfect self-predicting state
  leaves an apical residual v_A^free ≠ 0 that the paper's φ(u) − φ(v̂_B) learns as if it were error; with the
  output error attenuated by λ a(1−m) per layer it can swamp the true signal, and the free baseline cancels it.

State and randomness. The rule's synapses (Ŵ^ip, b^ip, W^pi, W^down) are its state: ``grads`` computes their
plasticity without adopting it (``Update.state``), ``backward`` adopts it (:meth:`Microcircuit.commit`), and
:meth:`Microcircuit.prepare` (the self-predicting phase, an explicit step method run once before training) changes
them too. Random numbers (initial synapses, the phase's random inputs, the dynamic mode's noise) come from the
step-seeded generators of :meth:`~bioprop.rules.base.Rule.generator` (option ``seed``, the step count, a stream per
purpose): ``grads`` twice gives the same update, the global random state is never used, and a checkpoint (the
synapses and the step count) resumes bit-identically.

It takes an MLP (:mod:`bioprop.rules.mlp_settling`) with at least one hidden layer and refuses shared weights (each
layer has interneurons of its own). Budgets: ``steps`` at most 100 000, ``sweeps`` 10 000, ``prepare_steps``
100 000, ``prepare_batch`` 65 536. The plasticity divides by m and, with ``normalize``, by s_1: conductances that
make either smaller than the network's dtype can divide by (its smallest normal number, e.g. g_l=1e308) are refused
by ``rules.create``. A settling that fails is a :class:`DivergenceError` naming a non-finite weight or synapse
first, then the options the user set, then g_a (and ``prepare_lr`` after the self-predicting phase's first step, or
the learning rate).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bioprop.errors import BioPropError, DivergenceError
from bioprop.metrics import angle_deg
from bioprop.nets import layer_parameters
from bioprop.rules.base import (
    Diagnostic,
    Entry,
    FigureSpec,
    Options,
    Rule,
    Trace,
    Unstable,
    Update,
    make_card,
    option,
    register,
)
from bioprop.rules.feedback_alignment import draw_feedback
from bioprop.rules.microcircuit_dynamics import (
    Circuit,
    CircuitParameters,
    Conductances,
    Plasticity,
    PlasticityRates,
    Settled,
    Target,
    Wiring,
    advance,
    error_scales,
    plasticity,
    settle_circuit,
)
from bioprop.rules.mlp_settling import (
    MAX_STEPS,
    lms_rate,
    mlp_parts,
    mlp_tensors,
)
from bioprop.rules.options import count, non_negative, positive, seed_option

SACRAMENTO = "Sacramento, Costa, Bengio & Senn 2018, NeurIPS"
MAX_SWEEPS = 10_000
MAX_PREPARE = 100_000
MAX_PREPARE_BATCH = 65_536

#: Streams of the step-seeded generators (:meth:`Rule.generator`): the noise of a training step's settling with the
#: target and without it (``baseline=free``), of the diagnostics' settling without target, the initial synapses;
#: step i of the self-predicting phase draws its inputs from stream PREPARE + 2i and its noise from PREPARE + 2i + 1.
NUDGED, FREE, DIAGNOSTIC, INITIAL, PREPARE = range(5)

CARD_MICROCIRCUIT = make_card(
    linear=(True, "errors pass through the nonlinear rates φ(u) of pyramidal neurons and interneurons"),
    derivatives=(True, "the plasticity uses φ(u) − φ(v̂_B), a difference of rates, not φ'"),
    weight_transport=(True, "W^down is fixed random (or learned by a local rule), never a copy of W^upᵀ"),
    spikes=(False, "real-valued rates and potentials"),
    clock=(
        False,
        "the default baseline=free settles a second time without the target, a phase to switch into; "
        "baseline=none (the paper's) is one continuous dynamics with plasticity on, no backward phase",
    ),  # fmt: skip
    targets=(False, "needs a teaching current at the output layer"),
)


@dataclasses.dataclass(frozen=True)
class MicrocircuitOptions(Options):
    """Options of ``microcircuit`` (module docstring)."""

    mode: str = option("steady", "steady-state sweeps (training) or Euler dynamics", choices=("steady", "dynamic"))
    output: str = option("ce", "target: se onehot, ce prediction moved against the CE gradient", choices=("ce", "se"))
    feedback: str = option("fixed", "W^down fixed random or learned (Kolen–Pollack)", choices=("fixed", "learned"))
    g_l: float = positive(0.1, "leak conductance g_l")
    g_b: float = positive(1.0, "basal conductance g_B")
    g_a: float = positive(0.8, "apical conductance g_A")
    g_d: float = positive(1.0, "interneuron dendritic conductance g_D")
    g_som: float = positive(0.1, "somatic nudging conductance g_som (teacher and interneurons)")
    sweeps: int = count(50, "steady mode: fixed-point sweep budget", MAX_SWEEPS)
    tol: float = positive(1e-4, "steady mode: converged when max|Δu| between sweeps falls below this")
    dt: float = positive(0.1, "dynamic mode: Euler step")
    steps: int = count(300, "dynamic mode: Euler steps per pattern", MAX_STEPS)
    noise: float = non_negative(0.0, "dynamic mode: somatic noise σ")
    baseline: str = option("free", "W^up's error: none, φ(u) − φ(v̂_B) (the paper); free, minus the apical input "
                           "without target", choices=("none", "free"))  # fmt: skip
    normalize: bool = option(True, "divide W^up's update by the error's attenuation s_k (one lr for all layers)")
    lr_ip: float = lms_rate(0.05, "normalised rate of Ŵ^ip (interneuron ← pyramidal) during training")
    lr_pi: float = lms_rate(0.05, "normalised rate of W^pi (pyramidal apical ← interneuron) during training")
    prepare_lr: float = lms_rate(1.0, "self-predicting phase: normalised rate of Ŵ^ip and W^pi")
    lr_down: float = non_negative(0.01, "feedback=learned: rate of W^down")
    decay_down: float = non_negative(0.01, "feedback=learned: weight decay of W^down")
    prepare_steps: int = non_negative(1000, "self-predicting phase: steps on random inputs (0: none)", int, MAX_PREPARE)
    prepare_batch: int = count(64, "self-predicting phase: random inputs per step", MAX_PREPARE_BATCH)
    init_scale: float = positive(1.0, "factor on the random initial W^down, W^pi and Ŵ^ip")
    seed: int = seed_option("seed of the rule's generators (initial synapses, random inputs, noise)")


class Step(NamedTuple):
    """What a training step leads to (``Update.state``): the synapses after their plasticity, each hidden layer's
    mean ‖v_A‖ with the target (0-d tensors) and the batch (for the diagnostics' apical norms without target)."""

    circuit: Circuit
    apical: list[Tensor]
    x: Tensor


LAYER = r"_l(?P<layer>\d+)"


@register("microcircuit", family="dendritic", paper=SACRAMENTO,
          summary="pyramidal-interneuron microcircuit, apical errors", card=CARD_MICROCIRCUIT)  # fmt: skip
class Microcircuit(Rule):
    """Sacramento et al.'s dendritic cortical microcircuit; equations and choices in the module docstring."""

    Options = MicrocircuitOptions
    trace_specs = (Trace("apical_norm", "mean ‖v_A‖ without target"),)
    diagnostic_specs = (
        Diagnostic(f"apical_norm{LAYER}", "hidden layer {layer}, with target (mean over the epoch)"),
        Diagnostic(f"apical_norm_free{LAYER}", "hidden layer {layer}, without target (free, last batch)"),
        Diagnostic(f"w_pi_down_angle_deg{LAYER}", "hidden layer {layer}: angle W^pi vs −W^down (degrees)"),
        Diagnostic(f"w_ip_up_angle_deg{LAYER}", "hidden layer {layer}: angle Ŵ^ip vs the next W̃ (degrees)"),
        Diagnostic(f"w_down_up_angle_deg{LAYER}", "hidden layer {layer}: angle W^down vs the next W̃ᵀ (degrees)"),
    )
    figures = (FigureSpec("apical.png", "self-predicting phase",
                          preparation="apical_norm", diagnostics=(0, 1), ylabel="mean ‖v_A‖"),)  # fmt: skip

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        linears, self.phi = mlp_parts(net, self.name)
        if len(linears) < 2:
            raise BioPropError(f"rule {self.name} needs at least one hidden layer (e.g. --arch mlp:500)")
        owner: dict[int, str] = {}
        for path, layer in linears:
            for param in layer_parameters(layer):
                if id(param) in owner:
                    raise BioPropError(
                        f"rule {self.name}: layer {path} (Linear) shares its weights with layer {owner[id(param)]}; "
                        "the microcircuit needs its own interneurons for each layer: shared weights are not supported"
                    )
                owner[id(param)] = path
        self.linears = [layer.module for layer in linears]
        o = self.opts
        g = Conductances(o.g_l, o.g_b, o.g_a, o.g_d, o.g_som)
        self.check_conductances(g)
        self.params = CircuitParameters(g, o.mode == "dynamic", o.dt, o.noise, o.steps, o.sweeps, o.tol)
        self.rates = PlasticityRates(o.lr_ip, o.lr_pi, o.lr_down, o.decay_down, o.normalize, o.feedback == "learned")
        generator, like = self.generator(INITIAL), self.linears[0].weight

        def draw(shape: tuple[int, ...]) -> Tensor:
            return (draw_feedback(torch.Size(shape), "xavier", generator) * o.init_scale).to(like)

        sizes = [m.out_features for m in self.linears]
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))  # (n_k, n_{k+1}) per hidden layer
        self.circuit = Circuit([draw((b, a)) for a, b in pairs], [torch.zeros(b).to(like) for _, b in pairs],
                               [draw((a, b)) for a, b in pairs], [draw((a, b)) for a, b in pairs])  # fmt: skip
        self._apical_sums: list[float] = [0.0] * len(pairs)
        self._apical_count = 0
        self._last_x: Tensor | None = None

    def check_conductances(self, g: Conductances) -> None:
        """Refuse conductances that make a divisor of the plasticity, m (the interneurons' normalised rate) or, with
        ``normalize``, the error's attenuation s_1 to the first layer, smaller than the network's dtype can divide
        by (its smallest normal number): every update would overflow. Raises :class:`BioPropError` naming them."""
        dtype = self.linears[0].weight.dtype
        divisors = {"m = g_som/(g_l+g_d+g_som)": g.m}
        if self.opts.normalize:
            divisors["the attenuation s_1 = λ (a(1−m))^(N−1)"] = error_scales(g, len(self.linears))[0]
        for what, value in divisors.items():
            if not value >= torch.finfo(dtype).tiny:
                said = ", ".join(f"{key}={getattr(g, key):g}" for key in Conductances._fields)
                raise BioPropError(
                    f"rule {self.name}: the conductances {said} give {what} = {value:.3g}, too small to divide by in "
                    f"{dtype}; bring them closer to their defaults"
                )

    def synapses(self) -> Circuit:
        """The rule's synapses in the network's dtype and on its device (converted copies when the net has moved
        since they were last adopted; the rule's own tensors are not changed)."""
        like = self.linears[0].weight
        if self.circuit.w_ip[0].dtype == like.dtype and self.circuit.w_ip[0].device == like.device:
            return self.circuit
        return Circuit(*[[t.to(like) for t in tensors] for tensors in self.circuit])

    def settle(self, x: Tensor, y: Tensor | None, stream: int = NUDGED, circuit: Circuit | None = None) -> Settled:
        """The settled microcircuit for inputs ``x`` (B, ...) and labels ``y`` (B,) or None (no target); the dynamic
        mode's noise comes from the step's generator ``stream``. Pure."""
        mlp, x0 = mlp_tensors(self.linears, self.phi), x.reshape(len(x), -1)
        target = None if y is None else Target(y, self.loss)
        circuit = self.synapses() if circuit is None else circuit
        wiring = Wiring(mlp, circuit, x0 @ mlp.weights[0].T + mlp.biases[0], target)
        return settle_circuit(wiring, self.params, self.generator(stream) if self.params.sigma > 0 else None)

    @torch.no_grad()
    def learn(
        self, x: Tensor, y: Tensor | None, rates: PlasticityRates, streams: tuple[int, int] = (NUDGED, FREE)
    ) -> tuple[Update, Plasticity, Settled]:
        """The settled circuit (noise from ``streams``: with the target, without it) and its plasticity with
        ``rates``, as the update of the net's weights, the increments of the rule's synapses and the settled state.
        Changes nothing."""
        circuit = self.synapses()
        settled = self.settle(x, y, streams[0], circuit)
        free = self.settle(x, None, streams[1], circuit) if y is not None and self.opts.baseline == "free" else None
        mlp, x0 = mlp_tensors(self.linears, self.phi), x.reshape(len(x), -1)
        change = plasticity(mlp, circuit, x0, settled, self.params.g, rates, y is not None, free)
        grads: dict[str, Tensor] = {}
        for layer, (dw, db) in zip(self.linears, change.forward, strict=True):
            grads[self.param_name(layer.weight)] = dw
            if layer.bias is not None:
                grads[self.param_name(layer.bias)] = db
        prediction = self.net(x)
        loss = self.loss.value(prediction, y) if y is not None else prediction.new_zeros(())
        return Update(grads, loss, prediction), change, settled

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        """The net's update and, in ``Update.state``, the synapses after their own plasticity (a :class:`Step`)."""
        try:
            update, change, settled = self.learn(x, y, self.rates)
        except Unstable as exc:
            raise Unstable(self.name, exc.what, f"{exc.advice} or the learning rate", exc.named) from None
        apical = [v_a.norm(dim=1).mean() for v_a in settled.apical]
        return update._replace(state=Step(advance(self.synapses(), change.circuit), apical, x))

    def commit(self, update: Update) -> None:
        """Adopt the step's synapses and record its apical norms (for :meth:`diagnostics`)."""
        step: Step = update.state
        self.circuit = step.circuit
        for k, norm in enumerate(step.apical):
            self._apical_sums[k] += float(norm)
        self._apical_count += 1
        self._last_x = step.x

    @torch.no_grad()
    def prepare(self) -> dict[str, list[float]]:
        """The self-predicting phase, run once before training: ``prepare_steps`` steps on random inputs N(0, 1)
        (``prepare_batch`` each), no target; only Ŵ^ip, b^ip and W^pi learn, at ``prepare_lr``. An explicit step
        method: it changes the rule's synapses (not the step count). Trace: mean ‖v_A‖ (over examples and hidden
        layers) without a target, every step. Raises :class:`DivergenceError` when a settling fails."""
        o, like = self.opts, self.linears[0].weight
        rates = self.rates._replace(lr_ip=o.prepare_lr, lr_pi=o.prepare_lr)
        norms = []
        for step in range(o.prepare_steps):
            inputs, noise = PREPARE + 2 * step, PREPARE + 2 * step + 1
            shape = (o.prepare_batch, self.linears[0].in_features)
            x = torch.randn(shape, generator=self.generator(inputs), dtype=torch.float64).to(like)
            try:
                _, change, settled = self.learn(x, None, rates, (noise, noise))
            except DivergenceError as exc:
                if isinstance(exc, Unstable):  # the phase's own plasticity is a suspect once it has taken a step
                    more = f" or prepare_lr (now {o.prepare_lr:g})" if step else ""
                    where = f"{exc.what}, in step {step + 1} of the self-predicting phase"
                    exc = Unstable(self.name, where, exc.advice + more, exc.named)
                raise self.explain(exc) from None  # a non-finite weight, not the settings, if there is one
            norms.append(sum(float(a.norm(dim=1).mean()) for a in settled.apical) / len(settled.apical))
            self.circuit = advance(self.synapses(), change.circuit)
        return {"apical_norm": norms} if norms else {}

    @torch.no_grad()
    def apical_norms(self, x: Tensor, y: Tensor | None = None, stream: int = DIAGNOSTIC) -> list[float]:
        """Mean ‖v_A,k‖ per hidden layer for inputs ``x`` (with the target when ``y`` is given). Pure."""
        return [float(a.norm(dim=1).mean()) for a in self.settle(x, y, stream).apical]

    def diagnostics(self) -> dict[str, float]:
        """Per hidden layer k: mean ‖v_A‖ with the target over the epoch's steps (``apical_norm_lk``) and without
        it on the last batch (``apical_norm_free_lk``); angles W^pi vs −W^down and Ŵ^ip vs W̃_{k+1}; with learned
        feedback, W^down vs W̃_{k+1}^T (:attr:`diagnostic_specs`). Starts the next epoch's means."""
        out: dict[str, float] = {}
        if self._apical_count:
            for k, total in enumerate(self._apical_sums):
                out[f"apical_norm_l{k + 1}"] = total / self._apical_count
        if self._last_x is not None:
            try:
                norms = self.apical_norms(self._last_x)
            except DivergenceError as exc:  # the synapses or weights the last step led to: named as in training
                raise self.explain(exc, self._last_x) from None
            out.update({f"apical_norm_free_l{k + 1}": value for k, value in enumerate(norms)})
        c = self.circuit
        for k in range(len(c.w_pi)):
            out[f"w_pi_down_angle_deg_l{k + 1}"] = angle_deg(c.w_pi[k], -c.w_down[k])
            out[f"w_ip_up_angle_deg_l{k + 1}"] = angle_deg(c.w_ip[k], self.linears[k + 1].weight)
            if self.rates.learned:
                out[f"w_down_up_angle_deg_l{k + 1}"] = angle_deg(c.w_down[k], self.linears[k + 1].weight.T)
        self._apical_sums, self._apical_count = [0.0] * len(self._apical_sums), 0
        return out

    def state_dict(self) -> dict[str, Tensor]:
        """The synapses as ``w_ip.K``, ``b_ip.K``, ``w_pi.K``, ``w_down.K`` (K = 0-based hidden layer) and the step
        count (``super()``)."""
        state = super().state_dict()
        state.update({f"{field}.{k}": t for field, ts in zip(Circuit._fields, self.circuit, strict=True)
                      for k, t in enumerate(ts)})  # fmt: skip
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors; a missing or unexpected key is a :class:`BioPropError`."""
        state = dict(state)
        state.pop("generator", None)  # checkpoints before contract v2 held a generator; the noise is step-seeded now
        fields = []
        for field, mine in zip(Circuit._fields, self.circuit, strict=True):
            try:
                fields.append([state.pop(f"{field}.{k}").to(t).clone() for k, t in enumerate(mine)])
            except KeyError as missing:
                raise BioPropError(f"rule {self.name}: checkpoint lacks {missing}") from None
        super().load_state_dict(state)
        self.circuit = Circuit(*fields)
