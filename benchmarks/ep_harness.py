"""Drives Laborieux et al.'s equilibrium-propagation code for ``speed_ep.py``: their modules, imported from a
checkout the user names; nothing of theirs is copied here.

Their code: https://github.com/Laborieux-Axel/Equilibrium-Propagation (Laborieux, Ernoult, Scellier, Bengio,
Querlioz, Grollier 2021, "Scaling equilibrium propagation to deep ConvNets by drastically reducing its gradient
estimator bias", Front. Neurosci. 15:633674), measured at commit 93660ed (9 March 2021)::

    git clone https://github.com/Laborieux-Axel/Equilibrium-Propagation /somewhere/laborieux-ep
    git -C /somewhere/laborieux-ep checkout 93660ed

What is used from their ``model_utils.py``: ``P_MLP(archi, activation)`` (``synapses``, a ``ModuleList`` of
``Linear`` layers; ``init_neurons(mbs, device)``; ``forward(x, y, neurons, T, beta, criterion)``, T steps of
s ← σ(∂Φ/∂s) by autograd on Φ; ``compute_syn_grads(x, y, neurons_1, neurons_2, betas, criterion)``, which writes
−(∂Φ/∂θ(s^β₁) − ∂Φ/∂θ(s^β₂))/(β₁ − β₂) into ``.grad``), their ``hard_sigmoid`` and their ``copy`` of the neuron
list. A training step (:class:`TheirEP`) calls these in the order the body of their ``train`` does with
``alg='EP'``, ``thirdphase=True``, betas (0, β) and the MSE criterion of their ``--loss mse`` (``MSELoss(
reduction='none')``): free phase from rest for T1 steps, a +β phase of T2 steps from the free state, then the −β
phase of T2 steps from a copy of the free state, ``compute_syn_grads`` between the +β and −β states, then the
optimizer step. Their running-accuracy bookkeeping is left out (our step has none either).

Their modules import torchvision (and matplotlib) at the top without using torchvision for the MLP; where
torchvision does not import (none is installed beside bioprop's CPU torch), an empty placeholder module stands in
while theirs load, and is removed again afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPOSITORY = "https://github.com/Laborieux-Axel/Equilibrium-Propagation"
COMMIT = "93660ed6c5b0ec07978b674a69c169ce32e8cd5f"
FETCH = f"git clone {REPOSITORY} PATH && git -C PATH checkout {COMMIT[:7]}"


class HarnessError(Exception):
    """Their code cannot be loaded or driven; the message is one line naming what is wrong."""


def commit_of(path: str | Path) -> str | None:
    """The commit checked out at ``path`` (full hash), or None when it is not a git checkout (e.g. an archive)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@contextlib.contextmanager
def _importable(path: Path) -> Iterator[None]:
    """``path`` first on sys.path, and a placeholder ``torchvision`` if the real one does not import."""
    placeholder = False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001  (missing, or built for another torch: either way unusable here)
        sys.modules["torchvision"] = types.ModuleType("torchvision")
        placeholder = True
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        if placeholder:
            sys.modules.pop("torchvision", None)


def load(path: str | Path) -> types.ModuleType:
    """Their ``model_utils`` module, imported from the checkout at ``path``.

    Raises :class:`HarnessError` when ``path`` is not a directory holding ``model_utils.py`` and ``data_utils.py``,
    or when importing them fails (the message carries the first line of the import error)."""
    root = Path(path).expanduser().resolve()
    missing = [name for name in ("model_utils.py", "data_utils.py") if not (root / name).is_file()]
    if not root.is_dir() or missing:
        raise HarnessError(
            f"{str(path)!r} is not a checkout of Laborieux et al.'s code (no {', '.join(missing) or 'directory'}); "
            f"get it with: {FETCH}"
        )
    if "model_utils" in sys.modules:  # already loaded (from this path, we check, or refuse)
        loaded = sys.modules["model_utils"]
        if Path(getattr(loaded, "__file__", "")).resolve().parent != root:
            raise HarnessError(f"another module named model_utils is already imported ({loaded.__file__})")
        return loaded
    with _importable(root):
        try:
            module = importlib.import_module("model_utils")
        except Exception as exc:  # noqa: BLE001  (their import: report it in one line)
            first = (str(exc).splitlines() or [""])[0]
            raise HarnessError(f"importing model_utils from {root} failed: {type(exc).__name__}: {first}") from exc
    for name in ("P_MLP", "hard_sigmoid", "copy"):
        if not hasattr(module, name):
            raise HarnessError(f"{root}/model_utils.py has no {name}; check out commit {COMMIT[:7]}")
    return module


def mse_criterion() -> torch.nn.Module:
    """Their ``--loss mse`` criterion (per-element squared error; their Φ sums it over classes and halves it)."""
    return torch.nn.MSELoss(reduction="none")


class TheirEP:
    """Their ``P_MLP([784, hidden, 10])`` with their hard sigmoid and Adam (lr for every layer, as their
    ``--optim adam --lrs`` with equal rates), trained by symmetric EP (see the module docstring).

    ``step(x, y)``: one training step, x of shape (B, 784) float32 on ``device``, y (B,) int64 class indices.
    ``predict(x)``: their evaluation, the output layer after T1 free steps from rest, (B, 10), detached.
    ``gradient(x, y)``: the update ``step`` would apply, keyed like ``model.named_parameters()``; no optimizer step.
    """

    def __init__(self, labo: types.ModuleType, *, hidden: int, T1: int, T2: int, beta: float, lr: float, seed: int,
                 device: torch.device | str = "cpu", n_in: int = 784, n_out: int = 10) -> None:  # fmt: skip
        torch.manual_seed(seed)
        self.labo, self.T1, self.T2, self.beta = labo, T1, T2, beta
        self.device = torch.device(device)
        self.model = labo.P_MLP([n_in, hidden, n_out], activation=labo.hard_sigmoid).to(self.device)
        self.criterion = mse_criterion()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def _phases(self, x: torch.Tensor, y: torch.Tensor) -> None:
        labo, model, crit, beta = self.labo, self.model, self.criterion, self.beta
        neurons = model.init_neurons(x.size(0), self.device)
        neurons = model(x, y, neurons, self.T1, beta=0.0, criterion=crit)  # free phase
        free = labo.copy(neurons)
        neurons = model(x, y, neurons, self.T2, beta=beta, criterion=crit)  # +β phase from the free state
        plus = labo.copy(neurons)
        neurons = model(x, y, labo.copy(free), self.T2, beta=-beta, criterion=crit)  # −β phase from the free state
        minus = labo.copy(neurons)
        model.compute_syn_grads(x, y, plus, minus, (beta, -beta), crit)  # zeroes .grad, then writes the update

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._phases(x, y)
        self.optimizer.step()

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self._phases(x, y)
        return {name: p.grad.detach().clone() for name, p in self.model.named_parameters()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        neurons = self.model.init_neurons(x.size(0), self.device)
        y = torch.zeros(x.size(0), dtype=torch.int64, device=self.device)  # unused at β = 0
        return self.model(x, y, neurons, self.T1, beta=0.0, criterion=self.criterion)[-1].detach()


class TheirBP:
    """Backprop through the same 784-hidden-10 network in their modules: ``P_MLP``'s two ``Linear`` synapses with
    their hard sigmoid between them and a linear output, loss ½‖z − onehot(y)‖² summed over classes and averaged
    over the batch (their MSE criterion, as their BPTT loss reads it), Adam. Their repository has no feedforward
    trainer; this is the "÷ their BP" baseline, the same network and loss as our ``bp`` with ``output=se``.

    ``step(x, y)``, ``predict(x)``: as :class:`TheirEP` (``predict`` is the feedforward output)."""

    def __init__(self, labo: types.ModuleType, *, hidden: int, lr: float, seed: int,
                 device: torch.device | str = "cpu", n_in: int = 784, n_out: int = 10) -> None:  # fmt: skip
        torch.manual_seed(seed)
        self.labo, self.n_out = labo, n_out
        self.model = labo.P_MLP([n_in, hidden, n_out], activation=labo.hard_sigmoid).to(device)
        self.criterion = mse_criterion()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.model.synapses
        return second(self.labo.hard_sigmoid(first(x.view(x.size(0), -1))))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        target = F.one_hot(y, self.n_out).to(x.dtype)
        loss = 0.5 * self.criterion(self.forward(x), target).sum(dim=1).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(x)


def describe(path: str | Path) -> dict[str, Any]:
    """Where their code came from: the path, the commit checked out there (None: not a git checkout), and whether
    it is the commit the README's figures were measured at."""
    commit = commit_of(path)
    return {"path": str(path), "commit": commit, "measured_commit": COMMIT, "same": commit == COMMIT}
