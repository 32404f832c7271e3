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

Defaults are those of the e-prop cue-accumulation task (Fig. 3; the official code's
``tutorial_evidence_accumulation_with_alif.py``): τ_m = 20 ms, τ_a = 2000 ms, τ_out = 20 ms, dt = 1 ms,
v_th = 0.6, n_ref = 5, γ = 0.3 and β = 1.7 (1 − ρ) / (1 − α) ≈ 0.0174, the code's value for this τ_a and τ_m.

Specs for :func:`bioprop.nets.build` (inputs (T, C)): ``rnn:N`` (rate, N tanh units), ``lif:N`` (N LIF neurons),
``alif:N`` (N ALIF neurons), ``lsnn:N+M`` (N LIF then M ALIF neurons, e.g. ``lsnn:50+50``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bioprop.checks import all_finite
from bioprop.errors import BioPropError, DivergenceError

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


def readout_step(z: Tensor, state: ReadoutState, w_out: Tensor, b_out: Tensor | None, kappa: float) -> ReadoutState:
    """y^t = κ y^{t−1} + W_out z^t + b_out: z (B, n), y (B, K), W_out (K, n), b_out (K,) or None. κ = 0 for the rate
    network (y = W_out h + b)."""
    y = z @ w_out.T  # (B, K)
    if b_out is not None:
        y = y + b_out
    return ReadoutState(kappa * state.y + y if kappa else y)


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
    Raises :class:`BioPropError` for an unknown ``cell``, sizes that are not positive, ``n_alif`` outside
    [0, n_hidden] and bad ``params``."""

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
        no gradient on the diagonal); the rate network's W_rec as it is."""
        w = self.recurrent.weight
        return w - torch.diag_embed(torch.diagonal(w)) if self.cell == "spiking" else w

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
        within this x."""
        self.check_sequence(x)
        batch = x.shape[1]
        if carry is None:
            state, out = self.initial_state(batch, x), ReadoutState(x.new_zeros(batch, self.n_out))
        else:
            state, out = (RateState if self.cell == "rate" else LIFState)(*carry.cell), ReadoutState(carry.y)
        w_in, w_rec, w_out, b_out = self.input.weight, self.recurrent_weight(), self.readout.weight, self.readout.bias
        beta = self.beta if self.cell == "spiking" else None
        drives = (x @ w_in.T).unbind(0)  # T × (B, n): every step's W_in x_t at once (unbind: one backward, not T)
        ys, membranes = [], []
        for drive in drives:
            if self.cell == "rate":
                state = rate_step(drive + state.h @ w_rec.T, state, self.params)
                hidden, membrane = state.h, state.h
            else:
                state = lif_step(drive + state.z @ w_rec.T, state, beta, self.params)
                hidden, membrane = state.z, state.v
            out = readout_step(hidden, out, w_out, b_out, self.kappa)
            ys.append(out.y)
            membranes.append(membrane)
        check_membranes(membranes, "h" if self.cell == "rate" else "v")
        return torch.stack(ys), Carry(torch.stack(tuple(state)), out.y)  # (T, B, K), ((F, B, n), (B, K))

    def run(self, x: Tensor) -> Trajectory:
        """Run x (T, B, C) from the zero state and record every step (:class:`Trajectory`); same checks and errors
        as :meth:`forward`, differentiable as it is."""
        self.check_sequence(x)
        state, out = self.initial_state(x.shape[1], x), ReadoutState(x.new_zeros(x.shape[1], self.n_out))
        w_rec, beta = self.recurrent_weight(), self.beta if self.cell == "spiking" else None
        rows: dict[str, list[Tensor]] = {}
        for x_t in x.unbind(0):
            if self.cell == "rate":
                u = self.input(x_t) + state.h @ w_rec.T  # (B, n)
                state = rate_step(u, state, self.params)
                record, hidden = {"h": state.h, "u": u}, state.h
            else:
                ref = state.ref  # r^t gates ψ^{t+1}
                state = lif_step(self.input(x_t) + state.z @ w_rec.T, state, beta, self.params)
                A = threshold(state.a, beta, self.params)
                psi = pseudo_derivative(state.v, A, ref, self.params)
                record, hidden = {**state._asdict(), "A": A, "psi": psi}, state.z
            out = readout_step(hidden, out, self.readout.weight, self.readout.bias, self.kappa)
            for key, value in {**record, "y": out.y}.items():
                rows.setdefault(key, []).append(value)
        membrane = "h" if self.cell == "rate" else "v"
        check_membranes(rows[membrane], membrane)
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


def check_membranes(membranes: Sequence[Tensor], name: str) -> None:
    """A :class:`DivergenceError` naming the first step whose membrane state (list over time of (B, n)) is not
    finite. Reads only the last step unless it is not finite: a NaN or infinite membrane never returns to finite
    values (α·v, h + (tanh(u) − h)/τ and the reset keep it non-finite), so the last step shows any earlier one."""
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
    """The network of ``spec`` (``rnn:N``, ``lif:N``, ``alif:N``, ``lsnn:N+M``; lower case, stripped) for inputs of
    ``in_shape`` (T, C) and ``n_classes`` readout units. One-line :class:`BioPropError` with an example otherwise."""
    kind, _, body = spec.partition(":")
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
        return RecurrentNet(n_in, n_lif + n_alif, n_classes, "spiking", n_alif)
    n = _count(body, spec, f"{kind}:100")
    if kind == "rnn":
        return RecurrentNet(n_in, n, n_classes, "rate")
    return RecurrentNet(n_in, n, n_classes, "spiking", n if kind == "alif" else 0)


__all__ = [
    "BETA_CUE",
    "Carry",
    "KINDS",
    "LIFParameters",
    "LIFState",
    "RateParameters",
    "RateState",
    "ReadoutState",
    "RecurrentNet",
    "SPECS",
    "SpikeFunction",
    "Trajectory",
    "check_membranes",
    "from_spec",
    "lif_step",
    "pseudo_derivative",
    "rate_step",
    "readout_step",
    "spike",
    "threshold",
]
