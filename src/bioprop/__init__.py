"""bioprop: biologically plausible alternatives to backpropagation under one API.

import bioprop
net = bioprop.nets.build("mlp:256", in_shape=(1, 28, 28), n_classes=10)
rule = bioprop.rules.create("fa", net)
loss, prediction = rule.backward(x, y)   # fills p.grad with the rule's descent direction
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bioprop.errors import BioPropError, DivergenceError

try:
    __version__ = version("bioprop")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["BioPropError", "DivergenceError", "__version__", "nets", "rules"]


def __getattr__(name: str) -> Any:
    """``bioprop.nets`` and ``bioprop.rules`` are imported on first use (PEP 562): ``import bioprop`` does not load
    torch, so the command line can answer Ctrl-C while torch loads (:mod:`bioprop.__main__`)."""
    if name in ("nets", "rules"):
        return importlib.import_module(f"bioprop.{name}")
    raise AttributeError(f"module 'bioprop' has no attribute {name!r}")
