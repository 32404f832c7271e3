"""e-prop: eligibility traces times a broadcast learning signal (Bellec et al. 2020, Nat. Commun. 11:3625).

For a recurrent spiking network (:mod:`bioprop.nets.recurrent`: LIF and ALIF neurons, a leaky readout) with
hidden state h_j^t = (v_j^t, a_j^t) and spikes z_j^t, backprop through time factorises exactly as (eq. 1)

.. math::
    \\frac{dE}{dW_{ji}} = \\sum_t \\frac{dE}{dz_j^t} \\, e_{ji}^t, \\qquad
    e_{ji}^t = \\frac{\\partial z_j^t}{\\partial h_j^t} \\, ε_{ji}^t, \\qquad
    ε_{ji}^t = \\frac{\\partial h_j^t}{\\partial h_j^{t-1}} ε_{ji}^{t-1} + \\frac{\\partial h_j^t}{\\partial W_{ji}}

where the eligibility trace e_ji^t is local to the synapse (it follows neuron j's own state only) and dE/dz_j^t is
the total derivative through everything else: the readout, the recurrent connections and the reset. e-prop replaces
the latter by the **learning signal** available online, L_j^t = Σ_k B_jk ∂E/∂y_k^t (eq. 4), with feedback B the
readout's W_outᵀ (``feedback=symmetric``), a fixed random matrix (``random``) or a matrix that receives the same
updates as W_outᵀ (``adaptive``). The readout y^t = κ y^{t−1} + W_out z^t + b low-pass filters the spikes, so the
traces are filtered by the same F_κ (eq. 27): ΔW_ji = Σ_t L_j^t F_κ(e_ji)^t.

With the dynamics of :func:`bioprop.nets.recurrent.lif_step` (v^t = α v^{t−1} + (1−α) I^t − v_th z^{t−1},
a^t = ρ a^{t−1} + z^{t−1}, A^t = v_th + β a^t, z^t = H(v^t − A^t)), the reset's dependence on z ignored as in the
paper, and pseudo-derivative ψ_j^t = ∂z_j^t/∂v_j^t (zero while refractory), for a presynaptic input p_i (an input
channel x_i^t, or a recurrent spike z_i^{t−1}):

- ε^v (the same for every postsynaptic j): p̄_i^t = α p̄_i^{t−1} + (1−α) p_i^t  (the paper's z̄ / x̄);
- ε^a (ALIF only, eq. 25 in this ordering): ε^{a,t+1}_ji = ρ ε^{a,t}_ji + e_ji^t, since da^{t+1}/dW = ρ da^t/dW +
  dz^t/dW (the paper's (ρ − ψβ) ε^a + ψ p̄, rearranged);
- e_ji^t = ψ_j^t (p̄_i^t − β_j ε^{a,t}_ji) (LIF: β_j = 0, e = ψ_j p̄_i).

The readout's own gradients are exact: ∂E/∂W_out = Σ_t (∂E/∂y^t) F_κ(z)^{tᵀ}, ∂E/∂b = Σ_t (∂E/∂y^t) F_κ(1)^t. The
optional firing-rate regulariser E_reg = c_reg Σ_j (f̄_j − f_target)² (f̄_j the neuron's mean rate over the batch and
trial, in Hz) adds the learning signal ∂E_reg/∂z_j^t (the same at every step), contracted with Σ_t e^t.

Everything is **online** (``route=online``): the traces are carried step by step, memory (B × n × (C + n)) does not
grow with the sequence length T. ``route=autodiff`` gets the same update by backprop through time on a graph with
stop-gradients on z in the recurrent and reset paths (the check of the official code; memory linear in T). The
reference gradient is BPTT of the run's loss (plus the regulariser when it is on) with the network's surrogate
derivative ψ.

Shapes: x (T, B, C) time-major, y (T, B) labels with −1 where a step has no target, or (T, B, K) float targets
(:mod:`bioprop.losses`, sequences); W_in (n, C), W_rec (n, n) with a zero diagonal, W_out (K, n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import recurrent as rnn
from bioprop.rules.base import Entry, FigureSpec, Options, Rule, Trace, Update, make_card, option, register
from bioprop.rules.options import non_negative, output_loss

CARD = make_card(
    linear=(
        True,
        "the learning signal is a linear projection of the output error, no backward pass through the "
        "nonlinear dynamics",
    ),  # fmt: skip
    derivatives=(False, "the eligibility traces use the neuron's own pseudo-derivative ψ"),
    weight_transport=(
        False,
        "the default feedback B = W_outᵀ transports the readout weights; feedback=random or adaptive removes it",
    ),
    spikes=(True, "trains spiking LIF/ALIF networks through their spikes and a surrogate derivative"),
    clock=(True, "online: traces and learning signal at every step, no backward phase in time"),
    targets=(False, "needs a supervised target at the readout"),
)


class Eligibility(NamedTuple):
    """The per-synapse state of e-prop, carried online: ``pre`` p̄ (B, P), the presynaptic traces of the P = C + n
    inputs [x, z] of every neuron (ε^v, the same for every postsynaptic neuron); ``adapt`` ε^a (n_alif, B, P), for
    the ALIF neurons (the last n_alif), neuron-major."""

    pre: Tensor
    adapt: Tensor


class Readout(NamedTuple):
    """The readout's filtered traces: ``spikes`` F_κ(z) (B, n) and ``ones`` F_κ(1) (a number), for the exact
    gradients of W_out and b."""

    spikes: Tensor
    ones: float


def eligibility_step(trace: Eligibility, x_t: Tensor, z_prev: Tensor, psi: Tensor, beta: Tensor, n_lif: int,
                     alpha: float, rho: float) -> tuple[Eligibility, Tensor | None]:  # fmt: skip
    """One step of the eligibility traces (module docstring), in place: the inputs x^t (B, C) and z^{t−1} (B, n)
    enter p̄; ``psi`` ψ^t (B, n), ``beta`` (n,) the adaptation strengths (0 for the first ``n_lif``, LIF). Returns
    the traces and the ALIF neurons' e^t (n_alif, B, P) (None without ALIF neurons); a LIF neuron's is ψ_j p̄_i
    (:func:`eligibility`)."""
    bar, inputs = trace.pre, x_t.shape[1]
    bar[:, :inputs].mul_(alpha).add_(x_t, alpha=1.0 - alpha)  # p̄^t = α p̄^{t−1} + (1 − α) p^t
    bar[:, inputs:].mul_(alpha).add_(z_prev, alpha=1.0 - alpha)
    if not trace.adapt.shape[0]:
        return trace, None
    psi_a = psi[:, n_lif:].t().unsqueeze(2)  # (n_alif, B, 1)
    e = psi_a * (bar - beta[n_lif:].view(-1, 1, 1) * trace.adapt)  # ψ_j (p̄_i − β_j ε^a_ji)
    trace.adapt.mul_(rho).add_(e)  # ε^{a,t+1} = ρ ε^{a,t} + e^t
    return trace, e


def eligibility(trace: Eligibility, psi: Tensor, adaptive: Tensor | None, n_lif: int) -> Tensor:
    """Every neuron's e^t (n, B, P): ψ_j p̄_i for the LIF neurons, then the ALIF neurons' from
    :func:`eligibility_step`."""
    lif = psi[:, :n_lif].t().unsqueeze(2) * trace.pre
    return lif if adaptive is None else torch.cat([lif, adaptive])


def eprop_online(net: Any, x: Tensor, y: Tensor, loss: losses.Loss, feedback: Tensor, rate_reg: float = 0.0,
                 rate_target: float = 0.0) -> tuple[dict[str, Tensor], Tensor, Tensor]:  # fmt: skip
    """e-prop's update for the batch (x (T, B, C), targets y), online: per-parameter descent directions keyed like
    ``net.named_parameters()``, the readout (T, B, K) and the population rate (T,) in Hz. ``feedback`` B (K, n).

    The filtered eligibility F_κ(e) is held neuron-major, (n, B, P), so that Σ_b L_bj F_κ(e)_jbp is one batched
    product per step (skipped at steps without a target, whose learning signal is zero), and a LIF neuron's part is
    updated without forming e (one fused operation). It is stored as F_κ(e) = d · G with d = κ^k a number: a step
    adds e/d to G, and G is rescaled only when d falls below ``RESCALE`` (every ~276 steps at κ = e^{−1/20}), not
    multiplied by κ at every step."""
    p, steps, batch = net.params, x.shape[0], x.shape[1]
    w_in, w_rec = net.input.weight.detach(), net.recurrent_weight().detach()
    w_out, b_out = net.readout.weight.detach(), net.readout.bias.detach()
    beta = net.beta
    n_lif = int((beta == 0).sum())  # LIF neurons first, then ALIF
    alpha, rho, kappa = p.alpha, p.rho, net.kappa
    weights = losses.step_weights(y, x) * batch  # (T, B, 1): the per-step loss's share of the batch mean
    labels = y if y.is_floating_point() else y.clamp_min(0)
    targeted = weights.flatten(1).ne(0).any(1).tolist()  # (T,) the steps with a target in the batch
    state, out = net.initial_state(batch, x), x.new_zeros(batch, w_out.shape[0])
    n, inputs = w_rec.shape[0], w_in.shape[1]
    trace = Eligibility(x.new_zeros(batch, inputs + n), x.new_zeros(n - n_lif, batch, inputs + n))
    filtered, decay = x.new_zeros(n, batch, inputs + n), 1.0  # F_κ(e) = decay · filtered
    readout = Readout(x.new_zeros(batch, n), 0.0)
    grad_w = x.new_zeros(n, 1, inputs + n)
    grad_out, grad_b = torch.zeros_like(w_out), torch.zeros_like(b_out)
    summed_e = x.new_zeros(n, inputs + n) if rate_reg else None
    drives = (x @ w_in.t()).unbind(0)  # every step's W_in x^t at once
    spikes_total, outputs, population = x.new_zeros(n), [], []
    for t in range(steps):
        z_prev, ref_prev = state.z, state.ref
        state = rnn.lif_step(drives[t] + z_prev @ w_rec.t(), state, beta, p)
        psi = rnn.pseudo_derivative(state.v, rnn.threshold(state.a, beta, p), ref_prev, p)  # ψ^t, r^{t−1}
        trace, adaptive = eligibility_step(trace, x[t], z_prev, psi, beta, n_lif, alpha, rho)
        decay *= kappa  # F_κ(e) = decay · filtered: the decay κ is applied to a number, not to (n, B, P) values
        if decay < RESCALE:
            filtered.mul_(decay)
            decay = 1.0
        filtered[:n_lif].addcmul_(psi[:, :n_lif].t().unsqueeze(2), trace.pre, value=1.0 / decay)  # + ψ_j p̄_i (LIF)
        if adaptive is not None:
            filtered[n_lif:].add_(adaptive, alpha=1.0 / decay)
        out = rnn.readout_step(state.z, rnn.ReadoutState(out), w_out, b_out, kappa).y
        outputs.append(out)
        readout = Readout(readout.spikes * kappa + state.z, readout.ones * kappa + 1.0)
        if targeted[t]:  # a step without any target has no learning signal: nothing to add
            error = loss.error(out, labels[t])[1] * weights[t]  # ∂E/∂y^t (B, K)
            signal = error @ feedback  # L^t (B, n)
            grad_w.baddbmm_(signal.t().unsqueeze(1), filtered, alpha=decay)  # Σ_b L_bj F_κ(e)_jbp
            grad_out.addmm_(error.t(), readout.spikes)
            grad_b.add_(error.sum(0), alpha=readout.ones)
        spikes_total += state.z.sum(0)
        population.append(state.z.mean())
        if summed_e is not None:
            summed_e += eligibility(trace, psi, adaptive, n_lif).sum(1)
    rates = spikes_total * (1000.0 / (steps * batch * p.dt))  # f̄_j in Hz
    grad_w = grad_w.squeeze(1)
    if summed_e is not None:  # ∂E_reg/∂z_j^t = 2 c (f̄_j − f*) · 1000/(T B dt), the same at every step
        grad_w += (2.0 * rate_reg * (rates - rate_target) * (1000.0 / (steps * batch * p.dt))).unsqueeze(1) * summed_e
    grads = {"input.weight": grad_w[:, :inputs], "recurrent.weight": grad_w[:, inputs:].fill_diagonal_(0.0),
             "readout.weight": grad_out, "readout.bias": grad_b}  # fmt: skip
    return grads, torch.stack(outputs), torch.stack(population) * (1000.0 / p.dt)


def rate_penalty(z: Tensor, dt: float, rate_reg: float, rate_target: float) -> Tensor:
    """E_reg = c_reg Σ_j (f̄_j − f_target)² for spikes z (T, B, n), f̄ in Hz (dt in ms)."""
    rates = z.mean((0, 1)) * (1000.0 / dt)
    return rate_reg * (rates - rate_target).square().sum()


def eprop_autodiff(net: Any, x: Tensor, y: Tensor, loss: losses.Loss, feedback: Tensor, rate_reg: float = 0.0,
                   rate_target: float = 0.0) -> tuple[dict[str, Tensor], Tensor, Tensor]:  # fmt: skip
    """The same update as :func:`eprop_online` by autograd: BPTT through the dynamics with z stop-gradiented in the
    recurrent input and the reset (the neuron's own adaptation keeps it), the readout's error carried back to the
    spikes through ``feedback`` instead of W_out. Memory linear in T; the check of the online route."""
    p, batch = net.params, x.shape[1]
    names = ("input.weight", "recurrent.weight", "readout.weight", "readout.bias")
    named = dict(net.named_parameters())
    with torch.enable_grad():
        w_in, w_rec, w_out, b_out = net.input.weight, net.recurrent_weight(), net.readout.weight, net.readout.bias
        state, outs, spikes = net.initial_state(batch, x), [], []
        out = x.new_zeros(batch, w_out.shape[0])
        for x_t in x:
            z_prev = state.z.detach()
            state = rnn.lif_step(x_t @ w_in.t() + z_prev @ w_rec.t(), state, net.beta, p, reset=z_prev)
            spikes.append(state.z)
            # W_out's gradient is the exact one (z held); the readout's error reaches z through B, not through W_out
            routed = state.z.detach() @ w_out.t() + (state.z - state.z.detach()) @ feedback.t()
            out = net.kappa * out + routed + b_out
            outs.append(out)
        z = torch.stack(spikes)
        objective = loss.value(torch.stack(outs), y)
        if rate_reg:  # depends on the spikes only: the readout's gradients stay the loss's
            objective = objective + rate_penalty(z, p.dt, rate_reg, rate_target)
        grads = torch.autograd.grad(objective, [named[name] for name in names])
    return dict(zip(names, grads, strict=True)), torch.stack(outs).detach(), z.detach().mean((1, 2)) * (1000.0 / p.dt)


FEEDBACKS = ("symmetric", "random", "adaptive")
RESCALE = 1e-6  # the smallest factor d of F_κ(e) = d · G before G is rescaled (eprop_online)
ROUTES = ("online", "autodiff")


@dataclass(frozen=True)
class EpropOptions(Options):
    output: str = output_loss()
    feedback: str = option("symmetric", "learning signal's feedback B: symmetric (W_outᵀ), random (fixed, drawn "
                           "from seed) or adaptive (follows W_out's updates)", choices=FEEDBACKS)  # fmt: skip
    route: str = option("online", "online eligibility traces (memory flat in T) or autodiff (BPTT with "
                        "stop-gradients; the same update, memory linear in T)", choices=ROUTES)  # fmt: skip
    rate_reg: float = non_negative(0.0, "firing-rate regulariser's weight c_reg (0: off)")
    rate_target: float = non_negative(10.0, "the regulariser's target rate f_target (Hz)")
    seed: int = option(0, "seed of the random feedback matrix")


@register("eprop", family="temporal", paper="Bellec et al. 2020", summary="eligibility traces × learning signal",
          card=CARD)  # fmt: skip
class Eprop(Rule):
    """e-prop on a spiking recurrent network (module docstring). Raises :class:`BioPropError` at creation for a
    network that is not a spiking :class:`~bioprop.nets.recurrent.RecurrentNet` (a rate network: use rflo or
    bptt)."""

    Options = EpropOptions
    networks = frozenset({"recurrent"})
    trace_specs = (Trace("rate", "population firing rate (Hz)", steps="time step of the trial"),)
    figures = (FigureSpec("rate.png", "e-prop: the population's firing rate through the trial", traces=("rate",)),)
    opts: EpropOptions

    def __init__(self, net: Any, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if getattr(net, "cell", None) != "spiking":
            raise BioPropError(f"rule {self.name} trains spiking networks (--arch lif:N, alif:N or lsnn:N+M); for a "
                               "rate network (rnn:N) use rflo or bptt")  # fmt: skip
        self.feedback: Tensor | None = None  # B (K, n) for random and adaptive
        self.readout_seen: Tensor | None = None  # adaptive: W_out when B last followed it

    def feedback_matrix(self) -> tuple[Tensor, Tensor | None]:
        """B (K, n) for this step, and (adaptive) W_out as B has now followed it."""
        w_out = self.net.readout.weight.detach()
        if self.opts.feedback == "symmetric":
            return w_out, None
        b = self.feedback
        if b is None:
            generator = torch.Generator().manual_seed(self.opts.seed)
            b = torch.randn(w_out.shape, generator=generator, dtype=torch.float64) / math.sqrt(w_out.shape[1])
            b = b.to(w_out)
        if self.opts.feedback == "adaptive":
            if self.readout_seen is not None:
                b = b + (w_out - self.readout_seen)  # the same change as W_out since the last step
            return b, w_out.clone()
        return b, None

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        feedback, seen = self.feedback_matrix()
        route = eprop_online if self.opts.route == "online" else eprop_autodiff
        with torch.no_grad() if self.opts.route == "online" else torch.enable_grad():
            grads, outputs, rates = route(self.net, x, y, self.loss, feedback, self.opts.rate_reg,
                                          self.opts.rate_target)  # fmt: skip
        state = (feedback, seen) if self.opts.feedback != "symmetric" else None
        return Update(grads, self.loss.value(outputs, y).detach(), outputs.detach(), {"rate": rates}, state)

    def commit(self, update: Update) -> None:
        if update.state is not None:
            self.feedback, self.readout_seen = update.state

    def reference(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """BPTT of the run's loss (plus the rate regulariser when on) through the surrogate derivative."""
        named = {n: p for n, p in self.net.named_parameters() if p.requires_grad}
        with torch.enable_grad():
            trajectory = self.net.run(x)
            objective = self.loss.value(trajectory.y, y)
            if self.opts.rate_reg:
                objective = objective + rate_penalty(trajectory.z, self.net.params.dt, self.opts.rate_reg,
                                                     self.opts.rate_target)  # fmt: skip
            grads = torch.autograd.grad(objective, list(named.values()))
        return dict(zip(named, grads, strict=True))

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        if self.feedback is not None:
            state["feedback"] = self.feedback
        if self.readout_seen is not None:
            state["readout_seen"] = self.readout_seen
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        feedback, seen = state.pop("feedback", None), state.pop("readout_seen", None)
        super().load_state_dict(state)
        self.feedback, self.readout_seen = feedback, seen
