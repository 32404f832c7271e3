"""Learning rules checked against independent math: backprop and the feedback-alignment family written out by hand
with explicit matrices (conv layers through im2col), finite differences and autograd. See shared/algorithms.md."""

from __future__ import annotations

import copy
import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from bioprop import rules
from bioprop.errors import BioPropError
from bioprop.nets import build
from bioprop.rules import IMPLAUSIBILITIES

FA_RULES = ("fa", "dfa", "usf", "brsf", "frsf")
ALL_RULES = ("bp", *FA_RULES)
TOL = 1e-10

# φ and φ' written from their definitions, as functions of the pre-activation a.
ACTS = {
    "tanh": (torch.tanh, lambda a: 1 - torch.tanh(a) ** 2),
    "relu": (lambda a: a.clamp_min(0), lambda a: (a > 0).to(a.dtype)),
    "identity": (lambda a: a, torch.ones_like),
}
MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "identity": nn.Identity}


# ---------------------------------------------------------------------------------------------------------------
# Networks, data and the independent references
# ---------------------------------------------------------------------------------------------------------------


def reinit(net: nn.Module, seed: int, gain: float = 0.6) -> nn.Module:
    """float64 and parameters drawn from an explicit generator (no global RNG), large enough to be non-trivial."""
    net.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            fan_in = math.prod(param.shape[1:]) if param.dim() > 1 else 4
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * gain * fan_in**-0.5 * 2)
    return net


def mlp(act: str = "tanh", seed: int = 0, sizes: tuple[int, ...] = (12, 7, 5, 3)) -> nn.Sequential:
    """Flatten, Linear-φ pairs, Linear readout: layer indices 1, 3, 5 for 12-7-5-3."""
    modules: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        modules += [nn.Linear(fan_in, fan_out), MODULES[act]()]
    modules.append(nn.Linear(sizes[-2], sizes[-1]))
    return reinit(nn.Sequential(*modules), seed)


def conv_net(seed: int = 0) -> nn.Sequential:
    """8x8 inputs: conv(1→3, pad 1) tanh maxpool conv(3→4) relu flatten fc(16→6) tanh fc(6→3)."""
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3),
    )  # fmt: skip
    return reinit(net, seed)


def batch(shape: tuple[int, ...], seed: int = 1, n: int = 6, n_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=generator, dtype=torch.float64)
    y = torch.randint(n_classes, (n,), generator=generator)
    return x, y


def output_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """e = ∂L/∂z = (softmax(z) − onehot(y)) / B for the batch-mean cross-entropy, written out."""
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    onehot = torch.zeros_like(z)
    onehot[torch.arange(len(y)), y] = 1.0
    return (p - onehot) / len(y)


def hand_mlp(net: nn.Sequential, act: str, x, y, feedback: dict[int, torch.Tensor], direct: bool = False):
    """Backprop with explicit matrices, W_{k+1} replaced by feedback[k+1] (stored (out, in), used as δ_in = δ @ B):
    δ_L = e, δ_k = (δ_{k+1} @ B_{k+1}) ⊙ φ'(a_k) — or, direct, δ_k = (e @ D_{k+1}) ⊙ φ'(a_k) —, ∂W = δᵀh, ∂b = Σδ."""
    phi, dphi = ACTS[act]
    index = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    W = [net[i].weight.detach() for i in index]
    b = [net[i].bias.detach() for i in index]
    h, a = [x.reshape(len(x), -1)], []
    for k in range(len(W)):
        a.append(h[k] @ W[k].T + b[k])  # (B, out_k)
        h.append(phi(a[k]))
    e = output_error(a[-1], y)  # (B, K)
    delta, grads = e, {}
    for k in reversed(range(len(W))):
        grads[f"{index[k]}.weight"] = delta.T @ h[k]  # (out, in)
        grads[f"{index[k]}.bias"] = delta.sum(0)
        if k > 0:
            delta = ((e if direct else delta) @ feedback[index[k]]) * dphi(a[k - 1])
    return grads


def hand_loss(net: nn.Sequential, act: str, x, y) -> torch.Tensor:
    """Batch-mean cross-entropy, −z_y + log Σ exp z, from the explicit forward pass."""
    phi, _ = ACTS[act]
    net = copy.deepcopy(net).requires_grad_(False)
    h = x.reshape(len(x), -1)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for k, layer in enumerate(linears):
        h = h @ layer.weight.T + layer.bias
        if k < len(linears) - 1:
            h = phi(h)
    return (torch.logsumexp(h, 1) - h[torch.arange(len(y)), y]).mean()


def conv_forward_cols(h, layer: nn.Conv2d):
    """im2col of a stride-1 conv layer: columns (N, C_in·k·k, L) and the output spatial size."""
    k, pad = layer.kernel_size, layer.padding
    cols = F.unfold(h, k, padding=pad)
    size = (h.shape[2] + 2 * pad[0] - k[0] + 1, h.shape[3] + 2 * pad[1] - k[1] + 1)
    return cols, size


def conv_weight_grad(h, layer: nn.Conv2d, delta):
    """∂W = Σ_n δ_n cols_nᵀ, reshaped to the kernel: the weight gradient of a convolution as a matrix product."""
    cols, _ = conv_forward_cols(h, layer)
    n, c_out = delta.shape[:2]
    return torch.einsum("nol,nil->oi", delta.reshape(n, c_out, -1), cols).reshape(layer.weight.shape)


def conv_input_error(h, layer: nn.Conv2d, feedback, delta):
    """Error at the conv input through the kernel-shaped feedback B: col2im(B_matᵀ δ), the transposed convolution."""
    n, c_out = delta.shape[:2]
    cols = feedback.reshape(c_out, -1).T @ delta.reshape(n, c_out, -1)  # (N, C_in·k·k, L)
    return F.fold(cols, h.shape[2:], layer.kernel_size, padding=layer.padding)


def vjp(fn, inp, cotangent):
    """Vector-Jacobian product of one parameterless op (used for max-pooling only)."""
    with torch.enable_grad():
        leaf = inp.detach().requires_grad_(True)
        return torch.autograd.grad(fn(leaf), leaf, cotangent)[0]


def hand_conv(net: nn.Sequential, x, y, feedback: dict[int, torch.Tensor], direct: bool = False):
    """The conv net's update by hand: im2col for the convolutions, φ' of tanh/relu by formula, max-pooling by VJP;
    W of layers 3, 6, 8 replaced by feedback[i] (or, direct, e @ D_i reshaped to the layer's input)."""
    c1, c2, f3, f4 = net[0], net[3], net[6], net[8]
    a1 = F.conv2d(x, c1.weight, c1.bias, padding=1)  # (N, 3, 8, 8)
    h1 = torch.tanh(a1)
    p1 = F.max_pool2d(h1, 2)  # (N, 3, 4, 4)
    a2 = F.conv2d(p1, c2.weight, c2.bias)  # (N, 4, 2, 2)
    f = a2.clamp_min(0).reshape(len(x), -1)  # (N, 16)
    a3 = f @ f3.weight.T + f3.bias  # (N, 6)
    h3 = torch.tanh(a3)
    z = h3 @ f4.weight.T + f4.bias  # (N, 3)
    e = output_error(z, y)

    def back(i, delta, h_in):
        if direct:
            return (e @ feedback[i]).reshape(h_in.shape)
        if h_in.dim() == 2:
            return delta @ feedback[i]
        return conv_input_error(h_in, net[i], feedback[i], delta)

    with torch.no_grad():
        g = {"8.weight": e.T @ h3, "8.bias": e.sum(0)}
        d3 = back(8, e, h3) * (1 - torch.tanh(a3) ** 2)
        g["6.weight"], g["6.bias"] = d3.T @ f, d3.sum(0)
        d2 = back(6, d3, f).reshape(a2.shape) * (a2 > 0)
        g["3.weight"], g["3.bias"] = conv_weight_grad(p1, c2, d2), d2.sum((0, 2, 3))
        d1 = vjp(lambda h: F.max_pool2d(h, 2), h1, back(3, d2, p1)) * (1 - torch.tanh(a1) ** 2)
        g["0.weight"], g["0.bias"] = conv_weight_grad(x, c1, d1), d1.sum((0, 2, 3))
    return g


def autograd_grads(net: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """∂ mean CE / ∂θ by autograd on the network's own forward pass."""
    named = dict(net.named_parameters())
    with torch.enable_grad():
        loss = F.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, list(named.values()))
    return dict(zip(named, grads, strict=True))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖; the reference must be non-zero so that the comparison can fail."""
    assert b.norm() > 0, "degenerate reference: all zeros"
    return float((a - b).norm() / b.norm())


def assert_same(update: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float = TOL) -> None:
    assert set(update) == set(expected)
    errors = {name: rel(update[name], expected[name]) for name in expected}
    assert max(errors.values()) < tol, errors


def xavier_std(shape: torch.Size) -> float:
    """Glorot & Bengio 2010: Var = 2 / (fan_in + fan_out), fans counting the kernel's receptive field."""
    receptive = math.prod(shape[2:])
    return math.sqrt(2.0 / (shape[1] * receptive + shape[0] * receptive))


def expected_feedback(rule, name: str) -> dict[int, torch.Tensor]:
    """What stands in for W at each layer after the first, from each paper's definition (default options)."""
    out = {}
    for i in rule.param_layers[1:]:
        weight = rule.layers[i].weight.detach()
        if name in ("fa", "dfa"):
            out[i] = rule.feedback[i]
        elif name == "usf":
            out[i] = xavier_std(weight.shape) * torch.sign(weight)
        elif name == "frsf":
            out[i] = rule.feedback[i].abs() * torch.sign(weight)
        else:  # brsf: M is redrawn every step; only its magnitude is read from the step that used it
            out[i] = rule.last_feedback[i].abs() * torch.sign(weight)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. Backprop
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_bp_equals_hand_written_backprop(act):
    """bp is the reference every rule is measured against, so it must be backprop itself, written out by hand."""
    net = mlp(act)
    x, y = batch((12,))
    rule = rules.create("bp", net)
    update = rule.grads(x, y)
    expected = hand_mlp(net, act, x, y, {i: net[i].weight.detach() for i in (3, 5)})
    assert_same(update.grads, expected)
    assert abs(float(update.loss - hand_loss(net, act, x, y))) < 1e-12
    assert_same(rule.reference_grads(x, y), expected)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_bp_matches_central_finite_differences(act):
    """A check that uses no backward formula at all: bp (and the hand-written backprop the other tests trust) must
    agree with ∂L/∂θ measured numerically."""
    net = mlp(act)
    x, y = batch((12,))
    update = rules.create("bp", net).grads(x, y).grads
    hand = hand_mlp(net, act, x, y, {i: net[i].weight.detach() for i in (3, 5)})
    params = dict(net.named_parameters())
    step = 1e-6
    for name in ("1.weight", "1.bias", "3.weight", "5.bias"):
        param = params[name]
        # the entry with the largest update, so that a dead ReLU unit cannot make the check vacuous
        entry = tuple(int(i) for i in torch.unravel_index(update[name].abs().argmax(), param.shape))
        with torch.no_grad():
            original = param[entry].item()
            param[entry] = original + step
            up = hand_loss(net, act, x, y).item()
            param[entry] = original - step
            down = hand_loss(net, act, x, y).item()
            param[entry] = original
        numeric = (up - down) / (2 * step)
        assert abs(numeric) > 1e-4
        assert abs(update[name][entry].item() - numeric) < 1e-7 * max(1.0, abs(numeric)), name
        assert abs(hand[name][entry].item() - numeric) < 1e-7 * max(1.0, abs(numeric)), name


def test_bp_backward_fills_grad_and_accumulates():
    """Optimizers read .grad, so backward must write backprop's values there and accumulate as autograd does."""
    net = mlp("tanh")
    x, y = batch((12,))
    expected = hand_mlp(net, "tanh", x, y, {i: net[i].weight.detach() for i in (3, 5)})
    rule = rules.create("bp", net)
    loss, prediction = rule.backward(x, y)
    assert abs(float(loss - hand_loss(net, "tanh", x, y))) < 1e-12
    assert prediction.shape == (6, 3) and not prediction.requires_grad
    assert_same({n: p.grad for n, p in net.named_parameters()}, expected)
    rule.backward(x, y)
    assert_same({n: p.grad for n, p in net.named_parameters()}, {n: 2 * g for n, g in expected.items()})


def test_bp_works_on_any_module():
    """bp is the baseline for every network, including ones the layer-wise rules cannot walk."""

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
            self.w2 = nn.Parameter(torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64))

        def forward(self, x):
            return torch.tanh(x @ self.w1.T) @ self.w2.T

    net = TwoLayer()
    x, y = batch((4,))
    update = rules.create("bp", net).grads(x, y).grads
    h = torch.tanh(x @ net.w1.detach().T)
    e = output_error(h @ net.w2.detach().T, y)
    expected = {"w2": e.T @ h, "w1": ((e @ net.w2.detach()) * (1 - h**2)).T @ x}
    assert_same(update, expected)
    with pytest.raises(BioPropError, match="nn.Sequential"):
        rules.create("fa", net)


def test_bp_handles_batchnorm_and_fa_rejects_it():
    """Unsupported layers must be refused up front by the layer-wise rules, never silently mis-differentiated."""
    net = reinit(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)), seed=5)
    x, y = batch((4,))
    update = rules.create("bp", net).grads(x, y).grads
    weight = net[0].weight
    step = 1e-6
    with torch.no_grad():
        for entry in [(0, 1), (3, 2)]:
            original = weight[entry].item()
            weight[entry] = original + step
            up = F.cross_entropy(net(x), y).item()
            weight[entry] = original - step
            down = F.cross_entropy(net(x), y).item()
            weight[entry] = original
            numeric = (up - down) / (2 * step)
            assert abs(update["0.weight"][entry].item() - numeric) < 1e-7 * max(1.0, abs(numeric))
    for name in FA_RULES:
        with pytest.raises(BioPropError, match="BatchNorm1d"):
            rules.create(name, net)


# ---------------------------------------------------------------------------------------------------------------
# 2-3. The feedback-alignment family, every layer, by hand
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("name", FA_RULES)
def test_fa_family_mlp_matches_hand_formula(name, act):
    """Each variant is defined by its equation (Lillicrap 2016 Eq. 1, Nøkland 2016 Eq. 3, Liao 2016); every layer's
    update must be that equation, written here with explicit matrices."""
    net = mlp(act)
    x, y = batch((12,))
    rule = rules.create(name, net)
    assert rule.layers == list(net) and rule.param_layers == [1, 3, 5]
    update = rule.grads(x, y).grads
    feedback = expected_feedback(rule, name)
    expected_shapes = {3: (3, 7), 5: (3, 5)} if name == "dfa" else {3: (5, 7), 5: (3, 5)}
    assert {i: tuple(b.shape) for i, b in feedback.items()} == expected_shapes
    for i, b in feedback.items():  # the feedback actually used is the one the definition says
        assert rel(rule.last_feedback[i], b) < TOL
    assert_same(update, hand_mlp(net, act, x, y, feedback, direct=name == "dfa"))
    reference = autograd_grads(net, x, y)
    assert rel(update["1.weight"], reference["1.weight"]) > 1e-3  # B ≠ W, so hidden updates are not backprop's


@pytest.mark.parametrize("name", FA_RULES)
def test_fa_family_conv_matches_hand_formula(name):
    """For convolutions B has the kernel's shape and carries errors by the transposed convolution (im2col here)."""
    net = conv_net()
    x, y = batch((1, 8, 8))
    rule = rules.create(name, net)
    assert rule.param_layers == [0, 3, 6, 8]
    update = rule.grads(x, y).grads
    feedback = expected_feedback(rule, name)
    if name == "dfa":
        assert {i: tuple(b.shape) for i, b in feedback.items()} == {3: (3, 48), 6: (3, 16), 8: (3, 6)}
    else:
        assert all(feedback[i].shape == net[i].weight.shape for i in (3, 6, 8))
    assert_same(update, hand_conv(net, x, y, feedback, direct=name == "dfa"))


def test_hand_conv_reference_is_backprop():
    """The im2col reference used above is only meaningful if, with B = W, it is autograd's gradient."""
    net = conv_net()
    x, y = batch((1, 8, 8))
    assert_same(hand_conv(net, x, y, {i: net[i].weight.detach() for i in (3, 6, 8)}), autograd_grads(net, x, y))


def test_dfa_feedback_is_drawn_at_first_batch_and_kept():
    """DFA's D_l are fixed random matrices (Nøkland 2016): drawn once, shaped (K, layer input), then never change."""
    net = mlp("tanh")
    rule = rules.create("dfa", net)
    assert rule.feedback == {}
    x, y = batch((12,))
    rule.grads(x, y)
    first = {i: b.clone() for i, b in rule.feedback.items()}
    assert {i: tuple(b.shape) for i, b in first.items()} == {3: (3, 7), 5: (3, 5)}
    rule.grads(*batch((12,), seed=2))
    assert all(torch.equal(rule.feedback[i], first[i]) for i in first)


def test_usf_magnitude_is_the_init_std():
    """uSF transports only signs: every feedback entry has magnitude σ_xavier = √(2/(fan_in+fan_out))."""
    net = conv_net()
    rule = rules.create("usf", net)
    rule.grads(*batch((1, 8, 8)))
    for i, weight in ((3, net[3].weight), (6, net[6].weight), (8, net[8].weight)):
        sigma = {3: math.sqrt(2 / (27 + 36)), 6: math.sqrt(2 / (16 + 6)), 8: math.sqrt(2 / (6 + 3))}[i]
        assert xavier_std(weight.shape) == pytest.approx(sigma, rel=1e-15)
        assert torch.allclose(rule.last_feedback[i].abs(), torch.full_like(weight, sigma), rtol=1e-15, atol=0)
        assert torch.equal(torch.sign(rule.last_feedback[i]), torch.sign(weight.detach()))


def test_brsf_redraws_magnitudes_but_keeps_signs():
    """brSF: B = |M|∘sign(W) with M redrawn each step, so signs follow W while magnitudes change every step."""
    net = mlp("tanh")
    x, y = batch((12,))
    rule = rules.create("brsf", net)
    first = rule.grads(x, y).grads
    used_first = {i: b.clone() for i, b in rule.last_feedback.items()}
    assert_same(first, hand_mlp(net, "tanh", x, y, used_first))
    rule.backward(x, y)  # a training step: grads alone is pure (the same M until a step is taken)
    second = rule.grads(x, y).grads
    used_second = dict(rule.last_feedback)
    assert_same(second, hand_mlp(net, "tanh", x, y, used_second))
    for i in (3, 5):
        weight = net[i].weight.detach()
        for used in (used_first[i], used_second[i]):
            assert torch.equal(torch.sign(used), torch.sign(weight))
            assert float(used.abs().max()) <= math.sqrt(3) * xavier_std(weight.shape)  # |U(±√3σ)| ≤ √3σ
        assert (used_first[i].abs() - used_second[i].abs()).abs().min() > 0
    assert rel(second["1.weight"], first["1.weight"]) > 1e-3


def test_frsf_magnitudes_fixed_and_signs_follow_w():
    """frSF: B = |B₀|∘sign(W) with B₀ drawn once: magnitudes stay, signs track W as it learns."""
    net = mlp("tanh")
    x, y = batch((12,))
    rule = rules.create("frsf", net)
    b0 = {i: b.clone() for i, b in rule.feedback.items()}
    rule.grads(x, y)
    first = {i: b.clone() for i, b in rule.last_feedback.items()}
    with torch.no_grad():
        net[3].weight[0].neg_()  # W changes sign in one row, as it may during learning
    update = rule.grads(x, y).grads
    for i in (3, 5):
        assert torch.equal(rule.feedback[i], b0[i])
        assert torch.equal(rule.last_feedback[i].abs(), first[i].abs())
        assert torch.equal(torch.sign(rule.last_feedback[i]), torch.sign(net[i].weight.detach()))
    assert torch.equal(rule.last_feedback[3][0], -first[3][0])
    assert_same(update, hand_mlp(net, "tanh", x, y, {i: b0[i].abs() * torch.sign(net[i].weight.detach()) for i in b0}))


@pytest.mark.parametrize("init", ["xavier", "kaiming", "uniform"])
def test_feedback_init_has_the_documented_spread(init):
    """The feedback scale sets the learning signal's size; each init must match its textbook standard deviation."""
    net = reinit(nn.Sequential(nn.Linear(10, 300), nn.Tanh(), nn.Linear(300, 200)), seed=0)
    b = rules.create("fa", net, init=init).feedback[2]
    std = {"xavier": math.sqrt(2 / 500), "kaiming": math.sqrt(2 / 300), "uniform": 1 / math.sqrt(3 * 300)}[init]
    assert float(b.std()) == pytest.approx(std, rel=0.03)
    assert abs(float(b.mean())) < 0.03 * std
    if init != "kaiming":  # uniform on ±√3σ
        assert float(b.abs().max()) <= math.sqrt(3) * std
        assert float(b.abs().max()) > 0.99 * math.sqrt(3) * std


# ---------------------------------------------------------------------------------------------------------------
# 4-5. FA with restored weight transport is backprop; the output layer is always exact
# ---------------------------------------------------------------------------------------------------------------


def nets_for_theorem():
    return [
        ("mlp-tanh", mlp("tanh"), batch((12,))),
        ("mlp-relu", mlp("relu"), batch((12,))),
        ("conv", conv_net(), batch((1, 8, 8))),
    ]


@pytest.mark.parametrize("name", ["fa", "frsf"])
@pytest.mark.parametrize("case", range(3), ids=["mlp-tanh", "mlp-relu", "conv"])
def test_fa_with_b_equal_w_is_backprop(name, case):
    """The FA machinery is exactly backprop once weight transport is restored (B = W; for frSF |W|∘sign(W) = W)."""
    _, net, (x, y) = nets_for_theorem()[case]
    rule = rules.create(name, net)
    for i in rule.param_layers[1:]:
        rule.feedback[i] = rule.layers[i].weight.detach().clone()
    assert_same(rule.grads(x, y).grads, autograd_grads(net, x, y))


def test_fa_with_b_equal_w_is_backprop_on_lenet():
    """The same theorem on the shipped LeNet: padding, two pooling stages and two adjacent Linear layers."""
    net = reinit(build("lenet", (1, 28, 28), 10), seed=0, gain=0.8)
    x, y = batch((1, 28, 28), n=3, n_classes=10)
    rule = rules.create("fa", net)
    assert rule.param_layers == [0, 3, 6, 9, 10]
    for i in rule.param_layers[1:]:
        rule.feedback[i] = rule.layers[i].weight.detach().clone()
    assert_same(rule.grads(x, y).grads, autograd_grads(net, x, y))


@pytest.mark.parametrize("name", ALL_RULES)
@pytest.mark.parametrize("case", range(3), ids=["mlp-tanh", "mlp-relu", "conv"])
def test_output_layer_gets_the_exact_gradient(name, case):
    """The output layer sees e directly in every variant (δ_L = e), so its update is the true gradient."""
    _, net, (x, y) = nets_for_theorem()[case]
    last = len(net) - 1
    update = rules.create(name, net).grads(x, y).grads
    reference = autograd_grads(net, x, y)
    for key in (f"{last}.weight", f"{last}.bias"):
        assert rel(update[key], reference[key]) < TOL


# ---------------------------------------------------------------------------------------------------------------
# 7. Registry, options, cards
# ---------------------------------------------------------------------------------------------------------------


def test_registry_lists_the_foundation_rules():
    """The CLI and reports enumerate rules from the registry; backprop and the FA family must be there, once."""
    assert set(ALL_RULES) <= set(rules.names())
    assert len(rules.names()) == len(set(rules.names()))


def test_unknown_rule_lists_known_names():
    """A typo in a rule name must say which names exist instead of failing obscurely."""
    with pytest.raises(BioPropError) as info:
        rules.create("fax", mlp())
    for name in ALL_RULES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "options, says",
    [
        ({"sclae": 2.0}, "unknown option"),
        ({"init": "foo"}, "choose one of"),
        ({"scale": 0.0}, "positive"),
        ({"scale": -1.0}, "positive"),
        ({"scale": "-2"}, "positive"),
        ({"scale": "abc"}, "not a valid float"),
        ({"seed": "1.5"}, "not a valid int"),
    ],
)
def test_bad_options_are_user_errors(options, says):
    """Bad --rule-opt values are user input: they must end in a BioPropError that names the problem."""
    with pytest.raises(BioPropError, match=says):
        rules.create("fa", mlp(), **options)


def test_bp_rejects_options_it_does_not_have():
    """bp's one option is its output loss; any other option given to it is a mistake to report."""
    with pytest.raises(BioPropError, match="unknown option"):
        rules.create("bp", mlp(), scale=2.0)


def test_bp_squared_error_is_the_gradient_of_half_the_squared_distance_to_the_one_hot_target():
    """bp's output=se against the hand-written loss ½‖z − onehot(y)‖², batch mean."""
    torch.manual_seed(0)
    net, x, y = mlp(), torch.randn(7, 12, dtype=torch.float64), torch.randint(0, 3, (7,))
    update = rules.create("bp", net, output="se").grads(x, y).grads
    loss = 0.5 * ((net(x) - torch.eye(3, dtype=torch.float64)[y]) ** 2).sum() / 7
    expected = torch.autograd.grad(loss, list(net.parameters()))
    for (name, _), grad in zip(net.named_parameters(), expected, strict=True):
        torch.testing.assert_close(update[name], grad)


@pytest.mark.parametrize("name, option", [("usf", {"feedback": "random"}), ("fa", {"feedback": "direct"})])
def test_option_fixed_by_the_name_cannot_be_overridden(name, option):
    """A rule's name fixes its variant; overriding it would silently run another algorithm under that name."""
    with pytest.raises(BioPropError, match="fixed by the rule's name"):
        rules.create(name, mlp(), **option)


def test_string_options_parse():
    """Options arrive as strings from the command line and must parse to the same values as typed ones."""
    net = mlp()
    rule = rules.create("fa", net, scale="2", seed="3", init="kaiming")
    assert rule.opts.as_dict() == {"feedback": "random", "init": "kaiming", "scale": 2.0, "seed": 3, "output": "ce"}
    typed = rules.create("fa", net, scale=2.0, seed=3, init="kaiming")
    x, y = batch((12,))
    assert_same(rule.grads(x, y).grads, typed.grads(x, y).grads, tol=1e-15)


@pytest.mark.parametrize("name", ["fa", "dfa", "usf"])
def test_scale_multiplies_the_feedback(name):
    """φ'(a) comes from the forward pass, so scaling B by s scales δ_l by s^(hops to the output): FA and uSF
    chain through every layer (s, s²), DFA reaches each hidden layer in one hop (s)."""
    net = mlp("tanh")
    x, y = batch((12,))
    plain = rules.create(name, net).grads(x, y).grads
    scaled_rule = rules.create(name, net, scale="2")
    scaled = scaled_rule.grads(x, y).grads
    factor = {"5": 1, "3": 2, "1": 2 if name == "dfa" else 4}
    for key, value in plain.items():
        assert rel(scaled[key], factor[key.split(".")[0]] * value) < 1e-13, key
    if name != "dfa":
        for i, b in expected_feedback(rules.create(name, net), name).items():
            assert rel(scaled_rule.last_feedback[i], 2 * b) < 1e-15


def test_cards_cover_the_six_implausibilities():
    """The card is how reports compare rules; every rule must answer all six questions, each with a reason."""
    net = mlp()
    for name in ALL_RULES:
        card = rules.create(name, net).card
        assert set(card) == set(IMPLAUSIBILITIES), name
        for key, item in card.items():
            assert isinstance(item.removed, bool), (name, key)
            assert isinstance(item.why, str) and item.why.strip(), (name, key)
    assert rules.create("fa", net).card["weight_transport"].removed is True
    assert rules.create("dfa", net).card["weight_transport"].removed is True
    assert rules.create("bp", net).card["weight_transport"].removed is False


# ---------------------------------------------------------------------------------------------------------------
# 8. Checkpointed rule state
# ---------------------------------------------------------------------------------------------------------------


def round_trip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Through safetensors, as run checkpoints store it (never pickle)."""
    return safetensors.torch.load(safetensors.torch.save(state))


@pytest.mark.parametrize("name", ["fa", "dfa", "brsf", "frsf"])
def test_state_round_trip_reproduces_the_update(name):
    """A resumed run must continue with the same feedback (and, for brSF, the same future draws) as the original."""
    net = mlp("tanh")
    x1, y1 = batch((12,), seed=1)
    x2, y2 = batch((12,), seed=2)
    original = rules.create(name, net, seed=1)
    original.grads(x1, y1)  # dfa draws its D here; brsf advances its generator
    state = round_trip(original.state_dict())
    other_seed = rules.create(name, net, seed=2)
    other_seed.grads(x1, y1)
    resumed = rules.create(name, net, seed=2)
    resumed.load_state_dict(state)
    expected = original.grads(x2, y2).grads
    assert rel(other_seed.grads(x2, y2).grads["1.weight"], expected["1.weight"]) > 1e-3  # the seed matters
    assert_same(resumed.grads(x2, y2).grads, expected, tol=1e-15)
    assert_same(resumed.grads(x1, y1).grads, original.grads(x1, y1).grads, tol=1e-15)  # and keeps matching


def test_bp_state_is_its_step_count_and_rejects_foreign_state():
    """bp has no state but what every rule keeps, the step count and its name; loading another rule's state into it
    is a mix-up that must be reported."""
    net = mlp()
    bp = rules.create("bp", net)
    x, y = torch.randn(4, 12, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    bp.backward(x, y)
    assert bp.state_dict().keys() == {"step", "rule_name"} and int(bp.state_dict()["step"]) == 1
    bp.load_state_dict({})
    with pytest.raises(BioPropError, match="^rule bp: cannot load the state of rule fa"):
        bp.load_state_dict(rules.create("fa", net).state_dict())


# ---------------------------------------------------------------------------------------------------------------
# 9. float32, accumulation through Rule.backward, unsupported layers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_RULES)
def test_float32_agrees_with_float64(name):
    """Training runs in float32; its updates must be the float64 math up to float32 rounding."""
    net64 = conv_net()
    net32 = copy.deepcopy(net64).float()
    x, y = batch((1, 8, 8))
    update64 = rules.create(name, net64).grads(x, y).grads
    update32 = rules.create(name, net32).grads(x.float(), y).grads
    for key, value in update64.items():
        assert update32[key].dtype == torch.float32
        assert rel(update32[key].double(), value) < 1e-4, key


@pytest.mark.parametrize("name", FA_RULES)
def test_backward_writes_grads_and_accumulates(name):
    """Rule.backward must put exactly rule.grads into .grad and add on repeat calls, as autograd does."""
    net = mlp("relu")
    x, y = batch((12,))
    rule = rules.create(name, net, seed=4)
    rule.grads(x, y)  # dfa draws its B_l at the first batch
    feedback = expected_feedback(rule, name)  # the step's feedback (brsf: the M of step 0), read before the step
    loss, prediction = rule.backward(x, y)
    first = {n: p.grad.clone() for n, p in net.named_parameters()}
    assert abs(float(loss - hand_loss(net, "relu", x, y))) < 1e-12
    assert rel(prediction, net(x).detach()) < 1e-14
    assert_same(first, hand_mlp(net, "relu", x, y, feedback, direct=name == "dfa"))
    second = hand_mlp(net, "relu", x, y, expected_feedback(rule, name), direct=name == "dfa")
    rule.backward(x, y)
    assert_same({n: p.grad for n, p in net.named_parameters()}, {n: first[n] + second[n] for n in first})


def test_conv_with_string_padding_is_refused():
    """padding='same' has a geometry the layer-wise transposed convolution does not handle; refuse, don't guess."""
    net = reinit(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3)), 0)
    x, y = batch((1, 4, 4))
    with pytest.raises(BioPropError, match="padding"):
        rules.create("fa", net).grads(x, y)


def test_fa_with_dropout_uses_the_forward_mask():
    """Backprop through dropout multiplies by the mask drawn in the forward pass; FA with B = W must equal backprop
    under that same mask (seeded identically), or hidden units that were dropped receive error."""
    net = reinit(nn.Sequential(nn.Linear(12, 7), nn.Tanh(), nn.Dropout(0.5), nn.Linear(7, 3)), seed=0)
    x, y = batch((12,))
    rule = rules.create("fa", net)
    rule.feedback[3] = net[3].weight.detach().clone()
    with torch.random.fork_rng():
        torch.manual_seed(7)
        update = rule.grads(x, y).grads
    with torch.random.fork_rng():
        torch.manual_seed(7)
        reference = autograd_grads(net, x, y)
    assert rel(update["3.weight"], reference["3.weight"]) < TOL  # same forward mask: the output layer agrees
    assert rel(update["0.weight"], reference["0.weight"]) < TOL


def test_hard_sigmoid_layer_backward_is_autograds_vector_jacobian_product():
    """The feedforward hard sigmoid clip(x, 0, 1) (bp on the same-sized MLP as the energy nets) through the fused
    kernel the layer-wise rules use, against autograd."""
    from bioprop.nets import HardSigmoid
    from bioprop.rules.layerwise import through_parameterless

    layer = HardSigmoid()
    h_in = (2 * torch.randn(5, 9, dtype=torch.float64)).requires_grad_()
    h_out = layer(h_in)
    grad_out = torch.randn(5, 9, dtype=torch.float64)
    expected = torch.autograd.grad(h_out, h_in, grad_out)[0]
    torch.testing.assert_close(through_parameterless(layer, h_in.detach(), h_out.detach(), grad_out), expected)
    torch.testing.assert_close(h_out, h_in.clamp(0, 1))
