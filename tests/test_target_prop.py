"""Target propagation (``dtp``, Lee et al. 2015; ``ddtp``, Meulemans et al. 2020), checked against math written here
with explicit tensor ops, never the rule's own functions: the difference-corrected and direct targets by hand, the
Gauss-Newton targets of an invertible linear network with exact inverse feedback (W⁻¹ by ``torch.linalg.solve``),
the forward update as autograd of each layer's local loss, and the feedback losses by hand (falling as the feedback
trains). Then the contract's promises for this family: purity, the state round trip, pre-training, bad options and
networks refused in one line. Everything is float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop import nets, rules
from bioprop.errors import BioPropError, DivergenceError

RULES = ("dtp", "ddtp")
ETA = 0.1  # the default target_lr, written here so that the hand computations do not read it from the rule


def init(net: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """float64 parameters from an explicit generator, large enough that every term is far from zero."""
    generator = torch.Generator().manual_seed(seed)
    net.double()
    with torch.no_grad():
        for param in net.parameters():
            fan_in = param.shape[1] if param.dim() > 1 else 3
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * scale * fan_in**-0.5)
    return net


def tanh_mlp(bias: bool = True) -> nn.Sequential:
    """Flatten, 5-4-6-3 with tanh (the middle layer optionally without a bias)."""
    return init(nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 6, bias=bias), nn.Tanh(),
                              nn.Linear(6, 3)))  # fmt: skip


def batch(n: int = 7, features: int = 5, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator, dtype=torch.float64)
    return x, torch.randint(classes, (n,), generator=generator)


def linears(net: nn.Sequential) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]


def activities(net: nn.Sequential, x: Tensor) -> list[Tensor]:
    """h_0 = x, then each Linear's output after its activation (the logits last), by explicit matrix products."""
    hs = [x]
    layers = linears(net)
    for i, layer in enumerate(layers):
        bias = layer.bias if layer.bias is not None else 0.0
        a = hs[-1] @ layer.weight.T + bias
        hs.append(a if i == len(layers) - 1 else torch.tanh(a))
    return [h.detach() for h in hs]


def output_error(z: Tensor, y: Tensor) -> Tensor:
    """∂ℓ/∂z per example for cross-entropy: softmax(z) − onehot(y)."""
    return torch.softmax(z, 1) - F.one_hot(y, z.shape[1]).double()


def set_feedback(rule: rules.Rule, weights: list[Tensor], biases: list[Tensor]) -> None:
    state = rule.state_dict()
    for k, (w, c) in enumerate(zip(weights, biases, strict=True)):
        state[f"feedback_weight.{k}"], state[f"feedback_bias.{k}"] = w, c
    rule.load_state_dict(state)


def random_feedback(shapes: list[tuple[int, int]], seed: int = 5) -> tuple[list[Tensor], list[Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(shape, generator=generator, dtype=torch.float64) * 0.7 for shape in shapes]
    biases = [torch.randn(shape[0], generator=generator, dtype=torch.float64) * 0.3 for shape in shapes]
    return weights, biases


def states_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------- the targets


def test_dtp_targets_are_the_difference_correction_computed_by_hand() -> None:
    """t_L = h_L − η̂ (softmax − onehot); t_{l−1} = h_{l−1} + g_l(t_l) − g_l(h_l), g_l(h) = tanh(V_l h + c_l)."""
    net = tanh_mlp()
    rule = rules.create("dtp", net, pretrain_batches=0)
    weights, biases = random_feedback([(4, 6), (6, 3)])  # g to hidden layer 1 (from layer 2), to 2 (from the output)
    set_feedback(rule, weights, biases)
    x, y = batch()
    h = activities(net, x)
    t3 = h[3] - ETA * output_error(h[3], y)
    t2 = h[2] + torch.tanh(t3 @ weights[1].T + biases[1]) - torch.tanh(h[3] @ weights[1].T + biases[1])
    t1 = h[1] + torch.tanh(t2 @ weights[0].T + biases[0]) - torch.tanh(h[2] @ weights[0].T + biases[0])
    found = rule.targets(x, y)
    for mine, theirs in zip([t1, t2, t3], found.targets, strict=True):
        torch.testing.assert_close(theirs, mine, rtol=1e-12, atol=1e-14)
    for mine, theirs in zip(h, found.activities, strict=True):
        torch.testing.assert_close(theirs, mine, rtol=1e-12, atol=1e-14)
    assert (t1 - h[1]).abs().max() > 1e-3  # the targets do move


def test_dtp_first_target_hidden_is_lee_et_al_s_gradient_step_at_the_top_hidden_layer() -> None:
    """first_target=hidden (Lee et al. 2015, Algorithm 1): t_2 = h_2 − η̂ W_3ᵀ(softmax − onehot), then
    t_1 = h_1 + g_1(t_2) − g_1(h_2); the top hidden layer has no feedback map, and its update and the readout's are
    backprop's (autograd of the batch-mean cross-entropy) while the first layer's is not."""
    net = tanh_mlp()
    rule = rules.create("dtp", net, pretrain_batches=0, first_target="hidden")
    assert [k for k in rule.state_dict() if k.startswith("feedback_")] == ["feedback_weight.0", "feedback_bias.0"]
    weights, biases = random_feedback([(4, 6)])
    set_feedback(rule, weights, biases)
    x, y = batch()
    h = activities(net, x)
    w3 = linears(net)[2].weight.detach()
    t3 = h[3] - ETA * output_error(h[3], y)
    t2 = h[2] - ETA * output_error(h[3], y) @ w3
    t1 = h[1] + torch.tanh(t2 @ weights[0].T + biases[0]) - torch.tanh(h[2] @ weights[0].T + biases[0])
    for mine, theirs in zip([t1, t2, t3], rule.targets(x, y).targets, strict=True):
        torch.testing.assert_close(theirs, mine, rtol=1e-12, atol=1e-14)
    found = rule.grads(x, y).grads
    exact = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    names = [name for name, _ in net.named_parameters()]
    for name, grad in zip(names, exact, strict=True):
        if name.startswith("1."):
            assert (found[name] - grad).abs().max() > 1e-3  # the first layer learns from a propagated target
        else:
            torch.testing.assert_close(found[name], grad, rtol=1e-10, atol=1e-13)
    rule.backward(x, y)
    assert list(rule.diagnostics()) == ["reconstruction_error_l1"]


def test_first_target_hidden_on_one_hidden_layer_is_backprop_and_says_so() -> None:
    net = init(nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)))
    rule = rules.create("dtp", net, pretrain_batches=50, first_target="hidden")  # no feedback: nothing pre-trains
    x, y = batch()
    exact = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    for (name, _), grad in zip(net.named_parameters(), exact, strict=True):
        torch.testing.assert_close(rule.grads(x, y).grads[name], grad, rtol=1e-10, atol=1e-13)
    assert rule.plan_warnings(10) == ["rule dtp: first_target=hidden on a network with one hidden layer: its target is "
                                      "the gradient step, so every layer gets backprop's gradient and no target is "
                                      "propagated"]  # fmt: skip
    assert rules.create("dtp", tanh_mlp(), pretrain_batches=0, first_target="hidden").plan_warnings(10) == []
    no_hidden = init(nn.Sequential(nn.Flatten(), nn.Linear(5, 3)))
    assert rules.create("dtp", no_hidden, first_target="hidden").plan_warnings(10) == []


def test_first_target_hidden_is_refused_by_ddtp() -> None:
    with pytest.raises(BioPropError) as info:
        rules.create("ddtp", tanh_mlp(), first_target="hidden")
    assert str(info.value) == ("rule ddtp: option first_target='hidden' is dtp's: ddtp's direct feedback reads the "
                               "output target (first_target=output)")  # fmt: skip


@pytest.mark.parametrize("psi", ["identity", "tanh"])
def test_ddtp_targets_are_the_direct_formula(psi: str) -> None:
    """t_l = h_l + g_l(t_L) − g_l(h_L), g_l read from the output: for the identity, h_l + V_l (t_L − h_L)."""
    net = tanh_mlp()
    rule = rules.create("ddtp", net, pretrain_batches=0, feedback_activation=psi)
    weights, biases = random_feedback([(4, 3), (6, 3)])
    set_feedback(rule, weights, biases)
    x, y = batch()
    h = activities(net, x)
    t3 = h[3] - ETA * output_error(h[3], y)
    if psi == "identity":
        expected = [h[k] + (t3 - h[3]) @ weights[k - 1].T for k in (1, 2)]
    else:
        expected = [h[k] + torch.tanh(t3 @ weights[k - 1].T + biases[k - 1])
                    - torch.tanh(h[3] @ weights[k - 1].T + biases[k - 1]) for k in (1, 2)]  # fmt: skip
    found = rule.targets(x, y).targets
    for mine, theirs in zip([*expected, t3], found, strict=True):
        torch.testing.assert_close(theirs, mine, rtol=1e-12, atol=1e-14)


def test_exact_inverse_feedback_propagates_gauss_newton_targets() -> None:
    """An invertible linear network (square W, identity activation) with feedback g_l = f_l⁻¹, g_l(h) = W_l⁻¹(h − b_l):
    every propagated target difference is t_{l−1} − h_{l−1} = W_l⁻¹ (t_l − h_l), so the first hidden layer's is
    J⁻¹ (t_L − h_L) = −η̂ J⁻¹ ∂ℓ/∂h_L with J = W_3 W_2 its Jacobian to the output: the Gauss-Newton direction."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 4))
    init(net, seed=3)
    with torch.no_grad():
        for layer in linears(net):
            layer.weight.add_(torch.eye(4, dtype=torch.float64))  # well conditioned
    rule = rules.create("dtp", net, pretrain_batches=0, feedback_activation="identity")
    w = [layer.weight.detach() for layer in linears(net)]
    b = [layer.bias.detach() for layer in linears(net)]
    inverses = [torch.linalg.inv(w[k + 1]) for k in range(2)]
    set_feedback(rule, inverses, [-(inverses[k] @ b[k + 1]) for k in range(2)])
    x, y = batch(features=4, classes=4)
    found = rule.targets(x, y)
    h, t = found.activities, [None, *found.targets]
    for k in (1, 2):  # t_k − h_k against W_{k+1}⁻¹ (t_{k+1} − h_{k+1}), solved here
        expected = torch.linalg.solve(w[k], (t[k + 1] - h[k + 1]).T).T
        torch.testing.assert_close(t[k] - h[k], expected, rtol=1e-10, atol=1e-12)
    gauss_newton = -ETA * torch.linalg.solve(w[2] @ w[1], output_error(h[3], y).T).T
    torch.testing.assert_close(t[1] - h[1], gauss_newton, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ the forward update


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", RULES)
def test_each_layer_update_is_autograd_of_its_local_loss(name: str, bias: bool) -> None:
    """The update of layer l is ∂/∂θ_l of Σ_batch ½‖f_l(h_{l−1}) − t_l‖² / (B η̂), with h_{l−1} and t_l detached,
    taken by autograd through the network's own modules; a layer without a bias gets a weight update only."""
    net = tanh_mlp(bias=bias)
    rule = rules.create(name, net, pretrain_batches=0)
    x, y = batch()
    found = rule.targets(x, y)
    update = rule.grads(x, y).grads
    blocks = [(net[1], net[2]), (net[3], net[4]), (net[5], None)]
    names = {id(p): n for n, p in net.named_parameters()}
    for (layer, act), h_in, target in zip(blocks, found.activities[:-1], found.targets, strict=True):
        out = layer(h_in.detach())
        out = act(out) if act is not None else out
        local = 0.5 * (out - target.detach()).square().sum() / (len(x) * ETA)
        params = list(layer.parameters())
        for param, grad in zip(params, torch.autograd.grad(local, params), strict=True):
            torch.testing.assert_close(update[names[id(param)]], grad, rtol=1e-11, atol=1e-14)
    assert set(update) == {n for n, _ in net.named_parameters()}


@pytest.mark.parametrize("name", RULES)
def test_the_readout_update_is_backprops(name: str) -> None:
    """With t_L = h_L − η̂ ∂ℓ/∂h_L and the local loss divided by η̂, the output layer's update is exactly the
    gradient of the batch-mean cross-entropy."""
    net = tanh_mlp()
    rule = rules.create(name, net, pretrain_batches=0)
    x, y = batch()
    update = rule.grads(x, y).grads
    readout = list(net[5].parameters())
    exact = torch.autograd.grad(F.cross_entropy(net(x), y), readout)
    torch.testing.assert_close(update["5.weight"], exact[0], rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(update["5.bias"], exact[1], rtol=1e-11, atol=1e-14)


# ---------------------------------------------------------------------------------------------- the feedback training


def reconstruction_losses(name: str, net: nn.Sequential, state: dict[str, Tensor], x: Tensor, noise: list[Tensor],
                          sigma: float) -> list[float]:  # fmt: skip
    """Per hidden layer k, by hand: dtp ½ mean ‖tanh(V_k f_{k+1}(h_k + ε) + c_k) − (h_k + ε)‖²; ddtp (identity
    feedback) 1/(2σ²) mean ‖V_k (f_{k→L}(h_k + ε) − h_L) − ε‖²."""
    h = activities(net, x)
    layers = linears(net)

    def forward(k: int, v: Tensor, stop: int) -> Tensor:  # layers k+1 … stop of the net on h_k = v
        for i in range(k, stop):
            v = v @ layers[i].weight.detach().T + layers[i].bias.detach()
            v = v if i == len(layers) - 1 else torch.tanh(v)
        return v

    out = []
    for k in (1, 2):
        w, c, eps = state[f"feedback_weight.{k - 1}"], state[f"feedback_bias.{k - 1}"], noise[k - 1]
        if name == "dtp":
            corrupted = h[k] + eps
            loss = 0.5 * (torch.tanh(forward(k, corrupted, k + 1) @ w.T + c) - corrupted).square().sum(1).mean()
        else:
            shift = (forward(k, h[k] + eps, len(layers)) - h[3]) @ w.T
            loss = (shift - eps).square().sum(1).mean() / (2 * sigma**2)
        out.append(float(loss))
    return out


@pytest.mark.parametrize("name", RULES)
def test_feedback_training_lowers_the_reconstruction_loss_on_a_fixed_batch(name: str) -> None:
    """backward trains only the rule's feedback (the network is not stepped here): 40 steps on one batch lower each
    hidden layer's feedback loss, computed by hand on noise drawn here, and the diagnostics and traces report it."""
    net = tanh_mlp()
    sigma = 0.1
    rule = rules.create(name, net, noise=sigma, pretrain_batches=40)
    x, y = batch(n=32)
    generator = torch.Generator().manual_seed(9)
    noise = [torch.randn(32, n, generator=generator, dtype=torch.float64) * sigma for n in (4, 6)]
    before = reconstruction_losses(name, net, rule.state_dict(), x, noise, sigma)
    for _ in range(40):
        rule.backward(x, y)
    after = reconstruction_losses(name, net, rule.state_dict(), x, noise, sigma)
    assert all(a < 0.8 * b for a, b in zip(after, before, strict=True)), (before, after)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())  # pre-training: zero forward update
    diagnostics = rule.diagnostics()
    assert set(diagnostics) == {"reconstruction_error_l1", "reconstruction_error_l2"}
    traces = rule.epoch_traces()["reconstruction"]
    assert len(traces) == 1 and traces[0] > 0


@pytest.mark.parametrize("name", RULES)
def test_pretraining_trains_the_feedback_and_leaves_the_forward_weights(name: str) -> None:
    """The first pretrain_batches calls of backward write a zero update (grads agrees), while the feedback changes;
    the next call writes the targets' update."""
    net = tanh_mlp()
    rule = rules.create(name, net, pretrain_batches=2)
    x, y = batch()
    first = rule.state_dict()["feedback_weight.0"].clone()
    for _ in range(2):
        assert all(not g.any() for g in rule.grads(x, y).grads.values())
        net.zero_grad()
        rule.backward(x, y)
        assert all(not p.grad.any() for p in net.parameters())
    assert not torch.equal(rule.state_dict()["feedback_weight.0"], first)
    net.zero_grad()
    rule.backward(x, y)
    assert all(p.grad.abs().sum() > 0 for p in net.parameters())


# ------------------------------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("name", RULES)
def test_grads_is_pure(name: str) -> None:
    """After training steps, grads twice gives the same update and leaves the rule's state and the global random
    state as they were."""
    net = tanh_mlp()
    rule = rules.create(name, net, pretrain_batches=1, feedback_iterations=3)
    x, y = batch()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for seed in (2, 3):
        optimizer.zero_grad()
        rule.backward(*batch(seed=seed))
        optimizer.step()
    before, rng = {k: v.clone() for k, v in rule.state_dict().items()}, torch.get_rng_state()
    first, second = rule.grads(x, y), rule.grads(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert states_equal(before, rule.state_dict())
    assert all(torch.equal(first.grads[k], second.grads[k]) for k in first.grads)
    assert any(g.abs().sum() > 0 for g in first.grads.values())


@pytest.mark.parametrize("name", RULES)
def test_a_state_dict_round_trip_restores_the_feedback_and_the_run(name: str) -> None:
    """A fresh rule (its feedback as drawn), loaded with a trained rule's state, holds the same feedback and step
    count exactly, gives the same update and trains on exactly as the original does (the noise follows the step
    count)."""
    net = tanh_mlp()
    trained = rules.create(name, net, pretrain_batches=0)
    for seed in (2, 3, 4):
        trained.backward(*batch(seed=seed))
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    other = rules.create(name, net, pretrain_batches=0)
    assert not states_equal(state, other.state_dict())
    other.load_state_dict(state)
    assert states_equal(state, other.state_dict())
    x, y = batch()
    mine, theirs = trained.grads(x, y).grads, other.grads(x, y).grads
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)
    trained.backward(x, y)
    other.backward(x, y)
    assert states_equal(trained.state_dict(), other.state_dict())


@pytest.mark.parametrize("name", RULES)
def test_a_checkpoint_that_does_not_fit_is_refused_and_changes_nothing(name: str) -> None:
    rule = rules.create(name, tanh_mlp())
    state = rule.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    wrong = dict(state, **{"feedback_weight.1": torch.zeros(2, 2, dtype=torch.float64)})
    with pytest.raises(BioPropError, match=rf"rule {name}: checkpoint's feedback_weight.1 is of shape \(2, 2\)"):
        rule.load_state_dict(wrong)
    missing = {k: v for k, v in state.items() if k != "feedback_bias.0"}
    with pytest.raises(BioPropError, match=f"rule {name}: checkpoint lacks 'feedback_bias.0'"):
        rule.load_state_dict(missing)
    with pytest.raises(BioPropError, match=f"rule {name}: unexpected state 'extra'"):
        rule.load_state_dict(dict(state, extra=torch.zeros(1)))
    assert states_equal(before, rule.state_dict())


BAD_OPTIONS = [
    ("noise", -0.1, "must be non-negative"),
    ("feedback_iterations", 0, "must be at least 1"),
    ("feedback_iterations", 10_001, "is above its maximum, 10000"),
    ("target_lr", 0.0, "must be positive"),
    ("feedback_lr", -1.0, "must be positive"),
    ("pretrain_batches", -1, "must be non-negative"),
    ("feedback_activation", "nope", "choose one of auto"),
]


@pytest.mark.parametrize("key, value, says", BAD_OPTIONS, ids=[f"{k}={v}" for k, v, _ in BAD_OPTIONS])
@pytest.mark.parametrize("name", RULES)
def test_a_bad_option_is_one_line_naming_it(name: str, key: str, value: object, says: str) -> None:
    with pytest.raises(BioPropError) as info:
        rules.create(name, tanh_mlp(), **{key: value})
    message = str(info.value)
    assert message.startswith(f"rule {name}: option {key}=") and says in message and "\n" not in message


def test_ddtp_refuses_zero_noise_which_its_reconstruction_loss_divides_by() -> None:
    rules.create("dtp", tanh_mlp(), noise=0.0)  # dtp's inverse loss is defined without noise
    with pytest.raises(BioPropError) as info:
        rules.create("ddtp", tanh_mlp(), noise=0.0)
    assert str(info.value) == ("rule ddtp: option noise=0.0 must be positive (the difference reconstruction loss "
                               "divides by σ²)")  # fmt: skip


@pytest.mark.parametrize("name", RULES)
def test_a_network_that_is_not_an_mlp_is_refused_naming_the_layer(name: str) -> None:
    lenet = nets.build("lenet", (1, 28, 28), 10)
    with pytest.raises(BioPropError, match=rf"^rule {name}: layer 0 \(Conv2d\) is not supported"):
        rules.create(name, lenet)
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 3))
    with pytest.raises(BioPropError, match=rf"^rule {name}: layer 3 \(Dropout\) is not supported"):
        rules.create(name, dropout)


@pytest.mark.parametrize("name", RULES)
def test_a_diverging_feedback_is_blamed_on_feedback_lr(name: str) -> None:
    """Linear feedback (a tanh one saturates instead) with a step size far too large: its error overflows."""
    rule = rules.create(name, tanh_mlp(), feedback_lr=1e12, feedback_iterations=50, feedback_activation="identity")
    with pytest.raises(DivergenceError, match="feedback_lr"):
        rule.backward(*batch())
    assert rule.step == 0  # the failed step is not counted and its feedback not adopted


def test_adam_feedback_steps_are_torch_adam_on_the_inverse_loss() -> None:
    """feedback_optimizer=adam: one backward with 3 feedback iterations moves dtp's feedback exactly as
    torch.optim.Adam (lr = feedback_lr, its default β and ε) does on Σ_k ½ mean ‖tanh(V_k f_{k+1}(h_k + ε) + c_k) −
    (h_k + ε)‖² written here (f_3 the linear readout), with the noise the rule's generator draws for the step; a
    second backward continues from the moments in the rule's state (a state_dict round trip in between changes
    nothing)."""
    net = tanh_mlp()
    sigma, lr = 0.1, 0.01
    rule = rules.create("dtp", net, noise=sigma, pretrain_batches=10, feedback_iterations=3,
                        feedback_optimizer="adam", feedback_lr=lr)  # fmt: skip
    x, y = batch(n=16)
    h, layers = activities(net, x), linears(net)
    start = rule.state_dict()
    params = [start[f"feedback_{kind}.{k}"].clone().requires_grad_(True) for kind in ("weight", "bias") for k in (0, 1)]
    adam = torch.optim.Adam(params, lr=lr)
    for step in range(2):
        generator = rule.generator(0)  # the step's noise stream, drawn as the rule draws it
        for _ in range(3):
            drawn = (torch.randn((16, 10), generator=generator) * sigma).double()
            noise = list(drawn.split([4, 6], dim=1))
            loss = 0
            for k in (1, 2):
                w, c = params[k - 1], params[k + 1]
                corrupted = h[k] + noise[k - 1]
                above = corrupted @ layers[k].weight.detach().T + layers[k].bias.detach()
                above = above if k == len(layers) - 1 else torch.tanh(above)  # the readout is linear
                loss = loss + 0.5 * (torch.tanh(above @ w.T + c) - corrupted).square().sum(1).mean()
            adam.zero_grad()
            loss.backward()
            adam.step()
        rule.backward(x, y)
        if step == 0:
            state = {key: value.clone() for key, value in rule.state_dict().items()}
            rule = rules.create("dtp", net, noise=sigma, pretrain_batches=10, feedback_iterations=3,
                                feedback_optimizer="adam", feedback_lr=lr)  # fmt: skip
            rule.load_state_dict(state)
        got = rule.state_dict()
        assert int(got["feedback_adam_steps"]) == 3 * (step + 1)
        for i, (kind, k) in enumerate((kind, k) for kind in ("weight", "bias") for k in (0, 1)):
            torch.testing.assert_close(got[f"feedback_{kind}.{k}"], params[i].detach(), rtol=1e-10, atol=1e-12)
