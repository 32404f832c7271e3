"""The variational bound of Bengio et al. 2015 (arXiv:1502.04156, Sec. 3), computed exactly on a small sigmoid
belief net by enumerating its latent states.

For any distribution q(h|x) over the latent units h of a model p(x, h),

.. math::
    \\log p(x) = \\mathbb{E}_{q}[\\log p(x, h)] + H[q(h|x)] + \\mathrm{KL}(q(h|x) \\,\\|\\, p(h|x))
             \\ge \\mathbb{E}_{q}[\\log p(x, h)] + H[q(h|x)],

(Bengio et al. 2015, Sec. 3: the objective J whose gradient STDP would follow), the bound being tight exactly when
q = p(h|x): inference that brings q closer to the posterior raises the bound towards log p(x).

The model (:class:`BeliefNet`): m binary latent units with a factorised Bernoulli prior p(h_j = 1) = σ(b_j) and n
binary visible units with p(x_i = 1 | h) = σ((W h + c)_i). With m ≤ 12 every term is a sum over the 2^m latent
states (:func:`states`), in float64: log p(x) by log-sum-exp, the posterior p(h|x) exactly.

The experiment (``bioprop experiment variational-bound``):

1. **The decomposition** for every visible vector x ∈ {0, 1}^n and random q of two families, a factorised
   Bernoulli q(h) = Π_j μ_j^{h_j}(1 − μ_j)^{1 − h_j} and a general categorical q over all 2^m states (some
   entries exactly 0 or 1, some states of probability 0), plus q = p(h) and q = p(h|x): the largest
   |log p(x) − (E_q[log p(x, h)] + H[q] + KL(q ‖ p(h|x)))| is reported, as is |Σ_x p(x) − 1|.
2. **Inference** for one x drawn from the model, starting from q = p(h) (the prior, which is factorised):

   - factorised q, mean-field coordinate ascent (:func:`mean_field_update`, one unit per step): each step sets
     μ_j to the maximiser of the bound with the other units held, so the bound never falls; it stops at a
     factorised q whose gap KL(q ‖ p(h|x)) > 0 when the posterior is not factorised (explaining away);
   - categorical q, mirror ascent on the bound (:func:`mirror_step`): q ← q^{1−α} p(x, h)^α / Z, whose
     KL(q ‖ p(h|x)) falls at every step (proof at :func:`mirror_step`) to 0: the bound reaches log p(x).

   ``variational-bound.png`` draws the bound per step, log p(x) as a line and KL on a second axis.

Units: nats. Everything is float64 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.nn import functional as F  # noqa: N812

from bioprop import experiments

NAME = "variational-bound"
FIGURE = "variational-bound.png"
MAX_LATENT = 12  # 2^12 states: beyond this, enumeration is not what this experiment is for
KL_FLOOR = 1e-17  # where the log axis of KL stops: a KL of 0 (or −1e-17, rounding) is drawn there


class BeliefNet(NamedTuple):
    """A two-layer sigmoid belief net: ``prior`` b (m,), the logits of p(h_j = 1); ``weight`` W (n, m) and ``bias``
    c (n,), p(x_i = 1 | h) = σ((W h + c)_i). float64."""

    prior: Tensor
    weight: Tensor
    bias: Tensor


class Decomposition(NamedTuple):
    """The terms of log p(x) = E_q[log p(x, h)] + H[q] + KL(q ‖ p(h|x)) (nats), and ``residual``, log p(x) minus
    the sum of the other three. Each has the shape of the batch of x (or is a scalar)."""

    log_evidence: Tensor
    expected_log_joint: Tensor
    entropy: Tensor
    kl: Tensor
    residual: Tensor

    @property
    def bound(self) -> Tensor:
        """E_q[log p(x, h)] + H[q]: the variational lower bound on log p(x)."""
        return self.expected_log_joint + self.entropy


# ------------------------------------------------------------------------------------------------- the model


def states(m: int) -> Tensor:
    """All 2^m binary vectors of length m, (2^m, m) float64, in the order of ``itertools.product((0, 1),
    repeat=m)`` (unit 0 the most significant bit). Raises ValueError for m outside 1 … 12."""
    if not 1 <= m <= MAX_LATENT:
        raise ValueError(f"enumerating 2^m latent states needs 1 <= m <= {MAX_LATENT}, not m = {m}")
    codes = torch.arange(2**m)
    return ((codes[:, None] >> torch.arange(m - 1, -1, -1)) & 1).to(torch.float64)


def log_joint(net: BeliefNet, x: Tensor, h: Tensor) -> Tensor:
    """log p(x, h) = Σ_j [h_j log σ(b_j) + (1 − h_j) log σ(−b_j)] + Σ_i [x_i log σ(a_i) + (1 − x_i) log σ(−a_i)],
    a = W h + c: the sigmoid belief net's joint log-probability (nats).

    ``x`` (..., n) and ``h`` (S, m) binary; returns (..., S): every x against every latent state."""
    prior = h @ F.logsigmoid(net.prior) + (1 - h) @ F.logsigmoid(-net.prior)  # (S,)
    a = h @ net.weight.T + net.bias  # (S, n)
    likelihood = x @ F.logsigmoid(a).T + (1 - x) @ F.logsigmoid(-a).T  # (..., S)
    return likelihood + prior


def factorised(mu: Tensor, h: Tensor) -> Tensor:
    """q(h) = Π_j μ_j^{h_j} (1 − μ_j)^{1 − h_j}, a factorised Bernoulli distribution as probabilities of the
    states ``h`` (S, m); ``mu`` (..., m) in [0, 1] (0 and 1 included); returns (..., S)."""
    return torch.where(h.bool(), mu[..., None, :], 1 - mu[..., None, :]).prod(-1)


# ------------------------------------------------------------------------------------------- the decomposition


def decompose(q: Tensor, log_joints: Tensor) -> Decomposition:
    """The terms of log p(x) = E_q[log p(x, h)] + H[q(h|x)] + KL(q(h|x) ‖ p(h|x)) (Bengio et al. 2015, Sec. 3)
    from ``q`` (..., S), probabilities of the 2^m states summing to 1 (zeros allowed: 0 log 0 = 0), and
    ``log_joints`` (..., S), log p(x, h) of the same states (:func:`log_joint`).

    log p(x) = log Σ_h p(x, h); log p(h|x) = log p(x, h) − log p(x); H[q] = −Σ_h q log q;
    KL(q ‖ p) = Σ_h q (log q − log p(h|x)). Each term is computed on its own, so ``residual`` measures the
    identity, not a rearrangement of it."""
    log_evidence = torch.logsumexp(log_joints, -1)
    log_posterior = log_joints - log_evidence[..., None]
    q_log_q = torch.special.xlogy(q, q)
    expected = (q * log_joints).sum(-1)
    entropy = -q_log_q.sum(-1)
    kl = (q_log_q - q * log_posterior).sum(-1)
    return Decomposition(log_evidence, expected, entropy, kl, log_evidence - (expected + entropy + kl))


# ------------------------------------------------------------------------------------------------- inference


def mean_field_update(mu: Tensor, j: int, log_joints: Tensor) -> Tensor:
    """One mean-field coordinate step on the factorised q (Bishop 2006, PRML Eq. 10.9: log q_j* = E_{q_{−j}}[log
    p(x, h)] + const): μ_j ← σ(E_{q_{−j}}[log p(x, h_j = 1, h_{−j}) − log p(x, h_j = 0, h_{−j})]), the expectation
    exact over the 2^{m−1} states of the other units. The bound, as a function of μ_j with the rest held, is
    μ_j η_j + H_b(μ_j) + const (η_j the expectation above, H_b the binary entropy), maximised at σ(η_j): the bound
    never falls.

    ``mu`` (m,), ``log_joints`` (2^m,) in the order of :func:`states`; returns a new ``mu``."""
    m = mu.shape[0]
    table = log_joints.reshape((2,) * m)
    delta = (table.select(j, 1) - table.select(j, 0)).reshape(-1)  # (2^{m−1},) over the other units' states
    others = torch.cat([mu[:j], mu[j + 1 :]])
    weights = factorised(others, states(m - 1)) if m > 1 else torch.ones(1, dtype=mu.dtype)
    new = mu.clone()
    new[j] = torch.sigmoid((weights * delta).sum())
    return new


def mirror_step(q: Tensor, log_joints: Tensor, rate: float) -> Tensor:
    """One step of mirror ascent (exponentiated gradient) on the bound over the categorical q, step ``rate`` α in
    (0, 1]: log q ← (1 − α) log q + α log p(x, h) − log Z, i.e. q ∝ q^{1−α} p(h|x)^α.

    Why KL(q ‖ p(h|x)) falls at every step: write r = log q − log p(h|x) and q_s ∝ p(h|x) e^{s r}, so q_1 = q and
    the step gives q_{1−α}. Then KL(q_s ‖ p) = s E_s[r] − log E_p[e^{s r}] and d KL / ds = s Var_s[r] ≥ 0: KL
    falls as s falls, to 0 at s = 0 (q = p(h|x)), and after t steps s = (1 − α)^t.

    ``q`` (S,) with every entry > 0 (a state of probability 0 stays at 0); returns the new ``q``."""
    return torch.softmax((1 - rate) * torch.log(q) + rate * log_joints, -1)


def random_factorised(m: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` random means μ (count, m) in [0, 1]: uniform, with about a tenth of the entries set to exactly
    0 or 1 (the edges, where q has states of probability 0)."""
    mu = torch.rand(count, m, generator=generator, dtype=torch.float64)
    edge = torch.rand(count, m, generator=generator, dtype=torch.float64) < 0.1
    return torch.where(edge, (mu > 0.5).to(mu.dtype), mu)


def random_categorical(size: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` random distributions (count, size) over ``size`` states: softmax of N(0, 3²) logits, peaked, with
    about a tenth of the states set to probability 0 (each keeps at least one state)."""
    logits = 3 * torch.randn(count, size, generator=generator, dtype=torch.float64)
    zero = torch.rand(count, size, generator=generator, dtype=torch.float64) < 0.1
    zero[torch.arange(count), logits.argmax(-1)] = False
    return torch.softmax(logits.masked_fill(zero, -torch.inf), -1)


# ------------------------------------------------------------------------------------------------ experiment


@dataclass(frozen=True)
class Setting:
    """The sizes of one version of the experiment: ``latent`` m, ``visible`` n, random ``draws`` of q per family
    and x, ``sweeps`` of mean-field over the m units, ``mirror_steps`` of rate ``rate``, and the standard deviation
    ``scale`` of the weights (large: a posterior far from factorised, with explaining away)."""

    latent: int
    visible: int
    draws: int
    sweeps: int
    mirror_steps: int
    rate: float = 0.5
    scale: float = 2.0


FULL = Setting(latent=8, visible=10, draws=8, sweeps=4, mirror_steps=30)
QUICK = Setting(latent=5, visible=6, draws=4, sweeps=3, mirror_steps=25)


def make_net(setting: Setting, generator: torch.Generator) -> BeliefNet:
    """A random belief net: b ~ N(0, 1), W ~ N(0, scale²), c ~ N(0, 1)."""
    m, n = setting.latent, setting.visible
    return BeliefNet(
        prior=torch.randn(m, generator=generator, dtype=torch.float64),
        weight=setting.scale * torch.randn(n, m, generator=generator, dtype=torch.float64),
        bias=torch.randn(n, generator=generator, dtype=torch.float64),
    )


def sample_x(net: BeliefNet, generator: torch.Generator) -> Tensor:
    """One visible vector (n,) drawn from the model: h ~ p(h), then x ~ p(x|h)."""
    h = (torch.rand(net.prior.shape, generator=generator, dtype=torch.float64) < torch.sigmoid(net.prior)).double()
    a = net.weight @ h + net.bias
    return (torch.rand(a.shape, generator=generator, dtype=torch.float64) < torch.sigmoid(a)).double()


def check_decomposition(net: BeliefNet, setting: Setting, generator: torch.Generator) -> dict[str, Any]:
    """Part 1 (module docstring): the decomposition for every x ∈ {0, 1}^n against random q of both families
    (``draws`` per x), the prior p(h) and the posterior p(h|x). Per kind of q: the number of (x, q) pairs, the
    largest |residual|, the smallest and the largest KL."""
    h, xs = states(setting.latent), states(setting.visible)
    log_joints = log_joint(net, xs, h)  # (2^n, 2^m)
    pairs = setting.draws * len(xs)
    kinds = {
        "factorised": (factorised(random_factorised(setting.latent, pairs, generator), h), setting.draws),
        "categorical": (random_categorical(len(h), pairs, generator), setting.draws),
        "prior": (factorised(torch.sigmoid(net.prior), h).expand_as(log_joints), 1),
        "posterior": (torch.softmax(log_joints, -1), 1),
    }
    found: dict[str, Any] = {"x_vectors": len(xs)}
    for kind, (q, draws) in kinds.items():
        terms = decompose(q, log_joints.repeat_interleave(draws, 0))
        found[kind] = {
            "pairs": len(q),
            "max_abs_residual": terms.residual.abs().max().item(),
            "min_kl": terms.kl.min().item(),
            "max_kl": terms.kl.max().item(),
        }
    found["max_abs_residual"] = max(found[kind]["max_abs_residual"] for kind in kinds)
    found["total_probability_error"] = abs(torch.logsumexp(torch.logsumexp(log_joints, -1), 0).exp().item() - 1)
    return found


def trajectory(qs: list[Tensor], log_joints: Tensor) -> dict[str, Any]:
    """Bound, KL and residual of each q along an inference trajectory, the smallest step of the bound (negative
    if it ever fell), the final gap log p(x) − bound and the first step at which that gap is ≤ 1e-6 (None if
    none is)."""
    terms = decompose(torch.stack(qs), log_joints)
    bound, gaps = terms.bound.tolist(), (terms.log_evidence - terms.bound).tolist()
    return {
        "bound": bound,
        "kl": terms.kl.tolist(),
        "max_abs_residual": terms.residual.abs().max().item(),
        "min_increase": min(b - a for a, b in zip(bound, bound[1:], strict=False)),
        "final_gap": gaps[-1],
        "first_step_within_1e-6": next((step for step, gap in enumerate(gaps) if gap <= 1e-6), None),
    }


def infer(net: BeliefNet, x: Tensor, setting: Setting) -> dict[str, Any]:
    """Part 2 (module docstring): mean-field and mirror ascent from q = p(h) for the one ``x``."""
    h = states(setting.latent)
    log_joints = log_joint(net, x, h)
    mu = torch.sigmoid(net.prior)
    means, units = [mu], []
    for _ in range(setting.sweeps):
        for j in range(setting.latent):
            mu = mean_field_update(mu, j, log_joints)
            means.append(mu)
            units.append(j)
    mean_field = trajectory([factorised(m, h) for m in means], log_joints)
    mean_field.update(unit=units, final_mu=mu.tolist())
    q = factorised(torch.sigmoid(net.prior), h)
    qs = [q]
    for _ in range(setting.mirror_steps):
        q = mirror_step(q, log_joints, setting.rate)
        qs.append(q)
    mirror = trajectory(qs, log_joints)
    mirror["rate"] = setting.rate
    return {"log_px": torch.logsumexp(log_joints, -1).item(), "mean_field": mean_field, "mirror": mirror}


def figure(inference: dict[str, Any], setting: Setting) -> Figure:
    """Bound per step with log p(x) as a line (left axis) and KL(q ‖ p(h|x)) on a second, logarithmic axis."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    panels = (
        ("mean_field", f"factorised q: mean-field, one unit per step ({setting.sweeps} sweeps)"),
        ("mirror", f"categorical q: mirror ascent, α = {setting.rate}"),
    )
    for ax, (key, title) in zip(fig.subplots(1, 2), panels, strict=True):
        run = inference[key]
        steps = range(len(run["bound"]))
        ax.plot(steps, run["bound"], color="C0", marker="o", markersize=2.5, label="bound E_q[log p(x,h)] + H[q]")
        ax.axhline(inference["log_px"], color="k", linestyle="--", linewidth=1, label="log p(x)")
        ax.set(xlabel="inference step", ylabel="nats", title=title)
        ax.text(0.97, 0.68, f"final gap log p(x) − bound: {run['final_gap']:.2g} nats", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small")  # fmt: skip
        ax.grid(alpha=0.3)
        kl_ax = ax.twinx()
        kl_ax.plot(steps, [max(v, KL_FLOOR) for v in run["kl"]], color="C3", linewidth=1, label="KL(q ‖ p(h|x))")
        kl_ax.set_yscale("log")
        kl_ax.set_ylabel("KL(q ‖ p(h|x)) (nats, log scale)", color="C3")
        kl_ax.tick_params(axis="y", colors="C3")
        lines = ax.get_legend_handles_labels()
        more = kl_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="center right")
    fig.suptitle(f"variational bound of a sigmoid belief net, {setting.latent} latent × {setting.visible} visible "
                 "units, exact by enumeration")  # fmt: skip
    return fig


@experiments.register(
    NAME,
    "log p(x) = E_q[log p(x,h)] + H[q] + KL(q‖p(h|x)) exactly on a sigmoid belief net; inference raises the bound",
    "Bengio et al. 2015, Sec. 3 (variational bound)",
    figures=(FIGURE,),
)
def run(out: Path, seed: int, quick: bool) -> dict[str, Any]:
    """The experiment (module docstring): returns its numbers and writes ``variational-bound.png`` into ``out``."""
    from bioprop.report import plots

    setting = QUICK if quick else FULL
    generator = torch.Generator().manual_seed(seed)
    net = make_net(setting, generator)
    decomposition = check_decomposition(net, setting, generator)
    x = sample_x(net, generator)
    inference = infer(net, x, setting)
    plots.save(figure(inference, setting), experiments.figure_path(out, NAME, FIGURE))
    return {
        "model": {"latent": setting.latent, "visible": setting.visible, "weight_scale": setting.scale},
        "decomposition": decomposition,
        "x": x.int().tolist(),
        **inference,
    }
