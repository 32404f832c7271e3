"""A rate network with a sparse attentive memory: the network of sparse attentive backtracking (Ke et al. 2018,
NeurIPS, "Sparse Attentive Backtracking: Temporal Credit Assignment Through Reminding", Algorithm 1 and Fig. 1),
trained by the rule ``sab`` (:mod:`bioprop.rules.sab`) or by any rule for recurrent networks that differentiates
``net(x)`` or :meth:`SABNet.unroll` (``bptt``, ``tbptt``).

The rate units are those of :mod:`bioprop.nets.recurrent` (:func:`~bioprop.nets.recurrent.rate_step`, Murray 2019).
At each step t (0-based), with the memory M = {m_1 … m_|M|}, each m_i (B, n)::

    u_t   = W_rec ĥ_{t−1} + W_in x_t
    h_t   = h_{t−1} + (−h_{t−1} + tanh(u_t)) / τ                         (rate_step: the provisional state)
    a_ti  = wᵀ tanh(W_a [h_t; m_i])                                       (attention_scores: a one-layer tanh MLP)
    ã_ti  = ReLU(a_ti − a_t,(k_top+1)),  α_ti = ã_ti / (Σ_j ã_tj + ε)    (sparse_weights)
    ĥ_t   = h_t + Σ_i α_ti m_i                                            (attend)
    y_t   = W_out ĥ_t + b_out
    m_{|M|+1} = h_t if (t + 1) ≡ 0 mod k_att                               (remember, after attending)

The scores are the paper's MLP on the concatenation of the provisional state and each memory (Fig. 1), not a dot
product. a_t,(k_top+1) is the (k_top + 1)-th largest score, so exactly the k_top largest get a weight (barring ties)
and the weights are renormalised to sum to one, as in the paper (ε = 1e-7, the official code's). While the memory
holds k_top memories or fewer there is no (k_top + 1)-th score and every memory is kept: their weights are then
softmax(a_t), which the paper leaves undefined (an empty memory adds nothing: ĥ_t = h_t).

Two departures, both stated: the symbols follow bioprop's brief, not the paper, whose ĥ is the provisional state and
h the attended one; and the memory stores the provisional state h_t (a convex combination of tanh values, so
|m_i| < 1 and |ĥ_t| < 2), where the paper stores the attended one: with a leaky rate unit that carries its state, an
attended memory would be added back into every later state and grow without bound.

Gradient cuts (what the rule needs, :meth:`SABNet.unroll` with ``truncation`` k): before every step t that is a
positive multiple of k, h_{t−1} and ĥ_{t−1} are detached, and the memories are not; the values are unchanged.

Spec for :func:`bioprop.nets.build` (inputs (T, C)): ``sab:N`` (N rate units, k_top = 5, k_att = 5) or
``sab:N:k_top=K,k_att=A``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bioprop.errors import BioPropError
from bioprop.nets.recurrent import RateParameters, RateState, RecurrentNet, check_membranes, rate_step

#: ε of the renormalisation α = ã / (Σ ã + ε) (the official SAB code's 10e-8).
EPS = 1e-7


class SABParameters(NamedTuple):
    """The attention's schedule: ``k_top`` memories attended at each step, a memory stored every ``k_att`` steps
    (Ke et al. 2018, Algorithm 1); both whole numbers ≥ 1."""

    k_top: int = 5
    k_att: int = 5

    def check(self) -> SABParameters:
        """Itself, or a :class:`BioPropError` naming the bad value."""
        for name, value in self._asdict().items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BioPropError(f"attention parameter {name}={value!r} must be a whole number, at least 1")
        return self


class SABState(NamedTuple):
    """``h`` (B, n) the provisional state, ``h_hat`` (B, n) the attended state ĥ, ``memory`` (B, M, n) the stored
    states (M ≥ 0), ``steps`` () int64 the steps taken (the k_att schedule reads it)."""

    h: Tensor
    h_hat: Tensor
    memory: Tensor
    steps: Tensor


class SABCarry(NamedTuple):
    """What :meth:`SABNet.unroll` hands to the next stretch of a sequence: the :class:`SABState` fields and ``y``
    (B, K) the last readout."""

    h: Tensor
    h_hat: Tensor
    memory: Tensor
    steps: Tensor
    y: Tensor


# -------------------------------------------------------------------------------------------- step functions


def attention_scores(h: Tensor, memory: Tensor, w_a: Tensor, w: Tensor) -> Tensor:
    """a_ti = wᵀ tanh(W_a [h_t; m_i]) (Ke et al. 2018, Fig. 1): h (B, n), memory (B, M, n), W_a (H, 2n), w (H,)
    → (B, M)."""
    n = h.shape[1]
    d = (h @ w_a[:, :n].T).unsqueeze(1) + memory @ w_a[:, n:].T  # (B, M, H)
    return torch.tanh(d) @ w  # (B, M)


def sparse_weights(a: Tensor, k_top: int) -> Tensor:
    """α_ti = ReLU(a_ti − a_t,(k_top+1)) / (Σ_j ReLU(a_tj − a_t,(k_top+1)) + ε) (Ke et al. 2018, Algorithm 1):
    a (B, M) → (B, M), zero but for the k_top largest scores. With M ≤ k_top every memory is kept: softmax(a)."""
    if a.shape[1] <= k_top:
        return torch.softmax(a, dim=1)
    threshold = a.topk(k_top + 1, dim=1).values[:, -1:]  # (B, 1): the (k_top + 1)-th largest
    kept = torch.relu(a - threshold)  # (B, M)
    return kept / (kept.sum(1, keepdim=True) + EPS)


def attend(h: Tensor, memory: Tensor, w_a: Tensor, w: Tensor, k_top: int) -> Tensor:
    """ĥ_t = h_t + Σ_i α_ti m_i (module docstring): h (B, n), memory (B, M, n) → (B, n); h itself when M = 0."""
    if memory.shape[1] == 0:
        return h
    alpha = sparse_weights(attention_scores(h, memory, w_a, w), k_top)  # (B, M)
    return h + (alpha.unsqueeze(1) @ memory).squeeze(1)  # (B, n)


def sab_step(drive: Tensor, state: SABState, w_rec: Tensor, w_a: Tensor, w: Tensor, p: RateParameters,
             s: SABParameters) -> SABState:  # fmt: skip
    """One step of the module docstring from ``state`` with the input drive W_in x_t (B, n): the rate step from
    (h_{t−1}, ĥ_{t−1}), the attention over the memory, then the memory write when (t + 1) ≡ 0 mod k_att."""
    h = rate_step(drive + state.h_hat @ w_rec.T, RateState(state.h), p).h  # (B, n)
    h_hat = attend(h, state.memory, w_a, w, s.k_top)  # (B, n)
    steps = state.steps + 1
    memory = torch.cat([state.memory, h.unsqueeze(1)], 1) if int(steps) % s.k_att == 0 else state.memory
    return SABState(h, h_hat, memory, steps)


def cut(state: SABState) -> SABState:
    """The state with h and ĥ detached and the memory left attached: the gradient cut of truncation."""
    return state._replace(h=state.h.detach(), h_hat=state.h_hat.detach())


# ------------------------------------------------------------------------------------------------- the module


class SABNet(nn.Module):
    """A rate network with a sparse attentive memory (module docstring).

    Submodules ``input`` (W_in (n, C), no bias), ``recurrent`` (W_rec (n, n), no bias), ``readout`` (W_out (K, n),
    b_out (K,)), initialised as :class:`~bioprop.nets.recurrent.RecurrentNet`'s rate network, and ``attention``:
    ``attention.hidden`` (W_a (n, 2n), no bias) and ``attention.score`` (wᵀ (1, n), no bias), initialised as
    ``nn.Linear``. All from torch's global generator. Raises :class:`BioPropError` for sizes that are not positive
    and bad ``params`` or ``attention``."""

    time_major = True  # bioprop.checks.time_major: x (T, B, C) → y (T, B, K)
    cell = "rate"
    kappa = 0.0
    check_sequence = RecurrentNet.check_sequence  # the same (T, B, C) checks and messages

    def __init__(self, n_in: int, n_hidden: int, n_out: int, params: RateParameters | None = None,
                 attention: SABParameters | None = None) -> None:  # fmt: skip
        super().__init__()
        for name, size in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise BioPropError(f"{name}={size!r} must be a positive integer")
        params, attention = params or RateParameters(), attention or SABParameters()
        if not isinstance(params, RateParameters) or not isinstance(attention, SABParameters):
            raise BioPropError("an sab network takes RateParameters and SABParameters")
        self.n_in, self.n_hidden, self.n_out = n_in, n_hidden, n_out
        self.params, self.sab = params.check(), attention.check()
        self.input = nn.Linear(n_in, n_hidden, bias=False)
        self.recurrent = nn.Linear(n_hidden, n_hidden, bias=False)
        self.readout = nn.Linear(n_hidden, n_out)
        with torch.no_grad():
            self.input.weight.normal_(0.0, 1.0 / math.sqrt(n_in))
            self.recurrent.weight.normal_(0.0, RecurrentNet.gain / math.sqrt(n_hidden))
        self.attention = nn.Module()
        self.attention.hidden = nn.Linear(2 * n_hidden, n_hidden, bias=False)
        self.attention.score = nn.Linear(n_hidden, 1, bias=False)

    def recurrent_weight(self) -> Tensor:
        """W_rec (n, n)."""
        return self.recurrent.weight

    def initial_state(self, batch: int, like: Tensor) -> SABState:
        """The zero state and an empty memory (B, 0, n) for ``batch`` examples, in ``like``'s dtype and device."""
        zeros = like.new_zeros(batch, self.n_hidden)
        steps = torch.zeros((), dtype=torch.int64, device=like.device)
        return SABState(zeros, zeros, like.new_zeros(batch, 0, self.n_hidden), steps)

    def step(self, x_t: Tensor, state: SABState) -> tuple[SABState, Tensor]:
        """One step (:func:`sab_step`) with the input x_t (B, C): (the new state, ĥ_t (B, n))."""
        state = sab_step(self.input(x_t), state, self.recurrent.weight, self.attention.hidden.weight,
                         self.attention.score.weight[0], self.params, self.sab)  # fmt: skip
        return state, state.h_hat

    def forward(self, x: Tensor) -> Tensor:
        """The readout y (T, B, K) at every step of x (T, B, C), from the zero state and an empty memory;
        differentiable. Raises :class:`BioPropError` for a sequence that does not fit and
        :class:`~bioprop.errors.DivergenceError` for a non-finite state."""
        return self.unroll(x)[0]

    def unroll(
        self, x: Tensor, carry: SABCarry | None = None, truncation: int | None = None
    ) -> tuple[Tensor, SABCarry]:
        """Run x (T, B, C) from ``carry`` (None: the zero state) and return the readout y (T, B, K) and the
        :class:`SABCarry` to continue from. With ``truncation`` k, h and ĥ are detached before every step whose
        index (counted from the start of the sequence, across carries) is a positive multiple of k, the memories
        are not (module docstring); the readout is the same. Checks and errors as :meth:`forward`."""
        self.check_sequence(x)
        if truncation is not None and (
            isinstance(truncation, bool) or not isinstance(truncation, int) or truncation < 1
        ):
            raise BioPropError(f"truncation={truncation!r} must be a whole number of steps, at least 1")
        batch = x.shape[1]
        state = self.initial_state(batch, x) if carry is None else SABState(*carry[:4])
        w_out, b_out = self.readout.weight, self.readout.bias
        drives = (x @ self.input.weight.T).unbind(0)  # T × (B, n)
        w_a, w = self.attention.hidden.weight, self.attention.score.weight[0]
        ys, states = [], []
        for drive in drives:
            if truncation is not None and int(state.steps) and int(state.steps) % truncation == 0:
                state = cut(state)
            state = sab_step(drive, state, self.recurrent.weight, w_a, w, self.params, self.sab)
            ys.append(state.h_hat @ w_out.T + b_out)  # (B, K)
            states.append(state.h_hat)
        check_membranes(states, "ĥ")
        return torch.stack(ys), SABCarry(*state, ys[-1])  # (T, B, K)

    def extra_repr(self) -> str:
        return f"cell=rate, params={self.params}, attention={self.sab}"


# ---------------------------------------------------------------------------------------------------- specs

SPECS = {"sab:N[:k_top=K,k_att=A]": "rate network of N units with a sparse attentive memory (Ke et al. 2018), e.g. "
                                    "sab:32 or sab:32:k_top=5,k_att=5"}  # fmt: skip


def from_spec(spec: str, in_shape: Sequence[int], n_classes: int) -> SABNet:
    """The network of ``spec`` (``sab:N`` or ``sab:N:k_top=K,k_att=A``; lower case, stripped) for inputs of
    ``in_shape`` (T, C) and ``n_classes`` readout units. One-line :class:`BioPropError` with an example otherwise."""
    kind, _, rest = spec.partition(":")
    body, _, options = rest.partition(":")
    if kind != "sab" or not body.isdigit() or int(body) < 1:
        raise BioPropError(f"bad arch {spec!r}: the unit count must be a positive integer, e.g. sab:32")
    if len(in_shape) != 2:
        raise BioPropError(f"arch {spec!r} takes sequences of shape (T, C); the inputs are "
                           f"{'x'.join(str(s) for s in in_shape)}")  # fmt: skip
    given: dict[str, int] = {}
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if key not in SABParameters._fields or not eq:
            raise BioPropError(f"bad arch {spec!r}: unknown option {item!r}; known: k_top=K, k_att=A")
        if not value.isdigit():
            raise BioPropError(f"bad arch {spec!r}: {key}={value!r} must be a whole number, at least 1")
        given[key] = int(value)
    return SABNet(int(in_shape[-1]), int(body), n_classes, attention=SABParameters(**given).check())


__all__ = [
    "EPS",
    "SABCarry",
    "SABNet",
    "SABParameters",
    "SABState",
    "SPECS",
    "attend",
    "attention_scores",
    "cut",
    "from_spec",
    "sab_step",
    "sparse_weights",
]
