"""Learned lateral inhibition within a hidden layer (Földiák 1990, "Forming sparse representations by local
anti-Hebbian learning", Biol. Cybern. 64:165-170), for the feedforward rate networks and (last section)
the spiking recurrent networks.

A :class:`LateralInhibition` module stands where a hidden layer's activation stands, after its Linear layer: it
takes the pre-activation a (B, n) and returns, instead of h = φ(a), the settled response of n units that inhibit
each other through learned weights M (n × n),

.. math::
    y = φ(a − W y), \\qquad W = \\operatorname{relu}(M) \\text{ with } W_{ii} = 0

(Földiák's network, Sec. 2: y*_i = f(Σ_j q_ij x_j + Σ_j w_ij y*_j − t_i), with his feedback weights w = −W ≤ 0 and
a = Σ_j q_ij x_j − t_i the feedforward drive). The clip to W ≥ 0 and the zero diagonal are applied here, in the
forward pass, not by changing the parameter. M starts at 0, so an untrained lateral layer computes exactly the
plain MLP's h = φ(a) (:func:`settle` returns φ(a) bit for bit when W = 0).

**Settling** (:func:`settle`): ``steps`` damped fixed-point iterations from y₀ = φ(a),
y_{k+1} = y_k + τ (φ(a − W y_k) − y_k): Euler steps of Földiák's dynamics dy/dt = φ(a − W y) − y. With φ
L-Lipschitz (L = 1 for relu and tanh, ¼ for the sigmoid) the map is a contraction, so the iteration converges for any
τ ∈ (0, 1], when L ‖W‖₂ < 1. Stronger inhibition needs a smaller τ and more steps: ``damping`` fixes τ; by default
(``damping=auto``) every forward pass takes τ = 2 / (2 + r), r an upper bound of W's spectral radius
(:func:`step_size`), under which the linearised iteration contracts for symmetric W (the anti-Hebbian rule keeps W
symmetric) as long as W's smallest eigenvalue is above −1; below that, strong mutual inhibition makes the layer
winner-take-all, with several stable responses, and no step size helps. After the last step the forward pass
measures the residual max |y − φ(a − W y)| of the y it returns; above ``tol`` · max(1, max |y|) it raises a one-line
:class:`~bioprop.errors.DivergenceError` naming the layer (raise ``steps`` or lower ``damping``), never a y that
has not settled. Autograd differentiates through the ``steps`` unrolled iterations (not the implicit function
theorem): what ``bp`` trains the forward weights with.

**Learning M** (:func:`anti_hebbian`): Földiák's anti-Hebbian rule for the lateral weights, Δw_ij = −α (y_i y_j − p²)
for i ≠ j (Sec. 2, his learning rule for the feedback connections; the equation number is not checked here), in our
sign (M = −w, inhibition ≥ 0): ΔM_ij = α (⟨y_i y_j⟩ − p²), ⟨·⟩ the batch mean of the settled responses. Földiák's
threshold rule Δt_i = γ (y_i − p) brings every unit's mean to p, where p² = ȳ_i ȳ_j and the rule is
ΔM_ij = α Cov(y_i, y_j); here the thresholds (biases) are trained by the task instead, so the default ``p=None``
uses that covariance form directly, ΔM_ij = α (⟨y_i y_j⟩ − ȳ_i ȳ_j) (the anti-Hebbian decorrelation of Barlow &
Földiák 1989 on centred activities): M grows between units that are positively correlated. A number ``p`` uses
Földiák's form with his p² as written. Then a decay, the bounded form of the similarity-matching networks
(Pehlevan, Hu & Chklovskii 2015, Neural Comput. 27:1461, lateral update ΔM = η (y yᵀ − M)):

.. math::
    ΔM_{ij} = α \\left(⟨y_i y_j⟩ − p^2 − λ W_{ij}\\right), \\quad i ≠ j \\qquad (λ = ``decay``, default 1)

Measured (bp on digits, mlp:256, SGD lr 0.01, momentum 0.9, rate 0.1, one seed): with λ = 0 the inhibition grows
without bound while bp keeps the units correlated (‖W‖₂ 0.26 after one epoch, 4.5 after 13, W's smallest eigenvalue
falling towards −1), and in the 14th epoch 50 steps no longer settle; with λ = 1 ‖W‖₂ reaches 2.5 by epoch 27 and
grows by about 0.02 per epoch after. λ = 0 is
Földiák's rule as he wrote it.

M is an ``nn.Parameter`` of the network (optimizers, checkpoints and safetensors handle it), and the forward pass
reads it detached: the loss gives it no gradient. Its update reaches ``.grad`` like every other parameter's, as a
descent direction: :meth:`LateralInhibition.local_grads` returns −``rate`` · (⟨y_i y_j⟩ − p² − λ W_ij) (batch
means), so plain SGD with learning rate lr does the step above with α = ``rate`` · lr (momentum, Adam and weight
decay transform it as they transform any gradient). Where W_ij is already clipped to 0 (M_ij ≤ 0) and the rule
would push M_ij lower, the entry is 0: the clip of Földiák's w ≤ 0, written as a projected step, so M never drifts
below 0 by more than one step. The rules pick these updates up through the generic hook
:func:`bioprop.rules.base.local_grads` (any module with a ``local_grads(inputs, output)`` method), so no rule knows
this module by name. ``bp`` trains the forward weights by autograd through the settled y and M by this rule; the
layer-wise rules (fa, dfa, pc, dtp, …) refuse the layer at create, naming it (:func:`bioprop.nets.walk`).

``mlp:H1xH2...:lateral`` builds an MLP with a lateral layer on every hidden layer (:func:`from_suffix`); settings
follow as ``mlp:256:lateral:steps=100,damping=0.2,tol=1e-4,rate=0.05,p=0.3,decay=0`` (defaults: steps=50,
damping=auto, tol=1e-4, rate=0.1, p unset: the covariance form, decay=1). :func:`mean_abs_correlation` measures
what the rule is for: the mean absolute pairwise correlation of a layer's units over a batch.

**Spiking networks** (``lif:N:lateral``, ``alif:N:lateral``, ``lsnn:N+M:lateral``; :class:`SpikingLateral`, held
as ``net.lateral`` by :class:`bioprop.nets.recurrent.RecurrentNet`). A spiking neuron does not settle; the
inhibition is one more recurrent input, from the previous step's spikes: the input current of neuron j at step t
gets −Σ_i W_ji z_i^{t−1}, W = relu(M) with a zero diagonal (:func:`inhibition`), M held fixed for the loss
(detached). The network folds it into the matrix every recurrent rule reads
(:meth:`~bioprop.nets.recurrent.RecurrentNet.recurrent_weight`): W_rec (diagonal 0) − W. So the dynamics, and every
recurrent rule's update of ``recurrent.weight`` (bptt, tbptt, eprop, rtrl), are those of a plain network whose
recurrent matrix is that effective one, without any rule knowing: off the diagonal, ∂/∂W_rec = ∂/∂(W_rec − W).
M = 0 gives the plain network's output bit for bit (x − 0 = x).

M learns from **spike counts** n_i = Σ_t z_i^t, one per example and neuron over the whole unrolled sequence, with
the same covariance rule, decay and projected clip as the rate layer (:func:`anti_hebbian_step`):

.. math::
    ΔM_{ij} = α \\left(⟨n_i n_j⟩ − p^2 − λ W_{ij}\\right), \\quad i ≠ j \\qquad (p unset: p^2 → n̄_i n̄_j)

⟨·⟩ the mean over the batch's examples. Counts, not the 0/1 trains at each millisecond: the decorrelation that
matters for a population code is of what the units say about an example, and the correlation of spiking neurons is
measured as the correlation of their spike counts over trials, r_SC (Cohen & Kohn 2011, Nat. Neurosci. 14:811);
Földiák's rule on counts per stimulus is the lateral rule of the spiking network SAILnet (Zylberberg, Murphy &
DeWeese 2011, PLoS Comput. Biol. 7:e1002250, ΔW_mn = α (n_m n_n − p²); equation number not checked here), whose p is
a target count per example. The zero-lag covariance of the 1 ms trains measures synchrony instead, and is at most
f(1 − f) ≈ 0.01 for two units firing with probability f = 0.01 per step (10 Hz). Units: M and W are in the recurrent
weights' units (a spike of i moves v_j by −(1 − α) W_ji); the covariance is in spikes², so the W the rule settles at
for a given activity, Cov(n_i, n_j) / λ, grows with the counts, i.e. with the trial's length: a long trial needs a
larger ``decay`` for the same inhibition (``rate`` sets the speed only).

The module's forward is the identity on the network's spike trains z (T, B, n), called once per
:meth:`~bioprop.nets.recurrent.RecurrentNet.unroll` or :meth:`~bioprop.nets.recurrent.RecurrentNet.run`: it is where
the rules' hook (:func:`bioprop.rules.base.local_grads`) sees them. That hook runs one extra forward pass of the
whole sequence without autograd (restoring the random state and buffers): the cost of the option, one forward pass
per training step. Measured on one busy CPU core, lsnn:50+50 on cue accumulation (T = 2250, B = 64): an e-prop step
1.3 → 1.9 s and, in a second run, 2.0 → 3.3 s; a bptt step 1.9 → 2.9 s (the hook's pass 0.7-1.7 s); on the 40-step
digit sequences of the ``lateral-decorrelation-spiking`` experiment an e-prop epoch 0.87 → 1.15-1.32 s. Settings:
``lsnn:50+50:lateral:rate=0.05,p=2,decay=0.5`` (defaults rate=0.1, p unset, decay=1); ``steps``, ``damping`` and
``tol`` (the rate layer's settling) are refused: spikes do not settle.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from bioprop.errors import BioPropError, DivergenceError

SPECS = {
    "mlp:H1x...:lateral[:steps=S,damping=D,tol=T,rate=R,p=P,decay=L]": "multilayer perceptron whose hidden layers "
    "settle under learned lateral inhibition (Földiák 1990 anti-Hebbian), e.g. mlp:256:lateral or "
    "mlp:256:lateral:steps=100"
}
SPIKING_SPECS = {
    "lif:N:lateral, alif:N:lateral, lsnn:N+M:lateral[:rate=R,p=P,decay=L]": "spiking network whose neurons inhibit "
    "each other through learned weights (anti-Hebbian on spike counts, Földiák 1990), e.g. lsnn:50+50:lateral"
}


class LateralParameters(NamedTuple):
    """How a lateral layer settles and learns: ``steps`` damped iterations (≥ 1) with step ``damping`` τ ∈ (0, 1],
    the residual ``tol`` (> 0, relative to max(1, max |y|)) above which the forward pass refuses its answer, the
    anti-Hebbian ``rate`` (≥ 0, α per unit of the optimizer's learning rate), Földiák's target activity ``p``
    (None: the covariance form) and the ``decay`` λ ≥ 0 of the inhibition (0: Földiák's rule as written); see the
    module docstring."""

    steps: int = 50
    damping: float | None = None
    tol: float = 1e-4
    rate: float = 0.1
    p: float | None = None
    decay: float = 1.0

    def check(self) -> LateralParameters:
        """Self, or a one-line :class:`BioPropError` naming the first bad value."""
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 10_000:
            raise BioPropError(f"lateral: steps={self.steps!r} must be a whole number from 1 to 10000")
        checks = (
            ("damping", self.damping, lambda v: 0 < v <= 1, "must be in (0, 1] (or auto)"),
            ("tol", self.tol, lambda v: v > 0, "must be positive"),
            ("rate", self.rate, lambda v: v >= 0, "must be non-negative"),
            ("p", self.p, lambda v: v >= 0, "must be non-negative"),
            ("decay", self.decay, lambda v: v >= 0, "must be non-negative"),
        )
        for key, value, good, says in checks:
            if value is None and key in ("damping", "p"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BioPropError(f"lateral: {key}={value!r} must be a finite number")
            if not good(value):
                raise BioPropError(f"lateral: {key}={value!r} {says}")
        return self


# ------------------------------------------------------------------------------------------ the equations


def inhibition(M: Tensor) -> Tensor:
    """The lateral weights in effect, W = relu(M) with a zero diagonal: M (n, n) → W (n, n), ≥ 0. Out of place,
    so autograd may differentiate through it."""
    eye = torch.eye(M.shape[0], dtype=torch.bool, device=M.device)
    return torch.relu(M).masked_fill(eye, 0.0)


def step_size(W: Tensor, damping: float | None) -> float:
    """The damping τ of :func:`settle`: ``damping`` when given, else τ = 2 / (2 + r) with r ≥ ρ(W) an upper bound
    of the spectral radius of ``W`` (n, n) ≥ 0: r = max_i (W x)_i / x_i for a positive x (Collatz-Wielandt), here
    x = W⁵ 1 normalised, plus 10⁻³, close to the Perron vector. For symmetric W with eigenvalues in [λ_min, ρ] and
    0 ≤ φ' ≤ 1 the damped map's Jacobian (1 − τ) I − τ D W (D = diag φ') has its eigenvalues 1 − τ (1 + μ),
    μ ∈ [λ_min, ρ], inside (−1, 1) whenever λ_min > −1, the condition for the settled state to be stable at all.
    W = 0 gives τ = 1."""
    if damping is not None:
        return float(damping)
    x = torch.ones(W.shape[0], dtype=W.dtype, device=W.device)  # (n,)
    for _ in range(5):
        x = W @ x
        x = x / x.amax().clamp_min(torch.finfo(x.dtype).tiny) + 1e-3  # positive; W = 0 gives x = 10⁻³ 1, r = 0
    return 2.0 / (2.0 + float((W @ x / x).amax()))


def settle(a: Tensor, W: Tensor, phi: nn.Module, steps: int, damping: float) -> Tensor:
    """Földiák's settled response y = φ(a − W y) (Földiák 1990, Sec. 2; module docstring), by ``steps`` damped
    iterations y_{k+1} = y_k + τ (φ(a − W y_k) − y_k) from y₀ = φ(a), τ = ``damping``.

    ``a`` (B, n): the feedforward drive (pre-activation); ``W`` (n, n) ≥ 0, zero diagonal: the inhibition W_ij of
    unit i by unit j (:func:`inhibition`); ``phi``: the elementwise activation (an in-place one is given a copy of
    ``a``). Returns y (B, n), differentiable through the iterations (unrolled). W = 0 gives φ(a) exactly: every
    step adds τ · 0."""
    y = phi(a.clone() if getattr(phi, "inplace", False) else a)  # (B, n)
    for _ in range(steps):
        y = y + damping * (phi(a - y @ W.T) - y)  # (B, n); (y Wᵀ)_bi = Σ_j W_ij y_bj
    return y


def anti_hebbian(y: Tensor, p: float | None = None) -> Tensor:
    """Földiák's anti-Hebbian update of the lateral inhibition per unit rate (Földiák 1990, Sec. 2, his
    Δw_ij = −α (y_i y_j − p²) with M = −w): ΔM_ij = ⟨y_i y_j⟩ − p² for i ≠ j, ΔM_ii = 0, ⟨·⟩ the mean over the
    batch; ``p`` None: the covariance form ΔM_ij = ⟨y_i y_j⟩ − ȳ_i ȳ_j (module docstring).

    ``y`` (B, n): settled responses. Returns ΔM (n, n), symmetric, zero diagonal."""
    batch = y.shape[0]
    product = y.T @ y / batch  # (n, n) ⟨y_i y_j⟩
    mean = y.mean(dim=0)  # (n,)
    target = torch.outer(mean, mean) if p is None else torch.full_like(product, float(p) ** 2)
    eye = torch.eye(y.shape[1], dtype=torch.bool, device=y.device)
    return (product - target).masked_fill(eye, 0.0)


def anti_hebbian_step(y: Tensor, M: Tensor, rate: float, p: float | None, decay: float) -> Tensor:
    """M's update as a descent direction (module docstring): −``rate`` · (:func:`anti_hebbian` (y, p) − ``decay`` ·
    :func:`inhibition` (M)), and 0 where M_ij ≤ 0 and the entry is positive (the projected step of the clip W ≥ 0:
    the rule would push M_ij further below 0). ``y`` (B, n) the activities the rule reads (settled responses, or
    spike counts); ``M`` (n, n), detached. Returns (n, n), zero diagonal."""
    grad = -rate * (anti_hebbian(y, p) - decay * inhibition(M))
    return grad.masked_fill((M <= 0) & (grad > 0), 0.0)


def pairwise_correlations(h: Tensor) -> Tensor:
    """The Pearson correlations r_ij, i < j, of a layer's units over a batch, flat (k(k − 1)/2,), float64: ``h``
    (B, n) activities (B ≥ 2). Units constant over the batch (e.g. relu units that never fire) have no correlation
    and are left out (k of the n vary; exact comparison, no threshold on a rounded variance)."""
    h = h.detach().double().flatten(1)  # (B, n)
    h = h[:, h.amax(dim=0) > h.amin(dim=0)]  # (B, k)
    centred = h - h.mean(dim=0)
    z = centred / centred.pow(2).mean(dim=0).sqrt()  # (B, k) standardised
    r = z.T @ z / h.shape[0]  # (k, k)
    upper = torch.triu_indices(r.shape[0], r.shape[0], offset=1, device=r.device)
    return r[upper[0], upper[1]]


def mean_abs_correlation(h: Tensor) -> float:
    """The mean absolute pairwise correlation of a layer's units over a batch, mean |r_ij| over i < j
    (:func:`pairwise_correlations` of ``h`` (B, n)); NaN if fewer than two units vary."""
    r = pairwise_correlations(h)
    return float(r.abs().mean()) if r.numel() else math.nan


# --------------------------------------------------------------------------------------------- the module


class LateralInhibition(nn.Module):
    """A hidden layer's activation with learned lateral inhibition (module docstring): a (B, n) → y (B, n),
    y = φ(a − relu(M) y) with a zero diagonal, M (n, n) a parameter starting at 0.

    ``n``: the layer's units; ``act``: φ, an elementwise activation module (default relu); ``params``: a
    :class:`LateralParameters` (steps, damping, tol, rate, p); ``name``: how errors name the layer (its path in the
    network, set by :func:`from_suffix`). A bad ``n`` or setting is a one-line :class:`BioPropError`; a forward pass
    that does not settle, a :class:`~bioprop.errors.DivergenceError` naming the layer."""

    def __init__(
        self, n: int, act: nn.Module | None = None, params: LateralParameters = LateralParameters(), name: str = ""
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BioPropError(f"lateral: the unit count n={n!r} must be a positive integer")
        if not isinstance(params, LateralParameters):
            raise BioPropError(f"lateral: params must be a LateralParameters, not {type(params).__name__}")
        self.n, self.params, self.name = n, params.check(), name
        self.act = nn.ReLU() if act is None else act
        self.M = nn.Parameter(torch.zeros(n, n))

    def extra_repr(self) -> str:
        s = self.params
        damping = "auto" if s.damping is None else f"{s.damping:g}"
        return (f"n={self.n}, steps={s.steps}, damping={damping}, tol={s.tol:g}, rate={s.rate:g}, p={s.p}, "
                f"decay={s.decay:g}")  # fmt: skip

    def describe(self) -> str:
        return f"lateral layer {self.name + ' ' if self.name else ''}({self.n} units)"

    def forward(self, a: Tensor) -> Tensor:
        """y (B, n), the settled response to the pre-activation ``a`` (B, n); M enters detached (no loss gradient)."""
        if a.dim() != 2 or a.shape[1] != self.n:
            raise BioPropError(f"{self.describe()}: expects pre-activations of shape (B, {self.n}), got "
                               f"{tuple(a.shape)}")  # fmt: skip
        W = inhibition(self.M.detach())  # (n, n)
        damping = step_size(W, self.params.damping)
        y = settle(a, W, self.act, self.params.steps, damping)
        with torch.no_grad():
            residual = float((self.act(a - y @ W.T) - y).abs().amax())
            bound = self.params.tol * max(1.0, float(y.abs().amax()))
        if not residual <= bound:  # NaN too
            norm = float(torch.linalg.matrix_norm(W, 2)) if math.isfinite(residual) else math.nan
            raise DivergenceError(
                f"{self.describe()}: y = φ(a − relu(M) y) did not settle in {self.params.steps} steps (residual "
                f"{residual:.3g} > tolerance {bound:.3g}; ‖relu(M)‖₂ = {norm:.3g}, damping {damping:.3g}); "
                "raise steps or lower damping (e.g. mlp:256:lateral:steps=100,damping=0.1); or raise decay or lower "
                "rate, which bound the inhibition"
            )
        return y

    def local_grads(self, inputs: tuple[Tensor, ...], output: Tensor) -> dict[str, Tensor]:
        """M's update for one forward pass (what :func:`bioprop.rules.base.local_grads` collects): given the
        ``inputs`` (a,) and ``output`` y (B, n) of the pass, {"M": −rate · (ΔM − decay · W)} with ΔM =
        :func:`anti_hebbian` (y, p) and W = :func:`inhibition` (M), a descent direction; 0 where M_ij ≤ 0 and the
        rule would lower it further (module docstring). Pure."""
        s = self.params
        return {"M": anti_hebbian_step(output.detach(), self.M.detach(), s.rate, s.p, s.decay)}


# ------------------------------------------------------------------------------------------- the arch spec


def parse(options: str, spec: str) -> LateralParameters:
    """The :class:`LateralParameters` of an arch's ``:lateral:key=value,...`` options (``options`` without that
    prefix, "" for the defaults); a one-line :class:`BioPropError` naming ``spec`` and the bad item otherwise."""
    given = _settings(options, spec, LateralParameters._fields)
    try:
        return LateralParameters(**given).check()  # type: ignore[arg-type]
    except BioPropError as exc:
        raise BioPropError(f"bad arch {spec!r}: {exc}") from None


def _settings(options: str, spec: str, known: tuple[str, ...]) -> dict[str, float | int | None]:
    """``key=value,...`` as numbers, for the keys in ``known`` (``damping=auto`` None); a one-line
    :class:`BioPropError` naming ``spec`` and the item otherwise."""
    given: dict[str, float | int | None] = {}
    if spec.endswith(":") or options.endswith(","):
        raise BioPropError(f"bad arch {spec!r}: it ends with {spec[-1]!r}; drop it or give the setting, e.g. "
                           "...:lateral:rate=0.1")  # fmt: skip
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if key not in known or not eq:
            raise BioPropError(f"bad arch {spec!r}: unknown lateral option {item!r}; known: "
                               f"{', '.join(f'{k}=...' for k in known)}")  # fmt: skip
        if key in given:
            raise BioPropError(f"bad arch {spec!r}: lateral option {key!r} given twice")
        if key == "damping" and value == "auto":
            given[key] = None
            continue
        try:
            given[key] = int(value) if key == "steps" else float(value)
        except ValueError:
            kind = "a whole number" if key == "steps" else "a number"
            raise BioPropError(f"bad arch {spec!r}: {key}={value!r} must be {kind}") from None
    return given


def from_suffix(net: nn.Sequential, suffix: str, spec: str) -> nn.Sequential:
    """``net`` (an MLP of :func:`bioprop.nets.mlp`: Flatten, then Linear-activation pairs, then the readout) with
    each hidden activation replaced by a :class:`LateralInhibition` over it, for the arch suffix ``suffix``
    (``lateral`` or ``lateral:key=value,...``, what follows ``mlp:H1x...:``). A one-line :class:`BioPropError`
    naming ``spec`` for another suffix or an MLP without hidden layers."""
    kind, _, options = suffix.partition(":")
    if kind != "lateral":
        raise BioPropError(f"bad arch {spec!r}: unknown suffix {kind!r}; the one known is ':lateral', e.g. "
                           "mlp:256x256:lateral")  # fmt: skip
    params = parse(options, spec)
    modules = list(net)
    hidden = [i for i in range(1, len(modules) - 1) if isinstance(modules[i - 1], nn.Linear)]
    if not hidden:
        raise BioPropError(f"bad arch {spec!r}: lateral inhibition needs a hidden layer, e.g. mlp:256:lateral")
    for i in hidden:
        linear = modules[i - 1]
        modules[i] = LateralInhibition(linear.out_features, modules[i], params, name=str(i))
    return nn.Sequential(*modules)


# --------------------------------------------------------------------------------------- spiking networks


class SpikingLateralParameters(NamedTuple):
    """How a spiking network's lateral inhibition learns (module docstring, "Spiking networks"): the anti-Hebbian
    ``rate`` (≥ 0, α per unit of the optimizer's learning rate), the target count ``p`` (spikes per example; None:
    the covariance form) and the ``decay`` λ ≥ 0 of the inhibition. No settling, so no steps, damping or tol."""

    rate: float = 0.1
    p: float | None = None
    decay: float = 1.0

    def check(self) -> SpikingLateralParameters:
        """Self, or a one-line :class:`BioPropError` naming the first bad value (the checks of
        :class:`LateralParameters`)."""
        LateralParameters(rate=self.rate, p=self.p, decay=self.decay).check()
        return self


SETTLING = ("steps", "damping", "tol")  # the rate layer's settings that a spiking layer refuses


def spike_counts(z: Tensor) -> Tensor:
    """n_i = Σ_t z_i^t, each example's spike count per neuron: spike trains z (T, B, n) → (B, n), in z's dtype."""
    return z.sum(dim=0)


class SpikingLateral(nn.Module):
    """Learned lateral inhibition among the n neurons of a spiking recurrent network (module docstring, "Spiking
    networks"): M (n, n), a parameter starting at 0, W = relu(M) with a zero diagonal (:meth:`weight`), which the
    network subtracts from its recurrent matrix; M learns by the anti-Hebbian rule on spike counts
    (:meth:`local_grads`).

    ``n``: the neurons; ``params``: a :class:`SpikingLateralParameters`; ``name``: how errors name it. A bad ``n`` or
    setting is a one-line :class:`BioPropError`."""

    def __init__(self, n: int, params: SpikingLateralParameters = SpikingLateralParameters(), name: str = "lateral"
                 ) -> None:  # fmt: skip
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BioPropError(f"lateral: the neuron count n={n!r} must be a positive integer")
        if not isinstance(params, SpikingLateralParameters):
            raise BioPropError(f"lateral: params must be a SpikingLateralParameters, not {type(params).__name__}")
        self.n, self.params, self.name = n, params.check(), name
        self.M = nn.Parameter(torch.zeros(n, n))

    def extra_repr(self) -> str:
        s = self.params
        return f"n={self.n}, rate={s.rate:g}, p={s.p}, decay={s.decay:g}"

    def weight(self) -> Tensor:
        """W = relu(M), zero diagonal (n, n), from M detached: the inhibition W_ji of neuron j by neuron i's spike at
        the step before, which the loss does not differentiate."""
        return inhibition(self.M.detach())

    def forward(self, z: Tensor) -> Tensor:
        """The spike trains z (T, B, n) themselves: the network calls this once per unrolled sequence so that the
        rules' hook sees them (module docstring). A :class:`BioPropError` for another shape."""
        if z.dim() != 3 or z.shape[2] != self.n:
            raise BioPropError(f"lateral inhibition of {self.n} neurons expects spike trains of shape (T, B, "
                               f"{self.n}), got {tuple(z.shape)}")  # fmt: skip
        return z

    def local_grads(self, inputs: tuple[Tensor, ...], output: Tensor) -> dict[str, Tensor]:
        """M's update for one unrolled sequence (what :func:`bioprop.rules.base.local_grads` collects): given the
        spike trains ``output`` z (T, B, n), {"M": :func:`anti_hebbian_step` (:func:`spike_counts` (z), M, rate, p,
        decay)}: −rate · (⟨n_i n_j⟩ − p² − λ W_ij) over the batch's examples, a descent direction, 0 where the clip
        holds (module docstring). Pure."""
        s = self.params
        return {"M": anti_hebbian_step(spike_counts(output.detach()), self.M.detach(), s.rate, s.p, s.decay)}


def spiking_from_suffix(suffix: str, spec: str, n: int) -> SpikingLateral:
    """The :class:`SpikingLateral` of ``n`` neurons for a spiking arch's suffix ``suffix`` (``lateral`` or
    ``lateral:key=value,...``, what follows ``lif:N:``, ``alif:N:`` or ``lsnn:N+M:``); a one-line
    :class:`BioPropError` naming ``spec`` for another suffix, an unknown or bad setting, and for the settling
    settings (steps, damping, tol), which spikes do not have."""
    kind, _, options = suffix.partition(":")
    if kind != "lateral":
        raise BioPropError(f"bad arch {spec!r}: unknown suffix {kind!r}; the one known is ':lateral', e.g. "
                           "lsnn:50+50:lateral")  # fmt: skip
    for item in filter(None, options.split(",")):
        key = item.partition("=")[0]
        if key in SETTLING:
            raise BioPropError(f"bad arch {spec!r}: {key} does not apply to spiking neurons, which do not settle "
                               "(their inhibition is an input at the next step); known: rate=..., p=..., "
                               "decay=...")  # fmt: skip
    given = _settings(options, spec, SpikingLateralParameters._fields)
    try:
        return SpikingLateral(n, SpikingLateralParameters(**given).check())  # type: ignore[arg-type]
    except BioPropError as exc:
        raise BioPropError(f"bad arch {spec!r}: {exc}") from None


__all__ = [
    "SETTLING",
    "SPECS",
    "SPIKING_SPECS",
    "LateralInhibition",
    "LateralParameters",
    "SpikingLateral",
    "SpikingLateralParameters",
    "anti_hebbian",
    "anti_hebbian_step",
    "from_suffix",
    "inhibition",
    "mean_abs_correlation",
    "pairwise_correlations",
    "parse",
    "settle",
    "spike_counts",
    "spiking_from_suffix",
    "step_size",
]
