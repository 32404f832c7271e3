"""Every rule on a CUDA GPU computes what it computes on the CPU: in float64, ``rule.grads``,
``rule.reference_grads`` and a training step's ``.grad`` (``rule.backward``) on a GPU equal the CPU's to a relative
error of 1e-9 per tensor (float64 rounding differs between the devices' kernels by ~1e-16 per operation; the
iterative rules run tens of steps, so 1e-9 leaves room for that and for nothing else), and every tensor of the GPU
result lies on the GPU (a rule that moved its work to the CPU would otherwise pass).

The grid: every registered rule (``bioprop.rules.names()``) × four small networks (``mlp:16`` and ``ebm:16`` on 12
inputs, ``lenet`` on 1×28×28, ``ebm-conv:2x2`` on 1×16×16; 5 classes, batch 8), the cells the rule accepts at
``rules.create`` (a CPU test below checks that every rule accepts at least one), with the rule's default options;
then option variants that take other code paths (one-sided and random-sign nudging, a softmax readout,
persistent particles, dynamic microcircuit with noise, Z-IL, ...). Feedforward nets use the rule's declared
activation (``Rule.activation``, else relu), energy nets the hard sigmoid. Both devices start from the same
float64 weights (built on the CPU, then moved), the same batch and the same global random state; rules draw their
own randomness from CPU generators they own, so the draws agree. A batch on which the CPU run diverges must
diverge on the GPU too (the same error class).

The GPU tests are marked ``cuda`` and skip where ``torch.cuda.is_available()`` is false (tests/conftest.py);
``benchmarks/gpu_check.py`` runs them on a GPU machine. The CPU tests here check the grid itself: every rule is
covered, and the CPU side is reproducible (two fresh instances give bit-identical results), without which the
comparison would mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from bioprop import nets, rules
from bioprop.errors import BioPropError, DivergenceError

N_CLASSES, BATCH = 5, 8
RTOL = 1e-9


@dataclass(frozen=True)
class Net:
    arch: str
    shape: tuple[int, ...]

    @property
    def energy(self) -> bool:
        return self.arch.startswith("ebm")

    @property
    def sequence(self) -> bool:
        """A recurrent net: its batches are time-major spike trains (T, B, C) with labels in the last half."""
        return self.arch.partition(":")[0] in ("lsnn", "rnn", "sab")


NETS = (Net("mlp:16", (12,)), Net("ebm:16", (12,)), Net("lenet", (1, 28, 28)), Net("ebm-conv:2x2", (1, 16, 16)),
        Net("lsnn:4+4", (20, 6)), Net("rnn:6", (20, 6)), Net("sab:6:k_top=2,k_att=2", (20, 6)))  # fmt: skip

#: Options that take other code paths than the defaults, on the first net the rule accepts unless one is named.
#: (``ipc`` with its defaults diverges on LeNet with these inputs, on both devices; a smaller inner weight step
#: lets its update be compared there too.)
VARIANTS: list[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str]] = [
    ("stdp", {"spikes": "rate"}),  # Bernoulli spikes: CUDA's generator draws other numbers than the CPU's
    ("dtp", {"pretrain_batches": 0}),
    ("ddtp", {"pretrain_batches": 0, "feedback_activation": "tanh"}),
    ("ep", {"nudge": "one-sided"}),
    ("ep", {"nudge": "random-sign"}),
    ("ep", {"output": "se"}),
    ("ep", {"persistent": True}),
    ("generec", {"midpoint": True, "symmetric": True}),
    ("fa", {"init": "kaiming"}),
    ("microcircuit", {"mode": "dynamic", "noise": 0.05}),
    ("microcircuit", {"feedback": "learned"}),
    ("dendritic", {"output": "se"}),
    ("pc", {"update_at": "zil", "gamma": 1.0}),
    ("pc", {"nudge": "centred", "output": "se"}),
    ("pc", {"predictions": "fixed"}),
    ("ipc", {"weight_lr": 1e-4}, "lenet"),
    ("eprop", {"feedback": "random"}),
    ("eprop", {"feedback": "adaptive", "rate_reg": 0.01}),
    ("eprop", {"route": "autodiff"}),
    ("tbptt", {"truncation": 5}),
]


def activation(rule: str, net: Net) -> str:
    """The hidden activation of the cell: the hard sigmoid on energy nets, else the rule's declared one or relu."""
    if net.energy:
        return "hard_sigmoid"
    return getattr(rules.entry(rule).cls, "activation", None) or "relu"


def build(rule: str, net: Net) -> torch.nn.Module:
    """The cell's network in float64 on the CPU, from seed 0 (the same weights for every device)."""
    torch.manual_seed(0)
    return nets.build(net.arch, net.shape, N_CLASSES, activation(rule, net)).double()


def accepts(rule: str, net: Net, options: dict[str, Any] | None = None) -> bool:
    try:
        rules.create(rule, build(rule, net), **(options or {}))
    except BioPropError:
        return False
    return True


def first_net(rule: str) -> Net:
    return next(net for net in NETS if accepts(rule, net))


#: The cells of the grid: every (rule, net) that ``rules.create`` accepts.
CELLS = [(rule, net) for rule in rules.names() for net in NETS if accepts(rule, net)]
#: The rules whose feedback matrices must follow the net to another device (feedback_alignment's docstring).
FEEDBACK_ALIGNMENT = [r for r in rules.names() if getattr(rules.entry(r), "family", "") == "feedback alignment"]


def variant_net(variant: tuple) -> Net:
    """The net of a VARIANTS entry: the one it names, else the rule's first."""
    return next(net for net in NETS if net.arch == variant[2]) if len(variant) > 2 else first_net(variant[0])


@dataclass
class Outcome:
    """What a rule computed on one device, moved to the CPU; ``error`` names the divergence it raised instead."""

    error: str | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # "grads/NAME", "reference/NAME", "step/NAME"...
    devices: set[str] = field(default_factory=set)  # device types of every tensor the rule returned


def outcome(rule: str, net: Net, device: str, options: dict[str, Any] | None = None) -> Outcome:
    """Build the cell on the CPU, move it to ``device``, create the rule there and run ``grads``,
    ``reference_grads`` and one ``backward``; everything they return (and the ``.grad`` the step wrote) on the CPU."""
    model = build(rule, net).to(device)
    learner = rules.create(rule, model, **(options or {}))
    x, y = batch(net)
    x, y = x.to(device), y.to(device)
    torch.manual_seed(2)  # the same global state on both devices, should a rule draw from it
    result = Outcome()

    def keep(prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            result.devices.add(tensor.device.type)
            result.tensors[f"{prefix}/{name}"] = tensor.detach().cpu()

    try:
        update = learner.grads(x, y)
        keep("grads", update.grads)
        keep("output", {"loss": update.loss, "prediction": update.prediction})
        keep("reference", learner.reference_grads(x, y))
        loss, prediction = learner.backward(x, y)
    except DivergenceError as exc:
        return Outcome(error=type(exc).__name__)
    keep("step", {"loss": loss, "prediction": prediction})
    keep("step", {name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    return result


def batch(net: Net) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's batch on the CPU: uniform inputs and labels, or for a recurrent net spike trains (T, B, C) and
    labels (T, B) in the last half of the steps (−1 before)."""
    gen = torch.Generator().manual_seed(1)
    if net.sequence:
        steps, channels = net.shape
        x = (torch.rand((steps, BATCH, channels), generator=gen) < 0.3).double()
        y = torch.randint(0, N_CLASSES, (BATCH,), generator=gen).expand(steps, BATCH).clone()
        y[: steps // 2] = -1
        return x, y
    x = torch.rand((BATCH, *net.shape), generator=gen, dtype=torch.float64)
    return x, torch.randint(0, N_CLASSES, (BATCH,), generator=gen)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """‖got − expected‖ / ‖expected‖ (the absolute error where expected is zero)."""
    scale = expected.norm()
    diff = (got - expected).norm()
    return float(diff / scale) if scale > 0 else float(diff)


def assert_same(cuda: Outcome, cpu: Outcome) -> None:
    assert cuda.error == cpu.error, f"CPU: {cpu.error or 'no error'}; CUDA: {cuda.error or 'no error'}"
    if cpu.error is not None:
        return
    assert cuda.devices == {"cuda"}, f"tensors returned on {sorted(cuda.devices)}"
    assert cuda.tensors.keys() == cpu.tensors.keys()
    for key, expected in cpu.tensors.items():
        got = cuda.tensors[key]
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape), key
        error = relative_error(got, expected)
        assert error <= RTOL, f"{key}: relative error {error:.2e} between CUDA and the CPU"


def cell_id(value: object) -> str:
    return value.arch if isinstance(value, Net) else str(value)


# ------------------------------------------------------------------------------------------------ CPU checks


def test_every_rule_is_checked_on_some_net() -> None:
    """The CUDA grid covers every registered rule: each accepts at least one of its nets, and each variant's
    options are accepted on the rule's first net (a renamed option must not silently drop a variant)."""
    uncovered = set(rules.names()) - {rule for rule, _ in CELLS}
    assert uncovered == set()
    assert len(FEEDBACK_ALIGNMENT) >= 5, FEEDBACK_ALIGNMENT  # fa, dfa, usf, brsf, frsf
    refused = [variant for variant in VARIANTS if not accepts(variant[0], variant_net(variant), variant[1])]
    assert refused == []


@pytest.mark.parametrize("rule", rules.names())
def test_the_cpu_side_is_reproducible(rule: str) -> None:
    """Two fresh instances on the CPU give bit-identical results, whatever the global random state before: the
    reference the GPU is held to is well defined."""
    net = first_net(rule)
    first = outcome(rule, net, "cpu")
    torch.manual_seed(12345)
    torch.rand(7)
    second = outcome(rule, net, "cpu")
    assert first.error == second.error
    assert first.tensors.keys() == second.tensors.keys()
    assert any(key.startswith("grads/") for key in first.tensors) or first.error is not None
    for key, tensor in first.tensors.items():
        assert torch.equal(tensor, second.tensors[key]), key


# ------------------------------------------------------------------------------------------------ GPU checks


@pytest.mark.cuda
@pytest.mark.parametrize(("rule", "net"), CELLS, ids=cell_id)
def test_cuda_matches_cpu_in_float64(rule: str, net: Net) -> None:
    assert_same(outcome(rule, net, "cuda"), outcome(rule, net, "cpu"))


def variant_id(variant: tuple) -> str:
    options = ",".join(f"{key}={value}" for key, value in variant[1].items())
    return "-".join([variant[0], options, *variant[2:]])


@pytest.mark.cuda
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_cuda_matches_cpu_with_other_options(variant: tuple) -> None:
    rule, options, net = variant[0], variant[1], variant_net(variant)
    assert_same(outcome(rule, net, "cuda", options), outcome(rule, net, "cpu", options))


@pytest.mark.cuda
@pytest.mark.parametrize("rule", FEEDBACK_ALIGNMENT)
def test_feedback_follows_the_net_to_cuda(rule: str) -> None:
    """feedback_alignment's docstring: B follows the network when it changes device after ``create``."""
    net = first_net(rule)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((BATCH, *net.shape), generator=gen, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (BATCH,), generator=gen)
    expected = rules.create(rule, build(rule, net)).grads(x, y).grads
    model = build(rule, net)
    learner = rules.create(rule, model)  # bound on the CPU, then the net moves
    model.cuda()
    got = learner.grads(x.cuda(), y.cuda()).grads
    for name, tensor in expected.items():
        assert got[name].is_cuda, name
        assert relative_error(got[name].cpu(), tensor) <= RTOL, name
