"""The dendritic error model against independent math: predictive coding's value dynamics and the energy's autograd
gradient (Box 4 regrouping), the apical error at the steady state, backprop as β → 0, the run's one output loss;
and what both dendritic-family rules refuse (the microcircuit's own tests are in test_microcircuit.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bioprop import data as datasets
from bioprop import losses, nets, rules
from bioprop.errors import BioPropError, DivergenceError
from bioprop.rules.dendritic import DendriticParameters, dendritic_rhs, has_kink, settle
from bioprop.rules.mlp_settling import MLP
from conftest import tanh_mlp

TOL = 1e-12
SIZES = (10, 8, 6, 4)  # decreasing widths: the rates span their space, so the weight relations are identifiable


def data(n_in: int, n_classes: int, n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=generator, dtype=torch.float64), torch.randint(
        n_classes, (n,), generator=generator
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def onehot(y: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(len(y), k, dtype=torch.float64)
    out[torch.arange(len(y)), y] = 1.0
    return out


def loss_grad_by_hand(mu: torch.Tensor, y: torch.Tensor, output: str) -> torch.Tensor:
    """∂loss/∂μ per example: se μ − onehot; ce softmax(μ) − onehot, the softmax written out."""
    if output == "se":
        return mu - onehot(y, mu.shape[1])
    p = torch.exp(mu - mu.max(1, keepdim=True).values)
    return p / p.sum(1, keepdim=True) - onehot(y, mu.shape[1])


def loss_by_hand(z: torch.Tensor, y: torch.Tensor, output: str) -> torch.Tensor:
    """The batch-mean output loss: se ½‖z − onehot(y)‖² summed over classes; ce −log softmax(z)_y, written out."""
    if output == "se":
        return 0.5 * ((z - onehot(y, z.shape[1])) ** 2).sum(1).mean()
    shifted = z - z.max(1, keepdim=True).values
    return (torch.log(torch.exp(shifted).sum(1)) - shifted[torch.arange(len(y)), y]).mean()


# ------------------------------------------------------------------------------------------ dendritic (Box 4)


@pytest.mark.parametrize("output", ["se", "ce"])
def test_box4_regrouping_equals_predictive_coding_and_energy_gradient(output: str) -> None:
    """THE identity of Box 4: the dendritic right-hand side (decay, basal, apical top-down minus interneuron
    inhibition) regroups into predictive coding's −δ_l + φ'(x_l) ⊙ W_{l+1}ᵀ δ_{l+1}, i.e. −∂F/∂x_l, so the
    apical dendrite holds the error that PC keeps in separate error neurons."""
    net = tanh_mlp((6, 5, 4, 3))
    x0, y = data(6, 3)
    weights = [net[i].weight.detach() for i in (1, 3, 5)]
    biases = [net[i].bias.detach() for i in (1, 3, 5)]
    generator = torch.Generator().manual_seed(7)
    xs = [torch.randn(8, n, generator=generator, dtype=torch.float64) for n in (5, 4)]  # random, not settled
    beta = 0.7
    got = dendritic_rhs(
        MLP(weights, biases, nn.Tanh()), x0, xs, y, DendriticParameters(beta, loss=losses.get(output))
    ).rhs

    # Predictive coding, written out: μ_l = W_l φ(x_{l−1}) + b_l, δ_l = x_l − μ_l, δ_L = −β ∂loss/∂μ_L.
    mu1 = x0 @ weights[0].T + biases[0]
    mu2 = torch.tanh(xs[0]) @ weights[1].T + biases[1]
    mu3 = torch.tanh(xs[1]) @ weights[2].T + biases[2]
    d1, d2, d3 = xs[0] - mu1, xs[1] - mu2, -beta * loss_grad_by_hand(mu3, y, output)
    pc = [
        -d1 + (1 - torch.tanh(xs[0]) ** 2) * (d2 @ weights[1]),
        -d2 + (1 - torch.tanh(xs[1]) ** 2) * (d3 @ weights[2]),
    ]
    for a, b in zip(got, pc, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=TOL)

    # −∂F/∂x by autograd, F = Σ ½‖x_l − μ_l‖² + β Σ_batch loss(μ_L).
    leaves = [x.clone().requires_grad_(True) for x in xs]
    m1 = x0 @ weights[0].T + biases[0]
    m2 = torch.tanh(leaves[0]) @ weights[1].T + biases[1]
    m3 = torch.tanh(leaves[1]) @ weights[2].T + biases[2]
    if output == "se":
        loss = 0.5 * ((m3 - onehot(y, 3)) ** 2).sum()
    else:
        loss = torch.nn.functional.cross_entropy(m3, y, reduction="sum")
    energy = 0.5 * ((leaves[0] - m1) ** 2).sum() + 0.5 * ((leaves[1] - m2) ** 2).sum() + beta * loss
    for a, g in zip(got, torch.autograd.grad(energy, leaves), strict=True):
        assert torch.allclose(a, -g, rtol=0, atol=TOL)


def test_steady_state_error_is_read_from_the_apical_compartment() -> None:
    """At the fixed point ẋ = 0, so x_l − v_B,l = φ'(x_l) ⊙ v_A,l: the somatic deviation from the basal prediction
    (PC's error node) is exactly what the apical compartment carries."""
    net = tanh_mlp((6, 5, 4, 3))
    x0, y = data(6, 3)
    weights = [net[i].weight.detach() for i in (1, 3, 5)]
    biases = [net[i].bias.detach() for i in (1, 3, 5)]
    params = DendriticParameters(beta=0.5, dt=0.5, tol=1e-13, max_steps=2000, loss=losses.get("ce"))
    xs, d, trace = settle(MLP(weights, biases, nn.Tanh()), x0, y, params)
    assert float(trace[-1]) < 1e-13 and len(trace) == 2001
    for x, basal, apical in zip(xs, d.basal, d.apical, strict=True):
        assert torch.allclose(x - basal, (1 - torch.tanh(x) ** 2) * apical, rtol=0, atol=1e-12)
        assert float(apical.abs().max()) > 1e-3  # a real error, not a trivial zero


@pytest.mark.parametrize("output", ["se", "ce"])
def test_small_beta_update_is_backprop(output: str) -> None:
    """With a weak output nudge (β = 1e-3) the steady-state update, divided by β, is backprop's gradient of the
    same loss (Whittington & Bogacz 2019; PC condition (b)): cosine ≥ 0.999 for every tensor."""
    net = tanh_mlp((6, 5, 4, 3))
    x, y = data(6, 3)
    rule = rules.create("dendritic", net, beta=1e-3, output=output, dt=0.2, tol=1e-13, max_steps=3000)
    update = rule.grads(x, y)
    for name, exact in rule.reference_grads(x, y).items():
        assert cosine(update.grads[name], exact) >= 0.999, name
    assert update.traces["residual"].shape == (3001,)
    assert torch.allclose(update.loss, loss_by_hand(net(x), y, output), rtol=0, atol=TOL)  # the run's one loss


def test_dendritic_without_steady_state_names_the_setting() -> None:
    net = tanh_mlp((6, 5, 4, 3))
    x, y = data(6, 3)
    with pytest.raises(DivergenceError, match=r"max_steps=2 .*raise max_steps or lower dt") as info:
        rules.create("dendritic", net, beta=0.5, tol=1e-12, max_steps=2).grads(x, y)
    assert "\n" not in str(info.value)
    with pytest.raises(DivergenceError, match="dt"):
        rules.create("dendritic", net, beta=0.5, dt=50.0, max_steps=500).grads(x, y)
    assert "kink" not in str(info.value)  # tanh is smooth: no activation is blamed


@pytest.mark.parametrize("name", list(nets.ACTIVATIONS))
def test_kinks_are_where_the_derivative_jumps(name: str) -> None:
    """``has_kink`` against one-sided finite differences: φ' jumps (by more than 0.05 between the slopes just left
    and just right of some point of [−3, 3], float64) exactly for the activations it flags."""
    phi, h = nets.activation(name).double(), 1e-5
    t = torch.linspace(-3, 3, 601, dtype=torch.float64)  # holds the kinks 0, ±1
    right = (phi(t + 2 * h) - phi(t + h)) / h
    left = (phi(t - h) - phi(t - 2 * h)) / h
    assert has_kink(phi) == bool((right - left).abs().max() > 0.05)


def test_relu_names_its_layer_and_the_rules_activation_where_tanh_settles() -> None:
    """Digits on mlp:64 (the issue's case): with ReLU the first batch has no steady state, and the error names the
    ReLU layer and tanh first; the same weights with tanh (the rule's choice) settle within the default budget."""
    ds = datasets.load("digits", device="cpu", dtype=torch.float32, limit=64)
    x, y = ds.train_x, ds.train_y
    torch.manual_seed(0)
    relu = nets.build("mlp:64", ds.in_shape, ds.n_classes, "relu")
    assert rules.create("dendritic", relu).activation == "tanh"
    with pytest.raises(DivergenceError) as info:
        rules.create("dendritic", relu).grads(x, y)
    message = str(info.value)
    assert "\n" not in message and "no steady state within max_steps=200" in message
    assert message.index("layer 2 (ReLU) has a kink") < message.index("raise max_steps or lower dt")
    assert "use a smooth activation such as tanh" in message
    smooth = nets.build("mlp:64", ds.in_shape, ds.n_classes, "tanh")
    smooth.load_state_dict(relu.state_dict())
    trace = rules.create("dendritic", smooth).grads(x, y).traces["residual"]
    assert float(trace[-1]) < 1e-5


@pytest.mark.parametrize(
    ("options", "says"),
    [({"mode": "fast"}, "choose one of"), ({"g_l": -1}, "must be positive"), ({"lr_ip": 3}, "must be in [0, 2)"),
     ({"sweeps": 0}, "at least 1"), ({"feedback": "transposed"}, "choose one of"), ({"bogus": 1}, "unknown option")],
)  # fmt: skip
def test_bad_options_are_one_line_errors(options: dict, says: str) -> None:
    with pytest.raises(BioPropError) as info:
        rules.create("microcircuit", tanh_mlp(SIZES), **options)
    assert says in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BioPropError, match="must be positive"):
        rules.create("dendritic", tanh_mlp(SIZES), beta=0)


@pytest.mark.parametrize(
    ("net", "says"),
    [(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), "Conv2d"),
     (nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh()), "Linear readout")],
)  # fmt: skip
def test_non_mlp_networks_are_rejected(net: nn.Module, says: str) -> None:
    for name in ("dendritic", "microcircuit"):
        with pytest.raises(BioPropError, match=says):
            rules.create(name, net)
    with pytest.raises(BioPropError, match="hidden layer"):
        rules.create("microcircuit", nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))


def test_cards_are_complete() -> None:
    for name in ("dendritic", "microcircuit"):
        card = rules.entry(name).card
        assert len(card) == 6 and all(entry.why for entry in card.values())
    assert rules.entry("microcircuit").card["weight_transport"].removed
    assert not rules.entry("dendritic").card["weight_transport"].removed


def test_dendritic_with_se_returns_the_se_loss_and_nudges_by_its_gradient() -> None:
    """One loss per run: with output=se the update's loss is ½‖net(x) − onehot‖² (batch mean, by hand, not
    cross-entropy) and ``backward`` returns the same; the output nudge is x_L = μ_L − β (μ_L − onehot)."""
    net = tanh_mlp((6, 5, 4, 3))
    x, y = data(6, 3)
    rule = rules.create("dendritic", net, output="se", beta=0.5, dt=0.2, tol=1e-12, max_steps=2000)
    expected = loss_by_hand(net(x).detach(), y, "se")
    assert abs(float(expected) - float(loss_by_hand(net(x).detach(), y, "ce"))) > 0.1  # the two losses differ here
    assert torch.allclose(rule.grads(x, y).loss, expected, rtol=0, atol=TOL)
    loss, _ = rule.backward(x, y)
    assert torch.allclose(loss, expected, rtol=0, atol=TOL)
    weights = [net[i].weight.detach() for i in (1, 3, 5)]
    biases = [net[i].bias.detach() for i in (1, 3, 5)]
    xs = [torch.zeros(8, 5, dtype=torch.float64), torch.zeros(8, 4, dtype=torch.float64)]
    d = dendritic_rhs(MLP(weights, biases, nn.Tanh()), x, xs, y, DendriticParameters(0.5, loss=losses.get("se")))
    mu3 = biases[2].expand(8, 3)  # φ(0) = 0
    top = mu3 - 0.5 * (mu3 - onehot(y, 3))
    expected_apical = top @ weights[2] - mu3 @ weights[2]
    assert torch.allclose(d.apical[1], expected_apical, rtol=0, atol=TOL)


def test_dendritic_declares_its_residual_trace_and_figure() -> None:
    """The trace it records is declared (name, label) and drawn in a declared figure; the rule has no state of its
    own beyond the step count, and grads leaves the global random state alone."""
    rule = rules.create("dendritic", tanh_mlp((6, 5, 4, 3)), dt=0.2, max_steps=2000)
    x, y = data(6, 3)
    before = torch.get_rng_state()
    update = rule.grads(x, y)
    assert torch.equal(before, torch.get_rng_state())
    assert set(update.traces) == {t.name for t in rule.trace_specs} == {"residual"}
    assert any("residual" in spec.traces for spec in rule.figures)
    assert set(rule.state_dict()) == {"step", "rule_name"}
