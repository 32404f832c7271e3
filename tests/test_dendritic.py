"""The dendritic error model and the dendritic microcircuit against independent math: predictive coding's value
dynamics and the energy's autograd gradient (Box 4 regrouping), backprop as β → 0, the self-predicting state's
weight relations, feedback-alignment / backprop errors in the apical compartment, and the ODE's fixed point."""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch
from torch import nn

from bioprop import data as datasets
from bioprop import nets, rules
from bioprop.errors import BioPropError, DivergenceError
from bioprop.rules.dendritic import dendritic_rhs, has_kink, settle

TOL = 1e-12


def tanh_mlp(sizes: tuple[int, ...], seed: int = 0, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Flatten, Linear-φ pairs, Linear readout, float64, parameters from an explicit generator."""
    modules: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        modules += [nn.Linear(fan_in, fan_out), act()]
    modules.append(nn.Linear(sizes[-2], sizes[-1]))
    net = nn.Sequential(*modules).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p.shape[1] if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 1.2 / math.sqrt(fan_in))
    return net


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
    got = dendritic_rhs(weights, biases, x0, xs, y, nn.Tanh(), beta, output).rhs

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
    cfg = {"beta": 0.5, "output": "ce", "dt": 0.5, "tol": 1e-13, "max_steps": 2000}
    xs, d, trace = settle(weights, biases, x0, y, nn.Tanh(), cfg)
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
    assert torch.allclose(update.loss, torch.nn.functional.cross_entropy(net(x), y))


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


# ------------------------------------------------------------------------------------------------ microcircuit

SIZES = (10, 8, 6, 4)  # decreasing widths: the rates span their space, so the weight relations are identifiable
G = {"g_l": 0.1, "g_b": 1.0, "g_a": 0.8, "g_d": 1.0, "g_som": 0.1}


@pytest.fixture(scope="module")
def self_predicting() -> tuple[rules.Rule, list[float]]:
    """A microcircuit after its self-predicting phase (tanh rates, float64), shared read-only."""
    net = tanh_mlp(SIZES, seed=3)
    rule = rules.create("microcircuit", net, prepare_steps=1500, tol=1e-8, sweeps=200, seed=5)
    return rule, rule.prepare()["apical_norm"]


def test_self_predicting_phase_silences_the_apical_dendrites(self_predicting) -> None:
    """Without a target, learning W^ip and W^pi on random inputs drives the apical potential to zero (Sacramento
    et al. 2018, Fig. 1): interneurons learn to predict the layer above, and W^pi to cancel its top-down input."""
    rule, trace = self_predicting
    assert trace[-1] < 0.05 * trace[0]
    x, _ = data(10, 4, n=32, seed=9)
    for free in rule.apical_norms(x):
        assert free < 0.05 * trace[0]


def test_self_predicting_state_weight_relations(self_predicting) -> None:
    """The self-predicting state is W^pi = −W^down and W^ip = g_B (g_l+g_D) / (g_D (g_l+g_B+g_A)) W^up_{k+1}
    (g_A = 0 when layer k+1 is the output), in the paper's unfolded weights: the rule stores
    Ŵ^ip = g_D/(g_l+g_D) W^ip and the net holds W̃ = g_B/(g_l+g_B+g_A) W^up."""
    rule, _ = self_predicting
    circuit, linears = rule.circuit, [m for m in rule.net if isinstance(m, nn.Linear)]
    n = len(linears)
    for k in range(n - 1):
        assert (circuit.w_pi[k] + circuit.w_down[k]).norm() < 0.05 * circuit.w_down[k].norm()
        g_a_above = 0.0 if k + 1 == n - 1 else G["g_a"]
        w_up = linears[k + 1].weight.detach() * (G["g_l"] + G["g_b"] + g_a_above) / G["g_b"]
        w_ip = circuit.w_ip[k] * (G["g_l"] + G["g_d"]) / G["g_d"]
        relation = G["g_b"] * (G["g_l"] + G["g_d"]) / (G["g_d"] * (G["g_l"] + G["g_b"] + g_a_above))
        assert (w_ip - relation * w_up).norm() < 0.05 * w_ip.norm()


def fa_apical(rule: rules.Rule, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The apical error theory predicts in the self-predicting state, to first order in the nudge: the output
    error e = softmax(z) − onehot sent down through W^down and gated by φ' of the layer above, as in feedback
    alignment with B = W^down: v_A,N−1 ∝ −W^down e, v_A,k ∝ W^down_k (φ'(a_{k+1}) ⊙ v_A,k+1)."""
    linears = [m for m in rule.net if isinstance(m, nn.Linear)]
    h, pre = x, []
    for m in linears:
        pre.append(h @ m.weight.detach().T + m.bias.detach())
        h = torch.tanh(pre[-1])
    error = loss_grad_by_hand(pre[-1], y, "ce")
    apical = [-error @ rule.circuit.w_down[-1].T]
    for k in range(len(linears) - 3, -1, -1):
        apical.insert(0, ((1 - torch.tanh(pre[k + 1]) ** 2) * apical[0]) @ rule.circuit.w_down[k].T)
    return apical


def test_apical_potential_is_the_feedback_alignment_error(self_predicting) -> None:
    """With a target and fixed random W^down, the apical potentials carry the output error propagated through
    W^down (theory: feedback alignment's error, not backprop's, as W^down is not W^upᵀ): cosine ≥ 0.95."""
    rule, _ = self_predicting
    x, y = data(10, 4, n=32, seed=9)
    settled = rule.settle(x, y)
    for got, expected in zip(settled.apical, fa_apical(rule, x, y), strict=True):
        assert cosine(got, expected) >= 0.95


def transposed_circuit(sizes: tuple[int, ...] = SIZES, **options) -> rules.Rule:
    """A microcircuit put in the self-predicting state by hand with W^down = W̃ᵀ: Ŵ^ip = W̃_{k+1}, b^ip = b̃_{k+1},
    W^pi = −W^down."""
    rule = rules.create("microcircuit", tanh_mlp(sizes, seed=3), **options)
    linears = [m for m in rule.net if isinstance(m, nn.Linear)]
    for k in range(len(linears) - 1):
        w, b = linears[k + 1].weight.detach(), linears[k + 1].bias.detach()
        rule.circuit.w_ip[k].copy_(w)
        rule.circuit.b_ip[k].copy_(b)
        rule.circuit.w_down[k].copy_(w.T)
        rule.circuit.w_pi[k].copy_(-w.T)
    return rule


@pytest.mark.parametrize("baseline", ["none", "free"])
def test_transposed_feedback_apical_is_backprop_error(baseline: str) -> None:
    """With W^down = W̃ᵀ (the weight-transport limit) and a weak nudge, the apical potential is backprop's error
    at the layer above, −W̃_{k+1}ᵀ ∂L/∂a_{k+1}, and the plasticity is backprop's gradient (cosine ≥ 0.99)."""
    rule = transposed_circuit(tol=1e-12, g_som=0.01, baseline=baseline)
    x, y = data(10, 4, n=32, seed=9)
    net = rule.net
    pre, h = [], x
    with torch.enable_grad():
        for m in [m for m in net if isinstance(m, nn.Linear)]:
            pre.append(h @ m.weight.T + m.bias)
            pre[-1].retain_grad()
            h = torch.tanh(pre[-1])
        torch.nn.functional.cross_entropy(pre[-1], y, reduction="sum").backward()
    net.zero_grad()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for k, got in enumerate(rule.settle(x, y).apical):
        assert cosine(got, -pre[k + 1].grad @ linears[k + 1].weight.detach()) >= 0.99
    update = rule.grads(x, y)
    for name, exact in rule.reference_grads(x, y).items():
        assert cosine(update.grads[name], exact) >= 0.99, name


def test_steady_mode_is_the_fixed_point_of_the_dynamics() -> None:
    """The steady mode's sweeps solve the same equations as the Euler-integrated ODE: after long integration
    without noise, the dynamic mode's potentials equal the steady ones."""
    x, y = data(10, 4, n=6, seed=9)
    steady = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), tol=1e-13, seed=2).settle(x, y)
    dynamic = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), mode="dynamic", steps=800, seed=2).settle(x, y)
    for a, b in zip(
        steady.potentials.u + steady.potentials.u_i, dynamic.potentials.u + dynamic.potentials.u_i, strict=True
    ):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    for a, b in zip(steady.apical, dynamic.apical, strict=True):
        assert float(a.abs().max()) > 1e-3 and torch.allclose(a, b, rtol=0, atol=1e-10)


def test_net_forward_is_the_circuit_output_without_target() -> None:
    """Folding the basal attenuation into the net's weights: in the self-predicting state, net(x) is the settled
    output potential without a target, so test-time prediction is the feedforward pass."""
    rule = transposed_circuit(tol=1e-12)
    x, _ = data(10, 4, n=6, seed=9)
    assert torch.allclose(rule.settle(x, None).potentials.u[-1], rule.net(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"mode": "dynamic", "steps": 20, "noise": 0.1, "feedback": "learned"}])
def test_microcircuit_state_dict_round_trip(options: dict) -> None:
    """The checkpoint (safetensors bytes) restores W^ip, W^pi, W^down and the generator: the next steps match."""
    x, y = data(10, 4, n=6, seed=9)
    a = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), seed=1, **options)
    a.backward(x, y)
    saved = safetensors.torch.load(safetensors.torch.save({k: v.contiguous() for k, v in a.state_dict().items()}))
    b = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), seed=99, **options)
    b.load_state_dict(saved)
    b.net.load_state_dict(a.net.state_dict())
    for rule in (a, b):
        rule.net.zero_grad()
        rule.backward(x, y)
    for (name, p), q in zip(a.net.named_parameters(), b.net.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    with pytest.raises(BioPropError, match="unexpected state"):
        b.load_state_dict({**saved, "bogus.0": torch.zeros(1)})


def test_grads_is_pure_and_backward_updates_the_interneurons() -> None:
    x, y = data(10, 4, n=6, seed=9)
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3))
    before = {k: v.clone() for k, v in rule.state_dict().items()}
    first, second = rule.grads(x, y).grads, rule.grads(x, y).grads
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(v, rule.state_dict()[k]) for k, v in before.items())
    rule.backward(x, y)
    assert not torch.equal(before["w_pi.0"], rule.state_dict()["w_pi.0"])
    diagnostics = rule.diagnostics()
    assert {"apical_norm_l1", "apical_norm_l2", "apical_norm_free_l1"} <= set(diagnostics)


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


def test_microcircuit_without_steady_state_names_the_setting() -> None:
    x, y = data(10, 4, n=6, seed=9)
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), sweeps=1, tol=1e-14)
    with pytest.raises(DivergenceError, match=r"sweeps=1 .*raise sweeps"):
        rule.grads(x, y)


def test_conductances_too_far_from_their_defaults_to_divide_by_are_refused_at_create() -> None:
    """The plasticity divides by m = g_som/(g_l+g_d+g_som) (the interneurons' normalised rate) and, with normalize,
    by s_1 = λ (a(1−m))^(N−1). Below the dtype's smallest normal number every update overflows, so such
    conductances are refused when the rule is bound, naming them (not a NaN interneuron synapse later, blamed on no
    option). Thresholds from the formulas: g_l=1e308 gives m ≈ 1e-309 < float64's 2.2e-308; g_l=1e306 gives
    m ≈ 1e-307 (fine in float64, not in float32, 1.2e-38); g_a=1e-200 gives s_1 ≈ 0.083·(0.8e-200/0.88)² ≈ 7e-402,
    which only normalize divides by."""
    net = tanh_mlp(SIZES)
    with pytest.raises(BioPropError) as info:
        rules.create("microcircuit", net, g_l=1e308)
    message = str(info.value)
    assert message.startswith("rule microcircuit: the conductances g_l=1e+308, g_b=1, g_a=0.8, g_d=1, g_som=0.1 give "
                              "m = g_som/(g_l+g_d+g_som) = 1e-309, too small to divide by in torch.float64")
    assert "\n" not in message
    rules.create("microcircuit", net, g_l=1e306, normalize=False)
    with pytest.raises(BioPropError, match=r"m = g_som/\(g_l\+g_d\+g_som\) = 1e-307, too small .* torch.float32"):
        rules.create("microcircuit", tanh_mlp(SIZES).float(), g_l=1e306, normalize=False)
    with pytest.raises(BioPropError, match=r"g_a=1e-200, .* give the attenuation s_1 = .* = 0, too small"):
        rules.create("microcircuit", net, g_a=1e-200)
    rules.create("microcircuit", net, g_a=1e-200, normalize=False)


def test_an_option_set_far_from_its_default_is_named_before_the_usual_suspects() -> None:
    """init_scale=1e20 in float32: the output layer's rate times W^down (~1e20 each) overflows in the first sweep.
    The guard cannot tell which setting caused that, so it names the option the user set first, then g_a; in the
    first step of the self-predicting phase no plasticity has acted yet, so prepare_lr is not advised, and the
    training step advises the learning rate last."""
    net = tanh_mlp(SIZES).float()
    x, y = data(10, 4)
    with pytest.raises(DivergenceError) as info:
        rules.create("microcircuit", net, init_scale=1e20, prepare_steps=3).prepare()
    message = str(info.value)
    assert message.startswith("microcircuit: the state became non-finite at sweep 0, in step 1 of the self-predicting "
                              "phase; suspects, first the options you set: init_scale=1e+20 (default 1)")
    assert message.endswith("; then lower g_a (now 0.8)") and "prepare_lr" not in message
    with pytest.raises(DivergenceError) as info:
        rules.create("microcircuit", net, init_scale=1e20).backward(x.float(), y)
    message = str(info.value)
    assert message.index("init_scale=1e+20") < message.index("g_a") < message.index("the learning rate"), message


def test_cards_are_complete() -> None:
    for name in ("dendritic", "microcircuit"):
        card = rules.entry(name).card
        assert len(card) == 6 and all(entry.why for entry in card.values())
    assert rules.entry("microcircuit").card["weight_transport"].removed
    assert not rules.entry("dendritic").card["weight_transport"].removed


def test_from_random_interneurons_the_phase_reaches_self_prediction_and_apical_is_backprop_error() -> None:
    """Sacramento et al. 2018's claim end to end: with top-down weights W^down = W̃ᵀ and W^ip, W^pi random, the
    self-predicting phase (random inputs, no target) silences the apical dendrites (mean ‖v_A‖ below 5 % of its
    start); then, with a target, each hidden layer's apical potential is backprop's error at that layer
    (−W̃_{k+1}ᵀ ∂L/∂a_{k+1}, from autograd): cosine ≥ 0.95."""
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), prepare_steps=1500, tol=1e-10, sweeps=300, seed=5)
    linears = [m for m in rule.net if isinstance(m, nn.Linear)]
    for k in range(len(linears) - 1):
        rule.circuit.w_down[k].copy_(linears[k + 1].weight.detach().T)
    trace = rule.prepare()["apical_norm"]
    assert trace[-1] < 0.05 * trace[0]
    x, y = data(10, 4, n=32, seed=9)
    pre, h = [], x
    with torch.enable_grad():
        for m in linears:
            pre.append(h @ m.weight.T + m.bias)
            pre[-1].retain_grad()
            h = torch.tanh(pre[-1])
        torch.nn.functional.cross_entropy(pre[-1], y, reduction="sum").backward()
    rule.net.zero_grad()
    for k, apical in enumerate(rule.settle(x, y).apical):
        assert cosine(apical, -pre[k + 1].grad @ linears[k + 1].weight.detach()) >= 0.95, k
