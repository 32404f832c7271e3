"""Shared fixtures: a tiny run configuration, one finished run reused read-only, and an in-process CLI.

Torch is limited to one thread: the networks here are tiny, and on a busy two-core machine OpenMP's barriers
make every small op take milliseconds (measured: softmax of a 4x10 tensor, 20 ms with 2 threads, 4 µs with 1).
Subprocesses inherit OMP_NUM_THREADS=1 for the same reason, and so that runs in and out of process do the same
arithmetic.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from bioprop.cli import main
from bioprop.config import RunConfig

os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, with the reason, where no CUDA GPU is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


TINY = {"data": "digits", "arch": "mlp:32", "epochs": 2, "limit": 300, "device": "cpu", "lr": 0.05}
# TINY as `bioprop train` flags, less the epochs (each test gives its own)
TINY_FLAGS = [item for key, value in TINY.items() if key != "epochs" for item in (f"--{key}", str(value))]


def energy_rules() -> tuple[str, ...]:
    """The registered rules that train energy-based networks only (ep, chl, generec, stdp, and any added later)."""
    from bioprop import rules

    return tuple(name for name in rules.names() if rules.entry(name).cls.networks == frozenset({"energy"}))


def tiny_config(**overrides) -> RunConfig:
    """A run of a few seconds at most: 300 digits, a 32-unit MLP, 2 epochs, on the CPU."""
    return RunConfig(**{**TINY, **overrides})


def threads_per_epoch(monkeypatch: pytest.MonkeyPatch, stop_at: int = 2) -> list[int]:
    """Record torch's thread count as each epoch bioprop trains begins, into the list returned; Ctrl-C
    (KeyboardInterrupt) at the ``stop_at``-th epoch, after the checkpoint of the one before."""
    from bioprop import train

    seen: list[int] = []
    honest = train.train_epoch

    def epoch(s, index, bar):
        seen.append(torch.get_num_threads())
        if len(seen) == stop_at:
            raise KeyboardInterrupt
        return honest(s, index, bar)

    monkeypatch.setattr(train, "train_epoch", epoch)
    return seen


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch feedback-alignment run. Read only: copy it (``run_copy``) before changing anything."""
    from bioprop import train

    out = tmp_path_factory.mktemp("finished") / "fa-run"
    train.run(tiny_config(rule="fa"), out, quiet=True)
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`finished_run` that a test may edit."""
    return Path(shutil.copytree(finished_run, tmp_path / "copy"))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``bioprop ARGS...`` in this process through :func:`bioprop.cli.main`, the console entry point;
    returns (exit code, stdout, stderr)."""

    def call(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        code = stop.value.code
        return (0 if code is None else code if isinstance(code, int) else 1), out, err

    return call


def busy_lsnn(n_lif: int = 3, n_alif: int = 3, seed: int = 0) -> nn.Module:
    """A small float64 LSNN (4 inputs, n_lif LIF then n_alif ALIF neurons, 3 outputs) busy enough that spikes,
    refractory steps, resets and adaptation all shape the gradient (the temporal rules' tests)."""
    from bioprop.nets import recurrent as rnn

    torch.manual_seed(seed)
    params = rnn.LIFParameters(tau_m=10.0, tau_a=40.0, tau_out=15.0, v_th=0.3, beta=0.4, n_ref=2, gamma=0.3)
    net = rnn.RecurrentNet(4, n_lif + n_alif, 3, cell="spiking", n_alif=n_alif, params=params).double()
    with torch.no_grad():
        net.input.weight.mul_(2.0)
    return net


def tanh_mlp(sizes: tuple[int, ...], seed: int = 0, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Flatten, Linear-φ pairs, Linear readout (layer indices 1, 3, 5 for 12-7-5-3), float64, parameters drawn
    from an explicit generator (std 1.2/√fan-in; biases 1.2/2)."""
    modules: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        modules += [nn.Linear(fan_in, fan_out), act()]
    modules.append(nn.Linear(sizes[-2], sizes[-1]))
    net = nn.Sequential(*modules).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p.shape[1] if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 1.2 / math.sqrt(fan_in))
    return net
