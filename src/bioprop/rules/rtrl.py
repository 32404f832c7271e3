"""RTRL: real-time recurrent learning, the exact gradient computed forward in time (Williams & Zipser 1989, Neural
Computation 1:270).

For a recurrent network with state s^t, s^t = F(s^{t−1}, x^t; θ), θ = (W_in, W_rec), RTRL carries the influence
tensor M^t = ds^t/dθ forward with the chain rule (Williams & Zipser 1989, the recursion of their sensitivities
p^k_ij = ∂y_k/∂w_ij)

.. math::
    M^t = J^t M^{t−1} + \\frac{∂s^t}{∂θ}, \\qquad J^t = \\frac{∂s^t}{∂s^{t−1}}, \\qquad
    \\frac{dE}{dθ} = Σ_t \\frac{∂E}{∂y^t} \\frac{dy^t}{dθ}

from M^0 = 0, and contracts it with the output error ε^t = ∂E/∂y^t (:mod:`bioprop.losses`, the run's sequence loss)
at every step: the gradient of BPTT, without a backward pass in time. For the networks of
:mod:`bioprop.nets.recurrent`, with p^t = [x^t, h^{t−1}] (or [x^t, z^{t−1}]) the inputs of every neuron and
M[b, i, j, k] = ds_i/dW_jk (W = [W_in | W_rec], so the immediate term only touches i = j):

- **rate** (s = h): M^t = (1 − 1/τ) M^{t−1} + (1/τ) φ'(u^t) ⊙ (W_rec M^{t−1} + δ_ij p_k^t);
- **spiking** (s = (v, a), the graph BPTT differentiates, :func:`bioprop.nets.recurrent.lif_step`, reset included):
  with M_z^t = dz^t/dθ = ψ^t ⊙ (M_v^t − β M_a^t) (the surrogate ψ of :func:`~bioprop.nets.recurrent.spike`),
  M_v^t = α M_v^{t−1} + (1 − α)(W_rec M_z^{t−1} + δ_ij p_k^t) − v_th M_z^{t−1} and
  M_a^t = ρ M_a^{t−1} + [β ≠ 0] M_z^{t−1}.

The readout y^t = κ y^{t−1} + W_out z^t + b (κ = 0 for the rate network, z = h) adds M_y^t = κ M_y^{t−1} + W_out M_z^t,
and dE/dθ = Σ_t ε^t M_y^t; the readout's own gradients are exact (Σ_t ε^t F_κ(z)^{tᵀ} and Σ_t ε^t F_κ(1)^t). W_rec's
diagonal, held at zero in spiking networks, gets no gradient.

**For small networks only**: M holds B · n_state · n · (C + n) numbers (n_state = n for the rate network, 2n for the
spiking one): O(n³) memory per example, and each step multiplies it by W_rec, O(n⁴) time per step. The rule
estimates it before any work and refuses a batch whose influence tensor does not fit in the memory available
(:func:`bioprop.train.available_memory`). The reference gradient is BPTT, which RTRL equals.

Shapes: x (T, B, C) time-major; y (T, B) labels with −1 where a step has no target, or (T, B, K) float targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import recurrent as rnn
from bioprop.rules.base import Entry, Options, Rule, Update, make_card, register
from bioprop.rules.options import output_loss

CARD = make_card(
    linear=(False, "the influence tensor is carried through the exact Jacobian of the nonlinear dynamics"),
    derivatives=(False, "the Jacobian multiplies by the exact (surrogate) derivatives"),
    weight_transport=(False, "every synapse's influence needs W_rec, and the error reaches it through W_out"),
    spikes=(False, "real-valued influences through a surrogate derivative of the spikes"),
    clock=(True, "online: the exact gradient is carried forward in time, no backward phase"),
    targets=(False, "needs a supervised target at the readout"),
)

#: Copies of the influence tensor held while one is updated (the tensor, its update and a temporary).
WORKING_COPIES = 3
GIB = 2**30


def influence_bytes(batch: int, n_state: int, n: int, inputs: int, itemsize: int) -> int:
    """Bytes of the influence tensor M (B, n_state, n, C + n): B · n_state · n · (C + n) · itemsize."""
    return batch * n_state * n * (inputs + n) * itemsize


def add_immediate(m: Tensor, pre: Tensor, scale: Tensor | float) -> Tensor:
    """m[b, j, j, k] += scale[b, j] · pre[b, k], in place: the immediate term δ_ij p_k of neuron j's own weights.
    m (B, n, n, P), pre (B, P), ``scale`` (B, n) or a number."""
    diagonal = torch.diagonal(m, dim1=1, dim2=2)  # (B, P, n), a view
    scale = scale.unsqueeze(1) if isinstance(scale, Tensor) else scale
    diagonal.add_(pre.unsqueeze(2) * scale)
    return m


def rate_influence(m: Tensor, u: Tensor, pre: Tensor, w_rec: Tensor, tau: float) -> Tensor:
    """M^t = (1 − 1/τ) M^{t−1} + (1/τ) φ'(u^t) ⊙ (W_rec M^{t−1} + δ_ij p_k^t), φ = tanh: m (B, n, n, P), u^t (B, n),
    pre = p^t = [x^t, h^{t−1}] (B, P), W_rec (n, n)."""
    drive = add_immediate(torch.einsum("il,bljp->bijp", w_rec, m), pre, 1.0)  # W_rec M + δ p
    slope = (1.0 - torch.tanh(u).square()) / tau  # φ'(u^t)/τ (B, n)
    return (1.0 - 1.0 / tau) * m + slope[:, :, None, None] * drive


def lif_influence(m_v: Tensor, m_a: Tensor, m_z: Tensor, pre: Tensor, w_rec: Tensor, beta: Tensor,
                  p: rnn.LIFParameters) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(M_v^t, M_a^t) from M_v^{t−1}, M_a^{t−1}, M_z^{t−1} (each (B, n, n, P)) and pre = p^t = [x^t, z^{t−1}] (B, P):
    the derivative of steps 1–2 of :func:`bioprop.nets.recurrent.lif_step` (module docstring)."""
    current = add_immediate(torch.einsum("il,bljp->bijp", w_rec, m_z), pre, 1.0)  # d(W_in x + W_rec z)/dθ
    m_v = p.alpha * m_v + (1.0 - p.alpha) * current - p.v_th * m_z
    m_a = p.rho * m_a + (beta != 0).to(m_z.dtype)[:, None, None] * m_z
    return m_v, m_a


def spike_influence(m_v: Tensor, m_a: Tensor, psi: Tensor, beta: Tensor) -> Tensor:
    """M_z^t = ψ^t ⊙ (M_v^t − β M_a^t) (B, n, n, P): z = H(v − A), A = v_th + β a, through the surrogate ψ (B, n)."""
    return psi[:, :, None, None] * (m_v - beta[:, None, None] * m_a)


def rtrl(net: Any, x: Tensor, y: Tensor, loss: losses.Loss) -> tuple[dict[str, Tensor], Tensor]:
    """RTRL's update for the batch (x (T, B, C), targets y): the gradient of the run's loss, keyed like
    ``net.named_parameters()``, and the readout (T, B, K)."""
    w_in, w_rec = net.input.weight.detach(), net.recurrent_weight().detach()
    w_out, b_out = net.readout.weight.detach(), net.readout.bias.detach()
    spiking, kappa = net.cell == "spiking", net.kappa
    batch, n, inputs = x.shape[1], net.n_hidden, x.shape[2]
    beta = net.beta if spiking else None
    weights = losses.step_weights(y, x) * batch  # (T, B, 1): the per-step loss's share of the batch mean
    labels = y if y.is_floating_point() else y.clamp_min(0)
    state = net.initial_state(batch, x)
    zeros = x.new_zeros(batch, n, n, inputs + n)
    m, m_v, m_a, m_z = zeros, zeros, zeros, zeros  # rate: m = dh/dθ; spiking: dv/dθ, da/dθ, dz/dθ
    m_y = x.new_zeros(batch, w_out.shape[0], n, inputs + n)  # dy/dθ (B, K, n, P)
    out, filtered, ones = x.new_zeros(batch, w_out.shape[0]), x.new_zeros(batch, n), 0.0  # y, F_κ(z), F_κ(1)
    grad_w = x.new_zeros(n, inputs + n)
    grad_out, grad_b = torch.zeros_like(w_out), torch.zeros_like(b_out)
    drives, outputs = (x @ w_in.t()).unbind(0), []
    for t, drive in enumerate(drives):
        if spiking:
            pre, ref = torch.cat([x[t], state.z], 1), state.ref  # p^t = [x^t, z^{t−1}]; r^{t−1} gates ψ^t
            m_v, m_a = lif_influence(m_v, m_a, m_z, pre, w_rec, beta, net.params)
            state = rnn.lif_step(drive + state.z @ w_rec.t(), state, beta, net.params)
            psi = rnn.pseudo_derivative(state.v, rnn.threshold(state.a, beta, net.params), ref, net.params)
            m_z, hidden = spike_influence(m_v, m_a, psi, beta), state.z
        else:
            u = drive + state.h @ w_rec.t()  # u^t (B, n)
            m = rate_influence(m, u, torch.cat([x[t], state.h], 1), w_rec, net.params.tau)
            state = rnn.rate_step(u, state, net.params)
            m_z, hidden = m, state.h
        m_y = kappa * m_y + torch.einsum("ki,bijp->bkjp", w_out, m_z)  # dy^t/dθ
        out = rnn.readout_step(hidden, rnn.ReadoutState(out), w_out, b_out, kappa).y
        outputs.append(out)
        error = loss.error(out, labels[t])[1] * weights[t]  # ε^t = ∂E/∂y^t (B, K)
        grad_w += torch.einsum("bk,bkjp->jp", error, m_y)
        filtered, ones = kappa * filtered + hidden, kappa * ones + 1.0
        grad_out += error.t() @ filtered
        grad_b += error.sum(0) * ones
    if spiking:
        grad_w[:, inputs:].fill_diagonal_(0.0)  # W_rec's diagonal is held at zero
    grads = {"input.weight": grad_w[:, :inputs], "recurrent.weight": grad_w[:, inputs:],
             "readout.weight": grad_out, "readout.bias": grad_b}  # fmt: skip
    return grads, torch.stack(outputs)


@dataclass(frozen=True)
class RtrlOptions(Options):
    output: str = output_loss()


@register("rtrl", family="temporal", paper="Williams & Zipser 1989", summary="real-time recurrent learning (exact)",
          card=CARD)  # fmt: skip
class RTRL(Rule):
    """Real-time recurrent learning on a rate or spiking :class:`~bioprop.nets.recurrent.RecurrentNet` (module
    docstring): the exact gradient, online, for small networks. Raises :class:`BioPropError` (one line, with the
    estimate and the memory available) for a batch whose influence tensor does not fit."""

    Options = RtrlOptions
    networks = frozenset({"recurrent"})
    opts: RtrlOptions

    def __init__(self, net: Any, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if not isinstance(net, rnn.RecurrentNet):
            raise BioPropError(f"rule {self.name} carries the influence tensor of rnn, lif, alif and lsnn networks, "
                               f"not of {type(net).__name__}: use bptt or tbptt")  # fmt: skip

    def check_memory(self, x: Tensor) -> None:
        """Refuse, before any work, a batch x (T, B, C) whose influence tensor (:func:`influence_bytes`, times
        :data:`WORKING_COPIES`) needs more than :func:`bioprop.train.available_memory` (unchecked where that cannot
        be told)."""
        from bioprop import train  # here, not at the top: bioprop.train imports the rules

        net, batch = self.net, x.shape[1]
        n_state = net.n_hidden * (2 if net.cell == "spiking" else 1)
        size = influence_bytes(batch, n_state, net.n_hidden, net.n_in, x.element_size())
        available = train.available_memory(x.device)
        if available is not None and WORKING_COPIES * size > available:
            raise BioPropError(
                f"rule {self.name}: the influence tensor (B={batch} × {n_state} states × {net.n_hidden}·"
                f"({net.n_in}+{net.n_hidden}) weights, {x.dtype}) needs {size / GIB:.3g} GiB, {WORKING_COPIES} "
                f"copies while it is updated, but {available / GIB:.3g} GiB is available on {x.device}; RTRL is "
                "for small networks (O(n³) memory): use fewer neurons, a smaller batch, or bptt"
            )

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        self.check_memory(x)
        with torch.no_grad():
            grads, outputs = rtrl(self.net, x, y, self.loss)
            return Update(grads, self.loss.value(outputs, y), outputs)
