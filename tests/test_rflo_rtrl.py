"""RFLO and RTRL against independent math, float64 (issue 11):

- RTRL carries the exact derivative forward in time, so it equals BPTT (autograd through ``net(x)``) to rounding, on
  rate and spiking networks (LIF, ALIF, both), for ce and se, with targets at some steps only;
- RFLO's traces and update equal a hand computation (plain Python loops over Murray 2019's formulas), and with
  B = W_outᵀ it equals BPTT exactly where the term it drops vanishes (W_rec = 0; a single step), its error shrinking
  as 1/τ elsewhere;
- both are pure, refuse what they cannot train, and RFLO lowers the loss of Murray's periodic-target task.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

from bioprop import losses, rules, train
from bioprop.config import RunConfig
from bioprop.errors import BioPropError
from bioprop.nets import recurrent as rnn
from bioprop.rules import rflo, rtrl
from conftest import busy_lsnn as spiking_net


def rate_net(tau: float = 3.0, n: int = 5, seed: int = 0) -> rnn.RecurrentNet:
    torch.manual_seed(seed)
    return rnn.RecurrentNet(4, n, 3, cell="rate", params=rnn.RateParameters(tau=tau)).double()


def sequence(steps: int = 30, batch: int = 3, spikes: bool = False, seed: int = 1):
    """x (T, B, 4) (0/1 spike trains or Gaussian) and labels (T, B) with targets in the second half only."""
    generator = torch.Generator().manual_seed(seed)
    if spikes:
        x = (torch.rand(steps, batch, 4, generator=generator) < 0.3).double()
    else:
        x = torch.randn(steps, batch, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (steps, batch), generator=generator)
    y[: steps // 2] = -1
    return x, y


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bptt(net: rnn.RecurrentNet, x: torch.Tensor, y: torch.Tensor, loss: losses.Loss) -> dict[str, torch.Tensor]:
    """Autograd through the network's own forward pass (the surrogate ψ for spikes): the gradient to match."""
    named = dict(net.named_parameters())
    grads = torch.autograd.grad(loss.value(net(x), y), list(named.values()))
    return dict(zip(named, grads, strict=True))


# ------------------------------------------------------------------------------------------------------ RTRL

CELLS = {"rate": lambda: rate_net(), "lif": lambda: spiking_net(6, 0), "alif": lambda: spiking_net(0, 6),
         "lsnn": lambda: spiking_net(3, 3)}  # fmt: skip


@pytest.mark.parametrize("loss_name", ["ce", "se"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_rtrl_equals_bptt(cell: str, loss_name: str) -> None:
    """M^t = J^t M^{t−1} + ∂s^t/∂θ is the chain rule run forward, so Σ_t ε^t dy^t/dθ is BPTT's gradient exactly
    (Williams & Zipser 1989): for spikes, through the same surrogate, reset and adaptation autograd sees."""
    net, (x, y) = CELLS[cell](), sequence(spikes=cell != "rate")
    if cell != "rate":
        with torch.no_grad():
            run = net.run(x)
        assert 0.05 < float(run.z.mean()) < 0.6 and float((run.ref > 0).double().mean()) > 0.05
        assert cell == "lif" or float(run.a.std()) > 0.01
    update = rules.create("rtrl", net, output=loss_name).grads(x, y)
    expected = bptt(net, x, y, losses.get(loss_name))
    for name, grad in expected.items():
        assert relative(update.grads[name], grad) < 1e-10, name
    torch.testing.assert_close(update.prediction, net(x).detach(), rtol=1e-13, atol=1e-13)


def test_rtrl_equals_bptt_for_regression_targets() -> None:
    """Float targets (T, B, K) at every step, squared error: the periodic-target kind of task."""
    net, (x, _) = rate_net(), sequence()
    target = torch.sin(torch.arange(30, dtype=torch.float64) / 3.0)[:, None, None].expand(30, 3, 3).contiguous()
    update = rules.create("rtrl", net, output="se").grads(x, target)
    for name, grad in bptt(net, x, target, losses.get("se")).items():
        assert relative(update.grads[name], grad) < 1e-10, name


def test_rtrl_refuses_a_batch_whose_influence_tensor_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The influence tensor of lsnn:3+3 for 3 examples of 4 channels is B · n_state · n · (C + n) = 3 · 12 · 6 · 10
    float64 numbers = 17 280 bytes; RTRL needs three copies of it. One byte short is refused, before any work, in
    one line with the estimate; exactly enough, or memory that cannot be told, is accepted."""
    net, (x, y) = spiking_net(3, 3), sequence(spikes=True)
    rule = rules.create("rtrl", net)
    estimate = 3 * 12 * 6 * 10 * 8
    assert rtrl.influence_bytes(3, 12, 6, 4, 8) == estimate and rtrl.WORKING_COPIES == 3
    monkeypatch.setattr(train, "available_memory", lambda device: 3 * estimate - 1)
    with pytest.raises(BioPropError) as refused:
        rule.grads(x, y)
    message = str(refused.value)
    assert "\n" not in message and f"{estimate / 2**30:.3g} GiB" in message and "rule rtrl" in message
    assert rule.state_dict().keys() == {"step", "rule_name"}
    monkeypatch.setattr(train, "available_memory", lambda device: 3 * estimate)
    rule.grads(x, y)
    monkeypatch.setattr(train, "available_memory", lambda device: None)
    rule.grads(x, y)


# ------------------------------------------------------------------------------------------------------ RFLO


def by_hand(net: rnn.RecurrentNet, feedback: list, x: list, target: list) -> tuple[list, list, dict]:
    """Murray 2019's RFLO in plain Python: p_jk^t = (1 − 1/τ) p_jk^{t−1} + φ'(u_j^t) h_k^{t−1}/τ, q_jk^t likewise with
    x_k^t, ΔW_rec,jk = Σ_t (B ε^t)_j p_jk^t, ΔW_in,jk = Σ_t (B ε^t)_j q_jk^t, ΔW_out = Σ_t ε^t h^tᵀ, Δb = Σ_t ε^t,
    with ε^t = (y^t − y*^t)/(T · batch), the derivative of the mean over steps and examples of ½‖y − y*‖².
    Returns the traces after every step (per example) and the update."""
    w_in, w_rec = net.input.weight.tolist(), net.recurrent.weight.tolist()
    w_out, b = net.readout.weight.tolist(), net.readout.bias.tolist()
    tau, steps, batch = net.params.tau, len(x), len(x[0])
    n, c, k = len(w_rec), len(w_in[0]), len(w_out)
    grads = {"input.weight": [[0.0] * c for _ in range(n)], "recurrent.weight": [[0.0] * n for _ in range(n)],
             "readout.weight": [[0.0] * n for _ in range(k)], "readout.bias": [0.0] * k}  # fmt: skip
    p_seen, q_seen = [], []
    for e in range(batch):
        h, p, q = [0.0] * n, [[0.0] * n for _ in range(n)], [[0.0] * c for _ in range(n)]
        for t in range(steps):
            u = [sum(w_rec[j][i] * h[i] for i in range(n)) + sum(w_in[j][i] * x[t][e][i] for i in range(c))
                 for j in range(n)]  # fmt: skip
            slope = [1.0 - math.tanh(u_j) ** 2 for u_j in u]
            p = [[(1 - 1 / tau) * p[j][i] + slope[j] * h[i] / tau for i in range(n)] for j in range(n)]
            q = [[(1 - 1 / tau) * q[j][i] + slope[j] * x[t][e][i] / tau for i in range(c)] for j in range(n)]
            h = [h[j] + (-h[j] + math.tanh(u[j])) / tau for j in range(n)]
            y = [sum(w_out[o][j] * h[j] for j in range(n)) + b[o] for o in range(k)]
            eps = [(y[o] - target[t][e][o]) / (steps * batch) for o in range(k)]
            signal = [sum(feedback[j][o] * eps[o] for o in range(k)) for j in range(n)]
            for j in range(n):
                for i in range(n):
                    grads["recurrent.weight"][j][i] += signal[j] * p[j][i]
                for i in range(c):
                    grads["input.weight"][j][i] += signal[j] * q[j][i]
            for o in range(k):
                grads["readout.bias"][o] += eps[o]
                for j in range(n):
                    grads["readout.weight"][o][j] += eps[o] * h[j]
            p_seen.append((t, e, p))
            q_seen.append((t, e, q))
    return p_seen, q_seen, grads


def test_rflo_traces_and_update_equal_a_hand_computation() -> None:
    """A 3-neuron rate net, 4 steps, 2 examples, τ = 2.5: the traces of :func:`rflo.rflo_traces` along the network's
    own trajectory, and the rule's whole update, against the formulas evaluated one number at a time."""
    torch.manual_seed(3)
    net = rnn.RecurrentNet(2, 3, 2, cell="rate", params=rnn.RateParameters(tau=2.5)).double()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, 2, generator=generator, dtype=torch.float64)
    target = torch.randn(4, 2, 2, generator=generator, dtype=torch.float64)
    rule = rules.create("rflo", net, output="se", seed=5)
    feedback = rule.state_dict()["feedback"]
    p_seen, q_seen, expected = by_hand(net, feedback.tolist(), x.tolist(), target.tolist())

    with torch.no_grad():
        run = net.run(x)
    traces = rflo.Traces(x.new_zeros(2, 3, 3), x.new_zeros(2, 3, 2))
    for t in range(4):
        h_prev = run.h[t - 1] if t else x.new_zeros(2, 3)
        traces = rflo.rflo_traces(traces, run.u[t], h_prev, x[t], 2.5)
        for (step, e, p), (_, _, q) in zip(p_seen, q_seen, strict=True):
            if step == t:
                torch.testing.assert_close(traces.p[e], torch.tensor(p, dtype=torch.float64), rtol=1e-13, atol=1e-15)
                torch.testing.assert_close(traces.q[e], torch.tensor(q, dtype=torch.float64), rtol=1e-13, atol=1e-15)
    update = rule.grads(x, target).grads
    for name, grad in expected.items():
        torch.testing.assert_close(update[name], torch.tensor(grad, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_rflo_with_symmetric_feedback_is_bptt_where_the_dropped_term_vanishes() -> None:
    """RFLO drops Σ_k W_rec,jk ∂h_k^{t−1}/∂W from the exact recursion. With B = W_outᵀ it is BPTT exactly when that
    term is zero: W_rec = 0 (any T, every weight), or T = 1 (h^0 = 0 so nothing has an influence yet); at T = 2 the
    recurrent weights are still exact (their influence starts at step 2) but the input weights are not. Elsewhere
    the term is O(1/τ) against the one kept, so the error falls as 1/τ (here ×10 in τ, ≥ ×3 in error)."""
    loss = losses.get("ce")
    net, (x, y) = rate_net(), sequence(steps=12)
    with torch.no_grad():
        net.recurrent.weight.zero_()
    update = rules.create("rflo", net, feedback="symmetric").grads(x, y).grads
    for name, grad in bptt(net, x, y, loss).items():
        assert relative(update[name], grad) < 1e-10, name

    net = rate_net()

    def both(steps: int) -> tuple[dict, dict]:
        xs, ys = x[:steps], torch.randint(0, 3, (steps, 3), generator=torch.Generator().manual_seed(steps))
        return rules.create("rflo", net, feedback="symmetric").grads(xs, ys).grads, bptt(net, xs, ys, loss)

    update, exact = both(1)
    assert relative(update["input.weight"], exact["input.weight"]) < 1e-10
    assert update["recurrent.weight"].abs().max() == 0 and exact["recurrent.weight"].abs().max() == 0
    update, exact = both(2)
    assert relative(update["recurrent.weight"], exact["recurrent.weight"]) < 1e-10
    assert relative(update["input.weight"], exact["input.weight"]) > 1e-3

    errors = []
    for tau in (10.0, 100.0, 1000.0):
        net = rate_net(tau=tau)
        update, exact = rules.create("rflo", net, feedback="symmetric").grads(x, y).grads, bptt(net, x, y, loss)
        errors.append(relative(update["recurrent.weight"], exact["recurrent.weight"]))
        assert relative(update["readout.weight"], exact["readout.weight"]) < 1e-10  # the readout is exact
    assert errors[2] > 1e-5 and errors[2] < errors[1] / 3 < errors[0] / 9, errors


def test_rflo_feedback_is_its_own_seeded_draw_and_is_checkpointed() -> None:
    """B (n, K) ~ N(0, 1/K) from a generator of the rule's seed alone: the global generator is untouched, the same
    seed draws the same B, another seed another; state_dict carries B, so a rule loaded from it gives the same
    update."""
    net, (x, y) = rate_net(), sequence()
    rng = torch.get_rng_state()
    first, again, other = (rules.create("rflo", net, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.state_dict()["feedback"], again.state_dict()["feedback"])
    assert not torch.equal(first.state_dict()["feedback"], other.state_dict()["feedback"])
    assert first.state_dict()["feedback"].shape == (5, 3)
    wide = rflo.random_feedback(2000, 4, seed=0)
    assert abs(float(wide.std()) - 0.5) < 0.02 and abs(float(wide.mean())) < 0.02
    other.load_state_dict(first.state_dict())
    a, b = first.grads(x, y).grads, other.grads(x, y).grads
    assert all(torch.equal(a[name], b[name]) for name in a)
    with pytest.raises(BioPropError, match="checkpoint feedback"):
        rules.create("rflo", rate_net(n=4)).load_state_dict(first.state_dict())


@pytest.mark.parametrize("name", ["rflo", "rtrl"])
def test_grads_is_pure_after_training_steps(name: str) -> None:
    """The contract: the same batch gives the same update and leaves the rule's state and the global RNG alone."""
    net, (x, y) = rate_net(), sequence()
    rule = rules.create(name, net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        rule.backward(x, y)
        optimizer.step()
    before = {key: value.clone() for key, value in rule.state_dict().items()}
    rng = torch.get_rng_state()
    first, second = rule.grads(x, y), rule.grads(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    after = rule.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    assert int(after["step"]) == 2
    assert all(torch.equal(first.grads[key], second.grads[key]) for key in first.grads)


def test_rflo_refuses_a_spiking_network_naming_the_rules_that_train_it() -> None:
    with pytest.raises(BioPropError, match=r"rule rflo trains rate networks \(--arch rnn:N\), not this network's "
                       r"spiking cell; .* use eprop, rtrl, bptt or tbptt"):  # fmt: skip
        rules.create("rflo", spiking_net(3, 3))
    with pytest.raises(BioPropError, match="rule rflo needs a recurrent network"):
        rules.create("rflo", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))


def test_rflo_lowers_the_loss_of_the_periodic_target_task(tmp_path) -> None:
    """Murray 2019's Fig. 2 task (a periodic output from one input pulse), 30 units, τ = 10 steps, through the
    trainer: the test loss after 30 steps is well below that after the first."""
    config = RunConfig(rule="rflo", data="periodic-target:n_train=2,n_test=1,period=100", arch="rnn:30", epochs=30,
                       batch_size=2, optimizer="adam", lr=3e-3, device="cpu", probe_batches=1)  # fmt: skip
    summary = train.run(config, tmp_path / "run", quiet=True)
    assert summary["status"] == "finished" and summary["loss"] == "se"
    with open(tmp_path / "run" / "metrics.csv") as handle:
        test_loss = [float(row["test_loss"]) for row in csv.DictReader(handle)]
    assert len(test_loss) == 30 and test_loss[-1] < 0.75 * test_loss[0], test_loss
