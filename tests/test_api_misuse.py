"""The Python API used wrongly: each misuse is one BioPropError naming the problem, raised before any work (never
an AttributeError, IndexError, ZeroDivisionError or torch RuntimeError from deep inside), and a tensor that
requires grad passes the checks without a warning.

Covered: ``rules.create`` with something that is not a network, a lazy (uninitialised) layer, half precision
(at create, and at ``backward`` when the network was converted afterwards); ``metrics.evaluate`` with malformed
labels or batches; ``metrics.update_angles`` with probes that are not a list of ``(x, y)`` pairs, or no rule;
``nets.build`` with an impossible input shape or class count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bioprop import metrics, nets, rules
from bioprop.errors import BioPropError
from bioprop.nets.energy import EnergyNet
from conftest import energy_rules

#: The rules for image batches; those for recurrent networks (time-major sequences) are checked in
#: tests/test_sequences.py and tests/test_eprop.py.
RULES = [name for name in rules.names() if rules.entry(name).cls.networks != {"recurrent"}]
ENERGY_RULES = energy_rules()
LAYERED_RULES = [name for name in RULES if name not in ENERGY_RULES]


def mlp() -> nn.Sequential:
    """6-5-3 tanh MLP, float32, from a fixed seed."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def network(name: str) -> nn.Module:
    """``mlp()``, or for the contrastive rules a 6-5-3 energy net whose synapses contract (spectral norm 0.5)."""
    if name not in ENERGY_RULES:
        return mlp()
    torch.manual_seed(0)
    net = EnergyNet((6,), [5], 3)
    with torch.no_grad():
        for synapse in net.synapses:
            synapse.weight.mul_(0.5 / torch.linalg.matrix_norm(synapse.weight, 2))
    return net


#: Options that let a rule's inner dynamics settle on these small float32 networks.
OPTIONS = {"dendritic": {"max_steps": 2000}}


def batch(n: int = 7, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 6, generator=generator, dtype=dtype), torch.randint(3, (n,), generator=generator)


def one_line(info: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be a plain BioPropError (exit 2) on one line."""
    assert type(info.value) is BioPropError and info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------------- rules.create


@pytest.mark.parametrize("not_a_net", ["net", None, 3, [nn.Linear(6, 3)]], ids=["str", "None", "int", "list"])
@pytest.mark.parametrize("name", RULES)
def test_create_refuses_what_is_not_a_network(name: str, not_a_net) -> None:
    with pytest.raises(BioPropError) as info:
        rules.create(name, not_a_net)
    assert one_line(info) == (f"rule {name}: net must be a torch.nn.Module (e.g. bioprop.nets.build), not "
                              f"{type(not_a_net).__name__}")  # fmt: skip


@pytest.mark.parametrize("name", LAYERED_RULES)
def test_a_lazy_layer_is_refused_naming_it_until_the_network_has_run_once(name: str) -> None:
    """An uninitialised LazyLinear has no shape yet: the rule cannot be bound, and says which layer and what to do.
    After one forward pass the layer is an ordinary Linear and the same network is accepted."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.LazyLinear(3))
    with pytest.raises(BioPropError) as info:
        rules.create(name, net)
    message = one_line(info)
    assert f"rule {name}: layer 3 (LazyLinear) has uninitialised parameters" in message
    assert "run the network once, net(x)" in message
    net(batch()[0])
    rules.create(name, net, **OPTIONS.get(name, {})).grads(*batch())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", RULES)
def test_half_precision_is_refused_at_create_naming_the_dtype(name: str, dtype: torch.dtype) -> None:
    """Only float32 and float64 are supported (README): a half-precision network is refused when the rule is bound."""
    with pytest.raises(BioPropError) as info:
        rules.create(name, network(name).to(dtype))
    assert one_line(info) == (f"rule {name}: the network computes in {dtype}; the rules support torch.float32 and "
                              "torch.float64: convert it (net.float() or net.double())")  # fmt: skip


@pytest.mark.parametrize("name", RULES)
def test_a_network_made_half_after_create_is_refused_at_backward_before_any_work(name: str) -> None:
    net = network(name)
    rule = rules.create(name, net, **OPTIONS.get(name, {}))
    net.half()
    x, y = batch()
    for x_dtype in (torch.float16, torch.float32):
        with pytest.raises(BioPropError) as info:
            rule.backward(x.to(x_dtype), y)
        assert one_line(info).startswith("the network computes in torch.float16; the rules support torch.float32")
    assert all(p.grad is None for p in net.parameters())
    net.float()
    loss, _ = rule.backward(x, y)  # converted back: accepted again
    assert math.isfinite(float(loss))


@pytest.mark.parametrize("name", RULES)
def test_an_input_that_requires_grad_passes_without_a_warning_and_gets_no_grad(name: str) -> None:
    """pytest turns warnings into errors here (pyproject's filterwarnings), so a float() of a tensor that requires
    grad inside the checks would fail this test. The update is the same as for the plain input."""
    x, y = batch()
    tracked = x.clone().requires_grad_()
    losses, updates = [], []
    for given in (tracked, x):  # two identical networks and rules, one given the tracked input
        net = network(name)
        rule = rules.create(name, net, **OPTIONS.get(name, {}))
        torch.manual_seed(5)
        losses.append(float(rule.backward(given, y)[0]))
        updates.append({n: p.grad for n, p in net.named_parameters()})
        rule.grads(given, y)
        rule.reference_grads(given, y)
    assert losses[0] == losses[1]
    for n, grad in updates[1].items():
        torch.testing.assert_close(updates[0][n], grad, rtol=0, atol=0)
    assert tracked.grad is None


# --------------------------------------------------------------------------------------------- metrics.evaluate


def test_evaluate_is_the_mean_cross_entropy_and_accuracy_written_out() -> None:
    """The expected values from the definition: −log softmax at the label, averaged; argmax = label, counted.
    Chunks of 2 over 7 examples cover an uneven last chunk."""
    net = mlp()
    x, y = batch()
    with torch.no_grad():
        logits = net(x)
    log_p = logits - logits.exp().sum(1, keepdim=True).log()
    expected_loss = float(-log_p[torch.arange(7), y].mean())
    expected_accuracy = sum(int(logits[i].argmax()) == int(y[i]) for i in range(7)) / 7
    loss, accuracy = metrics.evaluate(net, x, y, batch_size=2)
    assert loss == pytest.approx(expected_loss, rel=1e-6) and accuracy == expected_accuracy


EVALUATE_MISUSE = [
    ("label = outputs", lambda x, y: (x, torch.tensor([0, 1, 2, 3, 0, 1, 2])),
     "label 3 in y is out of range: the network has 3 outputs, 0..2"),
    ("negative label", lambda x, y: (x, torch.tensor([0, -1, 2, 1, 0, 1, 2])), "label -1 in y is out of range"),
    ("empty", lambda x, y: (x[:0], y[:0]), "empty batch: x and y have no examples"),
    ("float labels", lambda x, y: (x, y.float()), "labels y must be int64 class indices (torch.long), not "
     "torch.float32"),
    ("lengths differ", lambda x, y: (x, y[:4]), "input x has 7 examples but labels y has 4"),
    ("x of another dtype", lambda x, y: (x.double(), y), "input x is torch.float64 but the network computes in "
     "torch.float32"),
    ("x of another shape", lambda x, y: (x[:, :4], y), "input x of shape (7, 4) does not fit the network"),
    ("x a list", lambda x, y: (x.tolist(), y), "input x must be a torch.Tensor"),
]  # fmt: skip


@pytest.mark.parametrize("what, make, says", EVALUATE_MISUSE, ids=[case[0] for case in EVALUATE_MISUSE])
def test_evaluate_refuses_a_malformed_set(what: str, make, says: str) -> None:
    with pytest.raises(BioPropError) as info:
        metrics.evaluate(mlp(), *make(*batch()))
    assert says in one_line(info)


@pytest.mark.parametrize("batch_size", [0, -5, 2.5, True, "10"])
def test_evaluate_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size) -> None:
    with pytest.raises(BioPropError) as info:
        metrics.evaluate(mlp(), *batch(), batch_size=batch_size)
    assert one_line(info) == f"batch_size must be a positive integer, not {batch_size!r}"


def test_evaluate_refuses_what_is_neither_a_rule_nor_a_network() -> None:
    with pytest.raises(BioPropError) as info:
        metrics.evaluate(mlp().state_dict(), *batch())
    assert one_line(info) == "evaluate needs a rule or a torch.nn.Module, not OrderedDict"


def test_evaluate_refuses_an_unknown_loss_and_a_loss_given_with_a_rule() -> None:
    with pytest.raises(BioPropError) as info:
        metrics.evaluate(mlp(), *batch(), loss="mse")
    assert one_line(info) == "unknown output loss 'mse'; known: ce, se"
    with pytest.raises(BioPropError) as info:
        metrics.evaluate(rules.create("fa", mlp()), *batch(), loss="se")
    assert "measures its own output loss (ce)" in one_line(info)


# ----------------------------------------------------------------------------------------- metrics.update_angles


PROBES_MISUSE = [
    ("a single pair", lambda x, y: (x, y),
     "probes must be a list of (x, y) batches, not a single (x, y) pair: wrap it, [(x, y)]"),
    ("inputs only", lambda x, y: [x], "probe batch 0 is a Tensor, not an (x, y) pair"),
    ("a triple", lambda x, y: [(x, y), (x, y, y)], "probe batch 1 is a tuple of length 3, not an (x, y) pair"),
    ("a tensor", lambda x, y: x, "probes must be a list of (x, y) batches, not Tensor"),
    ("a number", lambda x, y: 3, "probes must be a list of (x, y) batches, not int"),
    ("no batches", lambda x, y: [], "no probe batches: give at least one (x, y) batch"),
    ("no batches (generator)", lambda x, y: iter(()), "no probe batches"),
    ("second batch's labels out of range", lambda x, y: [(x, y), (x, y + 3)],
     "in y is out of range: the network has 3 outputs"),
    ("second batch empty", lambda x, y: [(x, y), (x[:0], y[:0])], "empty batch"),
]  # fmt: skip


@pytest.mark.parametrize("what, make, says", PROBES_MISUSE, ids=[case[0] for case in PROBES_MISUSE])
def test_update_angles_refuses_malformed_probes_before_any_work(what: str, make, says: str) -> None:
    """Every probe is checked before the first one is measured: the rule's computation is never entered."""
    rule = rules.create("fa", mlp())

    def no_work(*args):
        raise AssertionError("update_angles started working on malformed probes")

    rule.update = rule.reference = no_work
    with pytest.raises(BioPropError) as info:
        metrics.update_angles(rule, make(*batch()))
    assert says in one_line(info)


def test_update_angles_refuses_what_is_not_a_rule() -> None:
    with pytest.raises(BioPropError) as info:
        metrics.update_angles(mlp(), [batch()])
    assert one_line(info) == "update_angles needs a rule from bioprop.rules.create(...), not Sequential"


def test_update_angles_accepts_pairs_as_lists_and_generators() -> None:
    """Any iterable of (x, y) pairs, lists as well as tuples, a generator as well as a list: bp's angle is 0."""
    rule = rules.create("bp", mlp())
    x, y = batch()
    for probes in ([[x, y]], (pair for pair in [(x, y), (x[:3], y[:3])])):
        angles = metrics.update_angles(rule, probes)
        assert set(angles) == {"1.weight", "1.bias", "3.weight", "3.bias"}
        assert all(angle == pytest.approx(0.0, abs=1e-3) for angle in angles.values()), angles


# -------------------------------------------------------------------------------------------------- nets.build


BUILD_MISUSE = [
    ("negative size", {"in_shape": (-1,)}, "in_shape (-1,) must hold positive integers"),
    ("zero size", {"in_shape": (1, 0, 8)}, "in_shape (1, 0, 8) must hold positive integers"),
    ("float size", {"in_shape": (2.5,)}, "in_shape (2.5,) must hold positive integers"),
    ("bool size", {"in_shape": (True,)}, "in_shape (True,) must hold positive integers"),
    ("empty shape", {"in_shape": ()}, "in_shape must be a non-empty sequence of positive integers"),
    ("a number", {"in_shape": 64}, "in_shape must be a non-empty sequence of positive integers"),
    ("a string", {"in_shape": "64"}, "in_shape must be a non-empty sequence of positive integers"),
    ("no classes", {"n_classes": 0}, "n_classes must be an integer of at least 2, not 0"),
    ("one class", {"n_classes": 1}, "n_classes must be an integer of at least 2, not 1"),
    ("float classes", {"n_classes": 10.0}, "n_classes must be an integer of at least 2, not 10.0"),
    ("bool classes", {"n_classes": True}, "n_classes must be an integer of at least 2, not True"),
    ("spec not a string", {"spec": None}, "spec must be a string, not NoneType"),
    ("act not a string", {"act": nn.Tanh}, "act must be a string, not type"),
]  # fmt: skip


@pytest.mark.parametrize("what, change, says", BUILD_MISUSE, ids=[case[0] for case in BUILD_MISUSE])
@pytest.mark.parametrize("spec", ["mlp:10", "ebm:10"])
def test_build_refuses_impossible_shapes_and_class_counts(spec: str, what: str, change: dict, says: str) -> None:
    args = {"spec": spec, "in_shape": (1, 8, 8), "n_classes": 10, "act": "tanh" if spec == "mlp:10" else "auto"}
    with pytest.raises(BioPropError) as info:
        nets.build(**{**args, **change})
    assert says in one_line(info)


def test_build_accepts_two_classes_and_numpy_integers() -> None:
    """Two classes is the smallest classification; sizes from numpy (e.g. an array's shape) are integers too."""
    net = nets.build("mlp:4", (np.int64(1), np.int64(2), np.int64(3)), np.int64(2), "tanh")
    assert net(torch.zeros(5, 1, 2, 3)).shape == (5, 2)
    assert (net[1].in_features, net[3].out_features) == (6, 2) and type(net[1].in_features) is int
