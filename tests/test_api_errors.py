"""The Python API's errors: a malformed batch is one BioPropError naming the problem, raised before any work, by
every rule's ``grads``, ``backward`` and ``reference_grads``; a NaN weight is named as such (never blamed on a
setting); option values that are not finite, or step budgets above their documented maximum, are refused."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from bioprop import rules
from bioprop.errors import BioPropError, DivergenceError
from bioprop.nets.energy import EnergyNet
from conftest import energy_rules

#: The rules for image batches; those for recurrent networks (time-major sequences) are checked in
#: tests/test_sequences.py and tests/test_eprop.py.
RULES = [name for name in rules.names() if rules.entry(name).cls.networks != {"recurrent"}]
ENERGY_RULES = energy_rules()


def network(name: str) -> nn.Module:
    """A float64 6-5-4-3 network the rule accepts (an energy net for the contrastive rules, contractive synapses)."""
    generator = torch.Generator().manual_seed(0)
    if name in ENERGY_RULES:
        net = EnergyNet((6,), [5], 3).double()
        with torch.no_grad():
            for synapse in net.synapses:
                synapse.weight.copy_(torch.randn(synapse.weight.shape, generator=generator, dtype=torch.float64))
                synapse.weight.mul_(0.5 / torch.linalg.matrix_norm(synapse.weight, 2))
        return net
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    net.double()
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.5)
    return net


def good_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(7, 6, generator=generator, dtype=torch.float64), torch.randint(3, (7,), generator=generator)


def with_entry(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[4] = value
    return tensor


# (what is wrong, how to make it from a good batch, what the message must say)
MALFORMED = [
    ("negative label", lambda x, y: (x, with_entry(y, -1)), "label -1 in y is out of range"),
    ("label = n_classes", lambda x, y: (x, with_entry(y, 3)), "label 3 in y is out of range: the network has 3"),
    ("float labels", lambda x, y: (x, y.double()), "labels y must be int64"),
    ("int32 labels", lambda x, y: (x, y.int()), "labels y must be int64"),
    ("2-D labels", lambda x, y: (x, y[:, None]), "labels y must be 1-D, shape (B,), not (7, 1)"),
    ("one-hot labels", lambda x, y: (x, torch.eye(3, dtype=torch.int64)[y]), "labels y must be 1-D"),
    ("mismatched lengths", lambda x, y: (x, y[:5]), "input x has 7 examples but labels y has 5"),
    ("empty batch", lambda x, y: (x[:0], y[:0]), "empty batch"),
    ("no batch dimension", lambda x, y: (x[0], y[:1]), "input x of shape (6,) has no batch dimension"),
    ("28x28 into a 6-input net", lambda x, y: (torch.rand(7, 28, 28, dtype=torch.float64), y),
     "input x of shape (7, 28, 28) does not fit the network"),
    ("float32 x, float64 net", lambda x, y: (x.float(), y), "input x is torch.float32 but the network computes in "
     "torch.float64"),
    ("integer x", lambda x, y: (x.long(), y), "input x is torch.int64"),
    ("x on another device", lambda x, y: (x.to("meta"), y.to("meta")), "input x is on meta but the network is on cpu"),
    ("labels on another device", lambda x, y: (x, y.to("meta")), "labels y are on meta but input x is on cpu"),
    ("NaN in x", lambda x, y: (with_entry(x, math.nan), y), "input x has non-finite entries"),
    ("inf in x", lambda x, y: (with_entry(x, -math.inf), y), "input x has non-finite entries"),
    ("x a list", lambda x, y: (x.tolist(), y), "input x must be a torch.Tensor"),
    ("y a list", lambda x, y: (x, y.tolist()), "labels y must be a torch.Tensor"),
]  # fmt: skip


@pytest.mark.parametrize("what, make, says", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("name", RULES)
def test_malformed_batch_is_one_error_before_any_work(name: str, what: str, make, says: str) -> None:
    """Each entry point refuses the batch with a one-line BioPropError (not a DivergenceError: no setting is to
    blame) that says what is wrong; the rule's computation is never entered, and nothing is written: no .grad,
    no rule state, not the input."""
    net = network(name)
    rule = rules.create(name, net)
    x, y = make(*good_batch())
    x_before = x.clone() if isinstance(x, torch.Tensor) else list(x)
    state = {key: value.clone() for key, value in rule.state_dict().items()}

    def no_work(*args):
        raise AssertionError("the rule started working on a malformed batch")

    rule.update = rule.train_update = rule.reference = no_work
    for entry in (rule.grads, rule.backward, rule.reference_grads):
        with pytest.raises(BioPropError) as info:
            entry(x, y)
        assert type(info.value) is BioPropError and info.value.exit_code == 2
        assert says in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(value, rule.state_dict()[key]) for key, value in state.items())
    if isinstance(x, torch.Tensor) and x.device.type != "meta":
        torch.testing.assert_close(x, x_before, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", RULES)
def test_a_good_batch_passes_the_checks_and_a_changed_shape_is_checked_again(name: str) -> None:
    """The checks cache their one-example run per input shape; a batch of another size reuses it, a network made
    float32 afterwards is checked again (a float64 batch is then refused, a float32 one accepted)."""
    net = network(name)
    rule = rules.create(name, net, **({"max_steps": 1000} if name == "dendritic" else {}))  # settles in ~300
    x, y = good_batch()
    loss, prediction = rule.backward(x, y)
    assert math.isfinite(float(loss)) and prediction.shape == (7, 3)
    rule.grads(x[:3], y[:3])
    net.float()
    with pytest.raises(BioPropError, match="input x is torch.float64 but the network computes in torch.float32"):
        rule.grads(x, y)
    update = rule.grads(x.float(), y).grads
    assert all(g.dtype == torch.float32 for g in update.values())


# ---------------------------------------------------------------------------------------------------------------
# A NaN weight is named, never blamed on a setting
# ---------------------------------------------------------------------------------------------------------------


def mentions_a_setting(message: str, rule: rules.Rule) -> str | None:
    for word in [*rule.options, "lr", "learning rate"]:
        if re.search(rf"\b{re.escape(word)}\b", message):
            return word
    return None


@pytest.mark.parametrize("name", RULES)
def test_a_nan_weight_is_named_and_no_setting_is_blamed(name: str) -> None:
    """A NaN written into one weight must surface as a DivergenceError naming that parameter, before pc blames γ,
    dendritic dt, ep its free phase, or fa trains on silently."""
    net = network(name)
    rule = rules.create(name, net)
    target = "synapses.1.weight" if name in ENERGY_RULES else "3.weight"
    with torch.no_grad():
        dict(net.named_parameters())[target][1, 2] = math.nan
    x, y = good_batch()
    for entry in (rule.backward, rule.grads):
        with pytest.raises(DivergenceError) as info:
            entry(x, y)
        message = str(info.value)
        assert f"parameter {target!r} has non-finite entries" in message and "\n" not in message
        assert mentions_a_setting(message, rule) is None, message


@pytest.mark.parametrize("name, state_key", [("fa", "feedback.3"), ("frsf", "feedback.5"), ("microcircuit", "w_pi.0")])
def test_a_nan_in_the_rules_own_state_is_named(name: str, state_key: str) -> None:
    """The rule's own tensors (feedback weights, interneuron synapses) are checked too: the microcircuit's settling
    fails and names the synapse; the FA family's loss stays finite (B acts after the forward pass), so the trainer,
    finding a non-finite update, asks ``blame_nonfinite`` which names it."""
    net = network(name)
    rule = rules.create(name, net)
    state = rule.state_dict()
    state[state_key] = state[state_key].clone()
    state[state_key].view(-1)[0] = math.nan
    rule.load_state_dict(state)
    x, y = good_batch()
    says = f"its own state tensor {state_key!r} has non-finite entries"
    if name == "microcircuit":
        with pytest.raises(DivergenceError, match=says):
            rule.backward(x, y)
    else:
        update = rule.grads(x, y).grads
        assert not all(bool(torch.isfinite(g).all()) for g in update.values())
        with pytest.raises(DivergenceError, match=says):
            rule.blame_nonfinite(x)
    rule.load_state_dict(rules.create(name, net).state_dict())
    rule.blame_nonfinite(x)  # nothing non-finite: returns


# ---------------------------------------------------------------------------------------------------------------
# Options: finite numbers, bounded step budgets
# ---------------------------------------------------------------------------------------------------------------


def options_with(attribute: str) -> list[tuple[str, str]]:
    return [(name, key) for name in RULES for key, option in rules.entry(name).cls.options.items()
            if getattr(option, attribute) is not None and key not in rules.entry(name).presets]  # fmt: skip


BOUNDED = options_with("maximum")
FLOATS = [(name, key) for name in RULES for key, option in rules.entry(name).cls.options.items()
          if (option.type or type(option.default)) is float and key not in rules.entry(name).presets]  # fmt: skip


def test_every_step_budget_is_bounded() -> None:
    """Inner loops that could run for hours without output (issue: ``steps=1000000000`` hung pc) have a maximum."""
    expected = {("pc", "steps"), ("ipc", "steps"), ("dendritic", "max_steps"), ("microcircuit", "sweeps"),
                ("microcircuit", "steps"), ("microcircuit", "prepare_steps"), ("microcircuit", "prepare_batch"),
                ("ep", "free_steps"), ("ep", "nudged_steps"), ("chl", "free_steps"), ("chl", "clamped_steps"),
                ("generec", "free_steps"), ("generec", "clamped_steps")}  # fmt: skip
    assert expected <= set(BOUNDED)


@pytest.mark.parametrize("name, key", BOUNDED)
def test_a_step_budget_above_its_maximum_is_one_line_naming_option_value_and_maximum(name: str, key: str) -> None:
    option = rules.entry(name).cls.options[key]
    net = network(name)
    rules.create(name, net, **{key: str(option.maximum)})  # the maximum itself is allowed
    with pytest.raises(BioPropError) as info:
        rules.create(name, net, **{key: str(option.maximum + 1)})
    assert str(info.value) == f"rule {name}: option {key}='{option.maximum + 1}' is above its maximum, {option.maximum}"
    assert f"at most {option.maximum}" in option.help  # documented where `bioprop rules NAME` shows it


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", math.nan, math.inf])
@pytest.mark.parametrize("name, key", FLOATS)
def test_float_options_must_be_finite(name: str, key: str, value) -> None:
    with pytest.raises(BioPropError) as info:
        rules.create(name, network(name), **{key: value})
    assert f"option {key}=" in str(info.value) and "must be a finite number" in str(info.value)


@pytest.mark.parametrize(
    "key, value, says",
    [("steps", 2.5, "is not a valid int"), ("steps", True, "is not a valid int"), ("gamma", "abc", "not a valid float"),
     ("gamma", [0.1], "not a valid float"), ("compile", 1, "not a valid bool"), ("steps", -1, "must be 0 or more")],
)  # fmt: skip
def test_option_values_of_the_wrong_type_are_refused(key: str, value, says: str) -> None:
    """The Python API passes values as they are (YAML too): a float where an int is wanted is refused unless it is
    integral, a bool is not a number; strings are parsed."""
    with pytest.raises(BioPropError, match=says):
        rules.create("pc", network("pc"), **{key: value})
    opts = rules.create("pc", network("pc"), steps=5.0, gamma=1).opts
    assert opts.steps == 5 and type(opts.steps) is int
    assert opts.gamma == 1.0 and type(opts.gamma) is float


# ---------------------------------------------------------------------------------------------------------------
# Diagnoses name what the user set, and never claim an option is not the cause
# ---------------------------------------------------------------------------------------------------------------


def test_given_options_are_what_create_was_passed_parsed_without_presets_or_defaults() -> None:
    """``pc-fpa`` fixes gamma=1 and predictions=fixed by its name (presets): they are not the user's; strings are
    parsed as they are for ``--rule-opt``."""
    rule = rules.create("pc-fpa", network("pc-fpa"), steps="3", output="se")
    assert rule.given_options() == {"steps": 3, "output": "se"}
    assert rules.create("fa", network("fa")).given_options() == {}
    given = rules.create("fa", network("fa"), scale=1e30, init="xavier")
    assert given.given_options() == {"scale": 1e30, "init": "xavier"}
    given.given_options()["scale"] = 1.0  # a copy: the rule's record does not change
    assert given.given_options()["scale"] == 1e30
    assert given.describe_given() == "scale=1e+30 (default 1)"  # init=xavier is the default: no suspect


@pytest.mark.parametrize("name", ["fa", "pc", "microcircuit", "ep"])
def test_a_nan_weight_with_options_given_lists_them_and_claims_nothing_about_them(name: str) -> None:
    """The rule (issue 9): non-finite parameters are named first, and a message never makes a false claim: an
    option the user set may well be why the weight became NaN in an earlier step, so it is listed as a suspect,
    never cleared ("no option ... is the cause")."""
    option = {"fa": ("scale", 1e30), "pc": ("beta", 7.0), "microcircuit": ("init_scale", 5.0), "ep": ("eps", 0.5)}
    key, value = option[name]
    net = network(name)
    rule = rules.create(name, net, **{key: value})
    target = "synapses.1.weight" if name in ENERGY_RULES else "3.weight"
    with torch.no_grad():
        dict(net.named_parameters())[target][1, 2] = math.nan
    with pytest.raises(DivergenceError) as info:
        rule.backward(*good_batch())
    message = str(info.value)
    assert f"parameter {target!r} has non-finite entries" in message and "\n" not in message
    default = rules.entry(name).cls.options[key].default
    assert f"suspects, first the options you set: {key}={value:g} (default {default:g})" in message, message
    assert "cause" not in message, message
