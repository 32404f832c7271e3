"""Learning rules under one contract, written down in ``docs/contract.md`` (and :mod:`bioprop.rules.base`).

rule = bioprop.rules.create("fa", net, init="xavier")
update = rule.grads(x, y)                   # pure: the same batch gives the same update, no state changes
loss, prediction = rule.backward(x, y)      # p.grad now holds the rule's descent direction; state advances here
exact = rule.reference_grads(x, y)          # what the rule approximates, keyed like net.named_parameters()
logits = rule.predict(x)                    # the one prediction path evaluation uses
"""

# Registration order is the order `bioprop rules` lists them: backprop, then family by family.
from bioprop.rules import (  # noqa: F401, I001  (registration)
    backprop,
    equilibrium,
    hebbian,
    stdp,
    feedback_alignment,
    dendritic,
    microcircuit,
    predictive_coding,
    target_prop,
    bptt,
    eprop,
    rflo,
    rtrl,
    sab,
)
from bioprop.rules.base import IMPLAUSIBILITIES, CardEntry, Entry, Option, Options, Rule, Update
from bioprop.rules.registry import create, entry, names

__all__ = ["IMPLAUSIBILITIES", "CardEntry", "Entry", "Option", "Options", "Rule", "Update", "create", "entry", "names"]
