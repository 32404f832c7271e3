"""RFLO: random feedback local online learning for rate RNNs (Murray 2019, eLife 8:e43299).

For the rate network of :mod:`bioprop.nets.recurrent` (Murray 2019, "Network model"; φ = tanh, τ in steps), with the
paper's indices (step t reads the input x^t; h^0 = 0)::

    u^t = W^rec h^{t−1} + W^in x^t
    h^t = h^{t−1} + (−h^{t−1} + φ(u^t)) / τ
    y^t = W^out h^t + b

the exact gradient (RTRL, :mod:`bioprop.rules.rtrl`) carries ∂h_j^t/∂W^rec_ab = (1 − 1/τ) ∂h_j^{t−1}/∂W^rec_ab +
(1/τ) φ'(u_j^t) [δ_ja h_b^{t−1} + Σ_k W^rec_jk ∂h_k^{t−1}/∂W^rec_ab]. RFLO (Murray 2019, Results) makes two
approximations: it drops the nonlocal sum over k, which leaves a trace local to the synapse jk, and it sends the
output error back through a fixed random matrix B instead of W^outᵀ:

.. math::
    p_{jk}^t = (1 − 1/τ) \\, p_{jk}^{t−1} + (1/τ) \\, φ'(u_j^t) \\, h_k^{t−1}        \\qquad (recurrent)

    q_{jk}^t = (1 − 1/τ) \\, q_{jk}^{t−1} + (1/τ) \\, φ'(u_j^t) \\, x_k^t            \\qquad (input)

    ΔW^{rec}_{jk} ∝ Σ_t (B ε^t)_j \\, p_{jk}^t, \\quad ΔW^{in}_{jk} ∝ Σ_t (B ε^t)_j \\, q_{jk}^t, \\quad
    ΔW^{out} ∝ Σ_t ε^t h^{tᵀ}, \\quad Δb ∝ Σ_t ε^t

The presynaptic factor of p is the activity h^{t−1} that entered u^t; that of q is the input x^t that entered u^t
(the paper's published example notebook multiplies q by x^{t−1}, one step off u^t and off its own RTRL). Here
ε^t = ∂E/∂y^t is the output error of the run's sequence loss (:mod:`bioprop.losses`: ``loss.error`` weighted by the
step's share of the batch mean), so the update is a descent direction on the contract's scale and the readout's
gradients are exact; the paper's ε = y* − y is its negative for ``se`` up to the 1/T. B (n, K) ~ N(0, 1/K) is drawn
once from the rule's own generator seeded by ``seed`` (``feedback=symmetric``: B = W^outᵀ).

RFLO equals the exact gradient where the dropped sum vanishes: with B = W^outᵀ and W^rec = 0 (every T), or for a
single step (T = 1; W^rec's gradient also for T = 2, since h^0 = 0). Online: the traces p (B, n, n) and q (B, n, C)
are carried step by step, memory independent of the sequence length T. The reference gradient is BPTT.

Shapes: x (T, B, C) time-major; y (T, B) labels with −1 where a step has no target, or (T, B, K) float targets;
W^in (n, C), W^rec (n, n), W^out (K, n).
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
from bioprop.rules.base import Diagnostic, Entry, Options, Rule, Update, make_card, option, register
from bioprop.rules.options import output_loss, seed_option

CARD = make_card(
    linear=(
        False,
        "the learning signal B ε is a linear projection of the output error: no backward pass in time, but linear "
        "feedback (as in dfa)",
    ),
    derivatives=(False, "the traces use the unit's own derivative φ'(u_j), locally"),
    weight_transport=(True, "B is a fixed random matrix, not W_outᵀ (feedback=symmetric: it is)"),
    spikes=(False, "real-valued rate units"),
    clock=(True, "online: traces and learning signal at every step, no backward phase in time"),
    targets=(False, "needs a supervised target at the readout"),
)


class Traces(NamedTuple):
    """RFLO's eligibility traces, per example: ``p`` (B, n, n) for W^rec, ``q`` (B, n, C) for W^in."""

    p: Tensor
    q: Tensor


def rflo_traces(traces: Traces, u: Tensor, h_prev: Tensor, x_t: Tensor, tau: float) -> Traces:
    """One step of the traces (module docstring): p^t = (1 − 1/τ) p^{t−1} + (1/τ) φ'(u^t) ⊗ h^{t−1} and
    q^t = (1 − 1/τ) q^{t−1} + (1/τ) φ'(u^t) ⊗ x^t, φ = tanh. u^t (B, n), h^{t−1} (B, n), x^t (B, C). In place (a
    new (B, n, n) tensor every step costs ~15× the update itself): returns ``traces``, updated."""
    slope = (1.0 - torch.tanh(u).square()).unsqueeze(2) / tau  # φ'(u_j^t)/τ (B, n, 1)
    decay = 1.0 - 1.0 / tau
    traces.p.mul_(decay).addcmul_(slope, h_prev.unsqueeze(1))  # (B, n, n)
    traces.q.mul_(decay).addcmul_(slope, x_t.unsqueeze(1))  # (B, n, C)
    return traces


def rflo(net: Any, x: Tensor, y: Tensor, loss: losses.Loss, feedback: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """RFLO's update for the batch (x (T, B, C), targets y) on a rate network: descent directions keyed like
    ``net.named_parameters()`` and the readout (T, B, K). ``feedback`` B (n, K)."""
    w_in, w_rec = net.input.weight.detach(), net.recurrent_weight().detach()
    w_out, b_out = net.readout.weight.detach(), net.readout.bias.detach()
    tau, batch, n = net.params.tau, x.shape[1], net.n_hidden
    weights = losses.step_weights(y, x) * batch  # (T, B, 1): the per-step loss's share of the batch mean
    labels = y if y.is_floating_point() else y.clamp_min(0)
    traces = Traces(x.new_zeros(batch, n, n), x.new_zeros(batch, n, x.shape[2]))
    h = x.new_zeros(batch, n)
    grads = {"input.weight": torch.zeros_like(w_in), "recurrent.weight": torch.zeros_like(w_rec),
             "readout.weight": torch.zeros_like(w_out), "readout.bias": torch.zeros_like(b_out)}  # fmt: skip
    outputs = []
    for t in range(x.shape[0]):  # W^in x^t step by step: nothing of size T is kept but the readout
        u = torch.addmm(x[t] @ w_in.t(), h, w_rec.t())  # u^t (B, n)
        traces = rflo_traces(traces, u, h, x[t], tau)
        h = rnn.rate_step(u, rnn.RateState(h), net.params).h  # h^t
        out = h @ w_out.t() + b_out  # y^t (B, K)
        outputs.append(out)
        error = loss.error(out, labels[t])[1] * weights[t]  # ε^t = ∂E/∂y^t (B, K)
        signal = error @ feedback.t()  # (B ε^t)_j (B, n)
        grads["recurrent.weight"] += torch.einsum("bj,bjk->jk", signal, traces.p)
        grads["input.weight"] += torch.einsum("bj,bjk->jk", signal, traces.q)
        grads["readout.weight"] += error.t() @ h
        grads["readout.bias"] += error.sum(0)
    return grads, torch.stack(outputs)


def random_feedback(n: int, k: int, seed: int) -> Tensor:
    """B (n, K) ~ N(0, 1/K), float64 on the CPU, from a generator seeded by ``seed`` alone (never the global one)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=generator, dtype=torch.float64) / math.sqrt(k)


FEEDBACKS = ("random", "symmetric")


@dataclass(frozen=True)
class RfloOptions(Options):
    output: str = output_loss()
    feedback: str = option("random", "feedback B of the output error: random (fixed, drawn from seed) or "
                           "symmetric (W_outᵀ)", choices=FEEDBACKS)  # fmt: skip
    seed: int = seed_option("seed of the random feedback matrix")


@register("rflo", family="temporal", paper="Murray 2019", summary="random feedback local online (rate RNN)",
          card=CARD)  # fmt: skip
class Rflo(Rule):
    """RFLO on a rate :class:`~bioprop.nets.recurrent.RecurrentNet` (module docstring). Raises :class:`BioPropError`
    at creation for a spiking network. ``diagnostics()``: the angle between W^out and Bᵀ (random feedback)."""

    Options = RfloOptions
    networks = frozenset({"recurrent"})
    arch = "rnn:50"  # Murray 2019's networks have 30-50 rate units
    diagnostic_specs = (Diagnostic(r"readout_b_angle_deg", "∠(W_out, Bᵀ)"),)
    opts: RfloOptions

    def __init__(self, net: Any, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        if not isinstance(net, rnn.RecurrentNet) or net.cell != "rate":
            raise BioPropError(f"rule {self.name} trains rate networks (--arch rnn:N), not this network's "
                               f"{getattr(net, 'cell', type(net).__name__)} cell; for a spiking network (lif:N, "
                               "alif:N, lsnn:N+M) use eprop, rtrl, bptt or tbptt")  # fmt: skip
        random = self.opts.feedback == "random"
        #: B (n, K), float64 on the CPU (cast where used); None for feedback=symmetric.
        self.feedback = random_feedback(net.n_hidden, net.n_out, self.opts.seed) if random else None

    def feedback_matrix(self) -> Tensor:
        """B (n, K) in the network's dtype and on its device."""
        w_out = self.net.readout.weight.detach()
        return w_out.t() if self.feedback is None else self.feedback.to(w_out)

    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        with torch.no_grad():
            grads, outputs = rflo(self.net, x, y, self.loss, self.feedback_matrix())
            return Update(grads, self.loss.value(outputs, y), outputs)

    def diagnostics(self) -> dict[str, float]:
        """``readout_b_angle_deg``: the angle (degrees) between W^out and Bᵀ (Murray 2019, Fig. 2: the readout
        aligns with the feedback); none for feedback=symmetric."""
        if self.feedback is None:
            return {}
        w_out = self.net.readout.weight.detach().double().cpu().flatten()
        cosine = torch.nn.functional.cosine_similarity(w_out, self.feedback.t().flatten(), dim=0)
        return {"readout_b_angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, float(cosine)))))}

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        if self.feedback is not None:
            state["feedback"] = self.feedback
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        feedback = state.pop("feedback", None)
        expected = (self.net.n_hidden, self.net.n_out)
        if (feedback is None) != (self.feedback is None) or (feedback is not None and feedback.shape != expected):
            found = "none" if feedback is None else tuple(feedback.shape)
            raise BioPropError(f"rule {self.name}: checkpoint feedback {found} does not fit feedback="
                               f"{self.opts.feedback} on this network (B of shape {expected})")  # fmt: skip
        super().load_state_dict(state)
        if feedback is not None:
            self.feedback = feedback.to(torch.float64).cpu()
