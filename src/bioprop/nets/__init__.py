"""Network definitions. Every network is an ``nn.Module`` whose ``net(x)`` returns its prediction (logits).

Feedforward networks are built from a spec string by :func:`build`:

- ``mlp:256x256``: a multilayer perceptron with those hidden sizes (``mlp`` or ``mlp:`` alone is a linear
  classifier); the activation is an option (``tanh``, ``relu``, ``sigmoid``, ``gelu``, ...).
- ``mlp:256x256:lateral``: the same with learned lateral inhibition on every hidden layer (Földiák 1990; settings
  as ``mlp:256:lateral:steps=50,damping=0.5``): :mod:`bioprop.nets.lateral`. Only ``bp`` trains it.
- ``ebm:500``, ``ebm:256x256``, ``ebm-conv``: energy-based networks with symmetric connections that relax to a
  fixed point (:mod:`bioprop.nets.energy`), trained by the contrastive rules ``ep``, ``chl``, ``generec`` (or by
  ``bp``, which is then backprop through time over the relaxation); their activation is bounded (default
  ``hard_sigmoid``).
- ``lif:N``, ``alif:N``, ``lsnn:N+M`` (spiking) and ``rnn:N`` (rate): recurrent networks for sequences
  (:mod:`bioprop.nets.recurrent`); ``lsnn:50+50:lateral`` (any spiking one) adds learned lateral inhibition, an
  anti-Hebbian rule on spike counts (settings ``:lateral:rate=R,p=P,decay=L``; :mod:`bioprop.nets.lateral`).
- ``lenet``: the LeNet-5 of BioTorch's Fashion-MNIST benchmark (conv 6-16-120 with 5x5 kernels, ReLU, 2x2
  max-pooling, fully connected 120-84-10 with no activation between the two linear layers, as there). BioTorch
  resizes 28x28 images to 32x32; here the first convolution pads by 2 instead, which gives the same shapes and
  parameter count.

A user's own ``nn.Sequential`` of Linear / Conv2d / pooling / Flatten / Dropout / activation modules works too: the
learning rules walk its layers with :func:`walk`, which refuses, naming the layer, anything they cannot differentiate.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

from torch import nn

from bioprop.errors import BioPropError
from bioprop.nets import attention, lateral, recurrent
from bioprop.nets.energy import EnergyNet
from bioprop.nets.recurrent import RecurrentNet


class HardSigmoid(nn.Hardtanh):
    """clip(x, 0, 1), the hard sigmoid of the energy-based networks (torch's ``nn.Hardsigmoid`` is x/6 + ½ clipped)."""

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "hard_sigmoid": HardSigmoid,
    "hard_tanh": nn.Hardtanh,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}

ARCHS = {
    "mlp:H1xH2...": "multilayer perceptron with the given hidden sizes, e.g. mlp:256x256",
    **lateral.SPECS,
    "ebm:H1xH2...": "energy-based network (symmetric weights, relaxes to a fixed point)",
    "ebm-conv[:C1xC2[:H1x...]]": "convolutional energy-based network (default ebm-conv:32x64)",
    "lenet": "LeNet-5 of BioTorch's Fashion-MNIST benchmark (conv 6-16-120, fc 84-10)",
    **recurrent.SPECS,
    **lateral.SPIKING_SPECS,
    **attention.SPECS,
}

# Layers the rules know how to walk. Parameterless ones are differentiated exactly (they carry no weights, so no
# weight transport question arises); parameterised ones are where the rules differ.
PARAMETERISED = (nn.Linear, nn.Conv2d)
PARAMETERLESS = (
    nn.Flatten,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Identity,
    nn.Dropout,
    *[cls for cls in ACTIVATIONS.values() if cls is not nn.Identity],
)


#: The nonlinearity each recurrent arch fixes in its cell (``--activation`` does not apply): tanh rate units, spikes.
RECURRENT_NONLINEARITY = {"rnn": "tanh", "sab": "tanh", **dict.fromkeys(("lif", "alif", "lsnn"), "spike")}


def fixed_nonlinearity(spec: str) -> str | None:
    """``tanh`` or ``spike`` for a recurrent arch spec (its cell's own nonlinearity), else None."""
    return RECURRENT_NONLINEARITY.get(spec.strip().lower().partition(":")[0])


def default_activation(spec: str) -> str:
    """The activation ``auto`` stands for: hard_sigmoid for energy-based networks, relu otherwise."""
    return "hard_sigmoid" if spec.strip().lower().startswith("ebm") else "relu"


def activation(name: str) -> nn.Module:
    """The activation module called ``name``; unknown names are a :class:`BioPropError` listing the known ones."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise BioPropError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def mlp(in_features: int, hidden: Sequence[int], n_classes: int, act: str = "relu") -> nn.Sequential:
    """Flatten, then Linear-act pairs of the given hidden sizes, then a Linear readout."""
    sizes = [in_features, *hidden]
    modules: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        modules += [nn.Linear(fan_in, fan_out), activation(act)]
    modules.append(nn.Linear(sizes[-1], n_classes))
    return nn.Sequential(*modules)


def lenet(in_shape: Sequence[int], n_classes: int, act: str = "relu") -> nn.Sequential:
    """LeNet-5 as in BioTorch's Fashion-MNIST benchmark; see the module docstring. Its first feature maps are 28x28
    (LeCun et al. 1998, layer C1): from 32x32 inputs, or from 28x28 ones its first convolution pads by 2. Any other
    size is a :class:`BioPropError`, not padded or cut into shape."""
    channels, height, width = in_shape
    if (height, width) not in ((28, 28), (32, 32)):
        raise BioPropError(f"arch 'lenet' needs 28x28 or 32x32 images, got {channels}x{height}x{width}; use an "
                           "mlp:H1x... arch")  # fmt: skip
    pad = (32 - height) // 2
    net = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=pad), activation(act), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), activation(act), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, 5), activation(act),
        nn.Flatten(),
        nn.Linear(120, 84),
        nn.Linear(84, n_classes),
    )  # fmt: skip
    return net


def _sizes(body: str, spec: str, example: str, what: str = "hidden sizes") -> list[int]:
    try:
        sizes = [int(size) for size in body.split("x")] if body else []
    except ValueError:
        raise BioPropError(f"bad arch {spec!r}: {what} must be integers, e.g. {example}") from None
    if any(size <= 0 for size in sizes):
        raise BioPropError(f"bad arch {spec!r}: {what} must be positive")
    return sizes


def build(spec: str, in_shape: Sequence[int], n_classes: int, act: str = "auto") -> nn.Module:
    """Build the network named by ``spec`` (see the module docstring) for inputs of shape ``in_shape`` (C, H, W)
    or (features,) (a recurrent network: (T, C)), positive integers, and ``n_classes`` outputs, at least 2 (a
    classifier of one class has nothing to learn: its cross-entropy is 0 for any input; a recurrent network's
    readout may have 1, for regression); ``act="auto"`` picks :func:`default_activation`.
    Raises :class:`BioPropError` for an unknown spec or activation and for an invalid ``in_shape`` or
    ``n_classes``, before anything is built."""
    check_build_args(spec, in_shape, n_classes, act)
    in_shape, n_classes = tuple(int(size) for size in in_shape), int(n_classes)
    spec = spec.strip().lower()
    act = default_activation(spec) if act == "auto" else act
    if spec == "lenet":
        if len(in_shape) != 3:
            raise BioPropError("lenet needs image inputs (C, H, W)")
        return lenet(in_shape, n_classes, act)
    if spec == "mlp" or spec.startswith("mlp:"):
        body, colon, suffix = spec[4:].partition(":")  # mlp:H1x...[:lateral[:key=value,...]]
        net = mlp(math.prod(in_shape), _sizes(body, spec, "mlp:256x256"), n_classes, act)
        return lateral.from_suffix(net, suffix, spec) if colon else net
    if spec.startswith("ebm:"):
        return EnergyNet((math.prod(in_shape),), _sizes(spec[4:], spec, "ebm:500"), n_classes, act)
    if spec == "ebm-conv" or spec.startswith("ebm-conv:"):
        parts = spec.split(":")[1:]
        if len(parts) > 2:
            raise BioPropError(f"bad arch {spec!r}: use ebm-conv:C1xC2 or ebm-conv:C1xC2:H1xH2")
        channels = _sizes(parts[0], spec, "ebm-conv:32x64", "channel counts") if parts else [32, 64]
        if not channels:
            raise BioPropError(f"bad arch {spec!r}: give at least one conv layer, e.g. ebm-conv:32x64")
        if len(in_shape) != 3:
            raise BioPropError("ebm-conv needs image inputs (C, H, W)")
        hidden = _sizes(parts[1], spec, "ebm-conv:32x64:256") if len(parts) > 1 else []
        return EnergyNet(in_shape, hidden, n_classes, act, channels=channels)
    if spec.partition(":")[0] in recurrent.KINDS:
        return recurrent.from_spec(spec, in_shape, n_classes)
    if spec.partition(":")[0] == "sab":
        if spec.split(":")[2:3] and spec.split(":")[2].startswith("lateral"):  # sab:N:lateral[:...]
            raise BioPropError(f"bad arch {spec!r}: lateral inhibition is for the spiking networks (lif:N:lateral, "
                               "alif:N:lateral, lsnn:N+M:lateral) and mlp:H:lateral, not sab:N")  # fmt: skip
        return attention.from_spec(spec, in_shape, n_classes)
    raise BioPropError(f"unknown arch {spec!r}; known: mlp:H1xH2... (e.g. mlp:256x256), lenet, ebm:H1x..., ebm-conv, "
                       "and for sequences rnn:N, lif:N, alif:N, lsnn:N+M, sab:N")  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_build_args(spec: object, in_shape: object, n_classes: object, act: object) -> None:
    """:func:`build`'s argument checks: a :class:`BioPropError` naming the first bad one."""
    for name, value in (("spec", spec), ("act", act)):
        if not isinstance(value, str):
            raise BioPropError(f"{name} must be a string, not {type(value).__name__}")
    if isinstance(in_shape, (str, bytes)) or not isinstance(in_shape, Sequence) or not in_shape:
        raise BioPropError(f"in_shape must be a non-empty sequence of positive integers, e.g. (1, 28, 28), "
                           f"not {in_shape!r}")  # fmt: skip
    if not all(_is_int(size) and size > 0 for size in in_shape):
        raise BioPropError(f"in_shape {tuple(in_shape)!r} must hold positive integers")
    fewest = 1 if fixed_nonlinearity(spec) else 2  # a recurrent readout may regress
    if not _is_int(n_classes) or n_classes < fewest:
        raise BioPropError(f"n_classes must be an integer of at least {fewest}, not {n_classes!r}")


class Layer(NamedTuple):
    """A layer of a walked network: its path in ``net.named_modules()`` (e.g. ``"3"`` or ``"1.0"``) and module."""

    path: str
    module: nn.Module


def walk(net: nn.Module, rule: str | None = None) -> list[Layer]:
    """The layers of ``net`` in forward order, nested ``nn.Sequential`` flattened, with their paths.

    Raises :class:`BioPropError` (prefixed ``rule NAME:`` when ``rule`` is given) if ``net`` is not an
    ``nn.Sequential`` stack of supported layers, naming the first layer that is not supported (by path and type):
    an unknown layer, a subclass that overrides ``forward``, a convolution with padding the transposed convolution
    cannot mirror, a pooling layer that returns indices; and if a parameter of ``net`` lies outside the Linear and
    Conv2d weights and biases the rules update (they would never train it). A module used at several positions
    (shared weights) appears at each; its parameters' updates add up over the positions.
    """
    who = f"rule {rule}: " if rule else ""
    if isinstance(net, EnergyNet):
        raise BioPropError(f"{who}an energy-based network (ebm:...) is not a stack of feedforward layers")
    if not isinstance(net, nn.Sequential) or type(net).forward is not nn.Sequential.forward:
        raise BioPropError(
            f"{who}the rules walk an nn.Sequential of layers; got {type(net).__name__}"
            f"{' (its own forward)' if isinstance(net, nn.Sequential) else ''}. Wrap your layers in nn.Sequential "
            "(bp trains any module)."
        )
    found: list[Layer] = []
    _walk_into(net, "", found, who)
    walked = {id(p) for _, m in found if isinstance(m, PARAMETERISED) for p in layer_parameters(m)}
    outside = next((name for name, p in net.named_parameters() if id(p) not in walked), None)
    if outside is not None:
        raise BioPropError(
            f"{who}parameter {outside!r} is not a weight or bias of a Linear or Conv2d layer the rule walks, so the "
            "rule would never update it; remove it (or train with bp)"
        )
    return found


def _walk_into(seq: nn.Sequential, prefix: str, found: list[Layer], who: str) -> None:
    for key, module in seq._modules.items():
        path = f"{prefix}{key}"
        kind = type(module).__name__
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            _walk_into(module, f"{path}.", found, who)
            continue
        base = next((cls for cls in PARAMETERISED + PARAMETERLESS if isinstance(module, cls)), None)
        if base is None:
            raise BioPropError(
                f"{who}layer {path} ({kind}) is not supported: the layer-wise rules walk Linear, Conv2d, pooling, "
                "Flatten, Dropout and activations (bp trains any module)"
            )
        if type(module).forward is not base.forward:
            raise BioPropError(f"{who}layer {path} ({kind}) overrides {base.__name__}.forward; the rule cannot walk it")
        if isinstance(module, nn.Conv2d) and (isinstance(module.padding, str) or module.padding_mode != "zeros"):
            raise BioPropError(
                f"{who}layer {path} (Conv2d) with padding={module.padding!r}, padding_mode={module.padding_mode!r} "
                "is not supported by the layer-wise rules; use integer zero padding"
            )
        if isinstance(module, nn.MaxPool2d) and module.return_indices:
            raise BioPropError(f"{who}layer {path} (MaxPool2d) returns indices; a stacked layer must return a tensor")
        found.append(Layer(path, module))


def layer_parameters(layer: nn.Module) -> list[nn.Parameter]:
    """A Linear or Conv2d layer's parameters in the order the rules return their updates: [weight] or [weight, bias]."""
    return [layer.weight] if layer.bias is None else [layer.weight, layer.bias]


def layers(net: nn.Module, rule: str | None = None) -> list[nn.Module]:
    """The modules of :func:`walk` (same checks and errors)."""
    return [layer.module for layer in walk(net, rule)]


def writes_input(net: nn.Module) -> bool:
    """Whether ``net(x)`` may overwrite ``x``: an ``nn.Sequential`` with an in-place layer (``inplace=True``) before
    its first Linear or Conv2d (Flatten and Identity pass ``x`` itself on). Other modules are trusted."""
    if not isinstance(net, nn.Sequential) or type(net).forward is not nn.Sequential.forward:
        return False
    for module in net:
        if isinstance(module, nn.Sequential):
            if writes_input(module):
                return True
            if any(isinstance(m, PARAMETERISED) for m in module.modules()):
                return False
        elif getattr(module, "inplace", False):
            return True
        elif isinstance(module, PARAMETERISED):
            return False
    return False


__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "HardSigmoid",
    "EnergyNet",
    "Layer",
    "RecurrentNet",
    "activation",
    "build",
    "default_activation",
    "layer_parameters",
    "layers",
    "lenet",
    "mlp",
    "walk",
    "writes_input",
]
