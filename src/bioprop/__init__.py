"""bioprop: biologically plausible alternatives to backpropagation under one API.

import bioprop
net = bioprop.nets.build("mlp:256", in_shape=(1, 28, 28), n_classes=10)
rule = bioprop.rules.create("fa", net)
loss, prediction = rule.backward(x, y)   # fills p.grad with the rule's descent direction
"""

from importlib.metadata import PackageNotFoundError, version

from bioprop import nets, rules
from bioprop.errors import BioPropError, DivergenceError

try:
    __version__ = version("bioprop")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["BioPropError", "DivergenceError", "__version__", "nets", "rules"]
