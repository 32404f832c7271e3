"""e-prop and truncated BPTT against independent math, float64 (issue 11's acceptance):

- e-prop with the full learning signal dE/dz^t (taken by autograd through a zero "tap" added to the explicit spikes)
  contracted with its eligibility traces equals BPTT (Bellec et al. 2020, eq. 1; their numerical check);
- online e-prop equals the autodiff route (BPTT with z stop-gradiented in the recurrent and reset paths), for LIF
  and ALIF neurons, symmetric and random feedback, with the firing-rate regulariser;
- tbptt with k ≥ T equals bptt, and with k < T equals autograd through a graph cut by hand every k steps.
"""

from __future__ import annotations

import pytest
import torch

from bioprop import losses, rules
from bioprop.nets import recurrent as rnn
from bioprop.rules import eprop
from conftest import busy_lsnn as spiking_net


def sequence(steps: int = 40, batch: int = 3, channels: int = 4, classes: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(steps, batch, channels, generator=generator) < 0.3).double()
    y = torch.randint(0, classes, (steps, batch), generator=generator)
    y[: steps // 2] = -1  # targets in the second half only
    return x, y


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bptt_grads(net: rnn.RecurrentNet, x: torch.Tensor, y: torch.Tensor, loss: losses.Loss) -> dict:
    named = dict(net.named_parameters())
    grads = torch.autograd.grad(loss.value(net(x), y), list(named.values()))
    return dict(zip(named, grads, strict=True))


def test_the_network_spikes_adapts_and_rests() -> None:
    """The fixtures exercise what the traces must handle: spikes, refractory steps and a moving adaptation."""
    net = spiking_net()
    x, _ = sequence()
    with torch.no_grad():
        run = net.run(x)
    assert 0.05 < float(run.z.mean()) < 0.6
    assert float((run.ref > 0).double().mean()) > 0.05
    assert float(run.a[..., 3:].std()) > 0.01 and float(run.psi.gt(0).double().mean()) > 0.05


@pytest.mark.parametrize("loss_name", ["ce", "se"])
def test_full_learning_signal_times_eligibility_equals_bptt(loss_name: str) -> None:
    """Σ_t (dE/dz^t) e^t = dE/dW (eq. 1): dE/dz^t is the total derivative through the explicit uses of z (readout,
    recurrent input, reset), taken by autograd through a zero tap δ^t; e^t from :func:`eprop.eligibility_step`."""
    net, (x, y), loss = spiking_net(), sequence(), losses.get(loss_name)
    p, steps, batch = net.params, x.shape[0], x.shape[1]
    n, inputs = net.n_hidden, net.n_in
    taps = torch.zeros(steps, batch, n, dtype=torch.float64, requires_grad=True)
    state = net.initial_state(batch, x)
    out = rnn.ReadoutState(x.new_zeros(batch, net.n_out))
    outputs, explicit = [], x.new_zeros(batch, n)  # z^{t−1} + δ^{t−1}: what the recurrent input and reset see
    w_rec = net.recurrent_weight()
    for t in range(steps):
        state = rnn.lif_step(x[t] @ net.input.weight.t() + explicit @ w_rec.t(), state, net.beta, p, reset=explicit)
        explicit = state.z + taps[t]
        out = rnn.readout_step(explicit, out, net.readout.weight, net.readout.bias, net.kappa)
        outputs.append(out.y)
    objective = loss.value(torch.stack(outputs), y)
    (signal,) = torch.autograd.grad(objective, taps, retain_graph=True)  # dE/dz^t (T, B, n)
    expected = bptt_grads(net, x, y, loss)
    assert relative(torch.autograd.grad(objective, net.input.weight)[0], expected["input.weight"]) < 1e-12

    with torch.no_grad():  # the eligibility traces along the same trajectory
        run = net.run(x)
        n_lif = int((net.beta == 0).sum())
        trace = eprop.Eligibility(x.new_zeros(batch, inputs + n), x.new_zeros(n - n_lif, batch, inputs + n))
        total = x.new_zeros(n, inputs + n)
        for t in range(steps):
            z_prev = run.z[t - 1] if t else x.new_zeros(batch, n)
            trace, adaptive = eprop.eligibility_step(trace, x[t], z_prev, run.psi[t], net.beta, n_lif, p.alpha, p.rho)
            e = eprop.eligibility(trace, run.psi[t], adaptive, n_lif)  # (n, B, P)
            total += torch.einsum("bj,jbp->jp", signal[t], e)
    assert relative(total[:, :inputs], expected["input.weight"]) < 1e-10
    assert relative(total[:, inputs:].fill_diagonal_(0.0), expected["recurrent.weight"]) < 1e-10


@pytest.mark.parametrize(
    ("n_lif", "n_alif", "feedback", "rate_reg"),
    [(6, 0, "symmetric", 0.0), (0, 6, "symmetric", 0.0), (3, 3, "random", 0.0), (3, 3, "symmetric", 1e-3)],
)
def test_online_eprop_equals_the_autodiff_route(n_lif: int, n_alif: int, feedback: str, rate_reg: float) -> None:
    net, (x, y) = spiking_net(n_lif, n_alif), sequence()
    options = {"feedback": feedback, "rate_reg": rate_reg, "rate_target": 20.0}
    online = rules.create("eprop", net, **options).grads(x, y)
    autodiff = rules.create("eprop", net, route="autodiff", **options).grads(x, y)
    for name, grad in autodiff.grads.items():
        assert relative(online.grads[name], grad) < 1e-10, name
    torch.testing.assert_close(online.loss, autodiff.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(online.traces["rate"], autodiff.traces["rate"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("options", [{}, {"rate_reg": 0.3}, {"feedback": "random"}])
def test_online_eprop_in_blocks_of_any_length_is_the_step_by_step_update(options: dict) -> None:
    """The traces advance a block of steps at a time (block = 1: one step, the recursion of eligibility_step): blocks
    that split the 40 steps unevenly (3, 7), at the target onset (20) or not at all (1000) all give the autodiff
    route's update, and so the same update as each other."""
    net, (x, y) = spiking_net(), sequence()
    autodiff = rules.create("eprop", net, route="autodiff", **options).grads(x, y)
    for block in (1, 3, 7, 20, 1000):
        online = rules.create("eprop", net, block=block, **options).grads(x, y)
        for name, grad in autodiff.grads.items():
            assert relative(online.grads[name], grad) < 1e-10, (block, name)
        torch.testing.assert_close(online.prediction, autodiff.prediction, rtol=1e-12, atol=1e-12)


def test_online_eprop_past_the_trace_flushes_is_the_autodiff_update() -> None:
    """Every ``FLUSH_EVERY`` steps the carried traces are flushed (entries below the smallest normal number zeroed,
    in place): over a sequence that crosses two flushes, unevenly blocked, the update is still the autodiff route's."""
    net = spiking_net()
    x, y = sequence(steps=2 * eprop.FLUSH_EVERY + 13)
    autodiff = rules.create("eprop", net, route="autodiff", rate_reg=0.3).grads(x, y)
    for block in (7, 50):
        online = rules.create("eprop", net, block=block, rate_reg=0.3).grads(x, y)
        for name, grad in autodiff.grads.items():
            assert relative(online.grads[name], grad) < 1e-10, (block, name)


def test_eprop_readout_gradients_are_exact_and_hidden_ones_approximate_bptt() -> None:
    net, (x, y) = spiking_net(), sequence()
    rule = rules.create("eprop", net)
    update, exact = rule.grads(x, y).grads, rule.reference_grads(x, y)
    for name in ("readout.weight", "readout.bias"):
        assert relative(update[name], exact[name]) < 1e-12
    cosine = torch.nn.functional.cosine_similarity(update["input.weight"].flatten(), exact["input.weight"].flatten(), 0)
    assert 0.0 < float(cosine) < 1.0 - 1e-6  # an approximation, but a descent-aligned one here


def test_eprop_grads_is_pure_and_adaptive_feedback_follows_the_readout() -> None:
    net, (x, y) = spiking_net(), sequence()
    rule = rules.create("eprop", net, feedback="adaptive", seed=3)
    first, second = rule.grads(x, y), rule.grads(x, y)
    for name in first.grads:
        assert torch.equal(first.grads[name], second.grads[name])
    assert rule.state_dict().keys() == {"step", "rule_name"}
    rule.backward(x, y)
    b0 = rule.state_dict()["feedback"].clone()
    with torch.no_grad():
        net.readout.weight.add_(0.25)
    rule.backward(x, y)
    torch.testing.assert_close(rule.state_dict()["feedback"], b0 + 0.25)


def test_eprop_refuses_a_rate_network_and_a_feedforward_rule_refuses_a_recurrent_one() -> None:
    from bioprop.errors import BioPropError

    rate = rnn.RecurrentNet(3, 5, 2, cell="rate")
    with pytest.raises(BioPropError, match="rule eprop trains spiking networks"):
        rules.create("eprop", rate)
    with pytest.raises(BioPropError, match=r"rule pc: recurrent networks .* are trained by .*eprop"):
        rules.create("pc", rate)
    with pytest.raises(BioPropError, match="rule tbptt needs a recurrent network"):
        rules.create("tbptt", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))


@pytest.mark.parametrize("cell", ["spiking", "rate"])
def test_tbptt_with_k_at_least_t_is_bptt_and_shorter_windows_cut_the_graph(cell: str) -> None:
    torch.manual_seed(0)
    net = spiking_net() if cell == "spiking" else rnn.RecurrentNet(4, 6, 3, cell="rate").double()
    x, y = sequence(steps=12)
    loss = losses.get("ce")
    exact = bptt_grads(net, x, y, loss)
    whole = rules.create("tbptt", net, truncation=12).grads(x, y).grads
    longer = rules.create("tbptt", net, truncation=1000).grads(x, y).grads  # a stated behaviour: one window
    for name, grad in exact.items():
        assert relative(whole[name], grad) < 1e-12 and relative(longer[name], grad) < 1e-12
    # k = 5: autograd through the same dynamics with the state detached by hand at steps 5 and 10
    named = dict(net.named_parameters())
    state, out, outputs = net.initial_state(x.shape[1], x), rnn.ReadoutState(x.new_zeros(x.shape[1], 3)), []
    for t in range(12):
        if t and t % 5 == 0:
            state = type(state)(*(part.detach() for part in state))
            out = rnn.ReadoutState(out.y.detach())
        state, hidden = net.step(x[t], state)
        out = rnn.readout_step(hidden, out, net.readout.weight, net.readout.bias, net.kappa)
        outputs.append(out.y)
    cut = torch.autograd.grad(loss.value(torch.stack(outputs), y), list(named.values()))
    truncated = rules.create("tbptt", net, truncation=5).grads(x, y).grads
    for name, grad in zip(named, cut, strict=True):
        assert relative(truncated[name], grad) < 1e-12, name
    assert relative(truncated["recurrent.weight"], exact["recurrent.weight"]) > 1e-6  # truncation changed it
