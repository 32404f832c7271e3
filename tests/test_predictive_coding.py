"""Predictive coding checked against independent math: autograd backprop, and the same inference written in the
test as plain gradient descent on the energy F (autograd through F, not the rule's hand-derived dynamics).
See shared/algorithms.md, "Predictive coding (Box 3)"."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop import rules
from bioprop.errors import BioPropError, DivergenceError

# ---------------------------------------------------------------------------------------------------------------
# Networks, written twice: as the nn.Sequential the rule walks, and as explicit stages μ_l = stage_l(x_{l-1}).
# ---------------------------------------------------------------------------------------------------------------


def reinit(net: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    net.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            fan_in = math.prod(param.shape[1:]) if param.dim() > 1 else 4
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * gain * fan_in**-0.5)
    return net


def mlp(act: type[nn.Module] = nn.Tanh, seed: int = 0, gain: float = 1.0) -> nn.Sequential:
    """12-9-7-4: three weight layers, two hidden value layers."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), act(), nn.Linear(9, 7), act(), nn.Linear(7, 4))
    return reinit(net, seed, gain)


def mlp_stages(net: nn.Sequential) -> list[Callable[[Tensor], Tensor]]:
    _, l1, a1, l2, a2, l3 = net
    return [lambda x: l1(x.flatten(1)), lambda v: l2(a1(v)), lambda v: l3(a2(v))]


def conv_net(seed: int = 0) -> nn.Sequential:
    """8x8 inputs: conv(1→3, pad 1) tanh maxpool conv(3→4) relu flatten fc(16→6) (no activation) fc(6→4)."""
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(16, 6), nn.Linear(6, 4),
    )  # fmt: skip
    return reinit(net, seed)


def conv_stages(net: nn.Sequential) -> list[Callable[[Tensor], Tensor]]:
    c1, t1, p1, c2, r2, fl, f1, f2 = net
    return [c1, lambda v: c2(p1(t1(v))), lambda v: f1(fl(r2(v))), f2]


def data(shape: tuple[int, ...], n: int = 5, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 4, (n,), generator=generator)


def output_loss(z: Tensor, y: Tensor, output: str) -> Tensor:
    """Per-sample loss ℓ."""
    if output == "ce":
        return F.cross_entropy(z, y, reduction="none")
    return 0.5 * (z - F.one_hot(y, z.shape[1]).double()).square().sum(1)


def backprop(net: nn.Module, x: Tensor, y: Tensor, output: str = "ce") -> dict[str, Tensor]:
    """Autograd's gradient of the batch-mean loss, written here independently of the rule's reference."""
    names, params = zip(*net.named_parameters(), strict=True)
    loss = output_loss(net(x), y, output).mean()
    return dict(zip(names, torch.autograd.grad(loss, params), strict=True))


def energy(stages, values: list[Tensor], x: Tensor, y: Tensor, beta: float, output: str) -> Tensor:
    """Per-sample energies summed over the batch: F = Σ_l ½‖x_l − μ_l‖² + β ℓ(μ_L, y)."""
    inputs = [x, *values]
    total = sum(0.5 * (v - stage(h)).square().sum() for v, stage, h in zip(values, stages, inputs, strict=False))
    return total + beta * output_loss(stages[-1](inputs[-1]), y, output).sum()


def descend_energy(net, stages, x, y, beta, output, steps, gamma, weight_lr=0.0) -> tuple[list[Tensor], dict]:
    """Inference by autograd on F: x_l ← x_l − γ ∂F/∂x_l from the feedforward pass; with ``weight_lr`` also
    W ← W − η ∂F/∂W ÷ (β N) (incremental PC). Returns the energy trace and ∂F/∂W ÷ (β N) at the end (or the
    sum of the per-step ones when incremental)."""
    names, params = zip(*net.named_parameters(), strict=True)
    with torch.no_grad():
        values, h = [], x
        for stage in stages[:-1]:
            h = stage(h)
            values.append(h.clone())
    trace, summed = [], {name: torch.zeros_like(p) for name, p in zip(names, params, strict=True)}
    for step in range(steps + 1):
        values = [v.detach().requires_grad_(True) for v in values]
        total = energy(stages, values, x, y, beta, output)
        trace.append(float(total.detach()) / len(x))
        grads = torch.autograd.grad(total, [*values, *params])
        weight_grads = {n: g / (beta * len(x)) for n, g in zip(names, grads[len(values) :], strict=True)}
        if step == steps:
            break
        values = [v - gamma * g for v, g in zip(values, grads[: len(values)], strict=True)]
        if weight_lr:
            with torch.no_grad():
                for (name, param), g in zip(zip(names, params, strict=True), weight_grads.values(), strict=True):
                    summed[name] += g
                    param -= weight_lr * g
    return trace, (summed if weight_lr else weight_grads)


def cosine(a: Tensor, b: Tensor) -> float:
    return float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))


def rel_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


NETS = {"mlp": (mlp, mlp_stages, (1, 3, 4)), "conv": (conv_net, conv_stages, (1, 8, 8))}

# ---------------------------------------------------------------------------------------------------------------
# Conditions under which predictive coding equals backprop (Whittington & Bogacz 2019; Millidge et al. 2022)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("output", ["ce", "se"])
def test_fixed_prediction_assumption_equals_backprop(kind: str, output: str) -> None:
    build, _, shape = NETS[kind]
    net = build()
    x, y = data(shape)
    update = rules.create("pc-fpa", net, output=output).grads(x, y).grads
    exact = backprop(net, x, y, output)
    for name, grad in exact.items():
        assert rel_error(update[name], grad) < 1e-6, name


@pytest.mark.parametrize("kind", NETS)
def test_zero_divergence_inference_learning_equals_backprop(kind: str) -> None:
    build, _, shape = NETS[kind]
    net = build()
    x, y = data(shape)
    update = rules.create("pc", net, update_at="zil", gamma=1.0, steps=5).grads(x, y).grads
    for name, grad in backprop(net, x, y).items():
        assert rel_error(update[name], grad) < 1e-6, name


@pytest.mark.parametrize("kind", NETS)
def test_zero_divergence_inference_learning_with_its_defaults_equals_backprop(kind: str) -> None:
    """Z-IL is defined at γ = 1: ``update_at=zil`` alone (γ, T and the rest at their defaults) is backprop."""
    build, _, shape = NETS[kind]
    net = build()
    x, y = data(shape)
    rule = rules.create("pc", net, update_at="zil")
    update = rule.grads(x, y).grads
    for name, grad in backprop(net, x, y).items():
        assert rel_error(update[name], grad) < 1e-6, name
    assert rule.opts.gamma == 1.0  # what it uses is what it reports (summary.json's rule_options, compare)


@pytest.mark.parametrize("kind", NETS)
def test_small_output_precision_at_equilibrium_is_backprop_and_hard_clamping_is_not(kind: str) -> None:
    build, _, shape = NETS[kind]
    net = build()
    x, y = data(shape)
    exact = backprop(net, x, y, "se")
    weak = rules.create("pc", net, output="se", beta=0.01, steps=300, gamma=0.2).grads(x, y).grads
    clamped = rules.create("pc", net, output="se", beta=1.0, steps=300, gamma=0.2).grads(x, y).grads
    for name, grad in exact.items():
        assert cosine(weak[name], grad) >= 0.999, name
    # The output layer's update is exact in both (its error is the output error at the feedforward input only
    # when the values below have not moved), so look at the layers below the output.
    hidden = [name for name in exact if name.endswith("weight")][:-1]
    assert min(cosine(clamped[name], exact[name]) for name in hidden) < 0.99
    assert max(rel_error(clamped[name], exact[name]) for name in hidden) > 0.1


def test_one_sided_error_shrinks_like_beta_and_centred_like_beta_squared() -> None:
    net = mlp()
    x, y = data((1, 3, 4))
    exact = backprop(net, x, y)
    name = "1.weight"  # the first layer: the error crossed every hidden layer

    def error(beta: float, nudge: str) -> float:
        update = rules.create("pc", net, beta=beta, nudge=nudge, steps=400, gamma=0.2).grads(x, y).grads
        return rel_error(update[name], exact[name])

    one_sided = [error(beta, "positive") for beta in (0.4, 0.2, 0.1)]
    centred = [error(beta, "centred") for beta in (0.4, 0.2, 0.1)]
    for errors, order in ((one_sided, 1), (centred, 2)):
        ratios = [errors[i] / errors[i + 1] for i in range(2)]
        assert all(2**order * 0.75 < r < 2**order * 1.33 for r in ratios), (order, errors)
    assert error(0.1, "negative") == pytest.approx(one_sided[-1], rel=0.3)


# ---------------------------------------------------------------------------------------------------------------
# The dynamics: the rule's inference is gradient descent on F
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("output", ["ce", "se"])
def test_inference_is_gradient_descent_on_the_energy(kind: str, output: str) -> None:
    build, stages, shape = NETS[kind]
    net = build()
    x, y = data(shape)
    beta, steps, gamma = 0.7, 12, 0.15
    got = rules.create("pc", net, output=output, beta=beta, steps=steps, gamma=gamma).grads(x, y)
    trace, expected = descend_energy(net, stages(net), x, y, beta, output, steps, gamma)
    assert got.traces["energy"].tolist() == pytest.approx(trace, rel=1e-10, abs=1e-12)
    for name, grad in expected.items():
        assert rel_error(got.grads[name], grad) < 1e-9, name


def test_incremental_pc_descends_energy_in_values_and_weights() -> None:
    net = mlp()
    x, y = data((1, 3, 4))
    steps, gamma, weight_lr = 6, 0.2, 0.05
    got = rules.create("ipc", net, steps=steps, gamma=gamma, weight_lr=weight_lr).grads(x, y).grads
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    _, expected = descend_energy(net, mlp_stages(net), x, y, 1.0, "ce", steps, gamma, weight_lr)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(before[name])
    for name, grad in expected.items():
        assert rel_error(got[name], grad) < 1e-9, name


def linear_net_bound(net: nn.Sequential, x: Tensor, y: Tensor) -> float:
    """2/λ_max of ∇²_x F for a linear network (F is quadratic in the values there), from autograd's Hessian."""
    stages = mlp_stages(net)
    with torch.no_grad():
        values = [stages[0](x[:1]), stages[1](stages[0](x[:1]))]
    sizes = [v.numel() for v in values]

    def f(flat: Tensor) -> Tensor:
        parts = list(flat.split(sizes))
        return energy(stages, [p.reshape(v.shape) for p, v in zip(parts, values, strict=True)], x[:1], y[:1], 1.0,
                      "se")  # fmt: skip

    hessian = torch.autograd.functional.hessian(f, torch.cat([v.flatten() for v in values]))
    return 2.0 / float(torch.linalg.eigvalsh(hessian).max())


def test_energy_never_increases_below_the_bound_and_divergence_is_reported_above() -> None:
    net = mlp(nn.Identity, gain=2.0)
    x, y = data((1, 3, 4))
    bound = linear_net_bound(net, x, y)
    trace = rules.create("pc", net, output="se", gamma=0.95 * bound, steps=60).grads(x, y).traces["energy"]
    assert bool((trace[1:] <= trace[:-1] * (1 + 1e-12)).all())
    assert float(trace[-1]) < float(trace[0])
    with pytest.raises(DivergenceError, match="lower gamma"):
        rules.create("pc", net, output="se", gamma=1.1 * bound, steps=400).grads(x, y)


def test_ipc_blames_gamma_only_when_the_inference_rises_with_the_weights_held_fixed() -> None:
    """On a linear network F is quadratic in the values: descent with γ below 2/λ_max(∇²_x F) (autograd's Hessian)
    never rises, above it it does (as pc shows here). ipc also moves the weights: with γ at half the bound a huge
    weight step makes the energy rise, and the guard must name weight_lr, not claim γ is above the bound; with γ
    above the bound and a negligible weight step (1e-30: the weights stay put, as in pc) it names γ. Options the
    user set are listed as suspects, except the one the message names with its value."""
    net = mlp(nn.Identity, gain=2.0)
    x, y = data((1, 3, 4))
    bound = linear_net_bound(net, x, y)
    rules.create("pc", net, output="se", gamma=0.5 * bound, steps=60).grads(x, y)  # below the bound: no rise
    with pytest.raises(DivergenceError) as info:
        rules.create("ipc", net, output="se", gamma=0.5 * bound, steps=60, weight_lr=1e10).grads(x, y)
    message = str(info.value)
    assert "but not with the weights held fixed, so the inner weight step weight_lr=1e+10 is too large" in message
    assert message.endswith(
        f"; suspects, first the options you set: output=se (default ce), gamma={0.5 * bound:g} "
        "(default 0.1), steps=60 (default 20); then lower weight_lr"
    )
    assert "stability bound" not in message and "lower gamma" not in message, message

    gamma = 1.1 * bound
    with pytest.raises(DivergenceError, match=f"gamma={gamma:g} is above the stability bound"):
        rules.create("pc", net, output="se", gamma=gamma, steps=400).grads(x, y)
    with pytest.raises(DivergenceError) as info:
        rules.create("ipc", net, output="se", gamma=gamma, steps=400, weight_lr=1e-30).grads(x, y)
    message = str(info.value)
    assert f"with the weights held fixed too, so gamma={gamma:g} is above the stability bound" in message
    assert "weight_lr=1e-30 (default 0.01)" in message and message.endswith("; then lower gamma"), message


def test_an_energy_already_infinite_at_the_feedforward_pass_blames_no_gamma() -> None:
    """Finite float32 weights of 1e30 make the squared-error output energy overflow before any inference step:
    no step of size γ has been taken, so γ cannot be the cause (the rule stated: no false claim)."""
    net = mlp().float()
    with torch.no_grad():
        net[5].weight.fill_(1e30)
    x, y = data((1, 3, 4))
    with pytest.raises(DivergenceError) as info:
        rules.create("pc", net, output="se").grads(x.float(), y)
    message = str(info.value)
    assert message.startswith(
        "pc: the energy is inf at the feedforward pass, before any inference step, so gamma is "
        "not the cause: the network's values or its output energy overflow torch.float32"
    )
    assert "stability bound" not in message and "lower gamma" not in message


@pytest.mark.parametrize("act", [nn.Tanh, nn.GELU, nn.Softplus])
def test_energy_never_increases_with_a_small_step(act: type[nn.Module]) -> None:
    """Smooth activations: descent on an L-smooth F with γ < 2/L (ReLU's kinks can make single steps rise)."""
    net = mlp(act, gain=1.5)
    x, y = data((1, 3, 4), n=16)
    for output in ("ce", "se"):
        trace = rules.create("pc", net, output=output, gamma=0.1, steps=50).grads(x, y).traces["energy"]
        assert bool((trace[1:] <= trace[:-1] * (1 + 1e-12)).all()), output


def test_dropout_draws_one_mask_per_batch_so_a_tiny_step_never_raises_the_energy() -> None:
    """A dropout mask is part of φ_l for the whole inference: drawn once, as net(x) draws it from the same random
    state, so the first energy is net(x)'s loss and γ = 1e-6 only descends. (A mask redrawn at every step made the
    hidden errors jump, the energy rise, and the rule blame γ.)"""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.Tanh(), nn.Dropout(0.5), nn.Linear(9, 7), nn.Tanh(),
                        nn.Linear(7, 4))  # fmt: skip
    net = reinit(net, seed=0)
    x, y = data((12,), n=8)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        energy = rules.create("pc", net, gamma=1e-6, steps=5).grads(x, y).traces["energy"]
        torch.manual_seed(3)
        loss = F.cross_entropy(net(x), y)
    assert abs(float(energy[0] - loss.detach())) < 1e-12
    assert bool((energy[1:] < energy[:-1]).all())
    # Centred nudging stacks two copies of the batch, which would draw two masks: refused, unless in eval mode.
    centred = rules.create("pc", net, nudge="centred", gamma=0.05, steps=5)
    with pytest.raises(BioPropError, match="nudge=centred with a Dropout layer in training mode is not supported"):
        centred.grads(x, y)
    net.eval()
    assert all(bool(torch.isfinite(g).all()) for g in centred.grads(x, y).grads.values())


# ---------------------------------------------------------------------------------------------------------------
# Contract, options and bad input
# ---------------------------------------------------------------------------------------------------------------


def test_backward_fills_grad_with_the_update_and_records_the_energy_trace() -> None:
    net = mlp()
    x, y = data((1, 3, 4))
    rule = rules.create("pc", net, steps=7)
    update = rule.grads(x, y)
    loss, prediction = rule.backward(x, y)
    rule.backward(x, y)
    for name, param in net.named_parameters():
        torch.testing.assert_close(param.grad, 2 * update.grads[name])
    torch.testing.assert_close(prediction, net(x).detach())
    assert float(loss) == pytest.approx(float(F.cross_entropy(net(x), y).detach()))
    traces = rule.epoch_traces()
    assert traces["energy"] == pytest.approx(update.traces["energy"].tolist())
    assert len(traces["energy"]) == 8 and rule.epoch_traces() == {}


def test_reference_is_the_gradient_of_the_chosen_output_loss() -> None:
    net = mlp()
    x, y = data((1, 3, 4))
    for output in ("ce", "se"):
        reference = rules.create("pc", net, output=output).reference_grads(x, y)
        for name, grad in backprop(net, x, y, output).items():
            torch.testing.assert_close(reference[name], grad)


@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("pc", {"steps": -1}, "steps=-1 must be 0 or more"),
        ("pc", {"gamma": 0}, "gamma=0"),
        ("pc", {"beta": "-1"}, "beta='-1' must be positive"),
        ("pc", {"output": "mse"}, "choose one of ce, se"),
        ("pc", {"nudge": "up"}, "choose one of positive, negative, centred"),
        ("pc", {"update_at": "zil", "steps": 1}, "needs steps >= 2"),
        ("ipc", {"update_at": "zil"}, "incremental updates need"),
        ("pc", {"update_at": "zil", "gamma": 0.1}, r"gamma=0.1 with update_at=zil; Z-IL is defined at gamma=1"),
        ("pc", {"update_at": "zil", "gamma": "0.5"}, r"gamma=0.5 with update_at=zil"),
        ("pc-fpa", {"gamma": 0.5}, "fixed by the rule's name"),
        ("pc", {"tau": 1}, "unknown option 'tau'"),
    ],
)
def test_bad_options_are_one_line_errors(name: str, options: dict, says: str) -> None:
    with pytest.raises(BioPropError, match=says) as caught:
        rules.create(name, mlp(), **options)
    assert "\n" not in str(caught.value)


def test_networks_it_cannot_run_are_rejected() -> None:
    with pytest.raises(BioPropError, match="end with its output layer, not Tanh"):
        rules.create("pc", nn.Sequential(nn.Linear(3, 2), nn.Tanh()))
    with pytest.raises(BioPropError, match="at least one Linear or Conv2d"):
        rules.create("pc", nn.Sequential(nn.Flatten()))


def test_cards_are_registered() -> None:
    for name in ("pc", "pc-fpa", "ipc"):
        found = rules.entry(name)
        assert found.family == "predictive coding" and len(found.card) == 6
    assert rules.entry("pc").card["weight_transport"].removed is False


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile's own machinery
def test_compiled_inference_matches_eager() -> None:
    net = mlp().float()
    x, y = data((1, 3, 4))
    x = x.float()
    eager = rules.create("pc", net, steps=5).grads(x, y)
    compiled = rules.create("pc", net, steps=5, compile=True).grads(x, y)
    for name, grad in eager.grads.items():
        torch.testing.assert_close(compiled.grads[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("output", ["ce", "se"])
@pytest.mark.parametrize("nudge", ["negative", "centred"])
def test_negative_and_centred_nudging_descend_their_energies(nudge: str, output: str) -> None:
    """Negative nudging is descent on F with −β; centred runs the +β and −β copies of the batch together: its
    trace is the mean of the two energies and its update the mean of ∂F⁺/∂W ÷ β and ∂F⁻/∂W ÷ (−β)."""
    net = mlp()
    x, y = data((1, 3, 4))
    beta, steps, gamma = 0.3, 10, 0.15
    got = rules.create("pc", net, output=output, beta=beta, nudge=nudge, steps=steps, gamma=gamma).grads(x, y)
    signs = (-1.0,) if nudge == "negative" else (1.0, -1.0)
    runs = [descend_energy(net, mlp_stages(net), x, y, sign * beta, output, steps, gamma) for sign in signs]
    trace = [sum(values) / len(runs) for values in zip(*(r[0] for r in runs), strict=True)]
    assert got.traces["energy"].tolist() == pytest.approx(trace, rel=1e-10, abs=1e-12)
    for name in runs[0][1]:
        expected = sum(r[1][name] for r in runs) / len(runs)
        assert rel_error(got.grads[name], expected) < 1e-9, name


# ---------------------------------------------------------------------------------------------------------------
# Contract v2: one loss per run, declarations, purity; the optimisations checked against plain math
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pc", "pc-fpa", "ipc"])
@pytest.mark.parametrize("output", ["se", "ce"])
def test_the_returned_loss_is_the_runs_loss_of_the_feedforward_prediction(name: str, output: str) -> None:
    """One loss per run: with output=se the loss pc returns (and backward) is ½‖net(x) − onehot(y)‖², batch mean,
    written out here; with ce the cross-entropy (once returned as cross-entropy whatever the output)."""
    net = mlp()
    x, y = data((1, 3, 4))
    rule = rules.create(name, net, output=output)
    z = net(x).detach()
    if output == "se":
        expected = sum(0.5 * sum((float(z[n, k]) - (k == int(y[n]))) ** 2 for k in range(4)) for n in range(len(y)))
    else:
        expected = sum(math.log(sum(math.exp(v) for v in z[n].tolist())) - float(z[n, y[n]]) for n in range(len(y)))
    expected /= len(y)
    update = rule.grads(x, y)
    assert float(update.loss) == pytest.approx(expected, rel=1e-12)
    loss, prediction = rule.backward(x, y)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(prediction, z)


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("output", ["ce", "se"])
def test_zero_divergence_inference_learning_equals_backprop_for_either_output(kind: str, output: str) -> None:
    """Z-IL (Song et al. 2020): with γ = 1, layer l's update read at step L − l equals backprop's gradient of the
    run's loss, ce or se, on a conv net as on an MLP."""
    build, _, shape = NETS[kind]
    net = build()
    x, y = data(shape)
    update = rules.create("pc", net, update_at="zil", output=output).grads(x, y).grads
    for name, grad in backprop(net, x, y, output).items():
        assert rel_error(update[name], grad) < 1e-6, name


def wide_mlp(act: type[nn.Module] = nn.GELU, seed: int = 0) -> nn.Sequential:
    """12-8-8-8-4: three hidden layers of one width, which inference runs stacked as one (N, 3, 8) group."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 8), act(),
                        nn.Linear(8, 4))  # fmt: skip
    return reinit(net, seed, gain=1.5)


def wide_stages(net: nn.Sequential) -> list[Callable[[Tensor], Tensor]]:
    _, l1, a1, l2, a2, l3, a3, l4 = net
    return [lambda x: l1(x.flatten(1)), lambda v: l2(a1(v)), lambda v: l3(a2(v)), lambda v: l4(a3(v))]


@pytest.mark.parametrize("act", [nn.GELU, nn.Tanh, nn.Identity])
@pytest.mark.parametrize("output", ["ce", "se"])
def test_stacked_hidden_layers_descend_the_energy_as_autograd_does(act: type[nn.Module], output: str) -> None:
    """Equal-width hidden layers are relaxed as one stacked tensor, and the exact GELU with its slope from one erf:
    optimisations that must leave the dynamics gradient descent on F (autograd on F, layer by layer, here)."""
    net = wide_mlp(act)
    x, y = data((1, 3, 4), n=6)
    beta, steps, gamma = 0.8, 9, 0.2
    got = rules.create("pc", net, output=output, beta=beta, steps=steps, gamma=gamma).grads(x, y)
    trace, expected = descend_energy(net, wide_stages(net), x, y, beta, output, steps, gamma)
    assert got.traces["energy"].tolist() == pytest.approx(trace, rel=1e-10, abs=1e-12)
    for name, grad in expected.items():
        assert rel_error(got.grads[name], grad) < 1e-9, name


@pytest.mark.parametrize("n", [5, 16])
def test_incremental_pc_with_and_without_the_folded_first_layer(n: int) -> None:
    """iPC folds the first layer's T weight steps into an (N × N) Gram product when N < n_0 = 12 (n = 5) and steps
    it directly otherwise (n = 16); both are the same descent of F in values and weights (autograd), on stacked
    hidden layers."""
    net = wide_mlp()
    x, y = data((1, 3, 4), n=n)
    steps, gamma, weight_lr = 7, 0.2, 0.05
    got = rules.create("ipc", net, output="se", steps=steps, gamma=gamma, weight_lr=weight_lr).grads(x, y)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    trace, expected = descend_energy(net, wide_stages(net), x, y, 1.0, "se", steps, gamma, weight_lr)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(before[name])
    assert got.traces["energy"].tolist() == pytest.approx(trace, rel=1e-9, abs=1e-12)
    for name, grad in expected.items():
        assert rel_error(got.grads[name], grad) < 1e-9, name


def test_incremental_pc_leaves_frozen_parameters_where_they_are() -> None:
    """A frozen first-layer weight (requires_grad=False) stays put during iPC's inner steps, as the optimizer will
    leave it; the folded Gram product then keeps only the bias's term. Reference: autograd descent with that weight
    held fixed."""
    net = mlp()
    net[1].weight.requires_grad_(False)
    x, y = data((1, 3, 4))
    steps, gamma, weight_lr = 6, 0.2, 0.05
    got = rules.create("ipc", net, steps=steps, gamma=gamma, weight_lr=weight_lr).grads(x, y).grads
    assert "1.weight" not in got
    names, params = zip(*net.named_parameters(), strict=True)
    stages, values = mlp_stages(net), []
    with torch.no_grad():
        h = x
        for stage in stages[:-1]:
            h = stage(h)
            values.append(h.clone())
    moving = {name: p.detach().clone() for name, p in zip(names, params, strict=True)}
    summed = {name: torch.zeros_like(p) for name, p in moving.items()}

    def energy_at(weights: dict[str, Tensor], vals: list[Tensor]) -> Tensor:
        w = [weights[k] for k in ("1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias")]
        mus = [F.linear(x.flatten(1), w[0], w[1]), F.linear(torch.tanh(vals[0]), w[2], w[3])]
        out = F.linear(torch.tanh(vals[1]), w[4], w[5])
        hidden = sum(0.5 * (v - m).square().sum() for v, m in zip(vals, mus, strict=True))
        return hidden + output_loss(out, y, "ce").sum()

    for _ in range(steps):
        leaves = [v.detach().requires_grad_(True) for v in values]
        weights = {k: v.detach().requires_grad_(True) for k, v in moving.items()}
        grads = torch.autograd.grad(energy_at(weights, leaves), [*leaves, *weights.values()])
        values = [v - gamma * g for v, g in zip(leaves, grads[:2], strict=True)]
        for (name, weight), g in zip(weights.items(), grads[2:], strict=True):
            summed[name] += g / len(x)
            moving[name] = weight.detach() if name == "1.weight" else weight.detach() - weight_lr * g / len(x)
    for name, grad in got.items():
        assert rel_error(grad, summed[name]) < 1e-9, name


@pytest.mark.parametrize("output", ["ce", "se"])
@pytest.mark.parametrize("column", [False, True])
def test_closed_form_output_errors_equal_the_losss_own_gradient(output: str, column: bool) -> None:
    """ε_L = −β ∂ℓ/∂μ_L and Σ_n β_n ℓ_n are written out in closed form for se and ce; they must equal what the
    loss's own definition (bioprop.losses: loss.error, loss.per_example) gives, for a number β and for a column of
    signed precisions (centred nudging)."""
    from bioprop import losses
    from bioprop.rules import pc_equations as eq

    generator = torch.Generator().manual_seed(4)
    mu = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=generator)
    beta: float | Tensor = 0.3
    if column:
        beta = torch.tensor([0.3, -0.3, 0.3, -0.3, 0.3, -0.3], dtype=torch.float64).view(-1, 1)
    out = eq.output_of(losses.get(output), y, mu, beta)
    error, kept = eq.output_error(out, mu)
    expected_error, expected_energy = eq.output_error_by_definition(out, mu)
    torch.testing.assert_close(error, expected_error, rtol=1e-12, atol=1e-14)
    energies = eq.output_energy(out, [kept, kept])  # one per step
    torch.testing.assert_close(energies, expected_energy.expand(2), rtol=1e-12, atol=1e-14)
    per_example = (0.5 * (mu - F.one_hot(y, 5).double()).square().sum(1) if output == "se"
                   else F.cross_entropy(mu, y, reduction="none"))  # fmt: skip
    torch.testing.assert_close(expected_energy, (per_example * torch.as_tensor(beta).view(-1)).sum())


def test_gelu_and_its_slope_from_one_erf_equal_autograd() -> None:
    """The exact GELU and (twice) its derivative, computed together, against torch's GELU and autograd."""
    from bioprop.rules.pc_equations import gelu_and_slope

    x = torch.linspace(-6, 6, 241, dtype=torch.float64).requires_grad_(True)
    value, twice_slope = gelu_and_slope(x.detach())
    (slope,) = torch.autograd.grad(F.gelu(x).sum(), x)
    torch.testing.assert_close(value, F.gelu(x).detach(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(twice_slope / 2, slope, rtol=1e-13, atol=1e-15)


def test_grads_is_pure_and_the_rule_declares_its_energy_trace_and_figure() -> None:
    """grads twice gives the same update, leaves the step count and the global random state alone; the energy trace
    is declared with its relative panel, and the figure energy.png draws it."""
    net = mlp()
    x, y = data((1, 3, 4))
    rule = rules.create("pc", net, steps=5)
    state = torch.random.get_rng_state()
    first, second = rule.grads(x, y), rule.grads(x, y)
    assert torch.equal(torch.random.get_rng_state(), state) and rule.step == 0
    for name, grad in first.grads.items():
        assert torch.equal(grad, second.grads[name]), name
    assert torch.equal(first.traces["energy"], second.traces["energy"])
    (trace,) = rule.trace_specs
    assert trace.name == "energy" and trace.relative
    assert [(f.file, f.traces) for f in rule.figures] == [("energy.png", ("energy",))]
