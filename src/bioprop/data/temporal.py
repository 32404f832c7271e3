"""Temporal tasks and sequence datasets: the inputs and targets the recurrent and spiking rules train on.

Every task is a plain function here (``x, y = cue_accumulation(64, seed=1)``) and a name for
:func:`bioprop.data.load` (``load("cue-accumulation:cues=5,seed=1")``, ``--data cue-accumulation:cues=5``). Tensors
are batch-major: ``x`` (N, T, C), spike trains as ``torch.uint8`` 0/1 and other inputs as float64 (``load`` casts
them to its ``dtype``); ``y`` is either (N, T) int64 class labels with −1 at the steps that carry no target, or
(N, T, K) float64 targets at every step (regression). One step is ``dt`` = 1 ms where a task is timed in ms.

Random draws come only from ``numpy.random.default_rng(seed)`` (``seed`` an int or a ``SeedSequence``): the same
arguments give the same tensors. ``load`` draws the training and test sets from two independent streams spawned
from the name's ``seed`` (:meth:`Task.make`), except for the frozen tasks, whose every example is one pair.
"""

from __future__ import annotations

import gzip
import inspect
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioprop.errors import BioPropError

Seed = int | np.random.SeedSequence

# ------------------------------------------------------------------------------------------------ helpers


def poisson_spikes(rng: np.random.Generator, rate_hz: float, shape: tuple[int, ...], dt: float = 1e-3) -> np.ndarray:
    """Bernoulli approximation of a Poisson spike train: each step of ``dt`` seconds holds a spike with probability
    ``rate_hz · dt`` (as the e-prop code draws its inputs). Returns uint8 0/1 of ``shape``."""
    return (rng.random(shape, dtype=np.float32) < rate_hz * dt).view(np.uint8)


def labels_at(labels: np.ndarray | torch.Tensor, steps: int, targets: range | Sequence[int]) -> torch.Tensor:
    """Per-step labels (N, ``steps``) int64: ``labels`` (N,) at the steps ``targets``, −1 (no target) elsewhere."""
    labels = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    labels = labels.to(torch.int64)
    y = torch.full((labels.shape[0], steps), -1, dtype=torch.int64, device=labels.device)  # (N, T)
    y[:, list(targets)] = labels[:, None]
    return y


# ------------------------------------------------------------------------------------------ the generators

CUE_MS, CUE_SPACING_MS, RECALL_MS, DELAY_MS = 100, 150, 150, 1200  # the e-prop evidence-accumulation timing
CUE_RATE_HZ, NOISE_RATE_HZ = 40.0, 10.0
CUE_GROUP = 10  # channels per group: left, right, recall, noise
P_MAJORITY = 0.7  # each cue is on the trial's favoured side with this probability (the e-prop code's 1 − p_group)


def cue_accumulation(n: int, seed: Seed = 0, cues: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """The evidence-accumulation task of Bellec et al. 2020 (Nat. Commun. 11:3625), Fig. 3, at dt = 1 ms.

    40 input channels in four groups of 10 — left cue, right cue, recall, noise. Cue k (k = 0 … ``cues`` − 1)
    fires its side's group at 40 Hz during [50 + 150k, 150 + 150k) ms; a trial favours a side drawn uniformly and
    puts each cue on it with probability 0.7. The recall group fires at 40 Hz in the last 150 ms and the noise
    group at 10 Hz throughout; a trial lasts T = 150·cues + 1200 ms (2250 for 7 cues). The label, the side with
    more cues (0 left, 1 right), is the target at the last 150 steps only. ``cues`` must be odd (no ties).

    Returns x (n, T, 40) uint8 spikes and y (n, T) int64, −1 before the recall window.
    """
    _check("cue-accumulation", n, seed=seed, cues=cues)
    rng = np.random.default_rng(seed)
    steps = CUE_SPACING_MS * cues + DELAY_MS
    favoured = rng.integers(0, 2, size=n)  # (n,) 0 left, 1 right
    p_right = np.where(favoured == 1, P_MAJORITY, 1.0 - P_MAJORITY)
    right = rng.random((n, cues)) < p_right[:, None]  # (n, cues) the side of each cue
    cue_spikes = poisson_spikes(rng, CUE_RATE_HZ, (n, cues, CUE_MS, CUE_GROUP))
    x = np.zeros((n, steps, 4 * CUE_GROUP), dtype=np.uint8)  # (n, T, 40)
    for k in range(cues):
        start = CUE_SPACING_MS - CUE_MS + k * CUE_SPACING_MS
        window = x[:, start : start + CUE_MS]  # (n, CUE_MS, 40), a view
        window[:, :, :CUE_GROUP] = cue_spikes[:, k] * ~right[:, k, None, None]
        window[:, :, CUE_GROUP : 2 * CUE_GROUP] = cue_spikes[:, k] * right[:, k, None, None]
    x[:, -RECALL_MS:, 2 * CUE_GROUP : 3 * CUE_GROUP] = poisson_spikes(rng, CUE_RATE_HZ, (n, RECALL_MS, CUE_GROUP))
    x[:, :, 3 * CUE_GROUP :] = poisson_spikes(rng, NOISE_RATE_HZ, (n, steps, CUE_GROUP))
    label = right.sum(axis=1) > cues // 2  # (n,) more right cues than left
    return torch.from_numpy(x), labels_at(label, steps, range(steps - RECALL_MS, steps))


PATTERN_MS, PATTERN_INPUTS, PATTERN_RATE_HZ = 1000, 100, 50.0
PATTERN_PERIODS_MS = (1000.0, 500.0, 333.0, 200.0)


def sum_of_sines(
    steps: int, periods: Sequence[float], amplitudes: Sequence[float], phases: Sequence[float]
) -> np.ndarray:
    """s(t) = Σᵢ aᵢ sin(2π t / Pᵢ + φᵢ) at t = 0 … ``steps`` − 1, as float64 (``steps``,)."""
    t = np.arange(steps, dtype=np.float64)[:, None]  # (T, 1)
    return (np.asarray(amplitudes) * np.sin(2 * np.pi * t / np.asarray(periods) + np.asarray(phases))).sum(axis=1)


def pattern_generation(n: int, seed: Seed = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The pattern-generation task of Bellec et al. 2020, Fig. S7 (frozen input, one target), at dt = 1 ms.

    One frozen draw of 100 Poisson inputs at 50 Hz over 1000 ms; the target is one sum of four sines with periods
    1000, 500, 333 and 200 ms, amplitudes aᵢ ~ U(0.5, 2) and phases φᵢ ~ U(0, 2π), shifted to start at 0 and
    scaled to a peak |y*| of 1 (as the e-prop code normalises it): y*(t) = (s(t) − s(0)) / maxₜ |s(t) − s(0)|.

    Returns x (n, 1000, 100) uint8 and y (n, 1000, 1) float64: ``n`` copies of the same pair.
    """
    _check("pattern-generation", n, seed=seed)
    rng = np.random.default_rng(seed)
    spikes = poisson_spikes(rng, PATTERN_RATE_HZ, (PATTERN_MS, PATTERN_INPUTS))  # (T, C)
    amplitudes = rng.uniform(0.5, 2.0, size=len(PATTERN_PERIODS_MS))
    phases = rng.uniform(0.0, 2 * np.pi, size=len(PATTERN_PERIODS_MS))
    s = sum_of_sines(PATTERN_MS, PATTERN_PERIODS_MS, amplitudes, phases)
    s = s - s[0]
    target = s / np.abs(s).max()  # (T,)
    return _copies(spikes, n), _copies(target, n)  # (n, T, C), (n, T, 1)


def periodic_target(
    n: int, period: int = 200, cycles: int = 1, drive: str = "pulse"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The periodic output task of Murray 2019 (eLife 8:e43299), Fig. 2, in steps of the RNN (τ = 10 steps).

    The target, as in the paper's published code: y*(t) = sin(2πt/P) + ½ sin(4πt/P) + ¼ sin(8πt/P) at steps
    t = 1 … T, T = ``cycles`` · P, P = ``period`` steps (the paper uses P = 20τ … 160τ). The paper's RNN has no
    external input and starts from a fixed state h₀ (0.1 in the code); a network that starts from rest is set off
    instead by one input channel: ``drive="pulse"`` is 1 at the first step and 0 after, ``"constant"`` 1 at every
    step. No random draws: every example is the same pair.

    Returns x (n, T, 1) and y (n, T, 1), float64.
    """
    _check("periodic-target", n, period=period, cycles=cycles, drive=drive)
    steps = period * cycles
    phase = 2 * np.pi * np.arange(1, steps + 1) / period  # 2πt/P, t = 1 … T
    target = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(4 * phase)  # (T,)
    signal = np.ones(steps) if drive == "constant" else (np.arange(steps) == 0).astype(np.float64)  # (T,)
    return _copies(signal, n), _copies(target, n)


def _copies(series: np.ndarray, n: int) -> torch.Tensor:
    """``n`` copies of a (T,) or (T, C) series: (n, T, C)."""
    series = torch.from_numpy(series)
    return (series[:, None] if series.dim() == 1 else series).repeat(n, 1, 1)


STORE_STEPS = 10  # how long the store cue (with the value) and the recall cue last


def store_recall(n: int, seed: Seed = 0, delay: int = 50, values: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Store-recall with a delay (a one-symbol copy task, as in Ke et al. 2018, NeurIPS).

    Channels: 0 the store cue, 1 the recall cue, 2 … 1 + ``values`` the value, one-hot. For 10 steps the store cue
    and the value v ~ U{0 … values − 1} are on; then ``delay`` silent steps; then the recall cue for 10 steps,
    where the target is v (−1 at every other step). T = 20 + ``delay``.

    Returns x (n, T, 2 + values) float64 0/1 and y (n, T) int64.
    """
    _check("store-recall", n, seed=seed, delay=delay, values=values)
    rng = np.random.default_rng(seed)
    steps = 2 * STORE_STEPS + delay
    value = rng.integers(0, values, size=n)  # (n,)
    x = np.zeros((n, steps, 2 + values))  # (n, T, C)
    x[:, :STORE_STEPS, 0] = 1.0
    x[np.arange(n), :STORE_STEPS, 2 + value] = 1.0
    x[:, steps - STORE_STEPS :, 1] = 1.0
    return torch.from_numpy(x), labels_at(value, steps, range(steps - STORE_STEPS, steps))


def sequential_images(
    images: torch.Tensor, labels: torch.Tensor, pixels: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, H, W) as sequences: H steps of W pixels (rows), or H·W steps of 1 pixel (``pixels``); the label
    is the target at the last step only (the sequential MNIST protocol of Le et al. 2015).

    Returns x (N, H, W) or (N, H·W, 1) (a reshape of ``images``) and y (N, T) int64.
    """
    _check("seq-fashion-mnist", pixels=pixels)
    n = images.shape[0]
    x = images.reshape(n, -1, 1) if pixels else images.reshape(n, images.shape[-2], images.shape[-1])
    return x, labels_at(labels, x.shape[1], [x.shape[1] - 1])


# ------------------------------------------------------------------------------ Spiking Heidelberg Digits

SHD_CHANNELS, SHD_CLASSES = 700, 20


def bin_spikes(
    times: Sequence[np.ndarray], units: Sequence[np.ndarray], bins: int, duration: float, channels: int = SHD_CHANNELS
) -> torch.Tensor:
    """Spike events as a binned raster: example i has a 1 at (step ⌊tᵢₖ · bins / duration⌋, unit uᵢₖ) for each of
    its spikes k with 0 ≤ tᵢₖ < ``duration`` (seconds); later spikes are dropped. Returns (N, bins, channels) uint8
    (a step holding several spikes of one unit is still 1)."""
    n = len(times)
    example = np.repeat(np.arange(n), [len(t) for t in times])
    t = np.concatenate([np.asarray(t, dtype=np.float64) for t in times]) if n else np.zeros(0)
    u = np.concatenate([np.asarray(u, dtype=np.int64) for u in units]) if n else np.zeros(0, dtype=np.int64)
    step = np.floor(t * (bins / duration)).astype(np.int64)
    keep = (t >= 0) & (step < bins)
    x = np.zeros((n, bins, channels), dtype=np.uint8)
    x[example[keep], step[keep], u[keep]] = 1
    return torch.from_numpy(x)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise BioPropError("reading SHD needs h5py: pip install h5py") from None
    return h5py


def read_shd(
    path: str | Path, bins: int = 100, duration: float = 1.0, target: str = "last", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the Spiking Heidelberg Digits (Cramer et al. 2020, IEEE TNNLS 33:2744), binned.

    ``path`` is ``shd_train.h5`` or ``shd_test.h5`` (or the ``.h5.gz`` as published, decompressed in memory) with
    ``spikes/times`` (s), ``spikes/units`` (0 … 699) and ``labels`` (0 … 19); only the first ``limit`` examples
    are read when given. The spikes are binned by :func:`bin_spikes` into ``bins`` steps over ``duration`` seconds;
    the label is the target at every step (``target="all"``) or at the last step only (``"last"``).

    Returns x (N, bins, 700) uint8 and y (N, bins) int64. A missing key, mismatched lengths, a unit or label out
    of range or an empty file raise :class:`BioPropError` naming the file; h5py is needed (an optional dependency).
    """
    _check("shd", bins=bins, duration=duration, target=target)
    h5py, path = _h5py(), Path(path)
    try:
        source = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix == ".gz" else path
        with h5py.File(source, "r") as f:
            for key in ("spikes/times", "spikes/units", "labels"):
                if key not in f:
                    raise BioPropError(f"'{path}' has no '{key}'; is it an SHD file?")
            sizes = {len(f["spikes/times"]), len(f["spikes/units"]), len(f["labels"])}
            if len(sizes) != 1:
                raise BioPropError(f"'{path}' has spikes/times, spikes/units and labels of different lengths")
            times, units = list(f["spikes/times"][:limit]), list(f["spikes/units"][:limit])
            labels = np.asarray(f["labels"][:limit], dtype=np.int64)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BioPropError(f"cannot read '{path}' as HDF5 ({str(exc) or type(exc).__name__})") from None
    if len(labels) == 0:
        raise BioPropError(f"'{path}' holds no examples")
    if any(len(t) != len(u) for t, u in zip(times, units, strict=True)):
        raise BioPropError(f"'{path}' has an example with different numbers of spike times and units")
    if any(len(u) and (u.min() < 0 or u.max() >= SHD_CHANNELS) for u in units):
        raise BioPropError(f"'{path}' has a spike unit outside 0 .. {SHD_CHANNELS - 1}")
    if labels.min() < 0 or labels.max() >= SHD_CLASSES:
        raise BioPropError(f"'{path}' has a label outside 0 .. {SHD_CLASSES - 1}")
    x = bin_spikes(times, units, bins, duration)
    return x, labels_at(labels, bins, range(bins) if target == "all" else [bins - 1])


# ------------------------------------------------------------------------------- names, keys and tasks


@dataclass(frozen=True)
class Key:
    """One ``key=value`` setting of a task's name: its type is its default's (bool, int, float or str); ``choices``
    lists a str key's values, ``rule`` is (words, test) for what else a value must satisfy."""

    name: str
    default: bool | int | float | str
    help: str
    choices: tuple[str, ...] = ()
    rule: tuple[str, Callable[[Any], bool]] | None = None

    def parse(self, text: str | None, dataset: str) -> bool | int | float | str:
        """The value of ``text`` (None for a bare ``key``, which sets a boolean key); raises BioPropError."""
        kind = type(self.default)
        if text is None and kind is not bool:
            raise BioPropError(f"{dataset}: key {self.name!r} needs a value ({self.name}=...)")
        return self.check(_convert(kind, text), dataset, given=text)

    def check(self, value: Any, dataset: str, given: Any = None) -> bool | int | float | str:
        """``value`` if it is of the key's type and allowed (an int is taken for a float key), else BioPropError
        quoting ``given`` (what the user wrote; ``value`` itself when None)."""
        kind = type(self.default)
        if kind is float and type(value) is int:
            value = float(value)
        allowed = type(value) is kind and (kind is not float or math.isfinite(value))
        allowed = allowed and (not self.choices or value in self.choices)
        if not allowed or (self.rule is not None and not self.rule[1](value)):
            what = f"one of {', '.join(self.choices)}" if self.choices else self.rule[0] if self.rule else None
            what = what or _TYPE_WORDS[kind]
            raise BioPropError(f"{dataset}: {self.name} must be {what}, not {value if given is None else given!r}")
        return value


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a word"}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _convert(kind: type, text: str | None) -> Any:
    """``text`` as ``kind``, or None when it is not one."""
    if kind is bool:
        return True if text is None else _BOOLS.get(text)
    try:
        return kind(text)
    except ValueError:
        return None


def _check(task: str, n: int | None = None, **values: Any) -> None:
    """Raise BioPropError for an argument of a plain function that ``task``'s key of that name would refuse."""
    if n is not None and (type(n) is not int or n < 1):
        raise BioPropError(f"{task}: n must be a positive number of examples, not {n!r}")
    keys = {key.name: key for key in TASKS[task].keys}
    for name, value in values.items():
        if not (name == "seed" and isinstance(value, np.random.SeedSequence)):
            keys[name].check(value, task, given=value)


AT_LEAST_1 = ("an integer >= 1", lambda v: v >= 1)
AT_LEAST_2 = ("an integer >= 2", lambda v: v >= 2)
NON_NEGATIVE = ("an integer >= 0", lambda v: v >= 0)
POSITIVE = ("a number > 0", lambda v: v > 0)


def _arg(fn: Callable, name: str, help: str, **limits: Any) -> Key:
    """The key for ``fn``'s argument ``name``, with ``fn``'s default (written once, in its signature)."""
    return Key(name, inspect.signature(fn).parameters[name].default, help, **limits)


def _sizes(n_train: int, n_test: int) -> tuple[Key, Key]:
    return (
        Key("n_train", n_train, "Training examples.", rule=AT_LEAST_1),
        Key("n_test", n_test, "Test examples.", rule=AT_LEAST_1),
    )


@dataclass(frozen=True)
class Task:
    """What a sequence dataset's name may set (``keys``) and how it is made: by ``generator(n, **settings)``, or
    read from files (``generator`` None). ``outputs``: its K, or the key that sets it. ``frozen``: every example,
    training and test alike, is the one pair the seed gives."""

    keys: tuple[Key, ...]
    outputs: int | str
    generator: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    frozen: bool = False

    def n_outputs(self, settings: dict[str, Any]) -> int:
        return settings[self.outputs] if isinstance(self.outputs, str) else self.outputs

    def make(self, settings: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """``(train_x, train_y, test_x, test_y)`` from the generator; the training and test sets come from two
        streams spawned from ``settings["seed"]`` (one stream for a frozen task)."""
        assert self.generator is not None
        options = {k: v for k, v in settings.items() if k not in ("n_train", "n_test", "seed")}
        if "seed" in settings:
            seeds = [settings["seed"]] * 2 if self.frozen else np.random.SeedSequence(settings["seed"]).spawn(2)
            train_opts, test_opts = ({**options, "seed": s} for s in seeds)
        else:
            train_opts = test_opts = options
        return (*self.generator(settings["n_train"], **train_opts), *self.generator(settings["n_test"], **test_opts))


SEED = Key("seed", 0, "Seed of the generator (numpy), for the training and the test set.", rule=NON_NEGATIVE)
ODD = ("an odd integer >= 1", lambda v: v >= 1 and v % 2 == 1)

TASKS: dict[str, Task] = {
    "cue-accumulation": Task(
        (*_sizes(1024, 256), _arg(cue_accumulation, "cues", "Cues per trial (odd).", rule=ODD), SEED),
        outputs=2,
        generator=cue_accumulation,
    ),
    "pattern-generation": Task((*_sizes(1, 1), SEED), outputs=1, generator=pattern_generation, frozen=True),
    "periodic-target": Task(
        (
            *_sizes(1, 1),
            _arg(periodic_target, "period", "Steps per period P.", rule=AT_LEAST_2),
            _arg(periodic_target, "cycles", "Periods per trial.", rule=AT_LEAST_1),
            _arg(periodic_target, "drive", "One input pulse at the start, or constant.", choices=("pulse", "constant")),
        ),
        outputs=1,
        generator=periodic_target,
        frozen=True,
    ),
    "store-recall": Task(
        (
            *_sizes(4096, 1024),
            _arg(store_recall, "delay", "Silent steps between store and recall.", rule=NON_NEGATIVE),
            _arg(store_recall, "values", "Values to remember (classes).", rule=AT_LEAST_2),
            SEED,
        ),
        outputs="values",
        generator=store_recall,
    ),
    "seq-fashion-mnist": Task(
        (_arg(sequential_images, "pixels", "784 steps of one pixel instead of 28 rows."),), outputs=10
    ),
    "shd": Task(
        (
            _arg(read_shd, "bins", "Time steps.", rule=AT_LEAST_1),
            _arg(read_shd, "duration", "Seconds binned (later spikes are dropped).", rule=POSITIVE),
            _arg(read_shd, "target", "The label at the last step or at every step.", choices=("last", "all")),
        ),
        outputs=SHD_CLASSES,
    ),
}
