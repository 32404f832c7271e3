"""Metrics against hand-computed values: the angle between two tensors, the per-parameter update angle of a rule to
its reference (bp: 0; FA at init: far from 0), and the loss and accuracy of :func:`bioprop.metrics.evaluate`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bioprop import metrics, rules
from bioprop.rules import Update

# angle_deg works through acos, whose resolution near cos = 1 is √(2·ulp) rad ≈ 1e-6°: the tolerance for "zero"
# (see test_angle_of_a_vector_with_itself_is_zero for the stricter expectation).
ZERO_DEG = 1e-5


def independent_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """2·atan2(‖â − b̂‖, ‖â + b̂‖): the angle by a formula well conditioned everywhere (Kahan)."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a / a.norm(), b / b.norm()
    return math.degrees(2 * math.atan2(float((a - b).norm()), float((a + b).norm())))


def small_mlp(seed: int, sizes=(20, 64, 64, 10)) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    modules: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        modules += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    modules.append(nn.Linear(sizes[-2], sizes[-1]))
    net = nn.Sequential(*modules).double()
    with torch.no_grad():
        for param in net.parameters():
            fan_in = param.shape[1] if param.dim() == 2 else 4
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) / math.sqrt(fan_in))
    return net


def probes(n_probes: int = 3, n: int = 32, features: int = 20, n_classes: int = 10):
    out = []
    for seed in range(n_probes):
        generator = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(n, features, generator=generator, dtype=torch.float64)
        out.append((x, torch.randint(n_classes, (n,), generator=generator)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# angle_deg on hand-made vectors
# ---------------------------------------------------------------------------------------------------------------


def test_angle_of_orthogonal_vectors_is_90():
    """Orthogonal updates carry no descent information; the metric must report exactly 90°."""
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    assert metrics.angle_deg(a, b) == pytest.approx(90, abs=1e-12)
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # tensors are compared as flat vectors, whatever their shape
    assert metrics.angle_deg(a, torch.tensor([[0.0, 0.0], [0.0, 5.0]])) == pytest.approx(90, abs=1e-12)


def test_angle_of_antiparallel_vectors_is_180():
    """An update pointing uphill must read 180°, the worst case, not fold back to something smaller."""
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert metrics.angle_deg(v, -3 * v) == pytest.approx(180, abs=ZERO_DEG)


def test_angle_ignores_scale_and_shape():
    """The angle measures direction only: any positive rescaling (the feedback scale, a learning rate) gives 0°."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = torch.randn(3, 5, generator=generator, dtype=torch.float64)
        assert metrics.angle_deg(v, 7.5 * v) < ZERO_DEG
        assert metrics.angle_deg(v, v.flatten() * 0.01) < ZERO_DEG


def test_angle_of_known_pairs():
    """45° and 60° from the definition cos θ = a·b / (‖a‖‖b‖); the function is symmetric and accepts float32."""
    assert metrics.angle_deg(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45, abs=1e-5)
    sixty = torch.tensor([1.0, math.sqrt(3.0)], dtype=torch.float64)
    assert metrics.angle_deg(torch.tensor([2.0, 0.0], dtype=torch.float64), sixty) == pytest.approx(60, abs=1e-10)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        a, b = torch.randn(2, 40, generator=generator, dtype=torch.float64)
        angle = metrics.angle_deg(a, b)
        assert angle == pytest.approx(independent_angle(a, b), abs=1e-9)
        assert angle == metrics.angle_deg(b, a)
        assert metrics.angle_deg(a.float(), b.float()) == pytest.approx(angle, abs=1e-4)


def test_angle_with_a_zero_vector_is_nan():
    """A zero update has no direction; reporting 0° or 90° would be a made-up number."""
    assert math.isnan(metrics.angle_deg(torch.zeros(4), torch.ones(4)))
    assert math.isnan(metrics.angle_deg(torch.ones(4), torch.zeros(4)))


def test_angle_of_a_vector_with_itself_is_zero():
    """bp's angle to its reference is the sanity line of every report; for identical tensors it must be 0 to
    rounding, not the ~1e-6° resolution floor of acos near 1."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(200):
        v = torch.randn(50, generator=generator, dtype=torch.float64)
        worst = max(worst, metrics.angle_deg(v, v.clone()))
    assert independent_angle(v, v.clone()) < 1e-9
    assert worst < 1e-9


# ---------------------------------------------------------------------------------------------------------------
# update_angles
# ---------------------------------------------------------------------------------------------------------------


def test_update_angles_averages_over_probes():
    """The logged angle is the mean over held-out batches; checked with a rule whose update and reference are
    replaced by stand-ins of known angles: 90° on the first probe batch, 45° on the second."""
    rule = rules.create("bp", nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False)))
    known = {  # probe batch (its inputs' value) → (update, reference) of "1.weight"
        0: (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 3.0], [0.0, 0.0]])),
        1: (torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]])),
    }
    rule.update = lambda x, y, index=None: Update(
        {"1.weight": known[int(x[0, 0])][0]}, torch.zeros(()), torch.zeros(len(x), 2)
    )
    rule.reference = lambda x, y: {"1.weight": known[int(x[0, 0])][1]}
    probes = [(torch.full((3, 2), float(batch)), torch.zeros(3, dtype=torch.int64)) for batch in known]
    assert metrics.update_angles(rule, probes)["1.weight"] == pytest.approx((90 + 45) / 2, abs=1e-5)


def test_bp_update_angle_is_zero():
    """bp is its own reference: its angle must be 0 for every parameter, or the measurement itself is broken."""
    net = small_mlp(seed=1)
    angles = metrics.update_angles(rules.create("bp", net), probes())
    assert set(angles) == {name for name, _ in net.named_parameters()}
    assert max(angles.values()) < ZERO_DEG, angles


@pytest.mark.parametrize("name", ["fa", "dfa", "usf", "brsf", "frsf"])
def test_feedback_alignment_starts_far_from_backprop(name):
    """Before learning, random B is unrelated to W (FA/DFA ≈ 90°) and sign-concordant B only shares W's signs
    (between 0° and 90°); the output layer sees e directly and is exact. The baseline alignment is measured from."""
    net = small_mlp(seed=0)
    angles = metrics.update_angles(rules.create(name, net), probes())
    assert angles["5.weight"] < ZERO_DEG and angles["5.bias"] < ZERO_DEG
    hidden = [angles[key] for key in ("1.weight", "1.bias", "3.weight", "3.bias")]
    if name in ("fa", "dfa"):
        assert min(hidden) > 45, angles
    else:  # sign-concordant feedback already transports part of W, yet is not W
        assert 10 < min(hidden) and max(hidden) < 85, angles
    assert all(p.grad is None for p in net.parameters())  # measuring never writes .grad


def test_update_angles_leave_existing_grad_untouched():
    """Angles are measured mid-training, between backward and step; they must not disturb the pending .grad."""
    net = small_mlp(seed=2)
    x, y = probes(1)[0]
    rule = rules.create("fa", net)
    rule.backward(x, y)
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    metrics.update_angles(rule, probes(2))
    assert all(torch.equal(p.grad, before[n]) for n, p in net.named_parameters())


# ---------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_on_a_hand_made_linear_net():
    """Reported loss and accuracy must be the dataset means, whatever the chunking; values computed by hand."""
    net = nn.Linear(2, 3).double()
    weight = [[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]
    bias = [0.0, 0.5, 0.0]
    with torch.no_grad():
        net.weight.copy_(torch.tensor(weight))
        net.bias.copy_(torch.tensor(bias))
    xs = [[2.0, 0.0], [0.0, 1.0], [-1.0, -2.0], [1.0, 1.2], [0.3, -0.1]]
    ys = [0, 0, 2, 1, 2]
    losses, correct = [], 0
    for features, label in zip(xs, ys, strict=True):
        z = [sum(w * f for w, f in zip(row, features, strict=True)) + b for row, b in zip(weight, bias, strict=True)]
        losses.append(math.log(sum(math.exp(v) for v in z)) - z[label])
        correct += max(range(3), key=z.__getitem__) == label
    expected_loss, expected_accuracy = sum(losses) / len(xs), correct / len(xs)
    assert expected_accuracy == 3 / 5  # the hand-made data is neither all right nor all wrong
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys)
    for batch_size in (1000, 2, 1):
        loss, accuracy = metrics.evaluate(net, x, y, batch_size=batch_size)
        assert loss == pytest.approx(expected_loss, rel=1e-12)
        assert accuracy == pytest.approx(expected_accuracy, abs=1e-15)
