"""The contract for sequences (docs/contract.md, "Sequences"): time-major batches, per-step targets with −1 for
steps without one, the sequence loss and its error, the decision accuracy, and the refusals — checked against hand
computations on a stand-in recurrent network (any module whose class says ``time_major = True``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop import checks, losses, metrics
from bioprop.errors import BioPropError


class LeakyReadout(nn.Module):
    """A minimal time-major network: y_t = κ y_{t−1} + W x_t + b, (T, B, C) → (T, B, K)."""

    time_major = True

    def __init__(self, channels: int = 3, classes: int = 4, kappa: float = 0.5) -> None:
        super().__init__()
        self.readout, self.kappa = nn.Linear(channels, classes), kappa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, out = torch.zeros(x.shape[1], self.readout.out_features, dtype=x.dtype), []
        for x_t in x:
            y = self.kappa * y + self.readout(x_t)
            out.append(y)
        return torch.stack(out)


def labels_with_gaps(steps: int, batch: int, classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (steps, batch), generator=generator)
    y[:2] = -1  # no target in the first two steps
    y[3, 1] = -1  # nor at one later step of one example
    return y


@pytest.mark.parametrize("name", ["ce", "se"])
def test_sequence_loss_and_error_equal_a_hand_computation(name: str) -> None:
    """ℓ̄ = mean over examples of the mean per-step loss over that example's counted steps; ``error`` = ∂ℓ̄/∂z by
    autograd through the hand-written loop."""
    steps, batch, classes = 6, 3, 4
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(steps, batch, classes, dtype=torch.float64, generator=generator, requires_grad=True)
    y = labels_with_gaps(steps, batch, classes)
    total = z.new_zeros(())
    for b in range(batch):
        counted = [t for t in range(steps) if y[t, b] >= 0]
        if name == "ce":
            per = [F.cross_entropy(z[t, b : b + 1], y[t, b : b + 1]) for t in counted]
        else:
            per = [0.5 * (z[t, b] - F.one_hot(y[t, b], classes).double()).square().sum() for t in counted]
        total = total + sum(per) / len(per)
    total = total / batch
    (expected,) = torch.autograd.grad(total, z)
    loss = losses.get(name)
    value, error = loss.error(z.detach(), y)
    torch.testing.assert_close(value, total.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(loss.value(z.detach(), y), total.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(error, expected, rtol=1e-12, atol=1e-15)
    assert float(error[:2].abs().sum()) == 0.0  # no error where no target


def test_regression_targets_count_every_step_and_keep_their_sign() -> None:
    steps, batch, outputs = 5, 2, 3
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(steps, batch, outputs, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randn(steps, batch, outputs, dtype=torch.float64, generator=generator) - 1.0  # mostly negative
    total = 0.5 * (z - target).square().sum(2).mean()
    (expected,) = torch.autograd.grad(total, z)
    value, error = losses.get("se").error(z.detach(), target)
    torch.testing.assert_close(value, total.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(error, expected, rtol=1e-12, atol=1e-15)
    per_example = losses.get("se").per_example(z.detach(), target)
    torch.testing.assert_close(per_example, 0.5 * (z.detach() - target).square().sum(2).mean(0))


def test_decision_accuracy_sums_the_readout_over_the_counted_steps() -> None:
    """Example 0: class 1 wins the summed window although class 2 wins its last step; example 1: its label."""
    z = torch.zeros(4, 2, 3)
    z[2, 0, 1], z[3, 0, 2] = 5.0, 1.0  # example 0: window steps 2-3, summed → class 1
    z[3, 1, 0] = 1.0  # example 1: class 0
    y = torch.tensor([[-1, -1], [-1, -1], [1, 0], [1, 0]])
    assert metrics.sequence_correct(z, y) == 2
    assert metrics.sequence_correct(z, torch.tensor([[-1, -1], [-1, -1], [2, 2], [2, 2]])) == 0


def test_evaluate_takes_time_major_sequences_and_uint8_spikes() -> None:
    torch.manual_seed(0)
    net = LeakyReadout().double()
    spikes = (torch.rand(7, 5, 3) < 0.3).to(torch.uint8)  # (T, N, C)
    y = torch.full((7, 5), -1, dtype=torch.int64)
    y[-2:] = torch.tensor([0, 1, 2, 3, 0])
    loss, accuracy = metrics.evaluate(net, spikes, y, batch_size=2)
    with torch.no_grad():
        z = net(spikes.double())
    assert loss == pytest.approx(float(losses.get("ce").value(z, y)), rel=1e-12)
    assert accuracy == metrics.sequence_correct(z, y) / 5
    _, regression_accuracy = metrics.evaluate(net, spikes.double(), torch.zeros(7, 5, 4, dtype=torch.float64))
    assert math.isnan(regression_accuracy)


def test_update_angles_take_uint8_spikes_as_evaluate_does() -> None:
    from bioprop import rules
    from conftest import busy_lsnn

    rule = rules.create("eprop", busy_lsnn())
    spikes = (torch.rand(30, 3, 4, generator=torch.Generator().manual_seed(2)) < 0.3).to(torch.uint8)
    y = torch.full((30, 3), -1, dtype=torch.int64)
    y[-5:] = 1
    from_bytes = metrics.update_angles(rule, [(spikes, y)])
    assert from_bytes == metrics.update_angles(rule, [(spikes.double(), y)])
    assert 0.0 < from_bytes["input.weight"] < 90.0  # e-prop's approximation, measured


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.int64), "not a time-major sequence batch"),
        (torch.zeros(0, 3, 2), torch.zeros(0, 3, dtype=torch.int64), "no time steps or no examples"),
        (torch.zeros(4, 3, 2), torch.zeros(3, dtype=torch.int64), "must be int64 of shape (T, B)"),
        (torch.zeros(4, 3, 2), torch.zeros(5, 3, dtype=torch.int64), "must be int64 of shape (T, B)"),
        (torch.zeros(4, 3, 2), torch.zeros(4, 2, 1), "do not match x"),
        (torch.zeros(4, 3, 2), torch.tensor([[0, -1, 1]] * 4), "example 1 of the batch has no target at any step"),
    ],
)
def test_malformed_sequence_batches_are_refused(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(BioPropError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checks.check_batch(x, y, sequence=True)


def test_sequence_labels_may_be_minus_one_but_not_lower_or_past_the_classes() -> None:
    checks.check_labels(torch.tensor([[-1, 0], [3, 2]]), 4)
    with pytest.raises(BioPropError, match="label -2 in y is out of range"):
        checks.check_labels(torch.tensor([[-2, 0], [3, 2]]), 4)
    with pytest.raises(BioPropError, match="label 4 in y is out of range"):
        checks.check_labels(torch.tensor([[-1, 0], [4, 2]]), 4)
    with pytest.raises(BioPropError, match="label -1 in y is out of range"):  # not for feedforward labels
        checks.check_labels(torch.tensor([-1, 0]), 4)
    with pytest.raises(BioPropError, match="3 entries per step; the network has 2 outputs"):
        checks.check_labels(torch.zeros(2, 2, 3), 2)


def test_a_feedforward_rule_refuses_a_recurrent_network_naming_the_kinds() -> None:
    from bioprop import rules

    with pytest.raises(BioPropError, match=r"rule fa: recurrent networks \(rnn:N, .*\) are trained by"):
        rules.create("fa", LeakyReadout())


def test_the_rules_refuse_float_targets_under_cross_entropy_and_name_a_batch_major_layout() -> None:
    from bioprop import nets, rules

    torch.manual_seed(0)
    net = nets.build("rnn:5", (6, 3), 2).double()
    x = torch.rand(6, 4, 3, dtype=torch.float64)
    with pytest.raises(BioPropError, match=r"float targets y \(regression\) need the squared error"):
        rules.create("bptt", net).grads(x, torch.zeros(6, 4, 2, dtype=torch.float64))
    rules.create("bptt", net, output="se").grads(x, torch.zeros(6, 4, 2, dtype=torch.float64))  # se takes them
    labels = torch.zeros(4, 6, dtype=torch.int64)  # (B, T): batch-major
    with pytest.raises(BioPropError, match=r"look batch-major \(B, T, ...\).*x.transpose\(0, 1\)"):
        rules.create("bptt", net).grads(x, labels)
    with pytest.raises(BioPropError, match="label -2 in y is out of range"):
        rules.create("bptt", net).grads(x, torch.full((6, 4), -2))
