"""Lateral inhibition (Földiák 1990, Biol. Cybern. 64:165; issue 12 item 4), checked against math written here with
explicit tensor ops and loops, never the module's own functions: the plain MLP it must equal while M = 0, the fixed
point y = φ(a − W y) it must reach (W = M clipped at 0, zero diagonal, built by hand), Földiák's anti-Hebbian
update by loops over pairs, bp's forward-weight update as autograd through the unrolled settling written here, the
correlation measure against numpy's ``corrcoef``; then the rules' hook (keys, sums over calls, purity, dropout
draws), the rules that refuse the layer, the arch grammar, and the decorrelation the rule is for, measured.
Everything compared is float64."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bioprop import experiments, nets, rules
from bioprop.errors import BioPropError, DivergenceError
from bioprop.nets.lateral import LateralInhibition, LateralParameters, mean_abs_correlation
from bioprop.rules.base import local_grads

FEEDFORWARD_ONLY = [name for name in rules.names() if rules.entry(name).cls.networks == frozenset({"feedforward"})]


def init(net: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """float64 Linear parameters from an explicit generator (M left as it is)."""
    generator = torch.Generator().manual_seed(seed)
    net.double()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith(".M"):
                continue
            fan_in = param.shape[1] if param.dim() > 1 else 3
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * scale * fan_in**-0.5)
    return net


def batch(n: int = 9, features: int = 6, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator, dtype=torch.float64)
    return x, torch.randint(classes, (n,), generator=generator)


def inhibitory(n: int, strength: float, seed: int = 2) -> Tensor:
    """A symmetric float64 M of entries in [0.5, 1.5] · ``strength``, but for one pair below 0 (a clipped entry)
    and a nonzero diagonal (both of which the layer must ignore): ‖W‖₂ ≈ (n − 1) · strength, λ_min(W) well above −1."""
    generator = torch.Generator().manual_seed(seed)
    U = torch.rand(n, n, generator=generator, dtype=torch.float64) * 2 - 1
    M = strength * (1 + 0.5 * (U + U.T) / 2)
    M[0, 1] = M[1, 0] = -strength
    return M


def clipped(M: Tensor) -> Tensor:
    """W by hand: the entries of M below 0 set to 0, and the diagonal to 0."""
    W = M.detach().clone()
    for i, j in itertools.product(range(W.shape[0]), repeat=2):
        if W[i, j] < 0 or i == j:
            W[i, j] = 0.0
    return W


def with_lateral(arch: str, act: str = "relu", M_scale: float = 0.0, seed: int = 0) -> nn.Sequential:
    """``nets.build(arch)`` on 6 features and 3 classes in float64, Linear weights from ``seed``, every M set to
    :func:`inhibitory` of strength ``M_scale`` (0: left at 0)."""
    net = init(nets.build(arch, (6,), 3, act), seed)
    with torch.no_grad():
        for k, module in enumerate(m for m in net if isinstance(m, LateralInhibition)):
            if M_scale:
                module.M.copy_(inhibitory(module.n, M_scale, seed=10 + k))
    return net


def anti_hebbian_by_hand(y: Tensor, M: Tensor, rate: float, p: float | None, decay: float = 1.0) -> Tensor:
    """−rate (⟨y_i y_j⟩ − p² − decay · max(M_ij, 0)) for i ≠ j (p None: ȳ_i ȳ_j for p²), by loops; 0 on the diagonal
    and where M_ij ≤ 0 and the entry is positive (it would lower M further below the clip)."""
    B, n = y.shape
    M = M.detach()
    out = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), repeat=2):
        if i == j:
            continue
        product = sum(float(y[b, i]) * float(y[b, j]) for b in range(B)) / B
        target = p * p if p is not None else (float(y[:, i].sum()) / B) * (float(y[:, j].sum()) / B)
        value = -rate * (product - target - decay * max(float(M[i, j]), 0.0))
        out[i, j] = 0.0 if (M[i, j] <= 0 and value > 0) else value
    return out


# ------------------------------------------------------------------------------------------- the forward pass


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_an_untrained_lateral_layer_computes_exactly_the_plain_mlp(act: str) -> None:
    """M starts at 0: the lateral net must be the MLP it extends, bit for bit, so that adding the option changes
    nothing until the anti-Hebbian rule has learned something."""
    plain = init(nets.build("mlp:7x5", (6,), 3, act))
    lateral = nets.build("mlp:7x5:lateral", (6,), 3, act).double()
    missing = lateral.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["2.M", "4.M"] and all(not m.M.any() for m in lateral if isinstance(m, LateralInhibition))
    x, _ = batch()
    assert torch.equal(lateral(x), plain(x))


@pytest.mark.parametrize(("act", "phi"), [("relu", torch.relu), ("tanh", torch.tanh)])
def test_the_settled_response_is_the_fixed_point_to_float64_precision(act: str, phi) -> None:
    """y = φ(a − W y) with W = relu(M), zero diagonal (by hand here), to 1e-10, for an M strong enough
    (‖W‖₂ > 1) that the undamped iteration would not contract: the automatic damping must handle it."""
    net = with_lateral("mlp:12:lateral:steps=400", act, M_scale=0.2)
    W = clipped(net[2].M)
    assert torch.linalg.matrix_norm(W, 2) > 1.2
    x, _ = batch()
    with torch.no_grad():
        a = x @ net[1].weight.T + net[1].bias
        y = net[2](a)
    assert float((y - phi(a - y @ W.T)).abs().max()) < 1e-10


def test_a_response_that_does_not_settle_is_refused_naming_the_layer() -> None:
    """Too few steps, or undamped steps under strong inhibition, must raise one line naming the layer rather than
    return a y that is not the settled response."""
    x, y = batch()
    for spec, strength in (("mlp:12:lateral:steps=2", 0.2), ("mlp:12:lateral:damping=1", 0.5)):
        net = with_lateral(spec, M_scale=strength)
        with pytest.raises(DivergenceError, match=r"^lateral layer 2 \(12 units\): y = φ\(a − relu\(M\) y\) did not "
                                                  r"settle in \d+ steps") as caught:  # fmt: skip
            net(x)
        assert "\n" not in str(caught.value)
        with pytest.raises(DivergenceError, match="lateral layer 2"):
            rules.create("bp", net).grads(x, y)
    with torch.no_grad():
        with_lateral("mlp:12:lateral:steps=400", M_scale=0.5)(x)  # the same M settles under the automatic damping


def test_an_in_place_activation_leaves_the_pre_activation_alone() -> None:
    layer = LateralInhibition(4, nn.ReLU(inplace=True)).double()
    a = torch.tensor([[-1.0, 2.0, -3.0, 4.0]], dtype=torch.float64)
    kept = a.clone()
    assert torch.equal(layer(a), torch.relu(kept)) and torch.equal(a, kept)


# ----------------------------------------------------------------------------------------------- the learning


@pytest.mark.parametrize(("p", "decay"), [(None, 1.0), (0.4, 1.0), (None, 0.0), (2.0, 2.5)])
def test_the_update_of_M_is_foldiaks_anti_hebbian_rule_by_hand(p: float | None, decay: float) -> None:
    """M's entry of the hook is −rate (⟨y_i y_j⟩ − p² − λ W_ij), i ≠ j, on the settled responses (p² = ȳ_i ȳ_j in
    the covariance form; λ = 0: Földiák's rule as written), zero on the diagonal and where the clip already holds
    M_ij ≤ 0 and the rule would lower it."""
    spec = f"mlp:5:lateral:rate=0.7,decay={decay}" + ("" if p is None else f",p={p}")
    net = with_lateral(spec, M_scale=0.3)
    x, _ = batch()
    y = net[:3](x).detach()
    got = local_grads(net, x)
    assert set(got) == {"2.M"}
    expected = anti_hebbian_by_hand(y, net[2].M, 0.7, p, decay)
    if p == 2.0:  # ⟨y_0 y_1⟩ < p²: the rule would lower M_01 = −0.3 further, so the clip holds it
        assert expected[0, 1] == 0 == expected[1, 0]
    torch.testing.assert_close(got["2.M"], expected, rtol=1e-12, atol=1e-14)


def test_sgd_with_learning_rate_lr_takes_foldiaks_step() -> None:
    """The update is a descent direction in .grad: SGD with learning rate lr moves M by lr · rate · (⟨y_i y_j⟩ − p²),
    Földiák's ΔM with α = lr · rate, where the clip does not hold it."""
    net = with_lateral("mlp:5:lateral:rate=2,p=0.3", M_scale=0.3)
    x, y = batch()
    settled = net[:3](x).detach()
    before = net[2].M.detach().clone()
    rule = rules.create("bp", net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    rule.backward(x, y)
    optimizer.step()
    step = -0.05 * anti_hebbian_by_hand(settled, before, 2.0, 0.3)
    torch.testing.assert_close(net[2].M.detach() - before, step, rtol=1e-12, atol=1e-14)


def unrolled_logits(net: nn.Sequential, x: Tensor, steps: int, tau: float) -> Tensor:
    """The lateral MLP by hand: a = W₁x + b₁, y₀ = relu(a), y_{k+1} = y_k + τ (relu(a − W y_k) − y_k) with W held
    fixed (clipped by hand, no gradient), logits = W₂ y + b₂."""
    W = clipped(net[2].M)
    a = x @ net[1].weight.T + net[1].bias
    y = torch.relu(a)
    for _ in range(steps):
        y = y + tau * (torch.relu(a - y @ W.T) - y)
    return y @ net[3].weight.T + net[3].bias


def test_bp_trains_the_forward_weights_through_the_unrolled_settling_and_M_by_the_local_rule() -> None:
    """bp's update of the Linear weights is autograd of the cross-entropy through the ``steps`` settling iterations
    with M held fixed; M's is the anti-Hebbian rule (not a loss gradient, which the reference gives as 0); and
    backward writes into .grad exactly what grads returns."""
    net = with_lateral("mlp:7:lateral:steps=40,damping=0.4", M_scale=0.2)
    x, y = batch()
    rule = rules.create("bp", net)
    update = rule.grads(x, y).grads
    linear = {n: p for n, p in net.named_parameters() if not n.endswith(".M")}
    with torch.enable_grad():
        loss = F.cross_entropy(unrolled_logits(net, x, 40, 0.4), y)
        expected = dict(zip(linear, torch.autograd.grad(loss, list(linear.values())), strict=True))
    assert set(update) == {*linear, "2.M"}
    for name, grad in expected.items():
        torch.testing.assert_close(update[name], grad, rtol=1e-10, atol=1e-13)
    settled = net[:3](x).detach()
    torch.testing.assert_close(update["2.M"], anti_hebbian_by_hand(settled, net[2].M, 0.1, None), rtol=1e-12,
                               atol=1e-14)  # fmt: skip
    assert not rule.reference_grads(x, y)["2.M"].any()
    rule.backward(x, y)
    for name, param in net.named_parameters():
        assert torch.equal(param.grad, update[name]), name


# ------------------------------------------------------------------------------------------------- the hook


def test_the_hook_keys_entries_like_named_parameters_and_sums_a_shared_module() -> None:
    """One module used at two positions is one parameter: its entry is the sum of both calls' updates, under the
    name named_parameters gives it; a network without such modules gives {} without running at all."""
    generator = torch.Generator().manual_seed(3)
    shared = LateralInhibition(5, params=LateralParameters(steps=60, rate=0.5)).double()
    with torch.no_grad():
        shared.M.copy_(inhibitory(5, 0.2))
    net = init(nn.Sequential(nn.Linear(4, 5), shared, nn.Linear(5, 5), shared, nn.Linear(5, 3)), seed=4)
    x = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    first = net[:2](x).detach()
    second = net[:4](x).detach()
    got = local_grads(net, x)
    assert list(got) == ["1.M"] and [n for n, _ in net.named_parameters() if n.endswith("M")] == ["1.M"]
    by_hand = anti_hebbian_by_hand(first, shared.M, 0.5, None) + anti_hebbian_by_hand(second, shared.M, 0.5, None)
    torch.testing.assert_close(got["1.M"], by_hand, rtol=1e-12, atol=1e-14)

    calls = []
    plain = nn.Sequential(nn.Linear(4, 3)).double()
    plain.register_forward_hook(lambda *_: calls.append(1))
    assert local_grads(plain, x) == {} and calls == []
    two = with_lateral("mlp:5x4:lateral")
    assert (
        set(local_grads(two, batch()[0]))
        == {n for n, _ in two.named_parameters() if n.endswith(".M")}
        == {
            "2.M",
            "4.M",
        }
    )


def test_grads_is_pure_and_a_dropout_mask_is_drawn_once_as_net_x_would() -> None:
    """grads twice gives the same update and leaves .grad, the step, the parameters and the random state as net(x)
    leaves them (dropout draws one mask from the global generator, as net(x) does; the hook's own forward pass
    draws that same mask and restores the state, so M learns from the activity the loss saw)."""
    torch.manual_seed(0)
    layer = LateralInhibition(5, params=LateralParameters(steps=40)).double()
    with torch.no_grad():
        layer.M.copy_(inhibitory(5, 0.2))
    net = init(nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.Linear(5, 5), layer, nn.Linear(5, 3)))
    x, y = batch()
    rule = rules.create("bp", net)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}

    state = torch.get_rng_state()
    with torch.no_grad():
        settled = net[:4](x)  # with the mask net(x) draws from this state, first thing
        torch.set_rng_state(state)
        net(x)
    after_net = torch.get_rng_state()
    torch.set_rng_state(state)
    first = rule.grads(x, y).grads
    assert torch.equal(torch.get_rng_state(), after_net), "one mask drawn, as net(x) draws it"
    torch.set_rng_state(state)
    second = rule.grads(x, y).grads
    assert all(torch.equal(first[n], second[n]) for n in first)
    torch.testing.assert_close(first["3.M"], anti_hebbian_by_hand(settled, layer.M, 0.1, None), rtol=1e-12, atol=1e-14)
    assert rule.step == 0 and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(p, params[n]) for n, p in net.named_parameters())


@pytest.mark.parametrize("name", FEEDFORWARD_ONLY)
def test_a_rule_that_cannot_carry_the_layer_refuses_it_at_create_naming_it(name: str) -> None:
    net = with_lateral("mlp:5:lateral")
    with pytest.raises(BioPropError, match=rf"^rule {name}: layer 2 \(LateralInhibition\) is not supported") as caught:
        rules.create(name, net)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------- the arch grammar


def test_the_arch_puts_a_lateral_layer_on_every_hidden_layer_with_its_settings() -> None:
    net = nets.build("mlp:16x8:lateral:steps=70,damping=0.5,tol=1e-6,rate=0.2,p=0.1", (1, 4, 4), 3)
    lateral = [(i, m) for i, m in enumerate(net) if isinstance(m, LateralInhibition)]
    assert [i for i, _ in lateral] == [2, 4] and [m.name for _, m in lateral] == ["2", "4"]
    assert [tuple(m.M.shape) for _, m in lateral] == [(16, 16), (8, 8)]
    assert all(isinstance(m.act, nn.ReLU) for _, m in lateral)
    assert lateral[0][1].params == LateralParameters(steps=70, damping=0.5, tol=1e-6, rate=0.2, p=0.1)
    assert nets.build("mlp:16:lateral", (6,), 3)[2].params == LateralParameters()
    assert isinstance(nets.build("mlp:16:lateral", (6,), 3, "tanh")[2].act, nn.Tanh)
    assert any("lateral" in key for key in nets.ARCHS)
    assert not any(isinstance(m, LateralInhibition) for m in nets.build("mlp:16x8", (6,), 3))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("mlp:16:lateal", "unknown suffix 'lateal'"),
        ("mlp:16:", "unknown suffix ''"),
        ("mlp::lateral", "needs a hidden layer"),
        ("mlp:16:lateral:steps=0", "steps=0 must be a whole number from 1"),
        ("mlp:16:lateral:steps=2.5", "steps='2.5' must be a whole number"),
        ("mlp:16:lateral:damping=2", "damping=2.0 must be in"),
        ("mlp:16:lateral:tol=nan", "tol=nan must be a finite number"),
        ("mlp:16:lateral:rate=-1", "rate=-1.0 must be non-negative"),
        ("mlp:16:lateral:beta=1", "unknown lateral option 'beta=1'"),
        ("mlp:16:lateral:steps", "unknown lateral option 'steps'"),
    ],
)
def test_a_bad_lateral_arch_is_one_line_naming_it(spec: str, says: str) -> None:
    with pytest.raises(BioPropError) as caught:
        nets.build(spec, (6,), 3)
    message = str(caught.value)
    assert message.startswith(f"bad arch {spec!r}") and says in message and "\n" not in message


def test_M_is_a_parameter_that_checkpoints_through_safetensors(tmp_path: Path) -> None:
    net = with_lateral("mlp:5:lateral", M_scale=0.3)
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    other = nets.build("mlp:5:lateral", (6,), 3).double()
    other.load_state_dict(load_file(tmp_path / "net.safetensors"))
    x, _ = batch()
    assert torch.equal(other[2].M, net[2].M) and torch.equal(other(x), net(x))


# ------------------------------------------------------------------------------------------ the measurement


def test_mean_abs_correlation_agrees_with_numpy_and_leaves_constant_units_out() -> None:
    generator = torch.Generator().manual_seed(5)
    h = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    h[:, 1] += h[:, 0]
    with_dead = torch.cat([h, torch.zeros(30, 1, dtype=torch.float64)], dim=1)
    r = np.corrcoef(h.numpy(), rowvar=False)
    expected = np.abs(r[np.triu_indices(4, k=1)]).mean()
    assert abs(mean_abs_correlation(with_dead) - expected) < 1e-12
    assert np.isnan(mean_abs_correlation(torch.ones(5, 3)))


def test_the_anti_hebbian_rule_alone_decorrelates_correlated_units() -> None:
    """What the rule is for (Földiák 1990): units driven by a shared input are correlated; a few hundred SGD steps of
    the anti-Hebbian rule on M alone (the drive fixed in distribution) must cut their mean |correlation| on held-out
    drives to less than half, with the settled responses still the fixed point."""
    generator = torch.Generator().manual_seed(6)
    n = 8

    def drives(count: int) -> Tensor:  # (count, n): a shared factor plus private noise, mostly above relu's kink
        shared = torch.randn(count, 1, generator=generator, dtype=torch.float64)
        return 2.0 + 0.8 * shared + 0.5 * torch.randn(count, n, generator=generator, dtype=torch.float64)

    layer = LateralInhibition(n, params=LateralParameters(rate=1.0)).double()
    held_out = drives(500)
    before = mean_abs_correlation(layer(held_out))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(300):
        a = drives(32)
        optimizer.zero_grad()
        layer.M.grad = layer.local_grads((a,), layer(a))["M"]
        optimizer.step()
    after = mean_abs_correlation(layer(held_out))
    assert before > 0.5 and after < 0.5 * before, (before, after)


def test_the_experiment_runs_quickly_and_records_both_networks(tmp_path: Path) -> None:
    record = experiments.run_experiment("lateral-decorrelation", tmp_path, seed=0, quick=True)
    assert (tmp_path / "lateral-decorrelation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "lateral-decorrelation.json").read_text())
    assert saved["status"] == "finished" and saved["quick"] is True
    results = record["results"]
    for kind in ("plain", "lateral"):
        assert 0 < results["final_mean_abs_correlation"][kind] < 1
        assert results["final_test_accuracy"][kind] > 0.5  # ten classes: chance is 0.1
    run = results["runs"][0]
    assert run["plain"]["mean_inhibition"] == [0.0, 0.0] and run["lateral"]["mean_inhibition"][-1] > 0


def test_the_update_angles_leave_out_the_lateral_weights() -> None:
    """M learns by its own anti-Hebbian rule, not by the loss: it has no reference gradient, so update_angles gives
    angles for the Linear layers only (no NaN column for M), and the angles it gives are those of bp: 0."""
    from bioprop import metrics

    torch.manual_seed(0)
    net = nets.build("mlp:8:lateral", (6,), 3).double()
    rule = rules.create("bp", net)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    angles = metrics.update_angles(rule, [(x, y)])
    assert set(angles) == {name for name, _ in net.named_parameters() if not name.endswith(".M")}
    assert all(angle < 1e-5 for angle in angles.values())
