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

Everything is **online** (``route=online``): the traces are carried forward, memory (B × n × (C + n)) does not grow
with the sequence length T. They advance ``block`` steps at a time (:func:`eprop_block`): within a block, once its
spikes and ψ are known, the traces are linear, so the block's contributions are a few large matrix products instead
of ~8 passes over the (B, n, C + n) traces per step; the update is the step-by-step recursion's (``block=1``) to
rounding, and a learning signal is never taken from a later block than the step it weighs. ``route=autodiff`` gets
the same update by backprop through time on a graph with stop-gradients on z in the recurrent and reset paths (the
check of the official code; memory linear in T). The reference gradient is BPTT of the run's loss (plus the
regulariser when it is on) with the network's surrogate derivative ψ.

Shapes: x (T, B, C) time-major, y (T, B) labels with −1 where a step has no target, or (T, B, K) float targets
(:mod:`bioprop.losses`, sequences); W_in (n, C), W_rec (n, n) with a zero diagonal, W_out (K, n).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import recurrent as rnn
from bioprop.rules.base import Entry, FigureSpec, Options, Rule, Trace, Update, make_card, option, register
from bioprop.rules.options import count, non_negative, output_loss, seed_option

CARD = make_card(
    linear=(
        False,
        "the learning signal L_j = Σ_k B_jk ∂E/∂y_k is a linear projection of the output error: no backward pass "
        "in time, but linear feedback (as in dfa)",
    ),  # fmt: skip
    derivatives=(False, "the eligibility traces use the neuron's own pseudo-derivative ψ"),
    weight_transport=(
        False,
        "the default feedback B = W_outᵀ transports the readout weights; feedback=random or adaptive removes it",
    ),
    spikes=(False, "the neurons spike (LIF/ALIF), but the learning signal each neuron receives is a real value"),
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


class Carried(NamedTuple):
    """What :func:`eprop_online` carries from one block of steps to the next (nothing grows with T): the network's
    ``cell`` state and readout ``y`` (B, K); the traces ``pre`` p̄ (B, P), ``filtered`` F_κ(e) (B, n, P) and ``adapt``
    ε^a (B, n_alif, P), the ALIF trace entering the next step; the readout's ``spikes`` F_κ(z) (B, n) and ``ones``
    F_κ(1)."""

    cell: rnn.LIFState
    y: Tensor
    pre: Tensor
    filtered: Tensor
    adapt: Tensor
    spikes: Tensor
    ones: float


class Totals(NamedTuple):
    """What :func:`eprop_online` sums over blocks: ``w`` Σ_t Σ_b L F_κ(e) (n, P), the readout's ``out`` (K, n) and
    ``bias`` (K,) gradients, ``spikes`` per neuron (n,), and ``e`` Σ_t Σ_b e (n, P) when the regulariser needs it."""

    w: Tensor
    out: Tensor
    bias: Tensor
    spikes: Tensor
    e: Tensor | None


def leaky(inputs: Tensor, start: Tensor, decay: float, gain: float = 1.0) -> Tensor:
    """s^k = decay · s^{k−1} + gain · inputs^k along dim 0, from s^{−1} = ``start``: inputs (K, …) → (K, …)."""
    out, previous = torch.empty_like(inputs), start
    for k in range(inputs.shape[0]):
        previous = torch.add(inputs[k] * gain if gain != 1.0 else inputs[k], previous, alpha=decay, out=out[k])
    return out


def reverse_leaky(inputs: Tensor, decay: float) -> Tensor:
    """Λ^k = inputs^k + decay · Λ^{k+1} along dim 0 from Λ^K = 0 (a filter of the block's own future)."""
    return leaky(inputs.flip(0), torch.zeros_like(inputs[0]), decay).flip(0)


def adjoint(u: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """μ^k = Σ_{r>k} u^r Π_{k<m<r} c^m for k = 0 … K−1 and μ^{−1} = u^0 + c^0 μ^0 (the weight of the trace that
    entered the block), by μ^k = u^{k+1} + c^{k+1} μ^{k+1}: u (S, K, B, m) for S signals, c (K, B, m)."""
    mu = torch.empty_like(u)
    mu[:, -1] = 0.0
    for k in range(u.shape[1] - 2, -1, -1):
        torch.addcmul(u[:, k + 1], c[k + 1], mu[:, k + 1], out=mu[:, k])
    return mu, torch.addcmul(u[:, 0], c[0], mu[:, 0])


def weigh(signals: Tensor, psi: Tensor, beta_a: Tensor, c: Tensor, n_lif: int) -> tuple[Tensor, Tensor]:
    """For signals λ (S, K, B, n): w (S, K, B, n) and μ^{−1} (S, B, n_alif) with Σ_k λ^k_bj e^k_bji =
    Σ_k w^k_bj p̄^k_bi − μ^{−1}_bj ε^{a,in}_bji (per example b; :func:`eprop_online`), e never formed:
    w = ψ (λ − μ), μ the :func:`adjoint` of u = β ψ λ over the ALIF neurons (μ = 0 for LIF ones)."""
    weights = signals * psi
    mu, mu_in = adjoint(weights[..., n_lif:] * beta_a, c)
    weights[..., n_lif:].sub_(mu * psi[:, :, n_lif:])
    return weights, mu_in


def eprop_online(net: Any, x: Tensor, y: Tensor, loss: losses.Loss, feedback: Tensor, rate_reg: float = 0.0,
                 rate_target: float = 0.0, block: int = 50) -> tuple[dict[str, Tensor], Tensor, Tensor]:  # fmt: skip
    """e-prop's update for the batch (x (T, B, C), targets y), online: per-parameter descent directions keyed like
    ``net.named_parameters()``, the readout (T, B, K) and the population rate (T,) in Hz. ``feedback`` B (K, n).

    The traces advance ``block`` steps at a time (:func:`eprop_block`); only :class:`Carried` passes between
    blocks, so memory is O(block · B · (C + n) + B · n · (C + n)) whatever T, and the update is that of the
    step-by-step recursion (:func:`eligibility_step` at every step, ``block=1``) to rounding."""
    p, steps, batch = net.params, x.shape[0], x.shape[1]
    n, inputs, classes = net.n_hidden, net.n_in, net.n_out
    weights = losses.step_weights(y, x)  # (T, B, 1): the per-step loss's share of the batch mean
    labels = y if y.is_floating_point() else y.clamp_min(0)
    zeros = x.new_zeros
    n_alif = int(net.alif.sum())
    carried = Carried(net.initial_state(batch, x), zeros(batch, classes), zeros(batch, inputs + n),
                      zeros(batch, n, inputs + n), zeros(batch, n_alif, inputs + n), zeros(batch, n), 0.0)  # fmt: skip
    totals = Totals(zeros(n, inputs + n), zeros(classes, n), zeros(classes), zeros(n),
                    zeros(n, inputs + n) if rate_reg else None)  # fmt: skip
    outputs, population, unflushed = [], [], 0
    for start in range(0, steps, block):
        span = slice(start, start + block)
        carried, out, rate = eprop_block(net, carried, totals, x[span], labels[span], weights[span], loss, feedback)
        outputs.append(out)
        population.append(rate)
        unflushed += out.shape[0]
        if unflushed >= FLUSH_EVERY:  # a silent input's traces decay into subnormal numbers (slow arithmetic)
            unflushed = 0
            for trace in (carried.pre, carried.filtered, carried.adapt, carried.spikes):
                rnn.flush_subnormal(trace)
    rates = totals.spikes * (1000.0 / (steps * batch * p.dt))  # f̄_j in Hz
    grad_w = totals.w
    if totals.e is not None:  # ∂E_reg/∂z_j^t = 2 c (f̄_j − f*) · 1000/(T B dt), the same at every step
        grad_w += (2.0 * rate_reg * (rates - rate_target) * (1000.0 / (steps * batch * p.dt))).unsqueeze(1) * totals.e
    grads = {"input.weight": grad_w[:, :inputs], "recurrent.weight": grad_w[:, inputs:].fill_diagonal_(0.0),
             "readout.weight": totals.out, "readout.bias": totals.bias}  # fmt: skip
    return grads, torch.cat(outputs), torch.cat(population)


def eprop_block(net: Any, carried: Carried, totals: Totals, x: Tensor, labels: Tensor, weights: Tensor,
                loss: losses.Loss, feedback: Tensor) -> tuple[Carried, Tensor, Tensor]:  # fmt: skip
    """One block of K steps of :func:`eprop_online`, x (K, B, C), ``labels`` (K, B[, K_out]) and ``weights``
    (K, B, 1) the steps' shares of the loss: adds the block's contributions to ``totals`` (in place) and returns
    the carried state after it, the readout (K, B, K_out) and the population rate (K,) in Hz.

    The block's spikes and ψ^k come first (:func:`~bioprop.nets.recurrent.lif_sequence`); everything else is linear
    in the traces. With p̄^k = α p̄^{k−1} + (1 − α) [x^k, z^{k−1}], c^k = ρ − β ψ^k the ALIF trace's decay
    (ε^{a,k+1} = c^k ε^{a,k} + ψ^k p̄^k, :func:`eligibility_step`) and Λ^k = Σ_{s≥k} κ^{s−k} L^s the learning signal
    filtered backwards within the block (the block's own steps only; later blocks see F_κ(e) carried):

    - Σ_k Σ_b L^k F_κ(e)^k = Σ_b κ Λ^0 F_κ(e)^{in} + Σ_k Σ_b ψ^k (Λ^k − μ^k) p̄^k − Σ_b μ^{−1} ε^{a,in}, μ the
      :func:`adjoint` of β ψ Λ (:func:`weigh`): one (n, K·B) × (K·B, P) product;
    - F_κ(e)^{out} = κ^K F_κ(e)^{in} + Σ_k ψ^k (κ^{K−1−k} − μ'^k) p̄^k − μ'^{−1} ε^{a,in} with μ' the adjoint of
      β ψ κ^{K−1−k}, and ε^{a,out} = Π_k c^k ε^{a,in} + Σ_k ψ^k (Π_{k<m<K} c^m) p̄^k: products batched over b,

    a few large products per block instead of ~8 passes over the (B, n, P) traces per step."""
    p, steps, batch = net.params, x.shape[0], x.shape[1]
    w_rec, w_out, b_out = net.recurrent_weight().detach(), net.readout.weight.detach(), net.readout.bias.detach()
    beta, n_lif, kappa = net.beta, net.n_hidden - carried.adapt.shape[1], net.kappa
    record, cell = rnn.lif_sequence(x @ net.input.weight.detach().t(), w_rec, beta, carried.cell, p)
    z, psi = record.z, record.psi(p)  # (K, B, n)
    pre = torch.cat([x, torch.cat([carried.cell.z.unsqueeze(0), z[:-1]])], 2)  # [x^k, z^{k−1}] (K, B, P)
    bar = leaky(pre, carried.pre, p.alpha, 1.0 - p.alpha)  # p̄^k
    out = leaky(torch.addmm(b_out, z.flatten(0, 1), w_out.t()).view(steps, batch, -1), carried.y, kappa)
    spikes = leaky(z, carried.spikes, kappa)  # F_κ(z)^k
    ones = list(itertools.accumulate(range(steps), lambda f, _: kappa * f + 1.0, initial=kappa * carried.ones + 1.0))
    ones = ones[:steps]  # F_κ(1)^k
    c = p.rho - beta[n_lif:] * psi[..., n_lif:]  # (K, B, n_alif)
    decays = kappa ** torch.arange(steps - 1, -1, -1, dtype=x.dtype, device=x.device)  # κ^{K−1−k}
    signals = [decays.view(-1, 1, 1).expand(psi.shape)]
    if totals.e is not None:
        signals.append(torch.ones_like(psi))
    targeted = bool(weights.ne(0).any())
    if targeted:  # ∂E/∂y^k, its learning signal L^k = B^T ∂E/∂y^k, and the readout's exact gradients
        count = steps * batch
        flat = labels.reshape(count, *labels.shape[2:])
        error = loss.error(out.reshape(count, -1), flat)[1] * (weights.reshape(count, 1) * count)  # (K·B, K_out)
        totals.out.addmm_(error.t(), spikes.reshape(count, -1))
        totals.bias.add_((error.view(steps, batch, -1).sum(1) * error.new_tensor(ones).unsqueeze(1)).sum(0))
        signals.append(reverse_leaky((error @ feedback).view(psi.shape), kappa))  # Λ^k
    w, mu_in = weigh(torch.stack(signals), psi, beta[n_lif:], c, n_lif)
    flat_bar = bar.reshape(steps * batch, -1)
    alif = slice(n_lif, None)
    first = carried.ones == 0.0  # the first block: the carried traces are still zero, their terms are skipped
    if targeted:  # Σ_k Σ_b L^k F_κ(e)^k
        totals.w.addmm_(w[-1].reshape(steps * batch, -1).t(), flat_bar)
        if not first:
            totals.w.add_(torch.einsum("bj,bjp->jp", signals[-1][0] * kappa, carried.filtered))
            totals.w[alif].sub_(torch.einsum("bj,bjp->jp", mu_in[-1], carried.adapt))
    if totals.e is not None:  # Σ_k Σ_b e^k
        totals.e.addmm_(w[1].reshape(steps * batch, -1).t(), flat_bar)
        if not first:
            totals.e[alif].sub_(torch.einsum("bj,bjp->jp", mu_in[1], carried.adapt))
    bar_b = bar.transpose(0, 1)  # (B, K, P)
    through = torch.cumprod(c.flip(0), 0).flip(0)  # Π_{m≥k} c^m
    after = torch.cat([through[1:], torch.ones_like(c[:1])])  # Π_{k<m<K} c^m
    alif_w = (psi[..., n_lif:] * after).permute(1, 2, 0)
    if first:
        filtered, adapt = torch.bmm(w[0].permute(1, 2, 0), bar_b), torch.bmm(alif_w, bar_b)
    else:
        filtered = torch.baddbmm(carried.filtered, w[0].permute(1, 2, 0), bar_b, beta=kappa**steps)
        filtered[:, alif].sub_(mu_in[0].unsqueeze(2) * carried.adapt)
        adapt = torch.baddbmm(carried.adapt * through[0].unsqueeze(2), alif_w, bar_b)
    totals.spikes.add_(z.sum((0, 1)))
    carried = Carried(cell, out[-1], bar[-1].clone(), filtered, adapt, spikes[-1].clone(), ones[-1])
    return carried, out, z.mean((1, 2)) * (1000.0 / p.dt)


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
ROUTES = ("online", "autodiff")
MAX_BLOCK = 100_000
FLUSH_EVERY = 256  # steps between flushes of the carried traces to zero below the smallest normal number


@dataclass(frozen=True)
class EpropOptions(Options):
    output: str = output_loss()
    feedback: str = option("symmetric", "learning signal's feedback B: symmetric (W_outᵀ), random (fixed, drawn "
                           "from seed) or adaptive (follows W_out's updates)", choices=FEEDBACKS)  # fmt: skip
    route: str = option("online", "online eligibility traces (memory flat in T) or autodiff (BPTT with "
                        "stop-gradients; the same update, memory linear in T)", choices=ROUTES)  # fmt: skip
    rate_reg: float = non_negative(0.0, "firing-rate regulariser's weight c_reg (0: off)")
    rate_target: float = non_negative(10.0, "the regulariser's target rate f_target (Hz)")
    seed: int = seed_option("seed of the random feedback matrix")
    block: int = count(50, "steps the online traces advance at once (memory ∝ block, not T; 1: step by step; the "
                       "update is the same)", MAX_BLOCK)  # fmt: skip


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
            extra = {"block": self.opts.block} if self.opts.route == "online" else {}
            grads, outputs, rates = route(self.net, x, y, self.loss, feedback, self.opts.rate_reg,
                                          self.opts.rate_target, **extra)  # fmt: skip
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
            grads = torch.autograd.grad(objective, list(named.values()), allow_unused=True)
        # a parameter the loss does not reach (a lateral net's M, read detached) has a zero reference gradient
        return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), grads, strict=True)}

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
