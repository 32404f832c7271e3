"""Contrastive rules (ep, chl, generec) and energy-based networks against independent math.

The reference dynamics here are written from the equations alone: Φ(x, s) = Σ s_{l+1} · f_l(s_l) as plain torch
expressions, its gradient by autograd, and backprop through time through those reference steps (autograd of
autograd), never through the library's relaxation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop import nets, rules
from bioprop.errors import BioPropError, DivergenceError
from bioprop.nets.energy import EnergyNet, drive, primitive_grads, relax, zero_states
from bioprop.rules.equilibrium import nudging, readout_grads

# ----------------------------------------------------------------------------------------- reference math


def reference_phi(net: EnergyNet, x, states):
    """Σ_l s_{l+1} · f_l(s_l), batch sum, written from the definition."""
    total, below = 0.0, x
    for synapse, pool, s in zip(net.synapses, net.pools, states, strict=False):
        if isinstance(synapse, nn.Conv2d):
            a = F.conv2d(below, synapse.weight, synapse.bias)
            a = F.max_pool2d(a, pool) if pool > 1 else a
        else:
            a = below.reshape(len(below), -1) @ synapse.weight.T + synapse.bias
        total = total + (s * a).sum()
        below = s
    return total


def reference_cost(net: EnergyNet, states, y, output):
    """Per-sample output cost ℓ: ½‖s_L − onehot‖² or the cross-entropy of the readout W_L s_{L−1} + b_L."""
    if output == "se":
        return 0.5 * ((states[-1] - F.one_hot(y, states[-1].shape[1]).double()) ** 2).sum(1)
    logits = states[-1].reshape(len(y), -1) @ net.synapses[-1].weight.T + net.synapses[-1].bias
    return F.cross_entropy(logits, y, reduction="none")


def reference_step(net, x, y, states, eps=1.0, beta=None, output="se"):
    """s ← clip((1 − ε) s + ε ∂(Φ − β ℓ)/∂s, 0, 1) with the gradient by autograd (graph kept, for BPTT)."""
    leaves = [s.detach().requires_grad_() if not s.requires_grad else s for s in states]
    with torch.enable_grad():
        phi = reference_phi(net, x, leaves)
        if beta is not None:
            phi = phi - (beta.view(-1) * reference_cost(net, leaves, y, output)).sum()
        grads = torch.autograd.grad(phi, leaves, create_graph=True)
    return [((1 - eps) * s + eps * g).clamp(0, 1) for s, g in zip(leaves, grads, strict=False)]


def reference_free(net, x, y, steps, eps=1.0, output="se"):
    states = [x.new_zeros(len(x), *shape) for shape in net.state_shapes[: net.n_states(output)]]
    for _ in range(steps):
        states = [s.detach() for s in reference_step(net, x, y, states, eps, output=output)]
    return states


def bptt_last_steps(net, x, y, fixed_point, k, eps=1.0, output="se"):
    """Backprop through time of the batch-mean cost over k reference steps taken from the free fixed point: the
    free dynamics' gradient restricted to its last k steps (Ernoult et al. 2019's ∇^BPTT summed over k)."""
    params = list(net.parameters())
    with torch.enable_grad():
        states = [s.detach() for s in fixed_point]
        for _ in range(k):
            states = reference_step(net, x, y, states, eps, output=output)
        loss = reference_cost(net, states, y, output).mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # a synapse the cost has not reached yet: 0
    return {
        n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(net.named_parameters(), grads, strict=False)
    }


def dense_net(seed=0, hidden=(6, 5), n_in=8, n_out=4, scale=0.5):
    """A float64 energy net whose weights have spectral norm ``scale`` (a contraction: the free phase converges)."""
    torch.manual_seed(seed)
    net = EnergyNet((n_in,), list(hidden), n_out).double()
    with torch.no_grad():
        for synapse in net.synapses:
            synapse.weight.mul_(scale / torch.linalg.matrix_norm(synapse.weight, 2))
            synapse.bias.uniform_(-0.2, 0.6)
    return net


def conv_net(seed=0):
    """1×12×12 input, conv 3 channels 5×5 + 2×2 max-pooling (3×4×4), dense 5, output 4; float64."""
    torch.manual_seed(seed)
    net = EnergyNet((1, 12, 12), [5], 4, channels=[3]).double()
    with torch.no_grad():
        for synapse in net.synapses:
            synapse.weight.mul_(0.5 / torch.linalg.matrix_norm(synapse.weight.flatten(1), 2))
            synapse.bias.uniform_(-0.2, 0.6)
    return net


def batch(net, n=5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *net.in_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, net.synapses[-1].out_features, (n,), generator=gen)
    return x, y


def cosine_and_relative(a, b):
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm())), float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------------ dynamics


@pytest.mark.parametrize("make", [dense_net, conv_net])
@pytest.mark.parametrize("eps", [1.0, 0.4])
@pytest.mark.parametrize("output", ["se", "ce"])
def test_relaxation_step_is_the_clipped_gradient_of_the_primitive(make, eps, output):
    """Three library steps (free, then nudged with one β per row) equal three reference steps by autograd of Φ − βℓ,
    with max-pooling inside Φ for the conv net."""
    net = make()
    x, y = batch(net)
    states = [torch.rand(len(x), *shape, dtype=torch.float64) for shape in net.state_shapes[: net.n_states(output)]]
    mine = relax(net, x, states, 3, eps=eps).states
    expected = states
    for _ in range(3):
        expected = [s.detach() for s in reference_step(net, x, y, expected, eps, output=output)]
    for a, b in zip(mine, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    beta = torch.tensor([[0.3], [-0.2], [0.5], [0.1], [-0.4]], dtype=torch.float64)
    onehot = F.one_hot(y, 4).double()
    target = nudging(net, onehot, beta, output)
    mine = relax(net, x, states, 2, eps=eps, nudge=target.nudge).states
    expected = states
    for _ in range(2):
        expected = [s.detach() for s in reference_step(net, x, y, expected, eps, beta, output)]
    for a, b in zip(mine, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [dense_net, conv_net])
def test_primitive_and_readout_grads_are_autograd_of_the_weighted_primitive_and_cost(make):
    """Σ_r c_r ∂Φ_r/∂θ over a stack of two copies of the batch, and Σ_r c_r ∂ℓ_r/∂θ of the readout."""
    net = make()
    x, y = batch(net)
    gen = torch.Generator().manual_seed(3)
    states = [torch.rand(2 * len(x), *shape, generator=gen, dtype=torch.float64) for shape in net.state_shapes]
    coef = torch.randn(2 * len(x), generator=gen, dtype=torch.float64)
    mine = primitive_grads(net, x, states, coef, drive(net, 0, x))
    params = list(net.parameters())
    with torch.enable_grad():
        total = sum(c * reference_phi(net, x.unsqueeze(0)[0][i % len(x)].unsqueeze(0), [s[i : i + 1] for s in states])
                    for i, c in enumerate(coef))  # fmt: skip
        expected = torch.autograd.grad(total, params)
    for a, b in zip(mine, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    hidden = states[:-1]
    mine = readout_grads(net, hidden, F.one_hot(y.repeat(2), 4).double(), coef)
    with torch.enable_grad():
        total = (coef * reference_cost(net, hidden, y.repeat(2), "ce")).sum()
        expected = torch.autograd.grad(total, params[-2:])
    for a, b in zip(mine, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_rules_prediction_is_its_free_phase_and_net_forward_the_nets_own():
    """rule.predict relaxes with the rule's settings; net(x) keeps the 30 steps of ε = 1 the net was built with."""
    net = dense_net()
    rule = rules.create("ep", net, output="se", free_steps=7, eps=0.5)
    x, y = batch(net)
    expected = reference_free(net, x, y, 7, eps=0.5)[-1]
    torch.testing.assert_close(rule.predict(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(net(x), reference_free(net, x, y, 30)[-1], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------- theorems


def converged_fixed_point(net, x, y, output, steps=200):
    fixed = reference_free(net, x, y, steps, output=output)
    after = reference_step(net, x, y, fixed, output=output)
    assert (
        max(float((a.detach() - b).abs().max()) for a, b in zip(after, fixed, strict=False)) < 1e-13
    )  # GDU: a fixed point
    return fixed


@pytest.mark.parametrize("make, output", [(dense_net, "se"), (dense_net, "ce"), (conv_net, "se")])
@pytest.mark.parametrize("k", [1, 4, 12])
def test_gdu_symmetric_ep_over_k_nudged_steps_equals_bptt_over_the_last_k_free_steps(make, output, k):
    """The GDU property (Ernoult et al. 2019): with β = 1e-3 and symmetric nudging, EP's update after k nudged
    steps equals the BPTT gradient of the free dynamics' last k steps, per parameter tensor, in float64."""
    net = make()
    x, y = batch(net)
    fixed = converged_fixed_point(net, x, y, output)
    rule = rules.create("ep", net, beta=1e-3, nudge="symmetric", free_steps=200, nudged_steps=k, output=output)
    update = rule.grads(x, y).grads
    expected = bptt_last_steps(net, x, y, fixed, k, output=output)
    reached = 0
    for name, exact in expected.items():
        if not exact.any():  # the nudge has not reached this synapse within k steps
            assert float(update[name].abs().max()) < 1e-9, name
            continue
        cos, rel = cosine_and_relative(update[name], exact)
        assert cos >= 0.999 and rel <= 1e-3, (name, cos, rel)
        reached += 1
    assert reached >= 2


def test_reference_grads_is_bptt_over_the_whole_free_phase():
    """rule.reference_grads equals the reference BPTT over all free steps from rest (here 40 steps)."""
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("ep", net, output="se", free_steps=40)
    params = list(net.parameters())
    with torch.enable_grad():
        states = [x.new_zeros(len(x), *shape) for shape in net.state_shapes]
        for _ in range(40):
            states = reference_step(net, x, y, states)
        expected = torch.autograd.grad(reference_cost(net, states, y, "se").mean(), params)
    mine = rule.reference_grads(x, y)
    for (name, _), exact in zip(net.named_parameters(), expected, strict=True):
        torch.testing.assert_close(mine[name], exact, rtol=1e-9, atol=1e-12)


def test_bp_on_an_energy_net_is_the_same_bptt_gradient():
    net = dense_net()
    x, y = batch(net)
    reference = rules.create("ep", net, output="se", free_steps=30).reference_grads(x, y)
    bp = rules.create("bp", net, output="se").grads(x, y).grads
    for name, exact in reference.items():
        torch.testing.assert_close(bp[name], exact, rtol=1e-9, atol=1e-12)


def bias_at(net, x, y, fixed, beta, nudge, k=6):
    rule = rules.create("ep", net, output="se", beta=beta, nudge=nudge, free_steps=200, nudged_steps=k)
    update = rule.grads(x, y).grads
    expected = bptt_last_steps(net, x, y, fixed, k)
    diff = torch.cat([(update[n] - g).flatten() for n, g in expected.items()])
    return float(diff.norm() / torch.cat([g.flatten() for g in expected.values()]).norm())


def test_one_sided_bias_shrinks_like_beta_and_symmetric_like_beta_squared():
    """Halving β halves one-sided nudging's error and quarters symmetric nudging's (β = 0.04, 0.02, 0.01)."""
    net = dense_net(seed=2)
    x, y = batch(net, n=6, seed=4)
    fixed = converged_fixed_point(net, x, y, "se")
    betas = (0.04, 0.02, 0.01)
    one_sided = [bias_at(net, x, y, fixed, b, "one-sided") for b in betas]
    symmetric = [bias_at(net, x, y, fixed, b, "symmetric") for b in betas]
    for big, small in zip(one_sided, one_sided[1:], strict=False):
        assert 1.8 < big / small < 2.2, one_sided
    for big, small in zip(symmetric, symmetric[1:], strict=False):
        assert 3.6 < big / small < 4.4, symmetric
    assert symmetric[-1] < 0.05 * one_sided[-1]


def test_random_sign_nudges_one_sided_with_a_sign_drawn_per_batch():
    """The sign is drawn once per training step: grads gives the same update until backward moves to the next step;
    over 12 steps both signs come up, and a reloaded state gives the same draw."""
    net = dense_net()
    x, y = batch(net)
    rule = rules.create("ep", net, output="se", beta=0.1, nudge="random-sign", seed=5)
    plus = rules.create("ep", net, output="se", beta=0.1, nudge="one-sided").grads(x, y).grads
    minus = rules.create("ep", net, output="se", beta=-0.1, nudge="one-sided").grads(x, y).grads
    seen = set()
    for _ in range(12):
        update = rule.grads(x, y).grads
        torch.testing.assert_close(rule.grads(x, y).grads, update, rtol=0, atol=0)
        rule.backward(x, y)  # the next step (the weights stay: no optimizer step)
        if torch.allclose(update["synapses.0.weight"], plus["synapses.0.weight"]):
            seen.add("+")
        elif torch.allclose(update["synapses.0.weight"], minus["synapses.0.weight"]):
            seen.add("-")
        else:
            pytest.fail("a random-sign update is neither the +β nor the −β one-sided update")
    assert seen == {"+", "-"}
    state = rule.state_dict()
    first = rule.grads(x, y).grads["synapses.0.weight"]
    rule.load_state_dict(state)
    torch.testing.assert_close(rule.grads(x, y).grads["synapses.0.weight"], first)


def test_chl_on_a_single_layer_is_the_two_phase_delta_rule():
    """Box 2: with no hidden layer the free phase gives x_L = σ(W x + b) and the clamped phase x_L = t, so
    CHL's ΔW = t xᵀ − x_L xᵀ = (t − x_L) xᵀ; the descent direction is its negative batch mean."""
    torch.manual_seed(0)
    net = EnergyNet((8,), [], 4).double()
    x, y = batch(net, n=6)
    update = rules.create("chl", net).grads(x, y).grads
    out = (x @ net.synapses[0].weight.T + net.synapses[0].bias).clamp(0, 1)
    t = F.one_hot(y, 4).double()
    torch.testing.assert_close(update["synapses.0.weight"], -(t - out).T @ x / 6)
    torch.testing.assert_close(update["synapses.0.bias"], -(t - out).sum(0) / 6)


def test_generec_forms_by_hand_and_the_symmetric_midpoint_form_is_chl():
    net = dense_net()
    x, y = batch(net)
    chl = rules.create("chl", net).grads(x, y).grads
    both = rules.create("generec", net, midpoint=True, symmetric=True).grads(x, y).grads
    for name, value in chl.items():
        torch.testing.assert_close(both[name], value, rtol=1e-10, atol=1e-12)
    basic_rule = rules.create("generec", net)
    free, clamped = basic_rule.phases(x, y)
    free = free.relaxed
    basic = basic_rule.grads(x, y).grads
    midpoint = rules.create("generec", net, midpoint=True).grads(x, y).grads
    symmetric = rules.create("generec", net, symmetric=True).grads(x, y).grads
    below_minus, below_plus = [x, *free.states[:-1]], [x, *clamped.states[:-1]]
    for index, (minus, plus) in enumerate(zip(free.states, clamped.states, strict=False)):
        send_minus, send_plus = below_minus[index], below_plus[index]
        name = f"synapses.{index}"
        torch.testing.assert_close(basic[f"{name}.weight"], -(plus - minus).T @ send_minus / 5)
        torch.testing.assert_close(basic[f"{name}.bias"], -(plus - minus).sum(0) / 5)
        torch.testing.assert_close(midpoint[f"{name}.weight"], -(plus - minus).T @ (send_minus + send_plus) / 10)
        expected = (plus - minus).T @ send_minus + minus.T @ (send_plus - send_minus)
        torch.testing.assert_close(symmetric[f"{name}.weight"], -expected / 5)


@torch.no_grad()
def reference_energy(net, x, states):
    return 0.5 * sum(float((s**2).sum()) for s in states) - float(reference_phi(net, x, states))


def test_energy_never_increases_below_the_step_size_bound():
    """ε-form (projected gradient descent on E): below 2/‖∇²E‖ (the Hessian by autograd of the reference energy)
    the traced energy never rises and equals the reference E; the traced energy is E + βℓ when nudged."""
    net = dense_net(scale=2.5)  # ‖∇²E‖ > 2: the bound is below ε = 1
    x, y = batch(net, n=1)
    flat = sum(math.prod(shape) for shape in net.state_shapes)

    def energy_of(vector):
        states, start = [], 0
        for shape in net.state_shapes:
            size = math.prod(shape)
            states.append(vector[start : start + size].view(1, *shape))
            start += size
        return 0.5 * (vector**2).sum() - reference_phi(net, x, states)

    hessian = torch.autograd.functional.hessian(energy_of, torch.full((flat,), 0.5, dtype=torch.float64))
    bound = 2.0 / float(torch.linalg.matrix_norm(hessian, 2))
    assert bound < 1.0
    x, y = batch(net, n=16)
    traced = relax(net, x, zero_states(net, x), 60, eps=0.95 * bound, trace=True)
    assert bool((traced.energies.diff() <= 1e-12).all()), traced.energies
    assert traced.energies[-1] < traced.energies[0]
    final = reference_energy(net, x, traced.states) / 16
    assert math.isclose(float(traced.energies[-1]), final, rel_tol=1e-10, abs_tol=1e-12)
    raised = relax(net, x, zero_states(net, x), 60, eps=1.0, trace=True)  # above the bound: synchronous oscillation
    assert bool((raised.energies.diff() > 1e-9).any())


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "name, options, says",
    [
        ("ep", {"beta": 0.0}, "beta=0.0 must be non-zero"),
        ("ep", {"free_steps": -3}, "free_steps=-3 must be a positive number of steps"),
        ("ep", {"nudged_steps": 0}, "nudged_steps=0 must be a positive number of steps"),
        ("chl", {"clamped_steps": -1}, "clamped_steps=-1 must be a positive number of steps"),
        ("ep", {"eps": 1.5}, r"eps=1.5 must be in \(0, 1\]"),
        ("ep", {"nudge": "both"}, "choose one of symmetric, one-sided, random-sign"),
        ("chl", {"beta": 0.1}, "unknown option 'beta'"),
    ],
)
def test_bad_options_are_one_line_errors(name, options, says):
    with pytest.raises(BioPropError, match=says):
        rules.create(name, dense_net(), **options)


def test_contrastive_rules_need_an_energy_net_and_energy_nets_a_bounded_activation():
    with pytest.raises(BioPropError, match="needs an energy-based network"):
        rules.create("ep", nets.build("mlp:8", (8,), 4))
    with pytest.raises(BioPropError, match="bounded activation"):
        nets.build("ebm:8", (8,), 4, "relu")
    with pytest.raises(BioPropError, match="trained by bp, ep, chl, generec or stdp, not by this rule"):
        rules.create("fa", nets.build("ebm:8", (8,), 4))
    with pytest.raises(BioPropError, match="max-pooling"):
        rules.create("generec", conv_net())
    with pytest.raises(BioPropError, match="at least one hidden layer"):
        rules.create("ep", EnergyNet((8,), [], 4), output="ce")


def test_a_free_phase_that_does_not_converge_is_a_divergence_naming_the_settings():
    """Large weights make the synchronous updates oscillate: the free phase's last step still moves the states."""
    net = dense_net(scale=6.0)
    x, y = batch(net, n=16)
    rule = rules.create("ep", net, output="se", free_steps=20)
    with pytest.raises(DivergenceError, match=r"did not converge .*raise free_steps \(now 20\) or lower eps"):
        rule.grads(x, y)
    converging = rules.create("ep", net, output="se", free_steps=400, eps=0.05)  # the ε-form below its bound converges
    converging.grads(x, y)


def test_persistent_particles_continue_each_examples_free_phase_where_it_stopped():
    """With one free step per batch, the second visit of the same examples is two steps from rest, row by row,
    even when the batch comes back shuffled and mixed with new examples; examples are known by their index."""
    net = dense_net()
    x, y = batch(net, n=6)
    rule = rules.create("ep", net, output="se", free_steps=1, max_residual=10.0, persistent=True)
    rule.backward(x[:4], y[:4], torch.arange(4))
    order = torch.tensor([5, 2, 0, 4, 3, 1])
    second = rule.grads(x[order], y[order], order).prediction
    two_steps = reference_free(net, x, y, 2)[-1]
    one_step = reference_free(net, x, y, 1)[-1]
    expected = torch.stack([(two_steps if i < 4 else one_step)[i] for i in order.tolist()])
    torch.testing.assert_close(second, expected, rtol=1e-10, atol=1e-12)


def test_a_nudged_phase_that_oscillates_is_a_divergence_naming_beta():
    """β > 1 with ε = 1 overshoots: s_L ← clip(f + β(y − s_L)) alternates between two values and never settles."""
    net = dense_net()
    x, y = batch(net, n=16)
    with pytest.raises(DivergenceError, match=r"nudged phase does not settle.*lower beta \(now 3\)"):
        rules.create("ep", net, output="se", beta=3.0, free_steps=100).grads(x, y)
    rules.create("ep", net, output="se", beta=0.5, free_steps=100).grads(x, y)
    # While the nudge travels down the layers the change may grow from one step to the next without any oscillation:
    # here from step 1 to 2 of a 3-layer net. The guard waits until the nudge has reached every layer.
    net = dense_net(scale=0.9)
    x, y = batch(net, n=16)
    growing = rules.create("ep", net, output="se", beta=1.0, free_steps=200, nudged_steps=2, nudge="one-sided")
    free = relax(net, x, zero_states(net, x), 200).states
    target = nudging(net, F.one_hot(y, 4).double(), torch.full((16, 1), 1.0, dtype=torch.float64), "se")
    early = relax(net, x, free, 2, nudge=target.nudge)
    assert early.residual > early.previous_residual and early.residual > growing.opts.max_residual
    growing.grads(x, y)
