"""The recurrent and spiking networks (bioprop.nets.recurrent), checked in float64 against hand computations: the
LIF/ALIF step stepped by hand (reset by subtraction, refractoriness, adaptation, threshold), the pseudo-derivative
and the surrogate gradient of the spike, the rate step, gradients through time (autograd's gradcheck for the smooth
rate network, a hand-unrolled two-step derivation for the spiking one), the arch grammar and the refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from bioprop.errors import BioPropError, DivergenceError
from bioprop.nets import ARCHS, build
from bioprop.nets.recurrent import (
    LIFParameters,
    LIFState,
    RateParameters,
    RateState,
    RecurrentNet,
    lif_step,
    pseudo_derivative,
    rate_step,
    spike,
)

D = torch.float64


def scalar_lif(current, steps, beta, p: LIFParameters):
    """The LIF/ALIF equations of Bellec et al. 2020 in plain Python, one neuron and one step at a time, from rest.
    ``current(t, z_prev)`` gives the list of input currents at step t. Returns per-step lists of v, z, a, A, psi,
    ref (each a list over neurons)."""
    n = len(beta)
    alpha, rho = math.exp(-p.dt / p.tau_m), math.exp(-p.dt / p.tau_a)
    v, z, a, ref = [0.0] * n, [0.0] * n, [0.0] * n, [0] * n
    out = {key: [] for key in ("v", "z", "a", "A", "psi", "ref")}
    for t in range(steps):
        i = current(t, z)
        v = [alpha * v[j] + (1 - alpha) * i[j] - p.v_th * z[j] for j in range(n)]
        a = [rho * a[j] + z[j] if beta[j] > 0 else 0.0 for j in range(n)]
        A = [p.v_th + beta[j] * a[j] for j in range(n)]
        psi = [0.0 if ref[j] > 0 else p.gamma / p.v_th * max(0.0, 1 - abs(v[j] - A[j]) / p.v_th) for j in range(n)]
        z = [0.0 if ref[j] > 0 else float(v[j] > A[j]) for j in range(n)]
        ref = [p.n_ref if z[j] else max(ref[j] - 1, 0) for j in range(n)]
        for key, value in zip(out, (v, z, a, A, psi, ref), strict=True):
            out[key].append(value)
    return out


def test_lif_step_equals_the_neuron_stepped_by_hand() -> None:
    """Three neurons under constant currents: LIF at 20, ALIF (β = 2) and LIF at 14, n_ref = 1, v_th = 0.6. By hand,
    with (1−α)·20 = 0.975 and (1−α)·14 = 0.683: all spike at step 1; step 2 is refractory (v = 1.30, 0.73); the LIF
    neurons alternate spike / refractory step while reset by subtraction lets v grow (2.22, 2.48, 3.34 / 1.38, 1.39,
    2.01); the ALIF neuron's threshold, raised to v_th + 2ρ ≈ 2.6 by its first spike, holds it silent at v = 1.38,
    1.99, 2.58 (the LIF neuron with the same voltage fires at step 3) until v = 3.14 at step 6."""
    p = LIFParameters(v_th=0.6, n_ref=1, gamma=0.3)
    beta = [0.0, 2.0, 0.0]
    steps = 6
    hand = scalar_lif(lambda t, z: [20.0, 14.0, 14.0], steps, beta, p)
    # v^1 = (1−α) i > v_th for all three; v^2 = α v^1 + (1−α) i − v_th (reset by subtraction), refractory.
    assert [row[0] for row in hand["z"]] == [1, 0, 1, 0, 1, 0]
    assert [row[1] for row in hand["z"]] == [1, 0, 0, 0, 0, 1]
    assert [row[2] for row in hand["z"]] == [1, 0, 1, 0, 1, 0]
    alpha = math.exp(-1 / 20)
    assert hand["v"][1][0] == pytest.approx(alpha * (1 - alpha) * 20 + (1 - alpha) * 20 - 0.6, rel=1e-14)
    assert hand["v"][2][1] > 0.6 and hand["psi"][1][0] == 0.0  # ALIF blocked by A, not v_th; no ψ when refractory

    i = torch.tensor([[20.0, 14.0, 14.0]], dtype=D)
    zeros = torch.zeros(1, 3, dtype=D)
    state = LIFState(zeros, zeros, zeros, zeros)
    beta_t = torch.tensor(beta, dtype=D)
    for t in range(steps):
        ref = state.ref
        state = lif_step(i, state, beta_t, p)
        A = p.v_th + beta_t * state.a
        torch.testing.assert_close(state.v[0], torch.tensor(hand["v"][t], dtype=D), rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(state.z[0], torch.tensor(hand["z"][t], dtype=D), rtol=0, atol=0)
        torch.testing.assert_close(state.a[0], torch.tensor(hand["a"][t], dtype=D), rtol=1e-13, atol=0)
        torch.testing.assert_close(state.ref[0], torch.tensor(hand["ref"][t], dtype=D), rtol=0, atol=0)
        psi = pseudo_derivative(state.v, A, ref, p)[0]
        torch.testing.assert_close(psi, torch.tensor(hand["psi"][t], dtype=D), rtol=1e-13, atol=1e-15)


def tiny_spiking_net(p: LIFParameters, n_alif: int = 1) -> RecurrentNet:
    torch.manual_seed(0)
    return RecurrentNet(4, 3, 2, "spiking", n_alif=n_alif, params=p).to(D)


def test_a_spiking_run_equals_the_hand_simulation_with_recurrent_input() -> None:
    """The whole network: i_j = Σ_c W_in,jc x_c + Σ_{k≠j} W_rec,jk z_k (no self-connection, whatever W_rec's
    diagonal holds), then the neuron equations; every recorded field of ``run`` equals the scalar simulation, and
    the readout is the leaky integrator y^t = κ y^{t−1} + W_out z^t + b."""
    p = LIFParameters(v_th=0.6, n_ref=2, beta=0.8, tau_a=200.0)
    net = tiny_spiking_net(p, n_alif=2)
    with torch.no_grad():
        net.input.weight.mul_(1.5)
        net.recurrent.weight.copy_(torch.tensor([[50.0, -6.0, 9.0], [12.0, 50.0, -3.0], [7.0, 8.0, 50.0]]))
    generator = torch.Generator().manual_seed(3)
    x = (torch.rand(40, 1, 4, generator=generator, dtype=D) < 0.5).to(D)
    w_in, w_rec = net.input.weight.tolist(), net.recurrent.weight.tolist()

    def current(t, z):
        xt = x[t, 0].tolist()
        return [
            sum(w_in[j][c] * xt[c] for c in range(4)) + sum(w_rec[j][k] * z[k] for k in range(3) if k != j)
            for j in range(3)
        ]

    beta = [0.0, p.beta, p.beta]
    hand = scalar_lif(current, len(x), beta, p)
    run = net.run(x)
    for key in ("v", "z", "a", "A", "psi", "ref"):
        expected = torch.tensor(hand[key], dtype=D)[:, None, :]  # (T, 1, n)
        torch.testing.assert_close(getattr(run, key), expected, rtol=1e-12, atol=1e-13, msg=key)
    blocked = [hand["ref"][t - 1][j] > 0 and hand["v"][t][j] > hand["A"][t][j] for t in range(1, 40) for j in range(3)]
    assert 3 < sum(map(sum, hand["z"])) < 60 and any(blocked)  # it spikes, and refractoriness holds back a spike
    kappa, w_out, b = math.exp(-1 / 20), net.readout.weight.detach(), net.readout.bias.detach()
    y = torch.zeros(2, dtype=D)
    for t in range(len(x)):
        y = kappa * y + w_out @ torch.tensor(hand["z"][t], dtype=D) + b
        torch.testing.assert_close(run.y[t, 0], y, rtol=1e-12, atol=1e-13)
    assert run.h is None and run.u is None


def test_pseudo_derivative_and_the_surrogate_gradient_of_spike() -> None:
    """ψ = (γ/v_th) max(0, 1 − |v − A|/v_th), 0 while refractory; ``spike`` is H(v − A) (0 while refractory) and
    autograd through it gives ∂z/∂v = ψ, ∂z/∂A = −ψ: the surrogate BPTT uses."""
    p = LIFParameters(v_th=0.5, gamma=0.3)
    generator = torch.Generator().manual_seed(1)
    v = torch.randn(64, 5, generator=generator, dtype=D).requires_grad_()
    A = (0.5 + torch.rand(64, 5, generator=generator, dtype=D)).requires_grad_()
    ref = torch.randint(0, 3, (64, 5), generator=generator).to(D)
    weight = torch.randn(64, 5, generator=generator, dtype=D)
    d = (v - A).detach()
    expected = torch.where(ref > 0, 0.0, 0.3 / 0.5 * torch.clamp(1 - d.abs() / 0.5, min=0))
    assert float((expected > 0).sum()) > 20 and float(((expected == 0) & (ref == 0)).sum()) > 5  # both regimes
    torch.testing.assert_close(pseudo_derivative(v.detach(), A.detach(), ref, p), expected, rtol=1e-14, atol=0)
    z = spike(v, A, ref, p)
    torch.testing.assert_close(z.detach(), ((d > 0) & (ref == 0)).to(D), rtol=0, atol=0)
    (z * weight).sum().backward()
    torch.testing.assert_close(v.grad, weight * expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(A.grad, -weight * expected, rtol=1e-14, atol=0)


def test_rate_step_and_run_equal_the_hand_formula() -> None:
    """h_{t+1} = h_t + (−h_t + tanh(u_{t+1}))/τ with u_{t+1} = W_rec h_t + W_in x_{t+1} (Murray 2019), y = W_out h + b,
    self-connections kept."""
    p = RateParameters(tau=4.0)
    h, u = torch.tensor([[0.5, -0.2]], dtype=D), torch.tensor([[1.0, -3.0]], dtype=D)
    expected = [0.5 + (math.tanh(1.0) - 0.5) / 4, -0.2 + (math.tanh(-3.0) + 0.2) / 4]
    torch.testing.assert_close(rate_step(u, RateState(h), p).h[0], torch.tensor(expected, dtype=D), rtol=1e-15, atol=0)

    torch.manual_seed(0)
    net = RecurrentNet(3, 2, 2, "rate", params=p).to(D)
    x = torch.randn(6, 1, 3, dtype=D)
    w_in, w_rec = net.input.weight.tolist(), net.recurrent.weight.tolist()
    w_out, b = net.readout.weight.tolist(), net.readout.bias.tolist()
    hs, us, ys, hand = [], [], [], [0.0, 0.0]
    for t in range(6):
        xt = x[t, 0].tolist()
        ut = [
            sum(w_rec[j][k] * hand[k] for k in range(2)) + sum(w_in[j][c] * xt[c] for c in range(3)) for j in range(2)
        ]
        hand = [hand[j] + (-hand[j] + math.tanh(ut[j])) / 4 for j in range(2)]
        hs.append(hand)
        us.append(ut)
        ys.append([sum(w_out[k][j] * hand[j] for j in range(2)) + b[k] for k in range(2)])
    run = net.run(x)
    torch.testing.assert_close(run.h[:, 0], torch.tensor(hs, dtype=D), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(run.u[:, 0], torch.tensor(us, dtype=D), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(run.y[:, 0], torch.tensor(ys, dtype=D), rtol=1e-13, atol=1e-15)
    assert run.v is None and net.kappa == 0.0


@pytest.mark.parametrize("spec", ["rnn:5", "lsnn:3+2"])
def test_forward_equals_the_readout_of_run(spec: str) -> None:
    """``net(x)`` (``unroll``, which the trainer and BPTT use) and ``run(x).y`` (the record rules read) agree; for
    spiking networks both run the fused loop, whose values ``run``'s hand simulation above checks."""
    torch.manual_seed(2)
    net = build(spec, (30, 4), 3).to(D)
    x = (torch.rand(30, 2, 4, dtype=D) < 0.3).to(D) * 3.0
    torch.testing.assert_close(net(x), net.run(x).y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("spec", ["rnn:5", "lsnn:3+2"])
def test_unroll_in_two_stretches_continues_the_sequence(spec: str) -> None:
    """Truncated BPTT's windows: unroll(x[:7]) then unroll(x[7:], carry) gives the one-run readout (``run``'s loop),
    the readout's leak included, and the final carry holds the run's last state."""
    torch.manual_seed(3)
    net = build(spec, (20, 4), 3).to(D)
    x = (torch.rand(20, 2, 4, dtype=D) < 0.3).to(D) * 3.0
    first, carry = net.unroll(x[:7])
    second, last = net.unroll(x[7:], carry)
    run = net.run(x)
    torch.testing.assert_close(torch.cat([first, second]), run.y, rtol=1e-13, atol=1e-13)
    fields = ("h",) if spec.startswith("rnn") else ("v", "z", "ref", "a")
    torch.testing.assert_close(last.cell, torch.stack([getattr(run, f)[-1] for f in fields]), rtol=1e-13, atol=0)
    torch.testing.assert_close(last.y, run.y[-1], rtol=1e-13, atol=0)


def test_reset_argument_stops_only_the_gradient_through_the_reset() -> None:
    """``reset=z.detach()`` (e-prop's autodiff route) leaves every value alone; ∂v^{t+1}/∂z^t = −v_th through the
    reset becomes 0, while ∂a^{t+1}/∂z^t stays 1 for the ALIF neuron (0 for the LIF one)."""
    p = LIFParameters(v_th=0.6)
    beta = torch.tensor([0.0, 0.5], dtype=D)
    i = torch.tensor([[3.0, 5.0]], dtype=D)
    state = LIFState(*(torch.tensor([[0.2, 0.4]], dtype=D) for _ in range(4)))._replace(ref=torch.zeros(1, 2, dtype=D))
    for reset, dv in ((None, -0.6), ("detached", 0.0)):
        z = torch.tensor([[1.0, 1.0]], dtype=D, requires_grad=True)
        v = state.v.clone().requires_grad_()  # so that v^{t+1} has a graph even when z is cut from it
        new = lif_step(i, state._replace(z=z, v=v), beta, p, reset=None if reset is None else z.detach())
        plain = lif_step(i, state._replace(z=z.detach()), beta, p)
        for got, expected in zip(new, plain, strict=True):
            torch.testing.assert_close(got.detach(), expected, rtol=0, atol=0)
        (grad_v,) = torch.autograd.grad(new.v.sum(), z, retain_graph=True, allow_unused=True, materialize_grads=True)
        (grad_a,) = torch.autograd.grad(new.a.sum(), z)
        torch.testing.assert_close(grad_v, torch.full((1, 2), dv, dtype=D), rtol=0, atol=0)
        torch.testing.assert_close(grad_a, torch.tensor([[0.0, 1.0]], dtype=D), rtol=0, atol=0)


def test_rate_gradients_through_time_pass_gradcheck() -> None:
    """BPTT through ``forward`` of a tiny rate network: autograd's analytic gradients of every parameter equal
    finite differences (torch.autograd.gradcheck)."""
    torch.manual_seed(4)
    net = RecurrentNet(3, 4, 2, "rate", params=RateParameters(tau=2.0)).to(D)
    x = torch.randn(5, 2, 3, dtype=D)
    names = [name for name, _ in net.named_parameters()]
    tensors = tuple(param.detach().clone().requires_grad_() for param in net.parameters())

    def readout(*params):
        return functional_call(net, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(readout, tensors, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("n_ref", [0, 2])
def test_spiking_gradients_equal_a_hand_unrolled_two_step_derivation(n_ref: int) -> None:
    """BPTT through two steps of a 3-neuron net (LIF, LIF, ALIF; α = ρ = ½), with the surrogate ∂z/∂v = ψ, derived
    by hand: the ALIF neuron spikes at step 1 (so its reset, its adaptation and, with n_ref > 0, its refractoriness
    enter), the LIF neurons lie inside ψ's window at both steps. L = g₁·y¹ + g₂·y², y² = κ y¹ + W_out z² + b."""
    p = LIFParameters(tau_m=1 / math.log(2), tau_a=1 / math.log(2), v_th=1.0, beta=0.5, gamma=0.3, n_ref=n_ref)
    net = RecurrentNet(2, 3, 2, "spiking", n_alif=1, params=p).to(D)
    w_in = torch.tensor([[1.6, 0.6], [1.0, 0.4], [2.4, 3.2]], dtype=D)
    w_rec = torch.tensor([[5.0, 0.3, 1.0], [0.2, 5.0, -0.6], [0.7, -0.9, 5.0]], dtype=D)  # diagonal ignored
    w_out, b = torch.tensor([[0.3, -0.5, 0.8], [-0.2, 0.4, 0.6]], dtype=D), torch.tensor([0.1, -0.1], dtype=D)
    with torch.no_grad():
        net.input.weight.copy_(w_in)
        net.recurrent.weight.copy_(w_rec)
        net.readout.weight.copy_(w_out)
        net.readout.bias.copy_(b)
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=D)  # (T=2, B=1, C=2)
    g1, g2 = torch.tensor([0.7, -1.3], dtype=D), torch.tensor([-0.4, 0.9], dtype=D)
    (net(x) * torch.stack([g1, g2])[:, None]).sum().backward()

    alpha, kappa, beta_j = 0.5, p.kappa, torch.tensor([0.0, 0.0, 0.5], dtype=D)
    w_off = w_rec * (1 - torch.eye(3, dtype=D))

    def psi(d):  # γ/v_th max(0, 1 − |d|/v_th)
        return 0.3 * torch.clamp(1 - d.abs(), min=0)

    v1 = (1 - alpha) * w_in[:, 0]  # (0.8, 0.5, 1.2)
    z1 = (v1 > 1.0).to(D)  # the ALIF neuron spikes
    psi1 = psi(v1 - 1.0)
    v2 = alpha * v1 + (1 - alpha) * (w_in[:, 1] + w_off @ z1) - 1.0 * z1
    A2 = 1.0 + beta_j * z1  # a² = z¹ for the ALIF neuron
    free = (z1 == 0) | (n_ref == 0)  # not refractory at step 2
    z2 = ((v2 > A2) & free).to(D)
    psi2 = psi(v2 - A2) * free
    assert z1.tolist() == [0, 0, 1] and bool((psi1 > 0).all()) and float(psi2[:2].min()) > 0
    assert (float(psi2[2]) > 0) == (n_ref == 0)

    dz2 = w_out.T @ g2
    dv2 = psi2 * dz2
    dA2 = -psi2 * dz2
    dz1 = w_out.T @ (g1 + kappa * g2) + (1 - alpha) * w_off.T @ dv2 - 1.0 * dv2 + beta_j * dA2
    dv1 = psi1 * dz1 + alpha * dv2
    grads = {
        "input.weight": (1 - alpha) * (torch.outer(dv1, x[0, 0]) + torch.outer(dv2, x[1, 0])),
        "recurrent.weight": (1 - alpha) * torch.outer(dv2, z1) * (1 - torch.eye(3, dtype=D)),
        "readout.weight": torch.outer(g1 + kappa * g2, z1) + torch.outer(g2, z2),
        "readout.bias": g1 + kappa * g2 + g2,
    }
    for name, param in net.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-13, atol=1e-15, msg=name)


def test_arch_grammar_builds_the_named_networks() -> None:
    """rnn:N rate, lif:N all LIF, alif:N all ALIF, lsnn:N+M N LIF then M ALIF; inputs (T, C) give n_in = C."""
    rate = build("rnn:8", (100, 5), 3)
    assert (rate.cell, rate.n_in, rate.n_hidden, rate.n_out, rate.kappa) == ("rate", 5, 8, 3, 0.0)
    lif, alif, lsnn = build("lif:6", (100, 5), 2), build("alif:4", (100, 5), 2), build(" LSNN:3+2 ", (100, 5), 2)
    beta = LIFParameters().beta
    assert lif.to(D).beta.tolist() == [0.0] * 6 and alif.to(D).beta.tolist() == [beta] * 4
    assert lsnn.to(D).beta.tolist() == [0.0, 0.0, 0.0, beta, beta] and lsnn.n_hidden == 5
    assert lsnn.kappa == pytest.approx(math.exp(-1 / 20), rel=1e-15)
    # e-prop's heuristic adaptation strength 1.7 (1 − ρ)/(1 − α) for τ_a = 2000 ms, τ_m = 20 ms, dt = 1 ms
    assert beta == pytest.approx(1.7 * (1 - math.exp(-1 / 2000)) / (1 - math.exp(-1 / 20)), rel=1e-15)
    with torch.device("meta"):  # RunConfig.check_arch builds without allocating
        assert build("lsnn:50+50", (2250, 40), 2).recurrent.weight.shape == (100, 100)
    assert {"rnn:N", "lif:N", "alif:N", "lsnn:N+M"} <= set(ARCHS)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("rnn", r"'rnn'.*positive integer, e\.g\. rnn:100"),
        ("rnn:0", r"positive integer"),
        ("lif:x", r"e\.g\. lif:100"),
        ("alif:-3", r"e\.g\. alif:100"),
        ("lsnn:50", r"lsnn:N\+M, e\.g\. lsnn:50\+50"),
        ("lsnn:50+", r"e\.g\. lsnn:50\+50"),
        ("lsnn:5+0", r"e\.g\. lsnn:50\+50"),
        ("lsnn:a+b", r"e\.g\. lsnn:50\+50"),
    ],
)
def test_bad_arch_specs_are_refused_with_an_example(spec: str, match: str) -> None:
    with pytest.raises(BioPropError, match=match):
        build(spec, (10, 4), 2)


def test_image_inputs_are_refused_by_a_recurrent_arch() -> None:
    with pytest.raises(BioPropError, match=r"'lif:5' takes sequences of shape \(T, C\); the inputs are 1x28x28"):
        build("lif:5", (1, 28, 28), 10)


def test_initialisation_scales_and_seeding() -> None:
    """Seeded by torch's global generator; spiking W_in ~ N(0, 1/C)/(1 − α), W_rec ~ N(0, 1/n)/(1 − α) (the e-prop
    code's draws, for the (1 − α)-scaled input of step 1); rate W_rec ~ N(0, g²/n), g = 1.5. Sample standard
    deviations of 10⁴–4·10⁴ draws are within 3 % of σ (their standard error is < 1 %)."""
    torch.manual_seed(5)
    first = build("lsnn:100+100", (10, 50), 2)
    torch.manual_seed(5)
    again = build("lsnn:100+100", (10, 50), 2)
    torch.testing.assert_close(first.state_dict(), again.state_dict(), rtol=0, atol=0)
    scale = 1 / (1 - math.exp(-1 / 20))
    assert float(first.input.weight.detach().std()) == pytest.approx(scale / math.sqrt(50), rel=0.03)
    assert float(first.recurrent.weight.detach().std()) == pytest.approx(scale / math.sqrt(200), rel=0.03)
    rate = build("rnn:200", (10, 50), 2)
    assert float(rate.recurrent.weight.detach().std()) == pytest.approx(1.5 / math.sqrt(200), rel=0.03)
    assert float(rate.input.weight.detach().std()) == pytest.approx(1 / math.sqrt(50), rel=0.03)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(5, 4, dtype=D), r"shape \(5, 4\) does not fit the network: expected time-major \(T, B, 4\)"),
        (torch.zeros(5, 2, 3, dtype=D), r"shape \(5, 2, 3\) does not fit"),
        (torch.zeros(0, 2, 4, dtype=D), r"shape \(0, 2, 4\) has no time steps"),
        (torch.zeros(5, 2, 4, dtype=torch.float32), r"shape \(5, 2, 4\) is torch.float32 but the network is "),
        (torch.zeros(5, 2, 4, dtype=torch.uint8), r"is torch.uint8"),
        (torch.zeros(5, 2, 4, dtype=D, device="meta"), r"is on meta but the network is on cpu"),
        ([[0.0] * 4], r"must be a torch.Tensor of shape \(T, B, 4\), not list"),
    ],
)
@pytest.mark.parametrize("spec", ["rnn:3", "lif:3"])
def test_bad_sequences_are_refused_naming_the_shape(spec: str, x, match: str) -> None:
    net = build(spec, (5, 4), 2).to(D)
    for call in (net, net.run):
        with pytest.raises(BioPropError, match=match):
            call(x)


@pytest.mark.parametrize("spec", ["rnn:3", "lsnn:2+1"])
def test_a_non_finite_membrane_is_a_divergence_naming_the_step(spec: str) -> None:
    torch.manual_seed(0)
    net = build(spec, (8, 4), 2).to(D)
    x = torch.ones(8, 2, 4, dtype=D)
    x[3, 1, 0] = float("nan")
    for call in (net, net.run):
        with pytest.raises(DivergenceError, match=r"not finite at time step 3 of 8"):
            call(x)
