"""``stdp`` with spiking neurons (``neurons=spiking``: units drive each other with spikes alone) against independent
math: the integrate-and-fire generator by hand and its sigma-delta bound, the spiking step against the energy net's
step (the mean field), the phase's S·V̇ sums against a plain re-simulation written here, and the one-layer update's
direction against the delta rule (Bengio et al. 2015, eq. 1)."""

from __future__ import annotations

import pytest
import torch

from bioprop import rules
from bioprop.errors import BioPropError
from bioprop.nets import energy
from bioprop.nets.energy import EnergyNet
from bioprop.rules.equilibrium import nudging
from bioprop.rules.stdp import SpikeSource, integrate_and_fire, spiking_phase, spiking_step
from test_stdp import cosine, delta_rule, one_layer


def test_integrate_and_fire_by_hand() -> None:
    """Rate 0.375 from u = 0 (exact in binary): u = 0.375, 0.75, 1.125 → spike (0.125), 0.5, 0.875, 1.25 → spike
    (0.25), 0.625, 1.0 → spike (0), 0.375, 0.75: spikes in steps 3, 6 and 8, u = 0.75 after 10 steps. A negative rate
    fires negative spikes; with scale 2 and p_max 0.5, a rate of 2 adds 0.5 to u and its spikes count ±4."""
    u = torch.zeros(1, 2, dtype=torch.float64)
    rates = torch.tensor([[0.375, -0.375]], dtype=torch.float64)
    fired = []
    for _ in range(10):
        spikes, u = integrate_and_fire(rates, u, 1.0, 1.0)
        fired.append(spikes[0].tolist())
    assert [t + 1 for t, s in enumerate(fired) if s[0] != 0] == [3, 6, 8]
    assert all(s == [1.0, -1.0] for s in fired if s[0] != 0) and all(s == [0.0, 0.0] for s in fired if s[0] == 0)
    assert u.tolist() == [[0.75, 0.75]]
    spikes, _ = integrate_and_fire(torch.tensor([[2.0, -2.0]]), torch.full((1, 2), 0.5), 2.0, 0.5)  # u: 0.5 + 0.5
    assert spikes.tolist() == [[4.0, -4.0]]


def test_integrate_and_fire_counts_within_one_spike_of_the_integrated_rate() -> None:
    """Whatever the rates do, after T steps |#spikes − Σ_t r(t)| < 1 for every unit (reset by subtraction: the
    residue u ∈ [0, 1) is all that is not yet counted)."""
    g = torch.Generator().manual_seed(0)
    rates = torch.rand(200, 8, 50, generator=g, dtype=torch.float64)  # (T, B, n)
    u = torch.rand(8, 50, generator=g, dtype=torch.float64)
    u0, count = u.clone(), torch.zeros(8, 50, dtype=torch.float64)
    for r in rates:
        spikes, u = integrate_and_fire(r, u, 1.0, 1.0)
        count += spikes
    assert float((count - (rates.sum(0) + u0 - u)).abs().max()) < 1e-9
    assert float((count - rates.sum(0)).abs().max()) < 1.0


@pytest.mark.parametrize("output", ["se", "ce"])
def test_spiking_step_with_spikes_equal_to_the_rates_is_the_energy_step(output: str) -> None:
    """The spiking step replaces every presynaptic rate by its spikes; fed the rates themselves it is the energy net's
    synchronous step s ← σ((1 − ε) s + ε (∂Φ/∂s − β ∂ℓ/∂s))."""
    torch.manual_seed(0)
    net = EnergyNet((6,), [5, 4], 3).double()
    x = torch.rand(7, 6, dtype=torch.float64)
    states = [torch.rand(7, *shape, dtype=torch.float64) for shape in net.state_shapes[: net.n_states(output)]]
    onehot = torch.nn.functional.one_hot(torch.randint(3, (7,)), 3).double()
    nudge = nudging(net, onehot, torch.full((7, 1), 0.3, dtype=torch.float64), output).nudge
    expected = energy.step(net, energy.drive(net, 0, x), states, 0.4, nudge)
    for got, want in zip(spiking_step(net, [x, *states], states, 0.4, nudge), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def resimulate(net: EnergyNet, x: torch.Tensor, y: torch.Tensor, beta: float, eps: float, steps: int):
    """The nudged phase of a 3-2-2 net (se output) re-simulated unit by unit with plain Python numbers: potentials V,
    integrate-and-fire generators from u = 0 (p_max = 1; the input's scale 1), and the sum of S_i(t) (V_j(t) −
    V_j(t − 1)) for t = 1 … steps over both directions of every symmetric synapse; returns (ΔW_0, Δb_0, ΔW_1, Δb_1)
    summed over the batch."""
    W0, b0 = net.synapses[0].weight.tolist(), net.synapses[0].bias.tolist()
    W1, b1 = net.synapses[1].weight.tolist(), net.synapses[1].bias.tolist()
    dW0, db0 = [[0.0] * 3 for _ in range(2)], [0.0] * 2
    dW1, db1 = [[0.0] * 2 for _ in range(2)], [0.0] * 2
    for xb, yb in zip(x.tolist(), y.tolist(), strict=True):
        h, o = [0.0, 0.0], [0.0, 0.0]  # the phase starts at rest
        ux, uh, uo = [0.0] * 3, [0.0] * 2, [0.0] * 2
        prev_h, prev_o = None, None
        for t in range(steps + 1):
            sx, sh, so = [], [], []
            for rates, u, out in ((xb, ux, sx), (h, uh, sh), (o, uo, so)):
                for k, r in enumerate(rates):
                    u[k] += abs(r)
                    fire = u[k] >= 1.0
                    u[k] -= 1.0 if fire else 0.0
                    out.append((1.0 if r > 0 else -1.0) if fire else 0.0)
            if t >= 1:
                slope_h = [h[j] - prev_h[j] for j in range(2)]
                slope_o = [o[j] - prev_o[j] for j in range(2)]
                for j in range(2):
                    db0[j] += slope_h[j]
                    db1[j] += slope_o[j]
                    for i in range(3):
                        dW0[j][i] += sx[i] * slope_h[j]
                    for i in range(2):
                        dW1[j][i] += sh[i] * slope_o[j] + so[j] * slope_h[i]
            if t == steps:
                break
            target = [1.0 if k == yb else 0.0 for k in range(2)]
            new_h = [sum(W0[j][i] * sx[i] for i in range(3)) + b0[j] + sum(W1[k][j] * so[k] for k in range(2))
                     for j in range(2)]  # fmt: skip
            new_o = [sum(W1[j][i] * sh[i] for i in range(2)) + b1[j] + beta * (target[j] - o[j]) for j in range(2)]
            prev_h, prev_o = h, o
            h = [min(1.0, max(0.0, (1 - eps) * h[j] + eps * new_h[j])) for j in range(2)]
            o = [min(1.0, max(0.0, (1 - eps) * o[j] + eps * new_o[j])) for j in range(2)]
    return [torch.tensor(v, dtype=torch.float64) for v in (dW0, db0, dW1, db1)]


def test_spiking_phase_sums_equal_a_plain_resimulation() -> None:
    """spiking_phase's S·V̇ sums (row weights 1, so the batch mean times B) equal the unit-by-unit re-simulation
    above: same dynamics, same integrate-and-fire generators, the spike of instant t paired with V(t) − V(t − 1)."""
    torch.manual_seed(3)
    net = EnergyNet((3,), [2], 2).double()
    with torch.no_grad():
        for synapse in net.synapses:
            synapse.weight.uniform_(-0.8, 1.2)
            synapse.bias.uniform_(0.0, 0.5)
    x = torch.tensor([[0.9, 0.4, -0.7], [0.2, 1.0, 0.6]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    source = SpikeSource("threshold", 1.0, None)
    source.state = {0: torch.zeros(2, 3, dtype=torch.float64), 1: torch.zeros(2, 2, dtype=torch.float64),
                    2: torch.zeros(2, 2, dtype=torch.float64)}  # fmt: skip
    start = energy.zero_states(net, x, "se")
    onehot = torch.nn.functional.one_hot(y, 2).double()
    beta = torch.full((2, 1), 0.4, dtype=torch.float64)
    with torch.no_grad():
        phase = spiking_phase(net, x, start, onehot, beta, torch.ones(2, dtype=torch.float64), 12, 0.5, "se", source)
    for got, want in zip(phase.grads, resimulate(net, x, y, 0.4, 0.5, 12), strict=True):
        torch.testing.assert_close(got * 2, want, rtol=1e-12, atol=1e-12)  # the function's batch mean over 2 rows
    assert float(phase.grads[0].abs().sum()) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_layer_spiking_update_points_along_the_gradient(seed: int) -> None:
    """One layer of spiking output units driven by the input's integrate-and-fire spikes (their potentials fluctuate
    with every input spike), one-sided nudge contrasted with the free phase continued from the same state: the
    update's cosine to −∂J/∂W (the delta rule) is at least 0.95, for three seeds of the generators' phases."""
    net, x, y = one_layer(n_in=20, n_out=5, batch=32)
    rule = rules.create("stdp", net, output="se", neurons="spiking", spikes="threshold", nudge="one-sided", beta=0.1,
                        eps=0.1, nudged_steps=100, free_steps=100, seed=seed)  # fmt: skip
    assert cosine(rule.grads(x, y).grads, delta_rule(net, x, y)) >= 0.95


def test_spiking_neurons_need_spikes() -> None:
    """neurons=spiking with spikes=rate (no spikes at all) is refused at create in one line naming both."""
    net = one_layer()[0]
    with pytest.raises(BioPropError, match="spikes=rate with neurons=spiking") as info:
        rules.create("stdp", net, output="se", neurons="spiking", spikes="rate")
    assert "\n" not in str(info.value)


def test_spiking_neurons_need_a_leak() -> None:
    """eps = 1 (the rate default) leaves a spiking potential no memory: refused at create, naming working settings."""
    net = one_layer()[0]
    with pytest.raises(BioPropError, match="eps=1 with neurons=spiking.*eps=0.2 free_steps=60") as info:
        rules.create("stdp", net, output="se", neurons="spiking", spikes="threshold")
    assert "\n" not in str(info.value)


def test_spiking_grads_is_pure_and_backward_writes_it() -> None:
    """grads twice gives the same update (the generators' phases come from the rule's seeded stream) and leaves the
    global random state alone; backward writes it into .grad."""
    torch.manual_seed(0)
    net = EnergyNet((6,), [5], 3).double()
    x, y = torch.rand(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    rule = rules.create("stdp", net, neurons="spiking", spikes="threshold", eps=0.3, free_steps=20, nudged_steps=10)
    state = torch.get_rng_state()
    first, second = rule.grads(x, y), rule.grads(x, y)
    assert all(torch.equal(first.grads[k], second.grads[k]) for k in first.grads)
    assert torch.equal(torch.get_rng_state(), state)
    rule.backward(x, y)
    assert all(torch.equal(p.grad, first.grads[k]) for k, p in net.named_parameters())
