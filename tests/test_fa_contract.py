"""The feedback-alignment family under contract v2 (issue 10): typed options, one output loss per run, pure
``grads`` (brsf's M and dfa's B_l drawn from seeded generators of the rule's own, never the global one), and state
that survives a checkpoint bit for bit. Every expectation is independent math (explicit matrices, autograd of a
loss written here) or a property that a wrong implementation breaks."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from bioprop import rules
from bioprop.errors import BioPropError
from bioprop.rules.feedback_alignment import (
    FeedbackAlignment,
    direct_feedback_signal,
    feedback_alignment_walk,
    sign_concordant_feedback,
)
from bioprop.rules.layerwise import forward_cached, parameterised_indices
from conftest import tanh_mlp

FA_RULES = ("fa", "dfa", "usf", "brsf", "frsf")


def mlp(sizes: tuple[int, ...] = (12, 7, 5, 3), seed: int = 0) -> nn.Sequential:
    """:func:`conftest.tanh_mlp`, 12-7-5-3 by default (layer indices 1, 3, 5)."""
    return tanh_mlp(sizes, seed)


def batch(n: int = 9, features: int = 12, classes: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, features), generator=generator, dtype=torch.float64) * 2 - 1
    return x, torch.randint(classes, (n,), generator=generator)


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (the reference must be non-zero, so that the comparison can fail)."""
    assert b.norm() > 0
    return float((a - b).norm() / b.norm())


def se_loss(z: Tensor, y: Tensor) -> Tensor:
    """½‖z − onehot(y)‖² summed over classes, mean over the batch, written from the definition."""
    target = torch.zeros_like(z)
    target[torch.arange(len(y)), y] = 1.0
    return 0.5 * ((z - target) ** 2).sum(1).mean()


def autograd_se(net: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    named = dict(net.named_parameters())
    with torch.enable_grad():
        grads = torch.autograd.grad(se_loss(net(x), y), list(named.values()))
    return dict(zip(named, grads, strict=True))


def equal_states(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def snapshot(rule: rules.Rule) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in rule.state_dict().items()}


def round_trip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Through safetensors, as run checkpoints store it (never pickle)."""
    return safetensors.torch.load(safetensors.torch.save(state))


# ---------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------


def test_options_are_one_typed_frozen_dataclass_with_an_output_loss():
    """The family declares its options once, as a frozen dataclass read by attribute; ``output`` picks the run's
    loss (ce by default) and an unknown one is refused with its name."""
    net = mlp()
    assert list(FeedbackAlignment.options) == ["feedback", "init", "scale", "seed", "output"]
    rule = rules.create("dfa", net, scale="0.5", output="se")
    assert (rule.opts.feedback, rule.opts.scale, rule.opts.output) == ("direct", 0.5, "se")
    assert rule.loss.name == "se" and rules.create("fa", net).loss.name == "ce"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.opts.scale = 2.0  # type: ignore[misc]
    for bad, token in ((dict(output="mse"), "'mse'"), (dict(scale=0.0), "scale=0.0"), (dict(init="he"), "'he'")):
        with pytest.raises(BioPropError, match=re.escape(token)) as info:
            rules.create("fa", net, **bad)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Purity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FA_RULES)
def test_grads_is_pure(name):
    """``grads`` twice on one batch: the same update bit for bit, the same rule state (step, seed, feedback) and
    the global random state untouched; brsf's M and dfa's B_l come from generators of the rule's own. (dfa draws
    its B_l at its first batch, from the seed alone: a rule that drew them on another batch has the same.)"""
    net = mlp()
    x, y = batch()
    rule = rules.create(name, net, seed=5)
    if name == "dfa":
        other = rules.create(name, net, seed=5)
        other.grads(*batch(n=4, seed=9))
    before = snapshot(rule)
    rng = torch.get_rng_state()
    first = rule.grads(x, y)
    middle = snapshot(rule)
    second = rule.grads(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert rule.step == 0
    assert set(first.grads) == set(second.grads)
    assert all(torch.equal(first.grads[k], second.grads[k]) for k in first.grads)
    assert torch.equal(first.loss, second.loss) and torch.equal(first.prediction, second.prediction)
    assert equal_states(middle, snapshot(rule))
    if name == "dfa":
        assert equal_states(other.state_dict(), middle)  # the B_l depend on the seed and sizes, not on the batch
        assert all(torch.equal(before[k], middle[k]) for k in before)  # the batch only filled in the B_l
    else:
        assert equal_states(before, middle)
    assert all(p.grad is None for p in net.parameters())


def test_brsf_draws_its_m_per_step_from_seed_and_step():
    """brSF redraws M at each training step (Liao et al. 2016 as in BioTorch): ``backward`` uses the M that ``grads``
    showed for that step, then the step count moves it to the next M (signs still W's); a rule of the same seed at
    the same step draws the same M, another seed another M."""
    net = mlp()
    x, y = batch()
    rule = rules.create("brsf", net, seed=2)
    used = rule.feedback_weights()
    expected = rule.grads(x, y).grads
    rule.backward(x, y)
    assert rule.step == 1
    assert all(torch.equal(p.grad, expected[k]) for k, p in net.named_parameters())
    after = rule.feedback_weights()
    for i, weight in ((3, net[3].weight.detach()), (5, net[5].weight.detach())):
        assert torch.equal(torch.sign(after[i]), torch.sign(weight))
        assert torch.equal(torch.sign(used[i]), torch.sign(weight))
        assert (after[i].abs() - used[i].abs()).abs().min() > 0  # every magnitude redrawn
    twin = rules.create("brsf", net, seed=2)
    twin.step = 1
    assert all(torch.equal(twin.feedback_weights()[i], after[i]) for i in after)
    stranger = rules.create("brsf", net, seed=3)
    stranger.step = 1
    assert rel(stranger.feedback_weights()[3], after[3]) > 0.1


# ---------------------------------------------------------------------------------------------------------------
# One loss per run: se, against autograd of the squared error written here
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fa", "frsf"])
def test_se_output_with_b_equal_w_is_backprop_of_the_squared_error(name):
    """Weight transport restored (fa: B = W; frsf: |W|∘sign(W) = W), the update with ``output=se`` is autograd's
    gradient of ½‖z − onehot(y)‖² (mean over the batch), and the loss returned is that loss: the output error is
    the run's loss's, not cross-entropy's."""
    net = mlp()
    x, y = batch()
    rule = rules.create(name, net, output="se")
    for i in rule.param_layers[1:]:
        rule.feedback[i] = rule.layers[i].weight.detach().clone()
    update = rule.grads(x, y)
    expected = autograd_se(net, x, y)
    assert max(rel(update.grads[k], expected[k]) for k in expected) < 1e-12
    assert abs(float(update.loss - se_loss(net(x).detach(), y))) < 1e-14
    reference = rule.reference_grads(x, y)
    assert max(rel(reference[k], expected[k]) for k in expected) < 1e-12
    ce = rules.create(name, net)  # the default, cross-entropy, is another gradient
    for i in ce.param_layers[1:]:
        ce.feedback[i] = ce.layers[i].weight.detach().clone()
    assert rel(ce.grads(x, y).grads["1.weight"], expected["1.weight"]) > 1e-2


def test_se_output_usf_and_dfa_by_explicit_matrices():
    """With ``output=se`` the output error is e = (z − onehot(y))/B; uSF carries it down through σ·sign(W)
    (δ_k = (δ_{k+1} σ sign W_{k+1}) ⊙ tanh'(a_k)) and DFA straight through its B_k (δ_k = (e B_k) ⊙ tanh'(a_k))."""
    net = mlp()
    x, y = batch()
    W = {i: net[i].weight.detach() for i in (1, 3, 5)}
    b = {i: net[i].bias.detach() for i in (1, 3, 5)}
    a1 = x @ W[1].T + b[1]
    a3 = torch.tanh(a1) @ W[3].T + b[3]
    z = torch.tanh(a3) @ W[5].T + b[5]
    e = (z - torch.eye(3, dtype=z.dtype)[y]) / len(y)
    usf = {i: math.sqrt(2 / sum(W[i].shape)) * torch.sign(W[i]) for i in (3, 5)}
    dfa_rule = rules.create("dfa", net, output="se")
    dfa_rule.grads(x, y)
    for name, delta3, delta1 in (
        ("usf", (e @ usf[5]) * (1 - torch.tanh(a3) ** 2), None),
        ("dfa", (e @ dfa_rule.feedback[5]) * (1 - torch.tanh(a3) ** 2), (e @ dfa_rule.feedback[3])),
    ):
        delta1 = (delta3 @ usf[3] if delta1 is None else delta1) * (1 - torch.tanh(a1) ** 2)
        update = rules.create(name, net, output="se").grads(x, y).grads
        assert rel(update["5.weight"], e.T @ torch.tanh(a3)) < 1e-12, name
        assert rel(update["3.weight"], delta3.T @ torch.tanh(a1)) < 1e-12, name
        assert rel(update["1.weight"], delta1.T @ x) < 1e-12, name
        assert rel(update["1.bias"], delta1.sum(0)) < 1e-12, name


# ---------------------------------------------------------------------------------------------------------------
# The functional core, on its own
# ---------------------------------------------------------------------------------------------------------------


def test_functional_core_is_the_papers_equations():
    """sign_concordant_feedback is |M|∘sign(W) entry by entry; direct_feedback_signal is e B reshaped; the walk with
    F = W at every position is autograd's backprop of the loss whose output error it is given."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    m = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    expected = torch.tensor([[abs(m[r, c]) * (1 if w[r, c] > 0 else -1) for c in range(6)] for r in range(4)])
    assert torch.equal(sign_concordant_feedback(w, m), expected.to(w))
    assert torch.equal(sign_concordant_feedback(w, 0.25), 0.25 * torch.sign(w))
    e = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    d = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    signal = direct_feedback_signal(e, d, torch.Size((5, 2, 4)))
    assert signal.shape == (5, 2, 4)
    assert torch.allclose(signal[2, 1, 3], sum(e[2, k] * d[k, 7] for k in range(3)), rtol=1e-14, atol=0)

    net = mlp()
    x, y = batch()
    layers = list(net)
    positions = parameterised_indices(layers)
    acts, saved = forward_cached(layers, x)
    z = acts[-1].clone().requires_grad_(True)
    (error,) = torch.autograd.grad(se_loss(z, y), z)
    updates = feedback_alignment_walk(
        layers, positions, acts, saved, error, {i: net[i].weight.detach() for i in positions[1:]}, direct=False
    )
    expected_grads = autograd_se(net, x, y)
    for i in positions:
        assert rel(updates[i][0], expected_grads[f"{i}.weight"]) < 1e-12
        assert rel(updates[i][1], expected_grads[f"{i}.bias"]) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# State: checkpoint round trip, refusal of foreign state, diagnostics
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FA_RULES)
def test_state_round_trip_is_bit_identical_and_continues_the_run(name):
    """After training steps, the state through safetensors into a rule created with another seed: the same state
    bit for bit (step and seed included), and the same next updates as the original (brsf: the same M), which a rule
    of that other seed at the same step does not give."""
    net = mlp()
    x, y = batch()
    original = rules.create(name, net, seed=1)
    for _ in range(3):
        original.backward(x, y)
    assert original.step == 3
    state = round_trip(original.state_dict())
    resumed = rules.create(name, net, seed=7)
    resumed.load_state_dict(state)
    assert resumed.step == 3 and resumed.opts.seed == 1
    assert equal_states(resumed.state_dict(), original.state_dict())
    x2, y2 = batch(seed=4)
    expected, got = original.grads(x2, y2).grads, resumed.grads(x2, y2).grads
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    if name == "usf":
        return  # σ·sign(W) has nothing drawn: no seed to carry
    fresh = rules.create(name, net, seed=7)
    fresh.step = 3
    assert rel(fresh.grads(x2, y2).grads["1.weight"], expected["1.weight"]) > 1e-3  # so the state carried it


@pytest.mark.parametrize(
    "name, change, says",
    [
        ("fa", lambda s: s.pop("feedback.3"), "feedback.3 is missing"),
        ("frsf", lambda s: s.__setitem__("feedback.5", torch.zeros(5, 3, dtype=torch.float64)), "of shape (5, 3)"),
        ("fa", lambda s: s.__setitem__("feedback.1", torch.zeros(7, 12)), "'feedback.1'"),
        ("usf", lambda s: s.__setitem__("feedback.3", torch.zeros(5, 7)), "'feedback.3'"),
        ("dfa", lambda s: s.__setitem__("feedback.x", torch.zeros(1)), "'feedback.x'"),
        ("fa", lambda s: s.__setitem__("particles", torch.zeros(1)), "'particles'"),
    ],
)
def test_foreign_state_is_refused_and_nothing_changes(name, change, says):
    """A checkpoint that does not fit the network or the variant is one BioPropError naming the entry; the rule
    keeps its own state (step included)."""
    net = mlp()
    rule = rules.create(name, net)
    rule.backward(*batch())
    before = snapshot(rule)
    state = snapshot(rules.create(name, net, seed=3))
    state["step"] = torch.tensor(9)
    change(state)
    with pytest.raises(BioPropError, match=re.escape(says)) as info:
        rule.load_state_dict(state)
    assert "\n" not in str(info.value)
    assert equal_states(before, rule.state_dict()) and rule.step == 1


def test_diagnostics_match_their_declaration_and_the_usf_angle():
    """Every diagnostic is matched by a declared pattern whose label formats; uSF's angle is arccos of
    ‖W‖₁ / (‖W‖₂ √n), since ⟨W, σ sign W⟩ = σ‖W‖₁ and ‖σ sign W‖ = σ√n."""
    net = mlp()
    rule = rules.create("usf", net)
    diagnostics = rule.diagnostics()
    assert set(diagnostics) == {f"{k}.weight/{m}" for k in (3, 5) for m in ("w_b_angle_deg", "b_w_norm_ratio")}
    for key in diagnostics:
        found = [d for d in rule.diagnostic_specs if re.fullmatch(d.pattern, key)]
        assert len(found) == 1, key
        assert found[0].label.format(**re.fullmatch(found[0].pattern, key).groupdict()).endswith(key.split("/")[0])
    for i in (3, 5):
        weight = net[i].weight.detach()
        cosine = float(weight.abs().sum() / (weight.norm() * math.sqrt(weight.numel())))
        assert diagnostics[f"{i}.weight/w_b_angle_deg"] == pytest.approx(math.degrees(math.acos(cosine)), abs=1e-9)
        ratio = math.sqrt(2 / sum(weight.shape)) * math.sqrt(weight.numel()) / float(weight.norm())
        assert diagnostics[f"{i}.weight/b_w_norm_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert rule.figures[0].diagnostics == (0,)
