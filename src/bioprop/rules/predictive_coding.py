"""Predictive coding: the rules ``pc``, ``pc-fpa`` and ``ipc`` (Whittington & Bogacz 2017; review 2019, Box 3).

The equations (energy F, error nodes, value dynamics, Hebbian weight change) are in
:mod:`bioprop.rules.pc_equations`, the inference loops of every variant in :mod:`bioprop.rules.pc_inference`; this
module holds the rules: their options, the output loss, nudging, and the divergence guard.

Inference starts from the feedforward pass, where every hidden error is 0, and runs T Euler steps of size γ on the
value nodes; the weights change once, at the end (test-time prediction is the feedforward pass, ``net(x)``).

Batch reduction: inference descends the *sum* of the per-sample energies, so γ means the same for any batch size
(each sample's values move independently); the weight update is the batch *mean* of the per-sample ∂F/∂θ ÷ β, on
the scale of the batch-mean loss gradient. The traces report the batch-mean energy at each step, ``energy`` (T + 1,).
The run's one output loss (``output``: cross-entropy with the softmax outside the dynamics, or squared error) is the
output energy, the reference gradient's loss and the loss returned (of the feedforward prediction).

Options and variants (Whittington & Bogacz 2019 list the conditions under which PC equals backprop):

- ``nudge``: ``positive`` (energy + β ℓ), ``negative`` (−β ℓ; Scellier & Bengio 2017's sign trick, the update
  divided by −β) or ``centred`` (both: update = (∂F⁺/∂θ − ∂F⁻/∂θ)/(2β)), as in PCX (Pinchetti et al. 2024).
  Centred nudging runs the two copies of the batch as one batch of 2N rows with a column of signed β (an
  optimisation: each copy's dynamics are independent). Small β: the equilibrium update tends to backprop's.
- ``pc-fpa``: the fixed prediction assumption (Millidge, Tschantz & Buckley 2022; Rosenbaum 2022 "FixedPred"):
  μ_l, J_φ and the output error stay at their feedforward values, γ = 1 and T = L − 1 sweeps: backprop's update.
- ``ipc``: incremental PC (Salvatori et al. 2024, ICLR): the weights also descend F at every inference step,
  W ← W − η ∂F/∂W (η = ``weight_lr``); the update written to ``.grad`` is the sum of those per-step gradients, so SGD
  with lr = η continues exactly the incremental trajectory.
- ``update_at=zil``: zero-divergence inference learning (Song et al. 2020, NeurIPS): with γ = 1, layer l takes its
  update at step L − l, when the error wave passes it; the update then equals backprop's. Z-IL is defined at γ = 1
  (at the default γ = 0.1 the update would be far from backprop's), so ``update_at=zil`` sets γ = 1 and refuses any
  other γ given with it.
- ``compile``: ``torch.compile`` the inference loop (fused kernels, settings in ``COMPILE``; each new batch shape
  compiles first, which takes 15-60 s on a CPU, a few seconds once inductor's cache holds it; off by default for
  that reason).

Stability: on a linear network F is quadratic in the values and inference descends it iff γ < 2/λ_max(∇²_x F); a
rise of the energy over the inference (or a non-finite value) raises :class:`DivergenceError` naming γ, unless a
parameter is itself non-finite, which is named instead. An energy already non-finite at the feedforward pass is no
inference step's doing and blames no γ. ``ipc``'s weights move during inference, so a rise is measured again with
the weights held fixed: γ is named only if that inference rises too, the weight step ``weight_lr`` otherwise.

Networks: a module used at several positions (shared weights) has value nodes at each, and since F depends on its
weight through every position, its update is the sum of their terms (``pc-fpa`` stays exactly backprop). A dropout
layer draws its mask once, in the feedforward pass, as ``net(x)`` would from the same random state; the mask is a
fixed part of φ_l for every inference step (a redrawn mask would make the energy jump). ``ipc`` leaves frozen
parameters where they are during inference, as the optimizer will. The rules have no state of their own beyond the
base's step count, and draw no random numbers but the dropout masks ``net(x)`` itself would draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from bioprop import losses
from bioprop.errors import BioPropError
from bioprop.nets import layer_parameters
from bioprop.nets import layers as walk_layers
from bioprop.rules.base import Entry, FigureSpec, Options, Rule, Trace, Unstable, Update, make_card, register
from bioprop.rules.options import is_non_negative, option, positive, say
from bioprop.rules.pc_equations import Chain, output_of, split_blocks
from bioprop.rules.pc_inference import Inference, Inferred, Network, infer

NUDGES = ("positive", "negative", "centred")
MAX_STEPS = 10_000  # inference steps per batch; more would run for minutes per batch without a word


#: Inductor settings of ``compile=true``: the kernels' launcher compiled to C++ (``cpp_wrapper``: the T steps'
#: ~100 kernel calls then cost no Python each) and matrix products chosen by measuring candidates, among them C++
#: templates with the following elementwise work fused in (``max_autotune``).
COMPILE = {"cpp_wrapper": True, "max_autotune": True}


@dataclass(frozen=True)
class PredictiveCodingOptions(Options):
    """The options of ``pc``, ``pc-fpa`` and ``ipc`` (the module docstring says what each variant fixes)."""

    steps: int = option(20, "inference steps T", check=is_non_negative, check_says="must be 0 or more",
                        maximum=MAX_STEPS)  # fmt: skip
    gamma: float = positive(0.1, "inference step size γ (update_at=zil: 1, Z-IL's only value)")
    output: str = option("ce", "output energy: cross-entropy (ce) or squared error (se)", choices=tuple(losses.LOSSES))
    beta: float = positive(1.0, "output precision / nudging strength β (with se, 1 hard-clamps the output)")
    nudge: str = option("positive", "sign of the output nudging; centred runs ±β together", choices=NUDGES)
    predictions: str = option("free", "free, or fixed at the feedforward pass (pc-fpa)", choices=("free", "fixed"))
    incremental: bool = option(False, "also descend F in the weights at every inference step (ipc)")
    weight_lr: float = positive(0.01, "incremental: the weights' inner step size η")
    update_at: str = option("end", "end: update after T steps; zil: layer l at step L − l, γ = 1 (Z-IL)",
                            choices=("end", "zil"))  # fmt: skip
    compile: bool = option(False, "torch.compile the inference (fused kernels; each new batch shape compiles first)")


CARD_PC = make_card(
    linear=(True, "errors are neurons: value nodes integrate them through their own nonlinearity"),
    derivatives=(False, "the value dynamics multiply top-down errors by φ'(x_l)"),
    weight_transport=(False, "errors return through Wᵀ, the transposed forward weights"),
    spikes=(False, "real-valued values and errors"),
    clock=(True, "one continuous relaxation, no separate backward phase; updates are local in space and time"),
    targets=(False, "needs a supervised target at the output"),
)
CARD_FPA = make_card(
    linear=(False, "under the fixed prediction assumption the sweep is backprop's linear backward pass"),
    derivatives=(False, "the error sweep multiplies by φ' at the feedforward values"),
    weight_transport=(False, "errors return through Wᵀ"),
    spikes=(False, "real-valued values and errors"),
    clock=(False, "predictions must be frozen during inference: an implicit phase signal"),
    targets=(False, "needs a supervised target at the output"),
)
WHITTINGTON = "Whittington & Bogacz 2017, Neural Comput. 29:1229; review 2019, Trends Cogn. Sci. (Box 3)"
FPA = "Millidge, Tschantz & Buckley 2022, Neural Comput. 34:1329 (fixed prediction assumption)"
SALVATORI = "Salvatori et al. 2024, ICLR (incremental predictive coding)"


@register("ipc", family="predictive coding", paper=SALVATORI, summary="weights also move at every inference step",
          card=CARD_PC, incremental=True)  # fmt: skip
@register("pc-fpa", family="predictive coding", paper=FPA, summary="fixed predictions, γ = 1: equals backprop",
          card=CARD_FPA, predictions="fixed", gamma=1.0)  # fmt: skip
@register("pc", family="predictive coding", paper=WHITTINGTON, summary="value and error nodes relax, then δ φ(x)ᵀ",
          card=CARD_PC)  # fmt: skip
class PredictiveCoding(Rule):
    """Predictive coding and its variants (module docstring); the math is :mod:`bioprop.rules.pc_equations`."""

    Options = PredictiveCodingOptions
    opts: PredictiveCodingOptions
    trace_specs = (Trace("energy", "energy F = Σ ½‖ε_l‖² + βℓ (batch mean)", relative=True),)
    figures = (FigureSpec("energy.png", "predictive coding: the energy F per inference step", traces=("energy",)),)

    def __init__(self, net: nn.Module, entry: Entry, options: dict[str, Any]) -> None:
        super().__init__(net, entry, options)
        o = self.opts
        before, blocks = split_blocks(net, self.name)
        self.network = Network(before, blocks, [Chain(b.after) for b in blocks])
        self.dropouts = [m for m in walk_layers(net) if isinstance(m, nn.Dropout)]
        if o.compile and self.dropouts:
            raise BioPropError(
                f"rule {self.name}: compile=true with a Dropout layer is not supported (the compiled inference would "
                "draw other masks than net(x)); leave compile off"
            )
        fixed, zil, depth = o.predictions == "fixed", o.update_at == "zil", len(blocks)
        if o.incremental and (fixed or zil):
            raise BioPropError(f"rule {self.name}: incremental updates need predictions=free and update_at=end")
        gamma = o.gamma
        if zil:
            if o.steps < depth - 1:
                raise BioPropError(f"rule {self.name}: update_at=zil needs steps >= {depth - 1} for this network")
            if o.gamma != 1.0 and "gamma" in self.given_options():
                raise BioPropError(f"rule {self.name}: gamma={say(o.gamma)} with update_at=zil; Z-IL is defined at "
                                   "gamma=1 (its update equals backprop's only there), so leave gamma out")  # fmt: skip
            gamma = 1.0
            self.opts = replace(o, gamma=gamma)  # what the rule uses is what it reports (summary.json, compare)
        steps = min(o.steps, depth - 1) if fixed and gamma == 1.0 else o.steps  # the sweep is exact after L − 1
        self.params = Inference(steps, gamma, fixed, zil, o.weight_lr if o.incremental else 0.0)
        compiled = torch.compile(infer, dynamic=False, options=COMPILE) if o.compile else None
        self._infer: Callable[..., Inferred] = compiled or infer

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Update:
        n = len(x)
        x, y, beta = self.nudged(x, y)
        for block in self.network.blocks:  # the names again: a layer replaced since create is an error, not stale
            block.names = [self.param_name(p) for p in layer_parameters(block.layer)]
        out = output_of(self.loss, y, x.new_empty(len(x), self._classes()), beta)
        frozen = frozenset()
        if self.params.weight_lr:  # ipc: its weight steps leave these where they are
            frozen = frozenset(name for name, p in self.net.named_parameters() if not p.requires_grad)
        result = self._infer(self.network, x, out, self.params, frozen)
        if self.energy_rose(result.energy):
            held = self.params._replace(weight_lr=0.0)  # the same inference with the weights held fixed
            raise self.unstable(result.energy, lambda: self._infer(self.network, x, out, held, frozen).energy)
        prediction = result.prediction[:n]
        loss = self.loss.value(prediction, y[:n])
        return Update(result.updates, loss, prediction, {"energy": result.energy})

    def nudged(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float | Tensor]:
        """The batch and β as inference takes them: β, −β (negative) or, centred, the batch twice with a (2N, 1)
        column of +β then −β (module docstring)."""
        beta = self.opts.beta
        if self.opts.nudge == "negative":
            return x, y, -beta
        if self.opts.nudge == "positive":
            return x, y, beta
        if any(m.training for m in self.dropouts):  # the two stacked copies would draw two other masks
            raise BioPropError(
                f"rule {self.name}: nudge=centred with a Dropout layer in training mode is not supported; use "
                "nudge=positive or negative, or net.eval()"
            )
        signed = torch.full((2 * len(x), 1), beta, dtype=x.dtype, device=x.device)
        signed[len(x) :] = -beta
        return torch.cat([x, x]), torch.cat([y, y]), signed

    def _classes(self) -> int:
        """K, the output layer's width (its weight's first dimension)."""
        return self.network.blocks[-1].layer.weight.shape[0]

    def energy_rose(self, energy: Tensor) -> bool:
        """Whether the energy trace (T + 1,) rose over the inference or has a non-finite value; a sweep
        (fixed predictions) or Z-IL (each layer read as the wave passes, at γ = 1) descends nothing, so never."""
        if self.params.fixed_predictions or self.params.zil:
            return False
        values = energy.tolist()  # one transfer, then plain numbers
        first, final = values[0], values[-1]
        return not all(map(math.isfinite, values)) or final > first + 1e-4 * abs(first) + 1e-12

    def unstable(self, energy: Tensor, with_fixed_weights: Callable[[], Tensor]) -> Unstable:
        """The error for a risen ``energy``. The descent of F in the values rises only if γ is above the stability
        bound, so γ is blamed when that was measured: the energy was finite at the feedforward pass and rose with the
        weights held fixed (for ``ipc``, the inference ``with_fixed_weights()`` re-run from the same start)."""
        first, final, gamma = float(energy[0]), float(energy[-1]), self.params.gamma
        x_dtype = self.network.blocks[0].layer.weight.dtype
        if not math.isfinite(first):
            return Unstable(self.name, f"the energy is {first} at the feedforward pass, before any inference step, so "
                            f"gamma is not the cause: the network's values or its output energy overflow {x_dtype}",
                            "check the scale of the parameters and inputs")  # fmt: skip
        rose = f"the energy rose from {first:.4g} to {final:.4g} during inference"
        incremental = bool(self.params.weight_lr)
        if incremental and not self.energy_rose(with_fixed_weights()):
            eta = self.params.weight_lr
            return Unstable(self.name, f"{rose}, but not with the weights held fixed, so the inner weight step "
                            f"weight_lr={eta:g} is too large for this network", "lower weight_lr",
                            named=("weight_lr",))  # fmt: skip
        fixed = " with the weights held fixed too" if incremental else ""
        return Unstable(self.name, f"{rose}{fixed}, so gamma={gamma:g} is above the stability bound for this network",
                        "lower gamma", named=("gamma",))  # fmt: skip
