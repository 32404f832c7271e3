"""Learned lateral inhibition in the spiking recurrent networks (``lif:N:lateral``, ``alif:N:lateral``,
``lsnn:N+M:lateral``; issue 12 item 4), checked in float64 against math written here: the plain network it must equal
while M = 0; the neurons stepped by hand with the input current W_in x^t + (W_rec − W) z^{t−1} (W = M clipped at 0,
zero diagonal, built by loops); M's anti-Hebbian update on spike counts by loops over pairs and examples; every
recurrent rule that accepts the network, whose update of the network's weights must be the one it makes on a plain
network whose recurrent matrix is the effective one (and, for the exact rules, autograd through the hand-stepped
dynamics); then the arch grammar and refusals, purity, checkpoints and the decorrelation the rule is for, measured."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from bioprop import experiments, nets, rules
from bioprop.errors import BioPropError
from bioprop.nets.lateral import SpikingLateral, SpikingLateralParameters, mean_abs_correlation
from bioprop.nets.recurrent import LIFParameters, RecurrentNet
from bioprop.rules.base import local_grads
from test_lateral import clipped

D = torch.float64
STEPS, BATCH, INPUTS, CLASSES = 14, 5, 4, 3
RECURRENT = [name for name in rules.names() if "recurrent" in rules.entry(name).cls.networks]
#: The recurrent rules that train spiking networks, and so a lateral one: each is checked below.
HANDLED = ("bptt", "tbptt", "eprop", "rtrl")


def build(spec: str, seed: int = 0) -> RecurrentNet:
    """``nets.build(spec)`` for (T, 4) inputs and 3 classes in float64, weights drawn from ``seed`` (the global random
    state left as it was); M draws nothing, so a plain and a lateral spec of one seed share their weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nets.build(spec, (STEPS, INPUTS), CLASSES).to(D)


def strong_M(n: int, scale: float = 6.0, seed: int = 2) -> Tensor:
    """A float64 M (n, n) of entries in [0.5, 1.5] · ``scale`` (the size of W_rec's entries, ~N(0, 1/n)/(1 − α)),
    with one negative pair (clipped away) and a nonzero diagonal (ignored)."""
    generator = torch.Generator().manual_seed(seed)
    M = scale * (0.5 + torch.rand(n, n, generator=generator, dtype=D))
    M[0, 1] = M[1, 0] = -scale
    return M


def effective(net: RecurrentNet) -> Tensor:
    """The recurrent matrix a lateral net's dynamics must use, by hand: W_rec with its diagonal zeroed, minus W."""
    w = net.recurrent.weight.detach().clone()
    for i in range(w.shape[0]):
        w[i, i] = 0.0
    return w - (clipped(net.lateral.M) if net.lateral is not None else 0.0)


def lateral_pair(spec: str = "lsnn:3+3", seed: int = 0) -> tuple[RecurrentNet, RecurrentNet]:
    """A lateral net ``spec:lateral`` with :func:`strong_M`, and the plain net ``spec`` whose recurrent weight is
    the lateral one's effective matrix (:func:`effective`), the other weights the same."""
    lateral = build(f"{spec}:lateral", seed)
    with torch.no_grad():
        lateral.lateral.M.copy_(strong_M(lateral.n_hidden))
    plain = build(spec, seed)
    with torch.no_grad():
        plain.recurrent.weight.copy_(effective(lateral))
    return lateral, plain


def sequences(seed: int = 1, steps: int = STEPS, batch: int = BATCH) -> tuple[Tensor, Tensor]:
    """Input spikes (T, B, 4) at p = 0.5 and labels in the last half of the steps (−1 before)."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(steps, batch, INPUTS, generator=generator) < 0.5).to(D)
    y = torch.randint(0, CLASSES, (batch,), generator=generator).expand(steps, batch).clone()
    y[: steps // 2] = -1
    return x, y


class HandSpike(torch.autograd.Function):
    """z = H(v − A) where the neuron is free (not refractory), else 0; the surrogate ψ = (γ/v_th) max(0, 1 −
    |v − A|/v_th) (0 while refractory) as ∂z/∂v = −∂z/∂A (Bellec et al. 2020), written here."""

    @staticmethod
    def forward(ctx, v, A, free, p):  # type: ignore[override]
        ctx.save_for_backward(v, A, free)
        ctx.p = p
        return ((v - A) > 0).to(v.dtype) * free

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        v, A, free = ctx.saved_tensors
        p = ctx.p
        psi = (p.gamma / p.v_th) * torch.clamp(1.0 - (v - A).abs() / p.v_th, min=0.0) * free
        return grad * psi, -grad * psi, None, None


def hand_run(net: RecurrentNet, w_in: Tensor, w_rec: Tensor, w_out: Tensor, b: Tensor, x: Tensor) -> tuple[
        Tensor, Tensor]:  # fmt: skip
    """The LIF/ALIF network stepped here (reset by subtraction, adaptation, refractoriness) with the recurrent
    matrix ``w_rec`` used as given, from rest: the readout y (T, B, K) and the spikes z (T, B, n), differentiable."""
    p: LIFParameters = net.params
    alpha, rho, kappa = math.exp(-p.dt / p.tau_m), math.exp(-p.dt / p.tau_a), math.exp(-p.dt / p.tau_out)
    beta = net.alif.to(D) * p.beta
    batch, n = x.shape[1], w_rec.shape[0]
    v, z, a, ref = (torch.zeros(batch, n, dtype=D) for _ in range(4))
    y, ys, zs = torch.zeros(batch, w_out.shape[0], dtype=D), [], []
    for x_t in x:
        current = x_t @ w_in.T + z @ w_rec.T  # W_in x^t + W z^{t−1}
        v = alpha * v + (1 - alpha) * current - p.v_th * z
        a = rho * a + z * net.alif.to(D)
        free = (ref == 0).to(D)
        z = HandSpike.apply(v, p.v_th + beta * a, free, p)
        ref = torch.where(z > 0, torch.full_like(ref, float(p.n_ref)), (ref - 1).clamp(min=0)).detach()
        y = kappa * y + z @ w_out.T + b
        ys.append(y)
        zs.append(z)
    return torch.stack(ys), torch.stack(zs)


def sequence_ce(out: Tensor, y: Tensor) -> Tensor:
    """The run's loss by hand: cross-entropy averaged over each example's labelled steps, then over the batch."""
    per_example = []
    for b in range(out.shape[1]):
        steps = [t for t in range(out.shape[0]) if y[t, b] >= 0]
        per_example.append(sum(F.cross_entropy(out[t, b][None], y[t, b][None]) for t in steps) / len(steps))
    return torch.stack(per_example).mean()


def bptt_by_hand(net: RecurrentNet, w_rec: Tensor, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Autograd of :func:`sequence_ce` through :func:`hand_run` with the recurrent matrix ``w_rec``: the exact
    (surrogate) gradient, keyed like the network's parameters (the recurrent one's diagonal zeroed: no
    self-connections)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in
              (net.input.weight, w_rec, net.readout.weight, net.readout.bias)]  # fmt: skip
    with torch.enable_grad():
        out, _ = hand_run(net, *leaves, x)
        found = torch.autograd.grad(sequence_ce(out, y), leaves)
    names = ("input.weight", "recurrent.weight", "readout.weight", "readout.bias")
    grads = dict(zip(names, (g.detach() for g in found), strict=True))
    grads["recurrent.weight"] = grads["recurrent.weight"].clone().fill_diagonal_(0.0)
    return grads


def counts_update_by_hand(z: Tensor, M: Tensor, rate: float, p: float | None, decay: float) -> Tensor:
    """−rate (⟨n_i n_j⟩ − p² − decay · max(M_ij, 0)) for i ≠ j by loops, n_bi = Σ_t z_tbi the spike counts
    (p None: p² → n̄_i n̄_j); 0 on the diagonal and where M_ij ≤ 0 and the entry is positive."""
    steps, batch, n = z.shape
    M = M.detach()
    counts = [[sum(float(z[t, b, i]) for t in range(steps)) for i in range(n)] for b in range(batch)]
    out = torch.zeros(n, n, dtype=D)
    for i, j in itertools.product(range(n), repeat=2):
        if i == j:
            continue
        product = sum(counts[b][i] * counts[b][j] for b in range(batch)) / batch
        means = [sum(counts[b][k] for b in range(batch)) / batch for k in (i, j)]
        target = p * p if p is not None else means[0] * means[1]
        value = -rate * (product - target - decay * max(float(M[i, j]), 0.0))
        out[i, j] = 0.0 if (M[i, j] <= 0 and value > 0) else value
    return out


# ------------------------------------------------------------------------------------------------ dynamics


@pytest.mark.parametrize("spec", ["lif:5", "alif:4", "lsnn:3+3"])
def test_an_untrained_lateral_net_computes_exactly_the_plain_net(spec: str) -> None:
    """M starts at 0 and draws nothing: the lateral net has the plain net's weights and computes its readout and
    spikes bit for bit, so that the option changes nothing until the anti-Hebbian rule has learned something."""
    plain, lateral = build(spec), build(f"{spec}:lateral")
    assert [n for n, _ in lateral.named_parameters()] == [n for n, _ in plain.named_parameters()] + ["lateral.M"]
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), lateral.parameters(), strict=False))
    assert not lateral.lateral.M.any()
    x, _ = sequences()
    run_plain, run_lateral = plain.run(x), lateral.run(x)
    assert run_plain.z.sum() > 0 and torch.equal(lateral(x), plain(x))
    assert torch.equal(run_lateral.z, run_plain.z) and torch.equal(run_lateral.v, run_plain.v)


@pytest.mark.parametrize("spec", ["lif:5", "lsnn:3+3"])
def test_the_inhibition_is_minus_W_times_the_last_steps_spikes(spec: str) -> None:
    """Neurons stepped here with the current W_in x^t + (W_rec − W) z^{t−1}, W = max(M, 0) off the diagonal (by
    hand) give the lateral net's spikes and readout; W is strong enough to change the spikes, and the plain net with
    that effective matrix as its W_rec gives the same too."""
    lateral, plain = lateral_pair(spec)
    x, _ = sequences()
    w = lateral.recurrent.weight.detach()
    w_off = w - torch.diag(torch.diagonal(w))
    with torch.no_grad():
        y_hand, z_hand = hand_run(lateral, lateral.input.weight, w_off - clipped(lateral.lateral.M),
                                  lateral.readout.weight, lateral.readout.bias, x)  # fmt: skip
        _, z_uninhibited = hand_run(lateral, lateral.input.weight, w_off, lateral.readout.weight,
                                    lateral.readout.bias, x)  # fmt: skip
        run = lateral.run(x)
    assert 0 < z_hand.sum() and not torch.equal(z_hand, z_uninhibited)
    assert torch.equal(run.z, z_hand)
    torch.testing.assert_close(run.y, y_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lateral(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lateral.recurrent_weight().detach(), effective(lateral), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------ M's rule


@pytest.mark.parametrize(("p", "decay"), [(None, 1.0), (2.5, 0.5), (None, 0.0)])
def test_the_update_of_M_is_the_anti_hebbian_rule_on_spike_counts_by_hand(p: float | None, decay: float) -> None:
    """On a small spike train written out: −rate (⟨n_i n_j⟩ − p² − λ W_ij) over the examples' counts n = Σ_t z,
    zero on the diagonal and where the clip holds M_ij ≤ 0 (M_01 = −1 here, which p = 2.5 would push lower)."""
    z = torch.tensor(
        [
            [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]],
            [[0, 0, 1], [1, 1, 0], [1, 0, 0], [1, 0, 1]],
            [[1, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 0]],
            [[0, 1, 1], [1, 0, 0], [1, 1, 1], [0, 0, 1]],
        ],
        dtype=D,
    )  # (T=4, B=4, n=3)
    params = SpikingLateralParameters(rate=0.7, p=p, decay=decay)
    layer = SpikingLateral(3, params).double()
    with torch.no_grad():
        layer.M.copy_(torch.tensor([[5.0, -1.0, 0.5], [-1.0, 0.0, 2.0], [0.3, 2.0, 1.0]], dtype=D))
    expected = counts_update_by_hand(z, layer.M, 0.7, p, decay)
    if p == 2.5:  # ⟨n_0 n_1⟩ = 4.25 < p²: the rule would lower M_01 = −1 further, so the clip holds it
        assert expected[0, 1] == 0 == expected[1, 0] and expected[0, 2] > 0
    got = layer.local_grads((z,), layer(z))
    assert list(got) == ["M"]
    torch.testing.assert_close(got["M"], expected, rtol=1e-13, atol=1e-14)


def test_the_hook_reads_the_nets_own_spike_trains_once_per_sequence() -> None:
    """Through the rules' hook a lateral net's M gets the rule on the spike counts of its run of x (keyed
    ``lateral.M``, one call per sequence, not one per step)."""
    net = build("lsnn:3+3:lateral:rate=0.3,decay=2")
    with torch.no_grad():
        net.lateral.M.copy_(strong_M(6, scale=1.0))
    x, _ = sequences()
    calls = []
    net.lateral.register_forward_hook(lambda *_: calls.append(1))
    got = local_grads(net, x)
    assert list(got) == ["lateral.M"] and calls == [1]
    z = net.run(x).z.detach()
    torch.testing.assert_close(got["lateral.M"], counts_update_by_hand(z, net.lateral.M, 0.3, None, 2.0),
                               rtol=1e-12, atol=1e-14)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the rules


def test_every_recurrent_rule_that_takes_the_lateral_net_is_one_checked_here() -> None:
    """A rule of the registry that trains recurrent networks either takes a lateral spiking net and is checked in
    this file (:data:`HANDLED`), or refuses it at create."""
    net = build("lsnn:2+2:lateral")
    taken = []
    for name in RECURRENT:
        try:
            rules.create(name, net)
        except BioPropError as exc:
            assert "\n" not in str(exc)
            continue
        taken.append(name)
    assert sorted(taken) == sorted(HANDLED)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("bptt", {}),
        ("tbptt", {"truncation": 4}),
        ("eprop", {}),
        ("eprop", {"route": "autodiff"}),
        ("eprop", {"feedback": "random", "block": 3}),
        ("rtrl", {}),
    ],
)
def test_a_rules_update_of_the_lateral_net_is_its_update_of_the_plain_net_with_the_effective_matrix(
    name: str, options: dict
) -> None:
    """The inhibition is folded into the recurrent matrix every rule reads: a rule's update of input, recurrent and
    readout weights on the lateral net must be its update on a plain net whose W_rec is W_rec − W (to float64
    precision), and M's entry the anti-Hebbian rule on the lateral run's spike counts, not the rule's."""
    lateral, plain = lateral_pair()
    x, y = sequences()
    got = rules.create(name, lateral, **options).grads(x, y).grads
    expected = rules.create(name, plain, **options).grads(x, y).grads
    assert set(got) == {*expected, "lateral.M"}
    for key, grad in expected.items():
        assert grad.abs().max() > 0, key
        torch.testing.assert_close(got[key], grad, rtol=1e-12, atol=1e-14, msg=key)
    z = lateral.run(x).z.detach()
    torch.testing.assert_close(got["lateral.M"], counts_update_by_hand(z, lateral.lateral.M, 0.1, None, 1.0),
                               rtol=1e-12, atol=1e-14)  # fmt: skip


@pytest.mark.parametrize(("name", "options"), [("bptt", {}), ("rtrl", {}), ("tbptt", {"truncation": STEPS})])
def test_the_exact_rules_give_autograd_through_the_hand_stepped_lateral_dynamics(name: str, options: dict) -> None:
    """bptt, rtrl and tbptt with k ≥ T are the exact (surrogate) gradient: on the lateral net, their update of the
    network's weights is autograd through the neurons stepped here with the effective matrix W_rec − W, whose
    gradient off the diagonal is W_rec's; and ``backward`` writes that update, M's included, into ``.grad``."""
    lateral, _ = lateral_pair()
    x, y = sequences()
    rule = rules.create(name, lateral, **options)
    update = rule.grads(x, y).grads
    for key, grad in bptt_by_hand(lateral, effective(lateral), x, y).items():
        torch.testing.assert_close(update[key], grad, rtol=1e-10, atol=1e-13, msg=key)
    rule.backward(x, y)
    for key, param in lateral.named_parameters():
        torch.testing.assert_close(param.grad, update[key], rtol=1e-12, atol=1e-14, msg=key)


@pytest.mark.parametrize("name", HANDLED)
def test_the_reference_gradient_of_the_lateral_net_is_bptt_with_zero_for_M(name: str) -> None:
    """What every update is measured against (the probes' angles): BPTT through the hand-stepped dynamics for the
    network's weights and 0 for M, which the loss does not see."""
    lateral, _ = lateral_pair()
    x, y = sequences()
    reference = rules.create(name, lateral).reference_grads(x, y)
    assert not reference["lateral.M"].any()
    for key, grad in bptt_by_hand(lateral, effective(lateral), x, y).items():
        torch.testing.assert_close(reference[key], grad, rtol=1e-10, atol=1e-13, msg=key)


def test_grads_is_pure_and_leaves_the_network_and_random_state_alone() -> None:
    """grads twice gives the same update (M's included) and leaves .grad, the step, the parameters, the buffers and
    the global random state as they were: the hook's extra forward pass changes nothing."""
    lateral, _ = lateral_pair()
    x, y = sequences()
    rule = rules.create("eprop", lateral, feedback="adaptive")
    params = {n: p.detach().clone() for n, p in lateral.named_parameters()}
    buffers = {n: b.clone() for n, b in lateral.named_buffers()}
    state = torch.get_rng_state()
    first = rule.grads(x, y).grads
    second = rule.grads(x, y).grads
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first[n], second[n]) for n in first) and first["lateral.M"].abs().max() > 0
    assert rule.step == 0 and all(p.grad is None for p in lateral.parameters())
    assert all(torch.equal(p, params[n]) for n, p in lateral.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in lateral.named_buffers())


# ------------------------------------------------------------------------------------------------ the grammar


def test_the_arch_builds_the_inhibition_with_its_settings() -> None:
    net = nets.build("lsnn:4+3:lateral:rate=0.5,p=2,decay=0.25", (STEPS, INPUTS), CLASSES)
    assert isinstance(net.lateral, SpikingLateral) and net.lateral.M.shape == (7, 7)
    assert net.lateral.params == SpikingLateralParameters(rate=0.5, p=2.0, decay=0.25)
    assert nets.build(" LIF:6:lateral ", (STEPS, INPUTS), CLASSES).lateral.params == SpikingLateralParameters()
    alif = nets.build("alif:5:lateral", (STEPS, INPUTS), CLASSES)
    assert alif.lateral.n == 5 and bool(alif.alif.all())
    assert nets.build("lsnn:4+3", (STEPS, INPUTS), CLASSES).lateral is None
    assert any("lsnn:N+M:lateral" in key for key in nets.ARCHS)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("rnn:6:lateral", "not the rate network rnn:N"),
        ("rnn:6:other", "unknown suffix 'other'; rnn:N takes none"),
        ("sab:6:lateral", "not sab:N"),
        ("lif:6:lateral:steps=10", "steps does not apply to spiking neurons"),
        ("lsnn:3+3:lateral:damping=0.5", "damping does not apply to spiking neurons"),
        ("alif:6:lateral:tol=1e-3", "tol does not apply to spiking neurons"),
        ("lif:6:lateral:rate=-1", "rate=-1.0 must be non-negative"),
        ("lif:6:lateral:decay=x", "decay='x' must be a number"),
        ("lif:6:lateral:p=inf", "p=inf must be a finite number"),
        ("lif:6:lateral:beta=1", "unknown lateral option 'beta=1'; known: rate=..., p=..., decay=..."),
        ("lif:6:lateal", "unknown suffix 'lateal'"),
        ("lif:6:", "unknown suffix ''"),
        ("lif:x:lateral", "the neuron count must be a positive integer"),
        ("lsnn:3:lateral", "give the LIF and ALIF counts"),
    ],
)
def test_a_bad_spiking_lateral_arch_is_one_line_naming_it(spec: str, says: str) -> None:
    with pytest.raises(BioPropError) as caught:
        nets.build(spec, (STEPS, INPUTS), CLASSES)
    message = str(caught.value)
    assert message.startswith(f"bad arch {spec!r}") and says in message and "\n" not in message


def test_a_lateral_module_that_does_not_fit_the_network_is_refused() -> None:
    for cell, lateral, n_alif in (("spiking", SpikingLateral(4), 0), ("rate", SpikingLateral(5), 0)):
        with pytest.raises(BioPropError, match="lateral=SpikingLateral does not fit"):
            RecurrentNet(3, 5, 2, cell, n_alif, lateral=lateral)
    with pytest.raises(BioPropError, match="spike trains of shape"):
        SpikingLateral(4)(torch.zeros(3, 2, 5))


def test_M_is_a_parameter_that_checkpoints_through_safetensors(tmp_path: Path) -> None:
    lateral, _ = lateral_pair()
    save_file(lateral.state_dict(), tmp_path / "net.safetensors")
    other = build("lsnn:3+3:lateral", seed=5)
    other.load_state_dict(load_file(tmp_path / "net.safetensors"))
    x, _ = sequences()
    assert torch.equal(other.lateral.M, lateral.lateral.M) and torch.equal(other(x), lateral(x))


# ------------------------------------------------------------------------------------------ the measurement


def test_the_anti_hebbian_rule_alone_decorrelates_spike_counts() -> None:
    """What the rule is for: 8 LIF neurons driven by one shared Poisson input whose rate varies from example to
    example (plus a private input each) have strongly correlated spike counts; 60 SGD steps of M's rule alone (the
    rest of the network fixed) must cut their mean |correlation| on 400 held-out examples by a quarter."""
    n, steps = 8, 60
    generator = torch.Generator().manual_seed(7)

    def drives(count: int) -> Tensor:  # (T, count, 1 + n): the shared channel at 0.3 s per step, s ~ U(0, 1)
        shared = torch.rand(1, count, 1, generator=generator, dtype=D) * 0.3
        return torch.cat([(torch.rand(steps, count, 1, generator=generator, dtype=D) < shared).to(D),
                          (torch.rand(steps, count, n, generator=generator, dtype=D) < 0.1).to(D)], 2)  # fmt: skip

    net = RecurrentNet(1 + n, n, 2, "spiking", lateral=SpikingLateral(n, SpikingLateralParameters(rate=1.0))).to(D)
    with torch.no_grad():
        net.recurrent.weight.zero_()
        net.input.weight.copy_(torch.cat([torch.full((n, 1), 10.0), 10.0 * torch.eye(n)], 1))
    held_out = drives(400)

    def correlation() -> float:
        with torch.no_grad():
            return mean_abs_correlation(net.run(held_out).z.sum(0))

    before = correlation()
    optimizer = torch.optim.SGD([net.lateral.M], lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        net.lateral.M.grad = local_grads(net, drives(32))["lateral.M"]
        optimizer.step()
    after = correlation()
    assert before > 0.7 and after < 0.75 * before, (before, after)


def test_the_spiking_experiment_runs_quickly_and_records_both_networks(tmp_path: Path) -> None:
    name = "lateral-decorrelation-spiking"
    record = experiments.run_experiment(name, tmp_path, seed=0, quick=True)
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["status"] == "finished" and saved["quick"] is True
    results = record["results"]
    kinds = list(results["final_mean_abs_correlation"])
    assert kinds[0] == "plain" and len(kinds) >= 2
    for kind in kinds:
        assert 0 < results["final_mean_abs_correlation"][kind] < 1
        assert results["final_test_accuracy"][kind] > 0.2  # ten classes: chance is 0.1
    run = results["runs"][0]
    assert run["plain"]["mean_inhibition"][-1] == 0.0 and run[kinds[-1]]["mean_inhibition"][-1] > 0


@pytest.mark.parametrize("spec", ["lif:6:lateral:rate=1,rate=2", "lif:6:lateral:", "mlp:8:lateral:decay=1,decay=0"])
def test_repeated_or_dangling_lateral_settings_are_refused(spec: str) -> None:
    """A setting given twice (which one would win?) or a trailing ':' is a one-line error naming the arch."""
    shape = (STEPS, INPUTS) if spec.startswith("lif") else (INPUTS,)
    with pytest.raises(BioPropError, match="bad arch") as info:
        nets.build(spec, shape, CLASSES)
    assert "\n" not in str(info.value) and spec in str(info.value)
