"""The contrastive rules (ep, chl, generec) and bp on energy nets under the rule contract: rules never change what
``net(x)`` computes, one output loss per run, pure ``grads``, persistent particles keyed by example index and
checkpointed, and each rule's defining update (EP's ĝ, CHL's Hebbian contrast) against independent math.

The independent math is that of tests/test_contrastive.py: Φ(x, s) = Σ s_{l+1} · f_l(s_l) written from the
definition, its gradients by autograd, the relaxation steps s ← clip(∂(Φ − βℓ)/∂s, 0, 1) by autograd of Φ − βℓ.
"""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from bioprop import metrics, nets, rules
from bioprop.errors import BioPropError
from bioprop.nets.energy import EnergyNet, Relaxation
from bioprop.rules.equilibrium import Equilibrium, equilibrium_propagation
from bioprop.rules.hebbian import contrastive_hebbian
from test_contrastive import batch, conv_net, dense_net, reference_cost, reference_free, reference_phi, reference_step

#: Each rule's default output loss: ep's softmax readout (se stalls on dead output units), chl and generec clamp a
#: state output to the target, bp as on any net.
DEFAULT_OUTPUT = {"ep": "ce", "chl": "se", "generec": "se", "bp": "ce"}


def nudged_primitive_grads(net, x, y, states, beta, output):
    """Batch sum of ∂Φ_β/∂θ at ``states``, Φ_β = Φ − β Σ ℓ, by autograd of the reference Φ and ℓ."""
    params = list(net.parameters())
    with torch.enable_grad():
        phi = reference_phi(net, x, states) - beta * reference_cost(net, states, y, output).sum()
        grads = torch.autograd.grad(phi, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def reference_nudged(net, x, y, start, beta, steps, output="se"):
    """``steps`` reference steps on Φ − βℓ from ``start``, one β for the whole batch."""
    states = [s.detach() for s in start]
    column = torch.full((len(x), 1), beta, dtype=torch.float64)
    for _ in range(steps):
        states = [s.detach() for s in reference_step(net, x, y, states, beta=column, output=output)]
    return states


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ------------------------------------------------------------------------------------ rules never change the net


def test_creating_a_rule_never_changes_what_the_net_computes():
    """ep with 3 free steps, then chl with 60, then bp with a softmax readout: net(x) stays bit-identical (the net's
    own 30-step relaxation), while each rule's prediction relaxes with its own settings."""
    net = dense_net()
    x, y = batch(net)
    before = net(x)
    ep = rules.create("ep", net, output="se", free_steps=3, max_residual=10.0)
    assert torch.equal(net(x), before)
    chl = rules.create("chl", net, free_steps=60)
    assert torch.equal(net(x), before)
    bp = rules.create("bp", net, output="ce")
    assert torch.equal(net(x), before)
    torch.testing.assert_close(before, reference_free(net, x, y, 30)[-1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ep.predict(x), reference_free(net, x, y, 3)[-1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chl.predict(x), reference_free(net, x, y, 60)[-1], rtol=1e-10, atol=1e-12)
    hidden = reference_free(net, x, y, 30, output="ce")[-1]
    readout = net.synapses[-1]
    torch.testing.assert_close(bp.predict(x), hidden @ readout.weight.T + readout.bias, rtol=1e-10, atol=1e-12)
    for name in rules.names():
        try:
            rules.create(name, net)
        except BioPropError:
            continue  # a rule that does not train energy nets
        assert torch.equal(net(x), before), name


def test_the_nets_relaxation_is_fixed_at_construction():
    torch.manual_seed(0)
    net = EnergyNet((8,), [6], 4, relaxation=Relaxation(steps=7, eps=0.5)).double()
    x, y = batch(net)
    torch.testing.assert_close(net(x), reference_free(net, x, y, 7, eps=0.5)[-1], rtol=1e-10, atol=1e-12)
    with pytest.raises(AttributeError):
        net.relaxation = Relaxation(steps=3)
    assert not hasattr(net, "configure")
    for bad, says in [(Relaxation(steps=0), "steps=0"), (Relaxation(eps=1.5), "eps=1.5"),
                      (Relaxation(output="mse"), "output='mse'")]:  # fmt: skip
        with pytest.raises(BioPropError, match=says):
            EnergyNet((8,), [6], 4, relaxation=bad)
    with pytest.raises(BioPropError, match=r"output=ce \(a readout outside the dynamics\) needs at least one hidden"):
        EnergyNet((8,), [], 4, relaxation=Relaxation(output="ce"))


def test_bp_with_a_readout_is_bptt_of_the_cross_entropy_and_leaves_the_net_as_built():
    """bp output=ce on an energy net: the gradient of the readout's cross-entropy through the net's 30 free steps
    (reference steps by autograd), and the run's loss is that cross-entropy."""
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("bp", net, output="ce")
    params = list(net.parameters())
    with torch.enable_grad():
        states = [x.new_zeros(len(x), *shape) for shape in net.state_shapes[:-1]]
        for _ in range(30):
            states = reference_step(net, x, y, states, output="ce")
        loss = reference_cost(net, states, y, "ce").mean()
        expected = torch.autograd.grad(loss, params)
    update = rule.grads(x, y)
    for (name, _), exact in zip(net.named_parameters(), expected, strict=True):
        torch.testing.assert_close(update.grads[name], exact, rtol=1e-9, atol=1e-12)
    assert math.isclose(float(update.loss), float(loss.detach()), rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------- one loss per run


@pytest.mark.parametrize(
    "name, options",
    [("ep", {}), ("ep", {"output": "se"}), ("ep", {"nudge": "one-sided"}), ("chl", {}), ("generec", {}),
     ("bp", {"output": "se"}), ("bp", {"output": "ce"})],
)  # fmt: skip
def test_train_and_test_loss_are_the_same_quantity(name, options):
    """Update.loss (grads and backward) and metrics.evaluate(rule, ...) on the same batch with the same weights are
    the same number: the batch mean of the run's output loss at the end of the free phase, computed here from the
    reference relaxation."""
    net = dense_net()
    x, y = batch(net, n=8)
    rule = rules.create(name, net, **options)
    output = options.get("output", DEFAULT_OUTPUT[name])
    assert rule.loss.name == output
    states = reference_free(net, x, y, 30, output=output)
    expected = float(reference_cost(net, states, y, output).mean().detach())
    train_loss = float(rule.grads(x, y).loss)
    test_loss, _ = metrics.evaluate(rule, x, y)
    step_loss = float(rule.backward(x, y)[0])
    for value in (train_loss, test_loss, step_loss):
        assert math.isclose(value, expected, rel_tol=1e-10), (train_loss, test_loss, step_loss, expected)


@pytest.mark.parametrize("name", ["chl", "generec"])
def test_the_clamped_rules_declare_their_loss_squared_error(name):
    rule = rules.create(name, dense_net())
    assert rule.loss.name == "se" and rule.options["output"].choices == ("se",)
    with pytest.raises(BioPropError, match="option output='ce'; choose one of se"):
        rules.create(name, dense_net(), output="ce")


# --------------------------------------------------------------------------------------------------------- purity


@pytest.mark.parametrize("name, options", [
    ("ep", {"nudge": "random-sign", "persistent": True, "trace_every": 1}),
    ("chl", {"persistent": True, "trace_every": 1}),
    ("generec", {"persistent": True}),
])  # fmt: skip
def test_grads_is_pure(name, options):
    """grads twice gives the same update and leaves the rule's state (step, particles), .grad and the global random
    state as they were; train_update (what backward applies) is pure too."""
    net = dense_net()
    x, y = batch(net, n=6)
    index = torch.tensor([4, 0, 7, 2, 9, 5])
    rule = rules.create(name, net, free_steps=2, max_residual=10.0, **options)
    rule.backward(x, y, index)  # particles of these examples now exist
    for p in net.parameters():
        p.grad = None
    state = {key: value.clone() for key, value in rule.state_dict().items()}
    assert {"step", "particles.seen", "particles.0"} <= state.keys()
    rng = torch.get_rng_state()
    first, second = rule.grads(x, y, index), rule.grads(x, y, index)
    assert_same(first.grads, second.grads)
    assert torch.equal(first.prediction, second.prediction) and first.state is None
    assert_same(rule.state_dict(), state)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())
    staged = rule.train_update(x, y, index)
    assert staged.state is not None  # the particles backward would keep
    assert (staged.traces is not None) == ("trace_every" in options)
    assert_same(rule.state_dict(), state)


def test_the_trace_schedule_follows_the_step_count_and_the_declared_traces():
    """trace_every=2: steps 0, 2, ... record the four declared traces; grads never traces; the declared figure
    draws exactly those traces."""
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("ep", net, trace_every=2)
    declared = {trace.name for trace in rule.trace_specs}
    assert declared == {"free energy", "free residual", "nudged energy", "nudged residual"}
    assert [f.file for f in rule.figures] == ["energy.png"] and set(rule.figures[0].traces) == declared
    for step in range(4):
        assert rule.step == step and rule.grads(x, y).traces is None
        traces = rule.train_update(x, y).traces
        assert (traces is not None and traces.keys() == declared) == (step % 2 == 0)
        rule.backward(x, y)
    chl = rules.create("chl", net, trace_every=1)
    assert chl.train_update(x, y).traces.keys() == {trace.name for trace in chl.trace_specs}


# ---------------------------------------------------------------------------------------- persistent particles


def test_a_batch_without_index_starts_from_rest_and_keeps_nothing():
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("ep", net, output="se", free_steps=1, max_residual=10.0, persistent=True)
    rule.backward(x, y)
    assert set(rule.state_dict()) == {"step", "rule_name"}
    rule.backward(x, y, torch.arange(5))
    one_step = reference_free(net, x, y, 1)[-1]
    torch.testing.assert_close(rule.grads(x, y).prediction, one_step, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rule.predict(x), one_step, rtol=1e-10, atol=1e-12)  # prediction: always from rest
    assert not torch.allclose(rule.grads(x, y, torch.arange(5)).prediction, one_step)


def test_persistent_particles_survive_a_resume_bit_identically():
    """Train 6 steps with SGD (momentum), persistent particles and random signs; or train 3, save the weights, the
    optimizer and the rule's state through safetensors, load them into a fresh net and rule, train 3 more: the
    seventh step's update is bit-identical."""
    n, size = 20, 6
    x, y = batch(dense_net(), n=n, seed=3)
    options = dict(free_steps=2, nudged_steps=3, max_residual=10.0, persistent=True, nudge="random-sign", seed=4)
    order = torch.Generator().manual_seed(9)
    plan = [torch.randperm(n, generator=order)[:size] for _ in range(7)]

    def train(rule, optimizer, steps):
        for index in steps:
            optimizer.zero_grad()
            rule.backward(x[index], y[index], index)
            optimizer.step()

    net = dense_net()
    rule = rules.create("ep", net, **options)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train(rule, optimizer, plan[:6])
    expected = rule.grads(x[plan[6]], y[plan[6]], plan[6]).grads

    net = dense_net()
    rule = rules.create("ep", net, **options)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train(rule, optimizer, plan[:3])
    saved = {"rule": rule.state_dict(), "net": net.state_dict(), "optim": optimizer.state_dict()["state"]}
    assert len(saved["rule"]["particles.seen"]) == int(torch.cat(plan[:3]).max()) + 1
    blob = {f"{part}/{key}": value for part, tensors in (("rule", saved["rule"]), ("net", saved["net"]))
            for key, value in tensors.items()}  # fmt: skip
    blob |= {f"optim/{i}": state["momentum_buffer"] for i, state in saved["optim"].items()}
    loaded = safetensors.torch.load(safetensors.torch.save(blob))

    fresh = dense_net(seed=5)
    fresh.load_state_dict({k[4:]: v for k, v in loaded.items() if k.startswith("net/")})
    resumed = rules.create("ep", fresh, **options)
    resumed.load_state_dict({k[5:]: v for k, v in loaded.items() if k.startswith("rule/")})
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    state = optimizer.state_dict()
    state["state"] = {int(k[6:]): {"momentum_buffer": v} for k, v in loaded.items() if k.startswith("optim/")}
    optimizer.load_state_dict(state)
    train(resumed, optimizer, plan[3:6])
    assert_same(resumed.grads(x[plan[6]], y[plan[6]], plan[6]).grads, expected)


def test_a_checkpoint_with_particles_that_do_not_fit_is_refused():
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("ep", net, persistent=True)
    rule.backward(x, y, torch.arange(5))
    with pytest.raises(BioPropError, match="unexpected state 'particles.0'"):
        rules.create("ep", net).load_state_dict(rule.state_dict())
    with pytest.raises(BioPropError, match="persistent particles do not fit this network"):
        rules.create("ep", dense_net(hidden=(7, 5)), persistent=True).load_state_dict(rule.state_dict())


# ---------------------------------------------------------------------------------------- the defining updates


@pytest.mark.parametrize("make, output", [(dense_net, "se"), (dense_net, "ce"), (conv_net, "se")])
def test_equilibrium_propagation_is_the_nudged_primitives_difference_over_beta(make, output):
    """ĝ = −(∂Φ_{β₂}/∂θ(s^{β₂}) − ∂Φ_{β₁}/∂θ(s^{β₁}))/(β₂ − β₁), batch mean, at arbitrary states, by autograd."""
    net = make()
    x, y = batch(net)
    gen = torch.Generator().manual_seed(6)
    shapes = net.state_shapes[: net.n_states(output)]
    s2, s1 = ([torch.rand(len(x), *shape, generator=gen, dtype=torch.float64) for shape in shapes] for _ in "ab")
    onehot = F.one_hot(y, net.synapses[-1].out_features).double()
    mine = equilibrium_propagation(net, x, onehot, Equilibrium(s2, 0.3), Equilibrium(s1, -0.2), output)
    g2 = nudged_primitive_grads(net, x, y, s2, 0.3, output)
    g1 = nudged_primitive_grads(net, x, y, s1, -0.2, output)
    for a, b2, b1 in zip(mine, g2, g1, strict=True):
        torch.testing.assert_close(a, -(b2 - b1) / 0.5 / len(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("output", ["se", "ce"])
@pytest.mark.parametrize("nudge", ["symmetric", "one-sided"])
def test_eps_update_is_the_definition_at_separately_relaxed_nudged_phases(output, nudge):
    """The rule relaxes the ±β phases side by side in one stack: its update equals the definition at the two phases
    relaxed one after the other by the reference steps from the reference free fixed point."""
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("ep", net, beta=0.3, nudge=nudge, free_steps=60, nudged_steps=7, output=output)
    free = reference_free(net, x, y, 60, output=output)
    beta_1 = -0.3 if nudge == "symmetric" else 0.0
    s2 = reference_nudged(net, x, y, free, 0.3, 7, output)
    s1 = reference_nudged(net, x, y, free, beta_1, 7, output) if beta_1 else free
    g2 = nudged_primitive_grads(net, x, y, s2, 0.3, output)
    g1 = nudged_primitive_grads(net, x, y, s1, beta_1, output)
    update = rule.grads(x, y).grads
    for (name, _), b2, b1 in zip(net.named_parameters(), g2, g1, strict=True):
        torch.testing.assert_close(update[name], -(b2 - b1) / (0.3 - beta_1) / len(x), rtol=1e-9, atol=1e-12)


def test_chl_is_the_hebbian_contrast_of_the_clamped_and_free_equilibria():
    """−(∂Φ/∂θ(s⁺) − ∂Φ/∂θ(s⁻))/B with s⁻ the reference free phase and s⁺ the reference steps with s_L = target;
    the functional form and the rule agree with it."""
    net = dense_net()
    x, y = batch(net)
    target = F.one_hot(y, 4).double()
    minus = reference_free(net, x, y, 60)
    plus = [*minus[:-1], target]
    for _ in range(9):
        plus = [*[s.detach() for s in reference_step(net, x, y, plus)[:-1]], target]
    g_plus = nudged_primitive_grads(net, x, y, plus, 0.0, "se")
    g_minus = nudged_primitive_grads(net, x, y, minus, 0.0, "se")
    expected = [-(a - b) / len(x) for a, b in zip(g_plus, g_minus, strict=True)]
    for mine, exact in zip(contrastive_hebbian(net, x, plus, minus), expected, strict=True):
        torch.testing.assert_close(mine, exact, rtol=1e-10, atol=1e-12)
    update = rules.create("chl", net, free_steps=60, clamped_steps=9).grads(x, y).grads
    for (name, _), exact in zip(net.named_parameters(), expected, strict=True):
        torch.testing.assert_close(update[name], exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("offset", [10**9, 10**12])
def test_an_index_beyond_any_training_set_is_refused_before_any_work(offset: int) -> None:
    """Particles are dense buffers up to the largest index: an index that is not a position in a training set
    would allocate terabytes (or fail inside torch); it is one BioPropError naming it, from grads too."""
    net = nets.build("ebm:32", (8,), 3)
    rule = rules.create("ep", net, persistent=True)
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])
    for call in (rule.grads, rule.backward):
        with pytest.raises(BioPropError, match=rf"index {offset + 3} "):
            call(x, y, torch.arange(4) + offset)
    assert all(p.grad is None for p in net.parameters()) and rule.state_dict().keys() == {"step", "rule_name"}
