"""The dendritic cortical microcircuit (Sacramento et al. 2018) against independent math: the self-predicting
state's weight relations, feedback-alignment / backprop errors in the apical compartment, the ODE's fixed point;
and the contract: pure grads (noise from step-seeded generators), the synapses adopted by backward only, the
checkpoint, the run's one output loss, the declared traces, diagnostics and figure."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from torch import nn

from bioprop import losses, rules
from bioprop.errors import BioPropError, DivergenceError
from bioprop.rules.microcircuit_dynamics import Target, teacher
from conftest import tanh_mlp
from test_dendritic import SIZES, cosine, data, loss_by_hand, loss_grad_by_hand, onehot

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
    """The checkpoint (safetensors bytes) restores W^ip, W^pi, W^down and the step count, which seeds the noise (a
    resumed run has its run's options, seed included): the next steps match bit for bit. Without it they do not."""
    x, y = data(10, 4, n=6, seed=9)
    a = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), seed=1, **options)
    a.backward(x, y)
    saved = safetensors.torch.load(safetensors.torch.save({k: v.contiguous() for k, v in a.state_dict().items()}))
    assert int(saved["step"]) == 1
    fresh = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), seed=1, **options)
    fresh.net.load_state_dict(a.net.state_dict())
    b = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), seed=1, **options)
    b.load_state_dict(saved)
    b.net.load_state_dict(a.net.state_dict())
    for rule in (a, b):
        rule.net.zero_grad()
        rule.backward(x, y)
    for (name, p), q in zip(a.net.named_parameters(), b.net.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    fresh_grads = fresh.grads(x, y).grads
    assert not all(torch.equal(fresh_grads[n], p.grad) for n, p in a.net.named_parameters())
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
    assert message.startswith(
        "rule microcircuit: the conductances g_l=1e+308, g_b=1, g_a=0.8, g_d=1, g_som=0.1 give "
        "m = g_som/(g_l+g_d+g_som) = 1e-309, too small to divide by in torch.float64"
    )
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
    assert message.startswith(
        "microcircuit: the state became non-finite at sweep 0, in step 1 of the self-predicting "
        "phase; suspects, first the options you set: init_scale=1e+20 (default 1)"
    )
    assert message.endswith("; then lower g_a (now 0.8)") and "prepare_lr" not in message
    with pytest.raises(DivergenceError) as info:
        rules.create("microcircuit", net, init_scale=1e20).backward(x.float(), y)
    message = str(info.value)
    assert message.index("init_scale=1e+20") < message.index("g_a") < message.index("the learning rate"), message


def test_from_random_interneurons_the_phase_reaches_self_prediction_and_apical_is_backprop_error() -> None:
    """Sacramento et al. 2018's claim end to end: with top-down weights W^down = W̃ᵀ and W^ip, W^pi random, the
    self-predicting phase (random inputs, no target) silences the apical dendrites (mean ‖v_A‖ below 5 % of its
    start); then, with a target, each hidden layer's apical potential is backprop's error at that layer
    (−W̃_{k+1}ᵀ ∂L/∂a_{k+1}, from autograd): cosine ≥ 0.95."""
    # sweeps: a budget; the phase's first steps, with random W^pi, may take several hundred to reach tol
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), prepare_steps=1500, tol=1e-10, sweeps=1000, seed=5)
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


@pytest.mark.parametrize(
    "options", [{"mode": "dynamic", "steps": 30, "noise": 0.2}, {"mode": "dynamic", "steps": 30, "noise": 0.2,
                "feedback": "learned", "baseline": "none"}, {"feedback": "learned"}],
)  # fmt: skip
def test_grads_with_noise_is_pure_and_backward_advances_the_noise(options: dict) -> None:
    """Contract v2 purity: with somatic noise σ > 0, grads twice gives the same update and loss, leaves the rule's
    state (synapses, step count) and the global random state as they were; backward adopts the synapses grads
    computed (Update.state) and the next step draws other noise (step-seeded), so its update differs."""
    x, y = data(10, 4, n=6, seed=9)
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), seed=4, **options)
    before = {k: v.clone() for k, v in rule.state_dict().items()}
    rng = torch.get_rng_state()
    first, second = rule.grads(x, y), rule.grads(x, y)
    assert torch.equal(rng, torch.get_rng_state())
    assert first.state is None and torch.equal(first.loss, second.loss)
    assert all(torch.equal(first.grads[k], second.grads[k]) for k in first.grads)
    assert all(torch.equal(v, rule.state_dict()[k]) for k, v in before.items())
    trained = rule.train_update(x, y)  # what backward applies, computed without adopting it
    assert all(torch.equal(trained.grads[k], first.grads[k]) for k in first.grads)
    rule.net.zero_grad()
    rule.backward(x, y)
    assert torch.equal(rng, torch.get_rng_state())
    after = rule.state_dict()
    assert int(after["step"]) == 1
    for k, tensor in enumerate(trained.state.circuit.w_pi):
        assert torch.equal(after[f"w_pi.{k}"], tensor) and not torch.equal(after[f"w_pi.{k}"], before[f"w_pi.{k}"])
    again = rule.grads(x, y).grads  # new synapses, and new noise where there is noise
    assert not all(torch.equal(again[k], first.grads[k]) for k in again)


@pytest.mark.parametrize("output", ["se", "ce"])
def test_the_update_reports_the_runs_one_loss(output: str) -> None:
    """Update.loss is the run's output loss of net(x) (batch mean, by hand), not cross-entropy whatever the output;
    the teacher is u_tgt = v̂_N − ∂ℓ/∂v̂_N: se the one-hot target, ce v̂_N − (softmax(v̂_N) − onehot)."""
    x, y = data(10, 4, n=6, seed=9)
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), output=output)
    prediction = rule.net(x).detach()
    assert torch.allclose(rule.grads(x, y).loss, loss_by_hand(prediction, y, output), rtol=0, atol=1e-12)
    assert rule.loss.name == output
    expected = onehot(y, 4) if output == "se" else prediction - loss_grad_by_hand(prediction, y, "ce")
    assert torch.allclose(teacher(prediction, Target(y, losses.get(output))), expected, rtol=0, atol=1e-12)


def test_declared_diagnostics_cover_what_it_logs_with_todays_legend() -> None:
    """Every diagnostic the rule logs matches exactly one declared pattern; the apical ones carry the legend labels
    apical.png has always had; apical.png is declared with the self-predicting phase's trace and those two."""
    import re

    x, y = data(10, 4, n=6, seed=9)
    rule = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), feedback="learned")
    rule.backward(x, y)
    names = rule.diagnostics()
    assert len(names) == 2 * 2 + 3 * 2  # two hidden layers: apical with and without target, three angles
    for name in names:
        matches = [spec for spec in rule.diagnostic_specs if re.fullmatch(spec.pattern, name)]
        assert len(matches) == 1, name

    def label(name: str) -> str:
        spec = next(spec for spec in rule.diagnostic_specs if re.fullmatch(spec.pattern, name))
        return spec.label.format(**re.fullmatch(spec.pattern, name).groupdict())

    assert label("apical_norm_l2") == "hidden layer 2, with target (mean over the epoch)"
    assert label("apical_norm_free_l1") == "hidden layer 1, without target (free, last batch)"
    (figure,) = rule.figures
    assert figure.file == "apical.png" and figure.preparation == "apical_norm"
    assert {rule.diagnostic_specs[i].pattern for i in figure.diagnostics} == {
        r"apical_norm_l(?P<layer>\d+)",
        r"apical_norm_free_l(?P<layer>\d+)",
    }
    assert [t.name for t in rule.trace_specs] == ["apical_norm"]


def test_prepare_changes_the_synapses_but_not_the_step_count_and_is_reproducible() -> None:
    """The self-predicting phase is an explicit step method: it changes the interneuron synapses (never W^down nor
    the net), keeps the step count, uses no global random state, and two rules with one seed do the same."""
    a = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), prepare_steps=5, seed=7)
    b = rules.create("microcircuit", tanh_mlp(SIZES, seed=3), prepare_steps=5, seed=7)
    before, net_before = a.state_dict(), {k: v.clone() for k, v in a.net.state_dict().items()}
    rng = torch.get_rng_state()
    trace = a.prepare()["apical_norm"]
    assert torch.equal(rng, torch.get_rng_state()) and len(trace) == 5
    assert trace == b.prepare()["apical_norm"]
    after = a.state_dict()
    assert int(after["step"]) == 0 and torch.equal(after["w_down.0"], before["w_down.0"])
    assert not torch.equal(after["w_ip.0"], before["w_ip.0"]) and not torch.equal(after["w_pi.1"], before["w_pi.1"])
    assert all(torch.equal(v, a.net.state_dict()[k]) for k, v in net_before.items())
