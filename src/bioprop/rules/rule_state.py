"""The rule's name in its state: :meth:`~bioprop.rules.base.Rule.state_dict` records it (:data:`STATE_NAME`) and
every ``load_state_dict`` of a rule refuses the state of another rule (:func:`refuses_other_rules`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from bioprop.errors import BioPropError

if TYPE_CHECKING:
    from bioprop.rules.base import Rule

#: The key of :meth:`Rule.state_dict` that names the rule (its registered name as UTF-8 bytes, a uint8 tensor):
#: :meth:`Rule.load_state_dict` refuses the state of another rule.
STATE_NAME = "rule_name"


def name_tensor(name: str) -> Tensor:
    """``name`` as the uint8 tensor of its UTF-8 bytes (state dicts and checkpoints hold tensors only)."""
    return torch.tensor(list(name.encode()), dtype=torch.uint8)


def tensor_name(tensor: Tensor) -> str:
    """The text :func:`name_tensor` wrote (bytes that are not UTF-8 replaced, so a damaged name still reads)."""
    return bytes(tensor.detach().cpu().reshape(-1).to(torch.uint8).tolist()).decode("utf-8", "replace")


def refuses_other_rules(load: Callable[[Any, dict[str, Tensor]], None]) -> Callable[[Any, dict[str, Tensor]], None]:
    """``load_state_dict`` that first takes the rule's name (:data:`STATE_NAME`) out of the state and refuses, in one
    line naming both and before anything changes, the state of another rule (``dtp``'s loaded into ``ddtp``: the
    same class, another rule); a state without the name (checkpoints written before it was recorded) is taken as
    it is. Applied by :class:`Rule` to every ``load_state_dict`` a rule class defines, so a subclass's own checks
    never see another rule's state."""

    @functools.wraps(load)
    def checked(self: Rule, state: dict[str, Tensor]) -> None:
        if STATE_NAME in state:
            state = dict(state)
            owner = tensor_name(state.pop(STATE_NAME))
            if owner != self.name:
                raise BioPropError(f"rule {self.name}: cannot load the state of rule {owner} (a checkpoint or "
                                   f"state_dict of another rule); create rule {owner} to use it")  # fmt: skip
        load(self, state)

    checked.refuses_other_rules = True  # type: ignore[attr-defined]
    return checked
