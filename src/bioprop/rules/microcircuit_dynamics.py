"""The microcircuit's equations as plain functions over tensors (Sacramento, Costa, Bengio & Senn 2018, NeurIPS,
"Dendritic cortical microcircuits approximate the backpropagation algorithm"); the rule that drives them, its
options and the implementation choices are in :mod:`bioprop.rules.microcircuit`.

Notation (1-based layers k = 1..N, hidden k < N): the net's Linear layers hold the attenuated weights W̃_k and biases
b̃_k (``MLP``), so v̂_B,k = W̃_k φ(u_{k−1}) + b̃_k; the rule's own synapses are a :class:`Circuit` (Ŵ^ip, b^ip,
W^pi, W^down per hidden layer); the state is the :class:`Potentials` (pyramidal u_k, interneurons u^I_k); a settling
holds a :class:`Wiring` fixed and is parameterised by a :class:`CircuitParameters`. Every function here is pure: it
returns new tensors and draws no random numbers (the noise ξ is passed in).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from bioprop.losses import Loss
from bioprop.rules.base import Unstable
from bioprop.rules.mlp_settling import MLP, Act, Guard, loss_gradient, steady_reached


class Conductances(NamedTuple):
    """g_l (leak), g_B (basal), g_A (apical), g_D (interneuron dendrite), g_som (somatic nudging), dimensionless."""

    g_l: float
    g_b: float
    g_a: float
    g_d: float
    g_som: float

    @property
    def a(self) -> float:  # apical share of a hidden soma at rest: u = v̂_B + a v_A
        return self.g_a / (self.g_l + self.g_b + self.g_a)

    @property
    def lam(self) -> float:  # teaching share of the output soma: u_N = v̂_N + λ (u_tgt − v̂_N)
        return self.g_som / (self.g_l + self.g_b + self.g_som)

    @property
    def m(self) -> float:  # nudging share of an interneuron: u^I = v̂_I + m (u_{k+1} − v̂_I)
        return self.g_som / (self.g_l + self.g_d + self.g_som)


class CircuitParameters(NamedTuple):
    """How a settling runs: the conductances ``g``; ``dynamic`` (Euler integration for ``steps`` steps of ``dt`` with
    somatic noise ``sigma``) or else steady-state sweeps, at most ``sweeps``, until max|Δu| < ``tol``."""

    g: Conductances
    dynamic: bool = False
    dt: float = 0.1
    sigma: float = 0.0
    steps: int = 300
    sweeps: int = 50
    tol: float = 1e-4


class Circuit(NamedTuple):
    """The rule's synapses, per hidden layer k: Ŵ^ip (n_{k+1}, n_k), b^ip (n_{k+1}), W^pi and W^down (n_k, n_{k+1})."""

    w_ip: list[Tensor]
    b_ip: list[Tensor]
    w_pi: list[Tensor]
    w_down: list[Tensor]


class Potentials(NamedTuple):
    """Somatic potentials: pyramidal u_1..u_N, each (B, n_k), and interneurons u^I_1..u^I_{N−1}, (B, n_{k+1})."""

    u: list[Tensor]
    u_i: list[Tensor]


class Target(NamedTuple):
    """The teaching signal: labels ``y`` (B,) and the run's output ``loss``."""

    y: Tensor
    loss: Loss


class Wiring(NamedTuple):
    """What a settling holds fixed: the net's W̃_k, b̃_k and φ (``mlp``), the rule's synapses, ``first`` = v̂_B,1 (the
    clamped input's drive, (B, n_1)) and the ``target`` (None: no teaching current)."""

    mlp: MLP
    circuit: Circuit
    first: Tensor
    target: Target | None


class Compartments(NamedTuple):
    """Dendritic potentials: attenuated basal v̂_B,k (k = 1..N), apical v_A,k and interneuron v̂_I,k (k < N)."""

    basal: list[Tensor]
    apical: list[Tensor]
    inter: list[Tensor]


class Settled(NamedTuple):
    potentials: Potentials
    basal: list[Tensor]  # v̂_B,k at the settled state
    apical: list[Tensor]
    inter: list[Tensor]


def rate(phi: Act, k: int, n_layers: int, u: Tensor) -> Tensor:
    """φ_k(u): the activation for hidden layers (k < N), the identity for the linear output layer N (1-based)."""
    return u if k == n_layers else phi(u)


def teacher(v_top: Tensor, target: Target | None) -> Tensor | None:
    """u_tgt = v̂_N − ∂ℓ/∂v̂_N per example: ``se`` the one-hot target, ``ce`` the prediction moved against the
    cross-entropy's gradient; None without a target."""
    return None if target is None else v_top - loss_gradient(target.loss, v_top, target.y)


def compartments(p: Potentials, w: Wiring) -> Compartments:
    """The dendritic potentials (Sacramento et al. 2018, Eq. 2, and the interneuron's v_I = W^ip φ(u_k)), folded:
    v̂_B,k = W̃_k φ(u_{k−1}) + b̃_k, v_A,k = W^down_k φ(u_{k+1}) + W^pi_k φ(u^I_k), v̂_I,k = Ŵ^ip_k φ(u_k) + b^ip_k."""
    weights, biases, phi = w.mlp
    c, n = w.circuit, len(weights)
    rates = [rate(phi, k + 1, n, u) for k, u in enumerate(p.u)]
    basal = [w.first] + [r @ wk.T + b for r, wk, b in zip(rates[:-1], weights[1:], biases[1:], strict=True)]
    apical, inter = [], []
    for k in range(n - 1):  # hidden layer k+1 (1-based)
        r_inter = rate(phi, k + 2, n, p.u_i[k])  # interneurons fire like the layer they mirror
        apical.append(rates[k + 1] @ c.w_down[k].T + r_inter @ c.w_pi[k].T)
        inter.append(rates[k] @ c.w_ip[k].T + c.b_ip[k])
    return Compartments(basal, apical, inter)


def somatic_dynamics(p: Potentials, w: Wiring, g: Conductances) -> tuple[list[Tensor], list[Tensor]]:
    """The noiseless right-hand sides (Sacramento et al. 2018, Eqs. 1 and 3; C_m = 1), in folded form:
    u̇_k = −g_l u_k + g_B (v_B,k − u_k) + g_A (v_A,k − u_k) with g_B v_B = (g_l+g_B+g_A) v̂_B for hidden layers; the
    output has g_A = 0 and the teaching current g_som (u_tgt − u_N); u̇^I_k = −g_l u^I_k + g_D (v_I,k − u^I_k) +
    g_som (u_{k+1} − u^I_k) with g_D v_I = (g_l+g_D) v̂_I. Returns (u̇, u̇^I)."""
    basal, apical, inter = compartments(p, w)
    hidden_total, top_total = g.g_l + g.g_b + g.g_a, g.g_l + g.g_b
    du = [-g.g_l * u + hidden_total * v - g.g_b * u + g.g_a * (a - u)
          for u, v, a in zip(p.u[:-1], basal[:-1], apical, strict=True)]  # fmt: skip
    u_n, v_n = p.u[-1], basal[-1]
    target = teacher(v_n, w.target)
    top = -g.g_l * u_n + top_total * v_n - g.g_b * u_n
    du.append(top if target is None else top + g.g_som * (target - u_n))
    du_i = [-g.g_l * ui + (g.g_l + g.g_d) * v - g.g_d * ui + g.g_som * (above - ui)
            for ui, v, above in zip(p.u_i, inter, p.u[1:], strict=True)]  # fmt: skip
    return du, du_i


def euler_step(p: Potentials, w: Wiring, params: CircuitParameters, xi: list[Tensor] | None = None) -> Potentials:
    """One Euler step of :func:`somatic_dynamics` of size dt, with the pyramidal somata's noise σ ξ / √dt where
    ``xi`` (standard normal, shaped like ``p.u``) is given."""
    du, du_i = somatic_dynamics(p, w, params.g)
    if xi is not None:
        du = [d + params.sigma * e / math.sqrt(params.dt) for d, e in zip(du, xi, strict=True)]
    return Potentials([u + params.dt * d for u, d in zip(p.u, du, strict=True)],
                      [u + params.dt * d for u, d in zip(p.u_i, du_i, strict=True)])  # fmt: skip


def steady_sweep(p: Potentials, w: Wiring, g: Conductances) -> Potentials:
    """One Gauss–Seidel sweep, bottom-up, of the noiseless steady state of Eqs. 1 and 3: u_k = v̂_B,k + a v_A,k
    from the new u_{k−1} and the old u_{k+1}, u^I_k; then u^I_{k−1} = v̂_I + m (u_k − v̂_I) from the new u_{k−1}, u_k;
    u_N = v̂_N + λ (u_tgt − v̂_N)."""
    weights, biases, phi = w.mlp
    c, n = w.circuit, len(weights)
    u, u_i = list(p.u), list(p.u_i)
    for k in range(n):  # layer k+1 (1-based)
        basal = w.first if k == 0 else rate(phi, k, n, u[k - 1]) @ weights[k].T + biases[k]
        if k < n - 1:
            above, inter = rate(phi, k + 2, n, u[k + 1]), rate(phi, k + 2, n, u_i[k])
            u[k] = basal + g.a * (above @ c.w_down[k].T + inter @ c.w_pi[k].T)
        else:
            target = teacher(basal, w.target)
            u[k] = basal if target is None else basal + g.lam * (target - basal)
        if k > 0:
            v_i = rate(phi, k, n, u[k - 1]) @ c.w_ip[k - 1].T + c.b_ip[k - 1]
            u_i[k - 1] = v_i + g.m * (u[k] - v_i)
    return Potentials(u, u_i)


def feedforward(w: Wiring) -> Potentials:
    """The state without apical input: u_k = v̂_B,k layer by layer (u_1 = v̂_B,1), interneurons at v̂_I,k."""
    weights, biases, phi = w.mlp
    n, u = len(weights), [w.first]
    for k, (wk, b) in enumerate(zip(weights[1:], biases[1:], strict=True)):
        u.append(rate(phi, k + 1, n, u[-1]) @ wk.T + b)
    inter = [
        rate(phi, k + 1, n, u[k]) @ wk.T + b
        for k, (wk, b) in enumerate(zip(w.circuit.w_ip, w.circuit.b_ip, strict=True))
    ]
    return Potentials(u, inter)


def max_change(a: Potentials, b: Potentials) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.u + a.u_i, b.u + b.u_i, strict=True))


def settle_circuit(w: Wiring, params: CircuitParameters, generator: torch.Generator | None = None) -> Settled:
    """The settled microcircuit from the feedforward state: ``dynamic`` Euler integration (noise ξ drawn from
    ``generator`` on the CPU in the potentials' dtype, then moved to their device, when σ > 0), else steady sweeps to
    max|Δu| < tol. A non-finite state or a spent sweep budget is an :class:`~bioprop.rules.base.Unstable`."""
    p = feedforward(w)
    if params.dynamic:
        for _ in range(params.steps):
            xi = None
            if params.sigma > 0:
                xi = [torch.randn(u.shape, generator=generator, dtype=u.dtype).to(u.device) for u in p.u]
            p = euler_step(p, w, params, xi)
        if not all(bool(torch.isfinite(t).all()) for t in p.u + p.u_i):
            dt = f"lower dt (now {params.dt:g})"
            raise Unstable("microcircuit", "the dynamics diverged (non-finite potentials)", dt)
    else:
        unstable = f"lower g_a (now {params.g.g_a:g})"
        guard = Guard("microcircuit", "sweeps", params.sweeps, params.tol, unstable, f"raise sweeps or {unstable}")
        for sweep in range(params.sweeps + 1):
            new = steady_sweep(p, w, params.g)
            change, p = max_change(new, p), new
            if steady_reached(change, sweep, guard):
                break
    return Settled(p, *compartments(p, w))


# ------------------------------------------------------------------------------------------------- plasticity


class PlasticityRates(NamedTuple):
    """Rates of the rule's own synapses: normalised-LMS ``lr_ip`` (Ŵ^ip) and ``lr_pi`` (W^pi); with ``learned``
    feedback, ``lr_down`` and ``decay_down`` of W^down; ``normalize`` divides W̃'s update by s_k."""

    lr_ip: float = 0.05
    lr_pi: float = 0.05
    lr_down: float = 0.01
    decay_down: float = 0.01
    normalize: bool = True
    learned: bool = False


class Plasticity(NamedTuple):
    """Descent directions for the net's W̃_k, b̃_k (pairs, k = 1..N) and increments of the rule's synapses."""

    forward: list[tuple[Tensor, Tensor]]
    circuit: Circuit  # increments, same shapes as the Circuit


def error_scales(g: Conductances, n_layers: int) -> list[float]:
    """s_k, the attenuation of the output error on its way down to layer k: s_N = λ, s_k = s_{k+1} a (1 − m)."""
    scales = [g.lam]
    for _ in range(n_layers - 1):
        scales.insert(0, scales[0] * g.a * (1 - g.m))
    return scales


def dendritic_prediction_error(rate_now: Tensor, rate_predicted: Tensor, pre: Tensor) -> Tensor:
    """The plasticity of the bottom-up (W^PP) and interneuron (W^IP) synapses (Sacramento et al. 2018, §2):
    ΔW ∝ (φ(u) − φ(v̂)) rᵀ, the postsynaptic rate minus the rate its own dendrite predicts, times the presynaptic rate
    ``pre``; summed over the batch, (n_post, n_pre)."""
    return (rate_now - rate_predicted).T @ pre


def apical_silencing(v_apical: Tensor, r_inter: Tensor) -> Tensor:
    """The plasticity of the interneuron-to-apical synapses W^PI (Sacramento et al. 2018, §2):
    ΔW^PI ∝ (v_rest − v_A) r^Iᵀ with v_rest = 0, which drives the apical potential to rest; batch sum."""
    return -v_apical.T @ r_inter


def plasticity(
    mlp: MLP, c: Circuit, x0: Tensor, s: Settled, g: Conductances, rates: PlasticityRates, target: bool,
    free: Settled | None = None,
) -> Plasticity:  # fmt: skip
    """The plasticity at the settled state ``s`` (batch means): W̃_k by :func:`dendritic_prediction_error` with
    φ(v̂_B,k) (divided by s_k with ``normalize``), Ŵ^ip by the same rule with φ(v̂_I), rate lr_ip / (m (mean‖φ(u_k)‖²
    + 1)), W^pi by :func:`apical_silencing`, rate lr_pi / (mean‖φ(u^I)‖² + 1), and with learned feedback
    W^down by Kolen–Pollack, −lr_down (∂W̃_{k+1}ᵀ + decay_down W^down_k). With ``target`` False only Ŵ^ip, b^ip and
    W^pi learn. With ``free`` (settled without a target, ``baseline=free``) W̃_k's reference is
    φ(v̂_B,k + a v_A,k^free)."""
    phi, n, batch = mlp.phi, len(mlp.weights), len(x0)
    u, u_i = s.potentials
    r = [x0] + [rate(phi, k + 1, n, v) for k, v in enumerate(u)]
    scales = error_scales(g, n) if rates.normalize else [1.0] * n
    forward = []
    for k in range(n):
        reference = s.basal[k] if free is None or k == n - 1 else s.basal[k] + g.a * free.apical[k]
        predicted = rate(phi, k + 1, n, reference)
        step = batch * scales[k]
        forward.append((-dendritic_prediction_error(r[k + 1], predicted, r[k]) / step,
                        -(r[k + 1] - predicted).sum(0) / step))  # fmt: skip
    d_ip, d_bip, d_pi, d_down = [], [], [], []
    for k in range(n - 1):
        r_inter = rate(phi, k + 2, n, u_i[k])
        predicted = rate(phi, k + 2, n, s.inter[k])
        step = rates.lr_ip / (g.m * (float((r[k + 1] ** 2).sum(1).mean()) + 1.0) * batch)
        d_ip.append(step * dendritic_prediction_error(r_inter, predicted, r[k + 1]))
        d_bip.append(step * (r_inter - predicted).sum(0))
        step = rates.lr_pi / ((float((r_inter**2).sum(1).mean()) + 1.0) * batch)
        d_pi.append(step * apical_silencing(s.apical[k], r_inter))
        if rates.learned and target:  # Kolen–Pollack: the transposed forward update, plus decay
            d_down.append(-rates.lr_down * (forward[k + 1][0].T + rates.decay_down * c.w_down[k]))
        else:
            d_down.append(torch.zeros_like(c.w_down[k]))
    if not target:
        forward = [(torch.zeros_like(dw), torch.zeros_like(db)) for dw, db in forward]
    return Plasticity(forward, Circuit(d_ip, d_bip, d_pi, d_down))


def advance(c: Circuit, change: Circuit) -> Circuit:
    """The synapses after a plasticity step: new tensors ``c + change`` (``c`` is left as it is)."""
    return Circuit(*[[t + d for t, d in zip(mine, delta, strict=True)] for mine, delta in zip(c, change, strict=True)])
