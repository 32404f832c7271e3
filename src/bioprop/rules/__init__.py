"""Learning rules under one contract; see :mod:`bioprop.rules.base`.

rule = bioprop.rules.create("fa", net, init="xavier")
loss, prediction = rule.backward(x, y)      # p.grad now holds the rule's descent direction
exact = rule.reference_grads(x, y)          # what the rule approximates, keyed like net.named_parameters()
"""

from bioprop.rules import (  # noqa: F401  (registration)
    backprop,
    contrastive,
    dendritic,
    feedback_alignment,
    predictive_coding,
)
from bioprop.rules.base import IMPLAUSIBILITIES, CardEntry, Entry, Option, Rule, Update, create, entry, names

__all__ = ["IMPLAUSIBILITIES", "CardEntry", "Entry", "Option", "Rule", "Update", "create", "entry", "names"]
