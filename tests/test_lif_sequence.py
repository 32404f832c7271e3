"""The fused spiking time loop (bioprop.nets.recurrent.lif_unroll, LIFSequenceFunction, leaky_readout): its
hand-derived backward checked in float64 against autograd through the per-step definition, a loop written here of
``lif_step`` (the surrogate ψ of ``SpikeFunction``, the reset's gradient included) and ``readout_step``. Every
comparison first asserts that both runs spike alike, so the gradients compared are those of one trajectory."""

from __future__ import annotations

import pytest
import torch

from bioprop.nets.recurrent import (
    Carry,
    LIFParameters,
    LIFState,
    ReadoutState,
    RecurrentNet,
    flush_subnormal,
    leaky_readout,
    lif_step,
    lif_unroll,
    pseudo_derivative,
    readout_step,
    threshold,
)

D = torch.float64
KINDS = {"lif": 0, "alif": 6, "lsnn": 3}  # ALIF neurons of the 6


def relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert float(expected.norm()) > 0, "a zero reference gradient checks nothing"
    return float((got - expected).norm() / expected.norm())


def spiking_net(kind: str, n_ref: int, seed: int = 0) -> RecurrentNet:
    """6 neurons, 4 inputs, 2 readouts; β = 0.5 and τ_a = 100 ms so that adaptation moves within 40 steps."""
    torch.manual_seed(seed)
    p = LIFParameters(n_ref=n_ref, beta=0.5, tau_a=100.0)
    return RecurrentNet(4, 6, 2, "spiking", n_alif=KINDS[kind], params=p).to(D)


def spikes_in(steps: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, 3, 4, generator=generator, dtype=D) < 0.3).to(D) * 1.5  # (T, B=3, C=4)


def reference(net: RecurrentNet, x: torch.Tensor, carry: Carry | None = None) -> tuple[dict, Carry]:
    """The per-step definition: lif_step and readout_step in a loop, autograd through it. Returns every step's y,
    v, z, a, A, ψ, r (each stacked (T, B, ·)) and the carry after the last step."""
    p, beta, w_rec = net.params, net.beta, net.recurrent_weight()
    if carry is None:
        state, out = net.initial_state(x.shape[1], x), ReadoutState(x.new_zeros(x.shape[1], net.n_out))
    else:
        state, out = LIFState(*carry.cell.unbind(0)), ReadoutState(carry.y)
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in ("y", "v", "z", "a", "A", "psi", "ref")}
    for x_t in x:
        before = state.ref
        state = lif_step(x_t @ net.input.weight.T + state.z @ w_rec.T, state, beta, p)
        out = readout_step(state.z, out, net.readout.weight, net.readout.bias, net.kappa)
        A = threshold(state.a, beta, p)
        values = (out.y, state.v, state.z, state.a, A, pseudo_derivative(state.v, A, before, p), state.ref)
        for key, value in zip(rows, values, strict=True):
            rows[key].append(value)
    return {key: torch.stack(value) for key, value in rows.items()}, Carry(torch.stack(tuple(state)), out.y)


def grads(objective: torch.Tensor, net: RecurrentNet) -> dict[str, torch.Tensor]:
    named = dict(net.named_parameters())
    return dict(zip(named, torch.autograd.grad(objective, list(named.values())), strict=True))


def assert_same_gradients(got: dict, expected: dict) -> None:
    for name, grad in expected.items():
        assert relative(got[name], grad) < 1e-10, name
    assert float(got["recurrent.weight"].diagonal().abs().max()) == 0.0  # no self-connections, no gradient


def weights(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("n_ref", [0, 5])
@pytest.mark.parametrize("kind", list(KINDS))
def test_bptt_through_forward_equals_autograd_through_lif_step(kind: str, n_ref: int) -> None:
    """BPTT's update (the gradient of a loss of ``net(x)``) through the fused loop is the gradient autograd takes
    through the per-step definition, for all four parameters: the hand-written backward is the chain rule of
    steps 1–5, with the surrogate ψ, the reset, the adaptation and refractoriness."""
    net, x = spiking_net(kind, n_ref), spikes_in(40)
    expected_run, _ = reference(net, x)
    z, psi = expected_run["z"].detach(), expected_run["psi"].detach()
    assert 0.05 < float(z.mean()) < 0.5 and float((psi > 0).double().mean()) > 0.05  # spikes, and ψ's window is used
    if n_ref:
        assert float((expected_run["ref"] > 0).double().mean()) > 0.2
    if KINDS[kind]:
        assert float(expected_run["a"][..., -1].detach().std()) > 0.1
    y = net(x)
    torch.testing.assert_close(y, expected_run["y"], rtol=1e-12, atol=1e-12)
    g = weights(tuple(y.shape), seed=7)
    assert_same_gradients(grads((g * y).sum(), net), grads((g * expected_run["y"]).sum(), net))


@pytest.mark.parametrize("n_ref", [0, 5])
def test_gradients_cross_the_carry_between_two_unrolls(n_ref: int) -> None:
    """Two unrolls chained without detaching (BPTT over a sequence run in stretches) and a loss on both stretches
    and on both carries: the gradients reach the first stretch through the final v, z, a and y of the first
    unroll (the carry's gradients, handled by the backward), as in one run through lif_step."""
    net, x = spiking_net("lsnn", n_ref), spikes_in(40)
    first, middle = net.unroll(x[:17])
    second, last = net.unroll(x[17:], middle)
    expected_first, expected_middle = reference(net, x[:17])
    expected_second, expected_last = reference(net, x[17:], expected_middle)
    torch.testing.assert_close(torch.cat([first, second]), torch.cat([expected_first["y"], expected_second["y"]]),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    torch.testing.assert_close(last.cell, expected_last.cell, rtol=1e-12, atol=1e-12)
    g, h, k = weights((40, 3, 2), 8), weights((2, 4, 3, 6), 9), weights((2, 3, 2), 10)
    keep = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=D).view(4, 1, 1)  # v, z, a carry gradients; r is a count

    def loss(ys, carries):
        out = (g * torch.cat(ys)).sum()
        for h_c, k_c, carry in zip(h, k, carries, strict=True):
            out = out + (h_c * keep * carry.cell).sum() + (k_c * carry.y).sum()
        return out

    assert_same_gradients(grads(loss([first, second], [middle, last]), net),
                          grads(loss([expected_first["y"], expected_second["y"]], [expected_middle, expected_last]),
                                net))  # fmt: skip


@pytest.mark.parametrize("n_ref", [0, 5])
def test_run_records_the_per_step_definition_and_differentiates_every_field(n_ref: int) -> None:
    """``run`` records what the per-step loop computes (y, v, z, a, A, ψ, r), and a loss on its membrane v, its
    threshold A and ψ besides the readout (gradients arriving on the record's v and a, not only z) has the gradient
    autograd takes through lif_step."""
    net, x = spiking_net("lsnn", n_ref), spikes_in(30)
    run = net.run(x)
    expected, _ = reference(net, x)
    for key, value in expected.items():
        torch.testing.assert_close(getattr(run, key), value, rtol=1e-12, atol=1e-12, msg=key)
    g = {key: weights(tuple(value.shape), seed) for seed, (key, value) in enumerate(expected.items()) if key != "ref"}

    def loss(record):
        return sum((g[key] * record[key]).sum() for key in g)

    assert_same_gradients(grads(loss(run._asdict()), net), grads(loss(expected), net))


def test_a_gap_of_exactly_zero_is_no_spike_and_has_the_full_surrogate() -> None:
    """H(0) = 0: membranes exactly at threshold at the first step (v⁰ = 1, no input, v_th = α, so v¹ = α v⁰ = v_th
    bit for bit, and a = 0) do not spike, in the record and in lif_step alike, and ψ there is γ/v_th, the top of its
    window; the gradients, the initial membrane's included, equal the per-step ones."""
    p = LIFParameters(n_ref=2, beta=0.5, tau_a=100.0)
    p = p._replace(v_th=p.alpha)
    torch.manual_seed(0)
    net = RecurrentNet(4, 6, 2, "spiking", n_alif=3, params=p).to(D)
    x = spikes_in(20)
    x[0] = 0.0
    zeros = x.new_zeros(3, 6)
    v0 = torch.ones(3, 6, dtype=D, requires_grad=True)
    carry = Carry(torch.stack([v0, zeros, zeros, zeros]), x.new_zeros(3, 2))
    record, _ = lif_unroll(x @ net.input.weight.T, net.recurrent_weight(), net.beta, LIFState(*carry.cell), p)
    y, _ = net.unroll(x, carry)
    expected, _ = reference(net, x, carry)
    torch.testing.assert_close(y, expected["y"], rtol=1e-12, atol=1e-12)
    assert bool((record.v[0] == p.v_th).all()) and bool((record.gap[0] == 0.0).all())
    assert bool((expected["v"][0] == p.v_th).all()) and bool((expected["A"][0] == p.v_th).all())
    assert not bool(record.z[0].any()) and not bool(expected["z"][0].any())
    torch.testing.assert_close(expected["psi"][0], torch.full((3, 6), p.gamma / p.v_th, dtype=D), rtol=0, atol=0)
    assert float(expected["z"].detach().mean()) > 0.05
    g = weights(tuple(y.shape), 11)
    named = [*net.parameters(), v0]
    got = torch.autograd.grad((g * y).sum(), named)
    want = torch.autograd.grad((g * expected["y"]).sum(), named)
    for a, b in zip(got, want, strict=True):
        assert relative(a, b) < 1e-10


@pytest.mark.parametrize("fields", [("v", "z", "a"), ("v",)], ids=["vza", "v-only"])
@pytest.mark.parametrize("beta", [[0.0, 0.7, 0.0, 0.3, 0.5], [0.0] * 5], ids=["mixed", "lif"])
def test_lif_unroll_gradients_in_every_input(beta: list[float], fields: tuple[str, ...]) -> None:
    """lif_unroll's own inputs, from a state away from rest (a membrane, spikes, refractory counts, adaptation on
    LIF neurons too, which only decays): the gradients in the drives, W_rec (its diagonal used as given), the
    initial v, z, a, for a loss on the record's z, v and a (or on v alone: no gradient arrives on z or a), are
    autograd's through lif_step step by step."""
    p = LIFParameters(n_ref=2, tau_a=50.0)
    generator = torch.Generator().manual_seed(4)
    steps, batch, n = 25, 3, 5
    drives = (torch.rand(steps, batch, n, generator=generator, dtype=D) * 25.0).requires_grad_()
    w_rec = (torch.randn(n, n, generator=generator, dtype=D) * 3.0).requires_grad_()
    v0 = (torch.rand(batch, n, generator=generator, dtype=D) * 0.8).requires_grad_()
    z0 = (torch.rand(batch, n, generator=generator, dtype=D) < 0.4).to(D).requires_grad_()
    a0 = torch.rand(batch, n, generator=generator, dtype=D).requires_grad_()
    ref0 = torch.randint(0, 3, (batch, n), generator=generator).to(D)
    beta_t = torch.tensor(beta, dtype=D)
    record, last = lif_unroll(drives, w_rec, beta_t, LIFState(v0, z0, ref0, a0), p)

    state, rows = LIFState(v0, z0, ref0, a0), {"v": [], "z": [], "a": [], "ref": []}
    for drive in drives:
        state = lif_step(drive + state.z @ w_rec.T, state, beta_t, p)
        for key in rows:
            rows[key].append(getattr(state, key))
    expected = {key: torch.stack(value) for key, value in rows.items()}
    for key, value in expected.items():
        torch.testing.assert_close(getattr(record, key), value, rtol=1e-12, atol=1e-12, msg=key)
    for got, want in zip(last, state, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert 0.05 < float(record.z.detach().mean()) < 0.6 and float((record.ref > 0).double().mean()) > 0.1
    g = {key: weights((steps, batch, n), seed) for seed, key in enumerate(fields)}
    inputs = (drives, w_rec, v0, z0, a0)
    got = torch.autograd.grad(sum((g[key] * getattr(record, key)).sum() for key in g), inputs)
    want = torch.autograd.grad(sum((g[key] * expected[key]).sum() for key in g), inputs)
    for name, a, b in zip(("drives", "w_rec", "v0", "z0", "a0"), got, want, strict=True):
        if name == "a0" and fields == ("v",) and not any(beta):  # a reaches nothing but itself without ALIF
            assert not bool(a.any()) and not bool(b.any())
        else:
            assert relative(a, b) < 1e-10, name


def test_leaky_readout_is_readout_step_in_a_loop() -> None:
    """y^t = κ y^{t−1} + W_out z^t + b from y⁰, values and gradients (z, W_out, b, y⁰) as readout_step's."""
    generator = torch.Generator().manual_seed(5)
    z = torch.rand(12, 3, 4, generator=generator, dtype=D).requires_grad_()
    w_out = torch.randn(2, 4, generator=generator, dtype=D).requires_grad_()
    b = torch.randn(2, generator=generator, dtype=D).requires_grad_()
    y0 = torch.randn(3, 2, generator=generator, dtype=D).requires_grad_()
    y = leaky_readout(z, y0, w_out, b, 0.9)
    out, rows = ReadoutState(y0), []
    for z_t in z:
        out = readout_step(z_t, out, w_out, b, 0.9)
        rows.append(out.y)
    expected = torch.stack(rows)
    torch.testing.assert_close(y, expected, rtol=1e-13, atol=1e-13)
    g = weights((12, 3, 2), 12)
    for a, b_ in zip(torch.autograd.grad((g * y).sum(), (z, w_out, b, y0)),
                     torch.autograd.grad((g * expected).sum(), (z, w_out, b, y0)), strict=True):  # fmt: skip
        assert relative(a, b_) < 1e-12


def test_flush_subnormal_zeroes_only_what_is_below_the_smallest_normal_number() -> None:
    tiny = torch.finfo(torch.float32).tiny  # 1.18e-38
    values = torch.tensor([1e-39, -1e-40, tiny, -2 * tiny, 0.5, 0.0], dtype=torch.float32)
    assert bool((values[:2] != 0).all())  # subnormal, not zero
    flush_subnormal(values)
    assert values.tolist() == torch.tensor([0.0, 0.0, tiny, -2 * tiny, 0.5, 0.0], dtype=torch.float32).tolist()
