"""Sparse attentive backtracking (bioprop.nets.attention, bioprop.rules.sab) against independent math, float64:

- one attention step of a 3-unit network against a hand computation (scores, top-k, renormalisation, ĥ, the write);
- with every memory attended, a memory every step and k_trunc ≥ T, sab's update is BPTT (autograd through net(x));
- on a store-recall sequence whose only input is at the store step, tbptt with k_trunc < delay gives W_in exactly no
  gradient, and sab gives it one, equal to autograd through a forward pass written here, cut by hand;
- the refusals, and purity.
"""

from __future__ import annotations

import math

import pytest
import torch

from bioprop import losses, nets, rules
from bioprop.errors import BioPropError
from bioprop.nets import attention
from bioprop.nets import recurrent as rnn

D = torch.float64


def sab_net(n_in: int = 3, n: int = 5, k_top: int = 2, k_att: int = 2, seed: int = 0) -> attention.SABNet:
    """A small SABNet whose attention scores are spread enough for the top-k choice to matter."""
    torch.manual_seed(seed)
    net = attention.SABNet(n_in, n, 3, attention=attention.SABParameters(k_top, k_att)).double()
    with torch.no_grad():
        net.attention.hidden.weight.mul_(3.0)
        net.attention.score.weight.mul_(3.0)
    return net


def sequence(steps: int = 14, batch: int = 3, channels: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, channels, generator=generator, dtype=D)
    y = torch.randint(0, 3, (steps, batch), generator=generator)
    y[: steps // 2] = -1  # targets in the second half only
    return x, y


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bptt_grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss: losses.Loss) -> dict:
    named = dict(net.named_parameters())
    return dict(zip(named, torch.autograd.grad(loss.value(net(x), y), list(named.values())), strict=True))


@pytest.mark.parametrize("k_top", [2, 3])
def test_one_attention_step_equals_the_hand_computation(k_top: int) -> None:
    """u = W_rec ĥ + W_in x, h = h' + (tanh u − h')/τ, a_i = wᵀ tanh(W_a [h; m_i]), the k_top best kept by
    ReLU(a − a_(k_top+1)) and renormalised (all three by softmax when k_top ≥ |M|), ĥ = h + Σ α_i m_i, then h is
    stored (step 2 of k_att = 2). Plain floats, no tensors."""
    net = attention.SABNet(2, 3, 2, params=rnn.RateParameters(tau=2.0), attention=attention.SABParameters(k_top, 2))
    net = net.double()
    w_in = [[0.5, -1.0], [1.5, 0.25], [-0.75, 0.5]]
    w_rec = [[0.2, -0.4, 0.6], [0.1, 0.3, -0.5], [-0.2, 0.7, 0.4]]
    w_a = [[0.9, -0.3, 0.4, 1.2, -0.8, 0.5], [-0.6, 0.8, 0.2, -0.4, 1.1, 0.7], [0.3, 0.5, -0.9, 0.6, 0.2, -1.3]]
    w = [1.5, -2.0, 1.0]
    with torch.no_grad():
        net.input.weight.copy_(torch.tensor(w_in, dtype=D))
        net.recurrent.weight.copy_(torch.tensor(w_rec, dtype=D))
        net.attention.hidden.weight.copy_(torch.tensor(w_a, dtype=D))
        net.attention.score.weight.copy_(torch.tensor([w], dtype=D))
    x, h0, hh0 = [1.0, -0.5], [0.1, -0.2, 0.3], [0.4, 0.0, -0.6]
    memory = [[0.5, -0.5, 0.2], [-0.3, 0.8, 0.1], [0.6, 0.2, -0.7]]
    state = attention.SABState(torch.tensor([h0], dtype=D), torch.tensor([hh0], dtype=D),
                               torch.tensor([memory], dtype=D), torch.tensor(1))  # fmt: skip
    new, h_hat = net.step(torch.tensor([x], dtype=D), state)

    u = [sum(w_rec[j][k] * hh0[k] for k in range(3)) + sum(w_in[j][c] * x[c] for c in range(2)) for j in range(3)]
    h = [h0[j] + (math.tanh(u[j]) - h0[j]) / 2.0 for j in range(3)]
    a = [sum(w[j] * math.tanh(sum(w_a[j][k] * h[k] + w_a[j][3 + k] * m[k] for k in range(3))) for j in range(3))
         for m in memory]  # fmt: skip
    if k_top < 3:
        third = sorted(a, reverse=True)[k_top]
        kept = [max(0.0, s - third) for s in a]
        alpha = [s / (sum(kept) + 1e-7) for s in kept]
        assert sum(s > 0 for s in alpha) == k_top
    else:
        alpha = [math.exp(s) / sum(math.exp(r) for r in a) for s in a]
    expected = [h[j] + sum(alpha[i] * memory[i][j] for i in range(3)) for j in range(3)]
    torch.testing.assert_close(h_hat, torch.tensor([expected], dtype=D), rtol=0, atol=1e-14)
    torch.testing.assert_close(new.h, torch.tensor([h], dtype=D), rtol=0, atol=1e-14)
    assert new.memory.shape == (1, 4, 3) and torch.equal(new.memory[:, 3], new.h) and int(new.steps) == 2
    assert torch.equal(net.step(torch.tensor([x], dtype=D), state._replace(steps=torch.tensor(2)))[0].memory,
                       state.memory)  # step 3: nothing stored  # fmt: skip


@pytest.mark.parametrize("loss_name", ["ce", "se"])
def test_sab_attending_every_memory_without_truncation_is_bptt(loss_name: str) -> None:
    """Ke et al.'s limit: with every state a memory (k_att = 1), all of them attended (k_top ≥ T) and k_trunc ≥ T,
    nothing is cut and the update is the exact gradient of the loss of net(x), here by autograd through it."""
    x, y = sequence()
    net = sab_net(k_top=x.shape[0], k_att=1)
    loss = losses.get(loss_name)
    exact = bptt_grads(net, x, y, loss)
    for k in (x.shape[0], 1000):
        update = rules.create("sab", net, truncation=k, output=loss_name).grads(x, y).grads
        for name, grad in exact.items():
            assert relative(update[name], grad) < 1e-10, (k, name)
    cut = rules.create("sab", net, truncation=4, output=loss_name).grads(x, y).grads
    assert relative(cut["recurrent.weight"], exact["recurrent.weight"]) > 1e-6  # truncation does cut


def test_sab_without_memories_is_truncated_bptt() -> None:
    """A memory every k_att > T steps leaves the memory empty, ĥ = h: the cuts alone are tbptt's windows."""
    x, y = sequence()
    net = sab_net(k_att=100)
    tbptt = rules.create("tbptt", net, truncation=4).grads(x, y).grads
    sab = rules.create("sab", net, truncation=4).grads(x, y).grads
    for name, grad in tbptt.items():  # the attention's gradients are zero in both: it never runs
        assert relative(sab[name], grad) < 1e-12 if grad.any() else torch.equal(sab[name], grad), name


def hand_forward(net: attention.SABNet, x: torch.Tensor, k_trunc: int) -> torch.Tensor:
    """The module docstring's dynamics written out again, with h and ĥ detached by hand before steps k_trunc,
    2 k_trunc, … and the memories kept attached: the readout (T, B, K)."""
    w_in, w_rec, w_out, b = net.input.weight, net.recurrent.weight, net.readout.weight, net.readout.bias
    w_a, w, n, tau = net.attention.hidden.weight, net.attention.score.weight[0], net.n_hidden, net.params.tau
    k_top, k_att = net.sab
    h = h_hat = x.new_zeros(x.shape[1], n)
    memory, ys = [], []
    for t in range(x.shape[0]):
        if t and t % k_trunc == 0:
            h, h_hat = h.detach(), h_hat.detach()
        h = h + (torch.tanh(x[t] @ w_in.T + h_hat @ w_rec.T) - h) / tau
        h_hat = h
        if memory:
            a = torch.stack([torch.tanh(h @ w_a[:, :n].T + m @ w_a[:, n:].T) @ w for m in memory], 1)  # (B, M)
            if len(memory) > k_top:
                kept = (a - a.sort(1, descending=True).values[:, k_top : k_top + 1]).clamp_min(0.0)
                alpha = kept / (kept.sum(1, keepdim=True) + 1e-7)
            else:
                alpha = a.softmax(1)
            h_hat = h + sum(alpha[:, i : i + 1] * m for i, m in enumerate(memory))
        if (t + 1) % k_att == 0:
            memory.append(h)
        ys.append(h_hat @ w_out.T + b)
    return torch.stack(ys)


def test_sab_carries_credit_to_the_store_step_beyond_the_truncation() -> None:
    """Store-recall with its only input at step 0 and its only target at the last step, 16 steps later; k_trunc = 4.
    tbptt's windows cut every path from the target to x_0, so its W_in gradient is exactly zero (the windows that
    see x_0 carry no error, the one with the error sees x = 0). sab's memories stored in the first window keep their
    graph, so W_in gets credit through them — equal to autograd through the hand-cut forward above."""
    steps, k = 17, 4
    generator = torch.Generator().manual_seed(2)
    x = torch.zeros(steps, 2, 3, dtype=D)
    x[0] = torch.randn(2, 3, generator=generator, dtype=D)
    y = torch.full((steps, 2), -1)
    y[-1] = torch.tensor([0, 2])
    net = sab_net(k_top=1, k_att=2)
    tbptt = rules.create("tbptt", net, truncation=k).grads(x, y).grads
    assert torch.count_nonzero(tbptt["input.weight"]) == 0
    sab = rules.create("sab", net, truncation=k).grads(x, y).grads
    named = dict(net.named_parameters())
    loss = losses.get("ce")
    expected = torch.autograd.grad(loss.value(hand_forward(net, x, k), y), list(named.values()), allow_unused=True)
    for name, grad in zip(named, expected, strict=True):
        assert grad is not None and relative(sab[name], grad) < 1e-10, name
    exact = bptt_grads(net, x, y, loss)["input.weight"]
    assert float(sab["input.weight"].norm()) > 1e-3 * float(exact.norm()) > 0.0


def test_a_run_continued_from_its_carry_is_the_whole_run() -> None:
    """unroll(x[:5]) then unroll(x[5:], carry) gives unroll(x): the memory and its k_att schedule cross the carry
    (what tbptt's windows rely on)."""
    x, _ = sequence()
    net = sab_net(k_att=3)
    with torch.no_grad():
        whole = net(x)
        first, carry = net.unroll(x[:5])
        second, _ = net.unroll(x[5:], carry)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-15)


def test_sab_refuses_a_net_without_memory_and_bad_options_and_specs() -> None:
    with pytest.raises(BioPropError, match=r"rule sab backtracks through an attention memory, which RecurrentNet"):
        rules.create("sab", rnn.RecurrentNet(3, 5, 2, cell="rate"))
    with pytest.raises(BioPropError, match="rule sab needs a recurrent network"):
        rules.create("sab", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    with pytest.raises(BioPropError, match="truncation"):
        rules.create("sab", sab_net(), truncation=0)
    for spec, message in [
        ("sab:0", "positive integer"),
        ("sab:x", "positive integer"),
        ("sab:4:k_top=0", "k_top=0"),
        ("sab:4:k_att=a", "k_att='a'"),
        ("sab:4:top=2", "unknown option 'top=2'"),
    ]:
        with pytest.raises(BioPropError, match=message):
            nets.build(spec, (10, 3), 2)
    with pytest.raises(BioPropError, match=r"sequences of shape \(T, C\)"):
        nets.build("sab:4", (1, 28, 28), 2)
    with pytest.raises(BioPropError, match="truncation=0"):
        sab_net().unroll(torch.zeros(3, 1, 3, dtype=D), truncation=0)
    built = nets.build("sab:8:k_top=3,k_att=2", (10, 4), 2)
    assert (
        built.sab == attention.SABParameters(3, 2) and built.n_hidden == 8 and "sab:N[:k_top=K,k_att=A]" in nets.ARCHS
    )


def test_sab_grads_is_pure_and_leaves_the_network_alone() -> None:
    x, y = sequence()
    net = sab_net()
    with torch.no_grad():
        before = net(x)
    rule = rules.create("sab", net, truncation=3)
    first, second = rule.grads(x, y), rule.grads(x, y)
    for name in first.grads:
        assert torch.equal(first.grads[name], second.grads[name])
    assert rule.state_dict().keys() == {"step", "rule_name"}
    assert torch.equal(rule.predict(x), before) and torch.equal(first.prediction, before)
