"""Recurrent networks for the temporal rules: a rate network of tanh units and networks of spiking LIF / ALIF neurons,
run on time-major sequences x (T, B, C) with a readout at every step (T, B, K).

The split is Norse's: pure step functions over NamedTuple states and parameters (differentiable with autograd, no
module, no globals), and a thin :class:`RecurrentNet` that holds the weights and runs the time loop.

**Rate network** (Murray 2019, eLife 8:e43299, "Network model"), τ in steps, W_in x_{t+1} the input of the step::

    u_{t+1} = W_rec h_t + W_in x_{t+1}
    h_{t+1} = h_t + (−h_t + tanh(u_{t+1})) / τ                                  (rate_step)
    y_{t+1} = W_out h_{t+1} + b_out                                             (readout_step, κ = 0)

**Spiking network** (Bellec et al. 2020, Nat. Commun. 11:3625, Methods "Network models": LIF and ALIF neurons,
reset by subtraction, the pseudo-derivative), with α = e^{−dt/τ_m}, ρ = e^{−dt/τ_a}, κ = e^{−dt/τ_out} and
β_j = 0 for a LIF neuron, β > 0 for an ALIF one. One step of :func:`lif_step`, from the state (v^t, z^t, r^t, a^t)
and the input current i^{t+1} = W_in x^{t+1} + W_rec z^t, in this order::

    1. v^{t+1} = α v^t + (1 − α) i^{t+1} − v_th z^t          membrane, reset by subtraction of v_th z^t
    2. a^{t+1} = ρ a^t + z^t                                  adaptation (ALIF only: a ≡ 0 where β_j = 0)
    3. A^{t+1} = v_th + β_j a^{t+1}                           threshold (threshold)
    4. z^{t+1} = H(v^{t+1} − A^{t+1}) if r^t = 0, else 0      spike (spike), H(0) = 0
       ψ^{t+1} = (γ / v_th) max(0, 1 − |v^{t+1} − A^{t+1}| / v_th) if r^t = 0, else 0   (pseudo_derivative)
    5. r^{t+1} = n_ref if z^{t+1} = 1, else max(r^t − 1, 0)   refractory steps left

so a neuron that spikes at step t cannot spike at steps t+1 … t+n_ref. Autograd sees ∂z^{t+1}/∂v^{t+1} = ψ^{t+1} and
∂z^{t+1}/∂A^{t+1} = −ψ^{t+1} (the surrogate gradient of BPTT, :class:`SpikeFunction`); r is a count, not
differentiated. The readout is a leaky integrator of the spikes: y^t = κ y^{t−1} + W_out z^t + b_out. Spiking
networks have no self-connections: W_rec's diagonal is held at zero (:meth:`RecurrentNet.recurrent_weight`).

**Fused loop.** :func:`lif_step` and :class:`SpikeFunction` are the definition (RTRL, e-prop's autodiff route and
the tests step them); :meth:`RecurrentNet.unroll` and :meth:`RecurrentNet.run` of a spiking network run the same
steps as one fused loop instead, :func:`lif_sequence` (a few in-place operations a step into preallocated (T, B, n)
records, no autograd graph), wrapped by :func:`lif_unroll` in :class:`LIFSequenceFunction`, whose backward is BPTT
derived by hand from steps 1–5 (G^t = ∂L/∂z^t, ∂L/∂v^t, ∂L/∂a^t arriving from outside, the final state's included;
δ the adjoints, δ^{T+1} = 0, m_j = 1 for an ALIF neuron, t = T … 1)::

    δz^t = G^t + (1 − α) δv^{t+1} W_rec − v_th δv^{t+1} + m ⊙ δa^{t+1}      recurrent input, reset, adaptation
    δv^t = ∂L/∂v^t + α δv^{t+1} + ψ^t ⊙ δz^t
    δa^t = ∂L/∂a^t + ρ δa^{t+1} − β ⊙ ψ^t ⊙ δz^t
    ∂L/∂(W_in x^t) = (1 − α) δv^t,   ∂L/∂W_rec = Σ_t ((1 − α) δv^t)ᵀ z^{t−1},   and for the state before step 1
    ∂L/∂v^0 = α δv^1,   ∂L/∂z^0 = δz^0 (the first line without G),   ∂L/∂a^0 = ρ δa^1

It is tested against autograd through :func:`lif_step` (``tests/test_lif_sequence.py``). The readout of the whole
sequence is one matmul W_out z^t + b and the κ filter (:func:`leaky_readout`).

Defaults are those of the e-prop cue-accumulation task (Fig. 3; the official code's
``tutorial_evidence_accumulation_with_alif.py``): τ_m = 20 ms, τ_a = 2000 ms, τ_out = 20 ms, dt = 1 ms,
v_th = 0.6, n_ref = 5, γ = 0.3 and β = 1.7 (1 − ρ) / (1 − α) ≈ 0.0174, the code's value for this τ_a and τ_m.

Specs for :func:`bioprop.nets.build` (inputs (T, C)): ``rnn:N`` (rate, N tanh units), ``lif:N`` (N LIF neurons),
``alif:N`` (N ALIF neurons), ``lsnn:N+M`` (N LIF then M ALIF neurons, e.g. ``lsnn:50+50``); a spiking one with
``:lateral[:rate=R,p=P,decay=L]`` adds learned lateral inhibition (:class:`~bioprop.nets.lateral.SpikingLateral`,
``net.lateral``): W_rec − relu(M) is the recurrent matrix (:meth:`RecurrentNet.recurrent_weight`), M learns by an
anti-Hebbian rule on spike counts (:mod:`bioprop.nets.lateral`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from bioprop.checks import all_finite
from bioprop.errors import BioPropError, DivergenceError
from bioprop.nets.lateral import SpikingLateral, spiking_from_suffix

# ------------------------------------------------------------------------------------------------ parameters


class RateParameters(NamedTuple):
    """Rate units (Murray 2019): ``tau`` τ, the time constant in steps (≥ 1; τ = 1 is a vanilla tanh RNN)."""

    tau: float = 10.0

    def check(self) -> RateParameters:
        """Itself, or a :class:`BioPropError` naming the bad value."""
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau >= 1.0):
            raise BioPropError(f"rate parameter tau={self.tau!r} must be a number of steps, at least 1")
        return self


#: ALIF adaptation strength of the e-prop cue-accumulation code: 1.7 (1 − ρ) / (1 − α), τ_a = 2000 ms, τ_m = 20 ms.
BETA_CUE = 1.7 * (1.0 - math.exp(-1.0 / 2000.0)) / (1.0 - math.exp(-1.0 / 20.0))


class LIFParameters(NamedTuple):
    """LIF / ALIF neurons (Bellec et al. 2020). Times in ms: ``tau_m`` membrane, ``tau_a`` adaptation, ``tau_out``
    readout, ``dt`` the step; ``v_th`` threshold (> 0); ``beta`` β, the ALIF adaptation strength; ``n_ref``
    refractory steps after a spike (integer ≥ 0); ``gamma`` γ, the pseudo-derivative's dampening."""

    tau_m: float = 20.0
    tau_a: float = 2000.0
    tau_out: float = 20.0
    dt: float = 1.0
    v_th: float = 0.6
    beta: float = BETA_CUE
    n_ref: int = 5
    gamma: float = 0.3

    @property
    def alpha(self) -> float:
        """α = e^{−dt/τ_m}, the membrane's decay per step."""
        return math.exp(-self.dt / self.tau_m)

    @property
    def rho(self) -> float:
        """ρ = e^{−dt/τ_a}, the adaptation's decay per step."""
        return math.exp(-self.dt / self.tau_a)

    @property
    def kappa(self) -> float:
        """κ = e^{−dt/τ_out}, the readout's decay per step."""
        return math.exp(-self.dt / self.tau_out)

    def check(self) -> LIFParameters:
        """Itself, or a :class:`BioPropError` naming the first bad value."""
        for name in ("tau_m", "tau_a", "tau_out", "dt", "v_th"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise BioPropError(f"LIF parameter {name}={value!r} must be a positive number")
        for name in ("beta", "gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise BioPropError(f"LIF parameter {name}={value!r} must be 0 or a positive number")
        if isinstance(self.n_ref, bool) or not isinstance(self.n_ref, int) or self.n_ref < 0:
            raise BioPropError(f"LIF parameter n_ref={self.n_ref!r} must be a whole number of steps, 0 or more")
        return self


# ---------------------------------------------------------------------------------------------------- states


class RateState(NamedTuple):
    """h (B, n): the rate units' activities."""

    h: Tensor


class LIFState(NamedTuple):
    """Each (B, n): ``v`` membrane potential, ``z`` spikes (0/1), ``ref`` refractory steps left, ``a`` adaptation
    (0 for LIF neurons)."""

    v: Tensor
    z: Tensor
    ref: Tensor
    a: Tensor


class ReadoutState(NamedTuple):
    """y (B, K): the readout."""

    y: Tensor


class Carry(NamedTuple):
    """What :meth:`RecurrentNet.unroll` hands from one stretch of a sequence to the next: ``cell`` (F, B, n) the
    fields of the cell state stacked (rate: h; spiking: v, z, ref, a) and ``y`` (B, K) the readout."""

    cell: Tensor
    y: Tensor


class Trajectory(NamedTuple):
    """A run, stacked over time: entry t is the state after the input x[t]. ``y`` (T, B, K) the readout; rate
    networks fill ``h`` and ``u`` (T, B, n); spiking ones ``v``, ``z``, ``a``, ``A`` (threshold), ``psi``
    (pseudo-derivative ψ, 0 while refractory) and ``ref`` (refractory steps left after the step), each (T, B, n).
    The fields of the other kind are None."""

    y: Tensor
    h: Tensor | None = None
    u: Tensor | None = None
    v: Tensor | None = None
    z: Tensor | None = None
    a: Tensor | None = None
    A: Tensor | None = None
    psi: Tensor | None = None
    ref: Tensor | None = None


# -------------------------------------------------------------------------------------------- step functions


def rate_step(u: Tensor, state: RateState, p: RateParameters) -> RateState:
    """h_{t+1} = h_t + (−h_t + tanh(u_{t+1}))/τ (Murray 2019), u (B, n) = W_rec h_t + W_in x_{t+1} (+ b)."""
    return RateState(state.h + (torch.tanh(u) - state.h) / p.tau)


def threshold(a: Tensor, beta: Tensor, p: LIFParameters) -> Tensor:
    """A = v_th + β a (Bellec et al. 2020, ALIF), a (B, n), β (n,) → (B, n)."""
    return p.v_th + beta * a


def pseudo_derivative(v: Tensor, A: Tensor, ref: Tensor, p: LIFParameters) -> Tensor:
    """ψ = (γ/v_th) max(0, 1 − |v − A|/v_th), and 0 where ``ref`` > 0 (Bellec et al. 2020, "pseudo-derivative").
    v, A, ref broadcastable, e.g. (B, n); ``ref`` is the refractory count before the step (r^t for v^{t+1})."""
    psi = (p.gamma / p.v_th) * torch.clamp(1.0 - (v - A).abs() / p.v_th, min=0.0)
    return torch.where(ref > 0, torch.zeros_like(psi), psi)


class SpikeFunction(torch.autograd.Function):
    """z = H(v − A) (0 while refractory) forward; ∂z/∂v = ψ and ∂z/∂A = −ψ backward (:func:`pseudo_derivative`)."""

    @staticmethod
    def forward(ctx, v: Tensor, A: Tensor, ref: Tensor, p: LIFParameters) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v, A, ref)
        ctx.p = p
        return ((v > A) & (ref <= 0)).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        v, A, ref = ctx.saved_tensors
        dz = grad * pseudo_derivative(v, A, ref, ctx.p)
        return dz, -dz, None, None


def spike(v: Tensor, A: Tensor, ref: Tensor, p: LIFParameters) -> Tensor:
    """z = H(v − A) where ``ref`` = 0, else 0 (B, n), with the pseudo-derivative ψ as its gradient (BPTT's surrogate).
    v and A are differentiated; ``ref`` is not."""
    return SpikeFunction.apply(v, A, ref, p)


def lif_step(i: Tensor, state: LIFState, beta: Tensor, p: LIFParameters, reset: Tensor | None = None) -> LIFState:
    """One step of LIF / ALIF neurons, steps 1–5 of the module docstring (the order matters for eligibility traces).

    ``i`` (B, n): the input current W_in x^{t+1} + W_rec z^t; ``state``: (v^t, z^t, r^t, a^t), each (B, n);
    ``beta`` (n,): β_j, 0 for LIF neurons; ``reset`` (B, n): the spikes the reset subtracts, z^t by default (pass
    z^t detached to stop the gradient through the reset only, as e-prop's autodiff check does; its value must be
    z^t). Returns (v^{t+1}, z^{t+1}, r^{t+1}, a^{t+1})."""
    alpha = p.alpha
    reset = state.z if reset is None else reset
    v = alpha * state.v + (1.0 - alpha) * i - p.v_th * reset  # (B, n)
    a = p.rho * state.a + state.z * (beta != 0)  # (B, n), stays 0 for LIF neurons
    z = spike(v, threshold(a, beta, p), state.ref, p)  # (B, n)
    ref = torch.where(z > 0, torch.full_like(state.ref, float(p.n_ref)), (state.ref - 1.0).clamp(min=0.0))
    return LIFState(v, z, ref.detach(), a)


class LIFRecord(NamedTuple):
    """A spiking run's record from :func:`lif_sequence`, each (T, B, n), entry t after the input of step t: ``v``
    membrane, ``z`` spikes, ``a`` adaptation, ``gap`` v − A (the distance to the threshold), ``free`` 1 where the
    neuron was not refractory before the step (r^{t−1} = 0, the gate of z and ψ), ``ref`` refractory steps left."""

    v: Tensor
    z: Tensor
    a: Tensor
    gap: Tensor
    free: Tensor
    ref: Tensor

    def psi(self, p: LIFParameters) -> Tensor:
        """ψ (T, B, n): (γ/v_th) max(0, 1 − |v − A|/v_th), 0 while refractory (:func:`pseudo_derivative`)."""
        return (p.gamma / p.v_th) * torch.clamp(1.0 - self.gap.abs() / p.v_th, min=0.0) * self.free


def lif_sequence(drives: Tensor, w_rec: Tensor, beta: Tensor, state: LIFState, p: LIFParameters) -> tuple[
        LIFRecord, LIFState]:  # fmt: skip
    """Steps 1–5 of :func:`lif_step` for a whole sequence, without autograd, into preallocated records: ``drives``
    (T, B, n) every step's W_in x^t, ``w_rec`` (n, n), ``beta`` (n,), ``state`` the state before the first step.
    Returns the :class:`LIFRecord` and the state after the last step. The same arithmetic as :func:`lif_step`
    (z^t = H(v^t − A^t) gated by r^{t−1} = 0), ~14 in-place operations per step instead of an autograd graph."""
    steps, batch, n = drives.shape
    record = LIFRecord(*(drives.new_empty(steps, batch, n) for _ in range(6)))
    v, z, ref, a = (part.detach() for part in state)
    alif, one = (beta != 0).to(drives.dtype), drives.new_ones(())
    adaptive, w_t, alpha, rho, v_th, n_ref = bool(alif.any()), w_rec.detach().t(), p.alpha, p.rho, p.v_th, p.n_ref
    with torch.no_grad():  # float arithmetic only: a comparison to a bool tensor or masked_fill_ costs 2-5× more
        for drive, v_t, z_t, a_t, gap, free, ref_t in zip(drives, *(field.unbind(0) for field in record), strict=True):
            torch.lerp(torch.addmm(drive, z, w_t), v, alpha, out=v_t)  # 1. α v + (1 − α) i
            v_t.sub_(z, alpha=v_th)  # − v_th z (reset by subtraction)
            if adaptive:
                torch.mul(a, rho, out=a_t).addcmul_(z, alif)  # 2. a = ρ a + z (ALIF)
                torch.addcmul(v_t, a_t, beta, value=-1.0, out=gap).sub_(v_th)  # 3. v − A, A = v_th + β a
            else:
                torch.mul(a, rho, out=a_t)  # a^0 decays (0 from rest), as in lif_step
                torch.sub(v_t, v_th, out=gap)
            torch.sub(one, ref, out=free).clamp_(min=0.0)  # 1 where r^{t−1} = 0 (r is a whole count)
            torch.gt(gap, 0.0, out=z_t).mul_(free)  # 4. z = H(v − A), H(0) = 0, gated
            # 5. r = n_ref after a spike, else max(r − 1, 0), which is 0 where a neuron can spike
            ref = torch.sub(ref, 1.0, out=ref_t).clamp_(min=0.0).add_(z_t, alpha=float(n_ref))
            v, z, a = v_t, z_t, a_t
    return record, LIFState(v, z, ref, a)


def readout_step(z: Tensor, state: ReadoutState, w_out: Tensor, b_out: Tensor | None, kappa: float) -> ReadoutState:
    """y^t = κ y^{t−1} + W_out z^t + b_out: z (B, n), y (B, K), W_out (K, n), b_out (K,) or None. κ = 0 for the rate
    network (y = W_out h + b)."""
    y = z @ w_out.T  # (B, K)
    if b_out is not None:
        y = y + b_out
    return ReadoutState(kappa * state.y + y if kappa else y)


# ------------------------------------------------------------------------------------------ the fused time loop


FLUSH_EVERY = 32  # steps between flushes of the backward's adjoints to zero below the smallest normal number


def flush_subnormal(values: Tensor) -> None:
    """Zero, in place, the entries of ``values`` below the dtype's smallest normal number (~1e-38 in float32). A
    silent neuron's adjoint or trace decays geometrically (α^k, κ^k) into subnormals, and arithmetic on subnormals
    runs several times slower on a CPU (BPTT on lif:100 over the 2,250 cue-accumulation steps: 1.5× slower). No
    value that is a normal number changes."""
    values.masked_fill_(values.abs() < torch.finfo(values.dtype).tiny, 0.0)


class LIFSequenceFunction(torch.autograd.Function):
    """:func:`lif_sequence` forward; BPTT through it backward, derived by hand (module docstring, "Fused loop").

    Inputs: ``drives`` (T, B, n), ``w_rec`` (n, n), the initial v, z, a (B, n) (differentiated), r (B, n) and
    ``beta`` (n,) (not), ``p``. Outputs: the six fields of :class:`LIFRecord`; z, v and a carry gradients (any of
    them may receive one, the last rows included: that is the final state), gap, free and ref do not."""

    @staticmethod
    def forward(ctx, drives, w_rec, v, z, a, ref, beta, p):  # type: ignore[override]
        record, _ = lif_sequence(drives, w_rec, beta, LIFState(v, z, ref, a), p)
        scale = (1.0 - p.alpha) * p.gamma / p.v_th  # (1 − α) ψ: the backward runs on (1 − α) δv, the drives' gradient
        psi = record.gap.abs().mul_(-1.0 / p.v_th).add_(1.0).clamp_(min=0.0).mul_(record.free).mul_(scale)  # (T, B, n)
        ctx.mark_non_differentiable(record.gap, record.free, record.ref)
        ctx.save_for_backward(w_rec, z, record.z, psi, beta)
        ctx.p = p
        ctx.set_materialize_grads(False)
        return tuple(record)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_v, grad_z, grad_a, *_):  # type: ignore[override]
        w_rec, z0, z, psi, beta = ctx.saved_tensors
        p, steps = ctx.p, z.shape[0]
        alpha, rho, leak = p.alpha, p.rho, 1.0 - p.alpha
        alif = (beta != 0).to(z.dtype)  # (n,)
        adaptive = bool(alif.any())
        # δz^t = G^t + (1 − α) δv^{t+1} W_rec − v_th δv^{t+1} + m δa^{t+1}, written with e = (1 − α) δv
        w_back = w_rec.detach() - torch.diag_embed(w_rec.new_full(w_rec.shape[:1], p.v_th / leak))  # (n, n)
        lean = -beta / leak  # δa^t ∋ −β ψ δz^t = −β/(1 − α) · (1 − α) ψ δz^t
        e = torch.empty_like(psi)  # (T, B, n): e^t = (1 − α) δv^t, the drives' gradient
        e_next = z0.new_zeros(z0.shape)  # e^{T+1} = 0
        da = z0.new_zeros(z0.shape) if adaptive or grad_a is not None else None  # δa^{t+1}
        dz = torch.empty_like(e_next)  # (B, n)
        with torch.no_grad():
            for t in range(steps - 1, -1, -1):
                if grad_z is None:
                    torch.mm(e_next, w_back, out=dz)
                else:
                    torch.addmm(grad_z[t], e_next, w_back, out=dz)  # δz^t
                if adaptive:
                    dz.addcmul_(da, alif)
                dz.mul_(psi[t])  # (1 − α) ψ^t δz^t
                e_t = torch.add(dz, e_next, alpha=alpha, out=e[t])  # e^t = α e^{t+1} + (1 − α) ψ^t δz^t
                if grad_v is not None:
                    e_t.add_(grad_v[t], alpha=leak)
                if da is not None:
                    da.mul_(rho)  # δa^t = ρ δa^{t+1} − β ψ^t δz^t (+ dL/da^t)
                    if adaptive:
                        da.addcmul_(dz, lean)
                    if grad_a is not None:
                        da.add_(grad_a[t])
                if t % FLUSH_EVERY == 0:  # a silent LIF neuron's δv decays as α^k: no subnormal stretch outlasts this
                    flush_subnormal(e_t)
                    if da is not None:
                        flush_subnormal(da)
                e_next = e_t
            d_drives = e if ctx.needs_input_grad[0] else None
            d_w = None
            if ctx.needs_input_grad[1]:  # Σ_t (e^t)ᵀ z^{t−1}, (n, n)
                n = z.shape[-1]
                d_w = torch.mm(e[0].t(), z0)
                if steps > 1:
                    d_w.addmm_(e[1:].reshape(-1, n).t(), z[:-1].reshape(-1, n))
            d_v = e[0] * (alpha / leak) if ctx.needs_input_grad[2] else None  # α δv^1
            d_z0 = None
            if ctx.needs_input_grad[3]:  # as δz^t without G: (1 − α) δv^1 W_rec − v_th δv^1 + m δa^1
                d_z0 = e[0] @ w_back
                if adaptive:
                    d_z0.addcmul_(da, alif)
            d_a = None
            if ctx.needs_input_grad[4]:
                d_a = da * rho if da is not None else torch.zeros_like(z0)
        return d_drives, d_w, d_v, d_z0, d_a, None, None, None


def lif_unroll(drives: Tensor, w_rec: Tensor, beta: Tensor, state: LIFState, p: LIFParameters) -> tuple[
        LIFRecord, LIFState]:  # fmt: skip
    """:func:`lif_sequence` (same arguments, same :class:`LIFRecord` and final state), differentiable: in ``drives``
    (T, B, n), ``w_rec`` (n, n) and the initial v, z, a (B, n), through :class:`LIFSequenceFunction`'s hand-derived
    BPTT (the surrogate ψ, the reset's gradient included). The record's v, z and a carry gradients; the final state
    is their last rows. Without grad mode, or when nothing requires a gradient, it is :func:`lif_sequence` itself."""
    inputs = (drives, w_rec, state.v, state.z, state.a)
    if not (torch.is_grad_enabled() and any(part.requires_grad for part in inputs)):
        return lif_sequence(drives, w_rec, beta, state, p)
    record = LIFRecord(*LIFSequenceFunction.apply(drives, w_rec, state.v, state.z, state.a, state.ref, beta, p))
    return record, LIFState(record.v[-1], record.z[-1], record.ref[-1], record.a[-1])


class LeakyIntegral(torch.autograd.Function):
    """y^t = κ y^{t−1} + u^t from y^0 forward; ∂L/∂u^t = Σ_{s ≥ t} κ^{s−t} ∂L/∂y^s (the same filter run backwards in
    time) and ∂L/∂y^0 = κ ∂L/∂u^1 backward. u (T, B, K), y^0 (B, K) → y (T, B, K): one in-place op a step each way."""

    @staticmethod
    def forward(ctx, u, y0, kappa):  # type: ignore[override]
        y, previous = torch.empty_like(u), y0
        for u_t, y_t in zip(u, y, strict=True):
            previous = torch.add(u_t, previous, alpha=kappa, out=y_t)
        ctx.kappa = kappa
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        d_u = torch.empty_like(grad)
        following = d_u[-1].copy_(grad[-1])
        for t in range(grad.shape[0] - 2, -1, -1):
            following = torch.add(grad[t], following, alpha=ctx.kappa, out=d_u[t])
        return d_u, ctx.kappa * d_u[0], None


def leaky_readout(z: Tensor, y0: Tensor, w_out: Tensor, b_out: Tensor | None, kappa: float) -> Tensor:
    """:func:`readout_step` for a whole sequence: y^t = κ y^{t−1} + W_out z^t + b_out, z (T, B, n), y^0 (B, K) →
    y (T, B, K); one matmul for every step's W_out z^t + b_out, then the κ filter (:class:`LeakyIntegral`)."""
    u = z @ w_out.T if b_out is None else torch.addmm(b_out, z.flatten(0, 1), w_out.T).view(*z.shape[:2], -1)
    return LeakyIntegral.apply(u, y0, kappa)  # (T, B, K)


# ------------------------------------------------------------------------------------------------- the module


class RecurrentNet(nn.Module):
    """A rate (``cell="rate"``) or spiking (``cell="spiking"``) recurrent network; see the module docstring.

    Submodules ``input`` (W_in, (n, C), no bias), ``recurrent`` (W_rec, (n, n), no bias; use
    :meth:`recurrent_weight`), ``readout`` (W_out (K, n), b_out (K,)). Spiking: the first ``n_hidden − n_alif``
    neurons are LIF, the last ``n_alif`` ALIF (``beta`` (n,): 0, then ``params.beta``; buffer ``alif`` (n,) bool).

    Initialisation, from torch's global generator: rate W_in ~ N(0, 1/C), W_rec ~ N(0, g²/n) with g = 1.5 (Murray
    2019); spiking W_in ~ N(0, 1/C) / (1 − α), W_rec ~ N(0, 1/n) / (1 − α): the e-prop code draws N(0, 1/C) and
    N(0, 1/n) for v^{t+1} = α v^t + i^{t+1} − v_th z^t, which is step 1 here with the weights divided by (1 − α), so
    the network starts with the code's voltages (≈ 7 Hz on cue accumulation; undivided, it is silent). The readout
    is initialised as ``nn.Linear``.
    ``lateral``: a :class:`~bioprop.nets.lateral.SpikingLateral` of ``n_hidden`` neurons (spiking only), held as
    ``net.lateral`` (None without): its W = relu(M) is subtracted from W_rec (:meth:`recurrent_weight`) and it sees
    the spike trains of every :meth:`unroll` and :meth:`run`.
    Raises :class:`BioPropError` for an unknown ``cell``, sizes that are not positive, ``n_alif`` outside
    [0, n_hidden], bad ``params`` and a ``lateral`` that does not fit."""

    time_major = True  # bioprop.checks.time_major: x (T, B, C) → y (T, B, K)
    gain = 1.5  # g of the rate network's W_rec (Murray 2019)

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_out: int,
        cell: str = "rate",
        n_alif: int = 0,
        params: RateParameters | LIFParameters | None = None,
        lateral: SpikingLateral | None = None,
    ) -> None:
        super().__init__()
        if cell not in ("rate", "spiking"):
            raise BioPropError(f"cell {cell!r} is unknown; choose rate or spiking")
        for name, size in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise BioPropError(f"{name}={size!r} must be a positive integer")
        if cell == "rate" and n_alif:
            raise BioPropError(f"n_alif={n_alif!r}: a rate network has no ALIF neurons")
        if isinstance(n_alif, bool) or not isinstance(n_alif, int) or not 0 <= n_alif <= n_hidden:
            raise BioPropError(f"n_alif={n_alif!r} must be an integer in [0, n_hidden={n_hidden}]")
        kind = RateParameters if cell == "rate" else LIFParameters
        params = kind() if params is None else params
        if not isinstance(params, kind):
            raise BioPropError(f"a {cell} network takes {kind.__name__}, not {type(params).__name__}")
        self.cell, self.n_in, self.n_hidden, self.n_out, self.params = cell, n_in, n_hidden, n_out, params.check()
        self.input = nn.Linear(n_in, n_hidden, bias=False)
        self.recurrent = nn.Linear(n_hidden, n_hidden, bias=False)
        self.readout = nn.Linear(n_hidden, n_out)
        g_in, g_rec = (1.0, self.gain) if cell == "rate" else (1.0 / (1.0 - params.alpha),) * 2
        with torch.no_grad():
            self.input.weight.normal_(0.0, g_in / math.sqrt(n_in))
            self.recurrent.weight.normal_(0.0, g_rec / math.sqrt(n_hidden))
        self.kappa = params.kappa if cell == "spiking" else 0.0
        if cell == "spiking":
            alif = torch.zeros(n_hidden, dtype=torch.bool)
            alif[n_hidden - n_alif :] = True
            self.register_buffer("alif", alif)
        fits = isinstance(lateral, SpikingLateral) and lateral.n == n_hidden and cell == "spiking"
        if lateral is not None and not fits:
            raise BioPropError(f"lateral={type(lateral).__name__} does not fit: lateral inhibition is a SpikingLateral "
                               f"of n_hidden={n_hidden} neurons in a spiking network (cell={cell!r})")  # fmt: skip
        self.add_module("lateral", lateral)

    @property
    def beta(self) -> Tensor:
        """β_j (n,) in the weights' dtype and device: 0 for the LIF neurons, ``params.beta`` for the ALIF ones (made
        from the boolean buffer ``alif``, so that it is ``params.beta`` exactly in any dtype)."""
        if self.cell != "spiking":
            raise AttributeError("a rate network has no beta")
        weight = self.input.weight
        return self.alif.to(weight.dtype) * self.params.beta

    def recurrent_weight(self) -> Tensor:
        """W_rec (n, n) as the dynamics use it: the diagonal zeroed for spiking networks (no self-connections, and
        no gradient on the diagonal), minus the lateral inhibition W = relu(M) (zero diagonal, no gradient) when the
        network has one; the rate network's W_rec as it is."""
        w = self.recurrent.weight
        if self.cell != "spiking":
            return w
        w = w - torch.diag_embed(torch.diagonal(w))
        return w if self.lateral is None else w - self.lateral.weight()

    def initial_state(self, batch: int, like: Tensor) -> RateState | LIFState:
        """The zero state for ``batch`` examples, in ``like``'s dtype and on its device: RateState or LIFState."""
        zeros = like.new_zeros(batch, self.n_hidden)
        return RateState(zeros) if self.cell == "rate" else LIFState(zeros, zeros, zeros, zeros)

    def step(self, x_t: Tensor, state: RateState | LIFState) -> tuple[RateState | LIFState, Tensor]:
        """One time step from ``state`` with the input x_t (B, C): (the new state, its hidden output h or z (B, n))."""
        w_rec = self.recurrent_weight()
        if self.cell == "rate":
            state = rate_step(self.input(x_t) + state.h @ w_rec.T, state, self.params)
            return state, state.h
        state = lif_step(self.input(x_t) + state.z @ w_rec.T, state, self.beta, self.params)
        return state, state.z

    def forward(self, x: Tensor) -> Tensor:
        """The readout y (T, B, K) at every step of x (T, B, C), from the zero state; differentiable (BPTT, through
        the spikes with the surrogate ψ). Raises :class:`BioPropError` for a sequence that does not fit and
        :class:`DivergenceError` for a non-finite membrane state."""
        return self.unroll(x)[0]

    def unroll(self, x: Tensor, carry: Carry | None = None) -> tuple[Tensor, Carry]:
        """Run x (T, B, C) from ``carry`` (None: the zero state) and return the readout y (T, B, K) and the
        :class:`Carry` to continue from: two calls on x[:k] and x[k:] give the readout of one call on x (truncated
        BPTT detaches the carry between them). Checks and errors as :meth:`forward`; a divergence names the step
        within this x. A spiking network runs the fused loop (module docstring), the carry differentiable too."""
        self.check_sequence(x)
        batch = x.shape[1]
        if carry is None:
            state, out = self.initial_state(batch, x), ReadoutState(x.new_zeros(batch, self.n_out))
        else:
            state, out = (RateState if self.cell == "rate" else LIFState)(*carry.cell), ReadoutState(carry.y)
        w_in, w_rec, w_out, b_out = self.input.weight, self.recurrent_weight(), self.readout.weight, self.readout.bias
        if self.cell == "spiking":
            record, state = lif_unroll(x @ w_in.T, w_rec, self.beta, state, self.params)  # (T, B, n) each
            check_membranes(record.v, "v")
            z = record.z if self.lateral is None else self.lateral(record.z)  # where its rule sees the spikes
            y = leaky_readout(z, out.y, w_out, b_out, self.kappa)  # (T, B, K)
            return y, Carry(torch.stack(tuple(state)), y[-1])  # ((F, B, n), (B, K))
        drives = (x @ w_in.T).unbind(0)  # T × (B, n): every step's W_in x_t at once (unbind: one backward, not T)
        ys, membranes = [], []
        for drive in drives:
            state = rate_step(drive + state.h @ w_rec.T, state, self.params)
            out = readout_step(state.h, out, w_out, b_out, self.kappa)
            ys.append(out.y)
            membranes.append(state.h)
        check_membranes(membranes, "h")
        return torch.stack(ys), Carry(torch.stack(tuple(state)), out.y)  # (T, B, K), ((F, B, n), (B, K))

    def run(self, x: Tensor) -> Trajectory:
        """Run x (T, B, C) from the zero state and record every step (:class:`Trajectory`); same checks and errors
        as :meth:`forward`, differentiable as it is (ψ too, through v and A, as :func:`pseudo_derivative`)."""
        self.check_sequence(x)
        state, out = self.initial_state(x.shape[1], x), ReadoutState(x.new_zeros(x.shape[1], self.n_out))
        w_rec = self.recurrent_weight()
        if self.cell == "spiking":
            p, beta = self.params, self.beta
            record, _ = lif_unroll(x @ self.input.weight.T, w_rec, beta, state, p)  # (T, B, n) each
            check_membranes(record.v, "v")
            z = record.z if self.lateral is None else self.lateral(record.z)  # where its rule sees the spikes
            y = leaky_readout(z, out.y, self.readout.weight, self.readout.bias, self.kappa)  # (T, B, K)
            A = threshold(record.a, beta, p)  # (T, B, n)
            psi = (p.gamma / p.v_th) * torch.clamp(1.0 - (record.v - A).abs() / p.v_th, min=0.0) * record.free
            return Trajectory(y, v=record.v, z=z, a=record.a, A=A, psi=psi, ref=record.ref)
        rows: dict[str, list[Tensor]] = {}
        for x_t in x.unbind(0):
            u = self.input(x_t) + state.h @ w_rec.T  # (B, n)
            state = rate_step(u, state, self.params)
            out = readout_step(state.h, out, self.readout.weight, self.readout.bias, self.kappa)
            for key, value in {"h": state.h, "u": u, "y": out.y}.items():
                rows.setdefault(key, []).append(value)
        check_membranes(rows["h"], "h")
        return Trajectory(**{key: torch.stack(values) for key, values in rows.items()})  # each (T, B, ·)

    def check_sequence(self, x: object) -> None:
        """A :class:`BioPropError` naming the shape unless x is a (T, B, C) tensor, T, B ≥ 1, C = ``n_in``, in the
        network's dtype and on its device."""
        if not isinstance(x, Tensor):
            raise BioPropError(f"input x must be a torch.Tensor of shape (T, B, {self.n_in}), not {type(x).__name__}")
        shape, weight = tuple(x.shape), self.input.weight
        if x.dim() != 3 or x.shape[2] != self.n_in:
            raise BioPropError(f"input x of shape {shape} does not fit the network: expected time-major (T, B, "
                               f"{self.n_in})")  # fmt: skip
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise BioPropError(f"input x of shape {shape} has no time steps or no examples")
        if x.dtype != weight.dtype:
            raise BioPropError(f"input x of shape {shape} is {x.dtype} but the network is {weight.dtype}")
        if x.device != weight.device:
            raise BioPropError(f"input x of shape {shape} is on {x.device} but the network is on {weight.device}")

    def extra_repr(self) -> str:
        n_alif = int(self.alif.sum()) if self.cell == "spiking" else 0
        return f"cell={self.cell}, n_alif={n_alif}, params={self.params}"


def check_membranes(membranes: Sequence[Tensor] | Tensor, name: str) -> None:
    """A :class:`DivergenceError` naming the first step whose membrane state (a list over time of (B, n), or the
    stacked (T, B, n)) is not finite. Reads only the last step unless it is not finite: a NaN or infinite membrane
    never returns to finite values (α·v, h + (tanh(u) − h)/τ and the reset keep it non-finite), so the last step
    shows any earlier one."""
    if all_finite(membranes[-1]):
        return
    step = next(t for t, m in enumerate(membranes) if not bool(torch.isfinite(m).all()))
    raise DivergenceError(
        f"the membrane state {name} of the recurrent network is not finite at time step {step} of {len(membranes)}: "
        "the dynamics diverged (lower the learning rate or the weights' scale)"
    )


# ---------------------------------------------------------------------------------------------------- specs

SPECS = {
    "rnn:N": "rate network of N tanh units (Murray 2019), readout at every step, e.g. rnn:50",
    "lif:N": "spiking network of N LIF neurons (Bellec et al. 2020), leaky readout, e.g. lif:100",
    "alif:N": "spiking network of N ALIF neurons (adaptive threshold), e.g. alif:100",
    "lsnn:N+M": "spiking network of N LIF then M ALIF neurons (e-prop's LSNN), e.g. lsnn:50+50",
}
KINDS = ("rnn", "lif", "alif", "lsnn")


def _count(text: str, spec: str, example: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise BioPropError(f"bad arch {spec!r}: the neuron count must be a positive integer, e.g. {example}")
    return int(text)


def from_spec(spec: str, in_shape: Sequence[int], n_classes: int) -> RecurrentNet:
    """The network of ``spec`` (``rnn:N``, ``lif:N``, ``alif:N``, ``lsnn:N+M``, a spiking one with
    ``:lateral[:key=value,...]`` (:func:`~bioprop.nets.lateral.spiking_from_suffix`); lower case, stripped) for
    inputs of ``in_shape`` (T, C) and ``n_classes`` readout units. One-line :class:`BioPropError` with an example
    otherwise."""
    kind, _, body = spec.partition(":")
    body, colon, suffix = body.partition(":")
    if colon and kind == "rnn":
        named = suffix.partition(":")[0]
        why = (f"unknown suffix {named!r}; rnn:N takes none" if named != "lateral" else "lateral inhibition is for the "
               "spiking networks (lif:N:lateral, alif:N:lateral, lsnn:N+M:lateral) and mlp:H:lateral, not the rate "
               "network rnn:N")  # fmt: skip
        raise BioPropError(f"bad arch {spec!r}: {why}")
    if kind not in KINDS:
        raise BioPropError(f"unknown recurrent arch {spec!r}; known: {', '.join(SPECS)}")
    if len(in_shape) != 2:
        raise BioPropError(f"arch {spec!r} takes sequences of shape (T, C); the inputs are "
                           f"{'x'.join(str(s) for s in in_shape)}")  # fmt: skip
    n_in = int(in_shape[-1])
    if kind == "lsnn":
        lif, plus, alif = body.partition("+")
        if not plus:
            raise BioPropError(f"bad arch {spec!r}: give the LIF and ALIF counts as lsnn:N+M, e.g. lsnn:50+50")
        n_lif, n_alif = _count(lif, spec, "lsnn:50+50"), _count(alif, spec, "lsnn:50+50")
        n = n_lif + n_alif
    else:
        n = _count(body, spec, f"{kind}:100")
        n_alif = n if kind == "alif" else 0
    if kind == "rnn":
        return RecurrentNet(n_in, n, n_classes, "rate")
    lateral = spiking_from_suffix(suffix, spec, n) if colon else None
    return RecurrentNet(n_in, n, n_classes, "spiking", n_alif, lateral=lateral)


__all__ = [
    "BETA_CUE",
    "Carry",
    "KINDS",
    "LIFParameters",
    "LIFRecord",
    "LIFSequenceFunction",
    "LIFState",
    "LeakyIntegral",
    "RateParameters",
    "RateState",
    "ReadoutState",
    "RecurrentNet",
    "SPECS",
    "SpikeFunction",
    "Trajectory",
    "check_membranes",
    "flush_subnormal",
    "from_spec",
    "leaky_readout",
    "lif_sequence",
    "lif_step",
    "lif_unroll",
    "pseudo_derivative",
    "rate_step",
    "readout_step",
    "spike",
    "threshold",
]
