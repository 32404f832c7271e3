"""Side-by-side timing shared by the speed benchmarks.

Every contender lives in one process and is sampled round-robin, the order rotated each repetition, so that a
change of load hits all of them alike; a *paired* ratio is the median over repetitions of the ratio of two
contenders' samples taken in the same repetition, the number to trust on a busy machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

Sample = Callable[[], tuple[float, float]]  # one sample: (ms per step, CPU time / wall time)


def timed(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor, inner: int) -> Sample:
    """A contender: ``inner`` calls of ``step(x, y)``, timed together."""

    def sample() -> tuple[float, float]:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            step(x, y)
        wall = time.perf_counter() - t0
        return wall * 1e3 / inner, (time.process_time() - c0) / wall

    return sample


def round_robin(
    contenders: dict[str, Sample], repeats: int, budget: float, log: Callable[..., None], started: float | None = None
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Sample every contender once per repetition, until ``repeats`` repetitions or ``budget`` seconds since
    ``started`` (default: now; at least 5 repetitions); returns the ms/step and CPU/wall samples per contender."""
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter() if started is None else started
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            ms, util = contenders[name]()
            samples[name].append(ms)
            cpu[name].append(util)
        elapsed = time.perf_counter() - started
        if (rep + 1) % max(1, repeats // 10) == 0:
            log(f"  {rep + 1}/{repeats} repetitions, {elapsed:.0f} s")
        if elapsed > budget and rep + 1 >= 5:
            log(f"  time budget of {budget:.0f} s spent after {rep + 1} repetitions")
            break
    return samples, cpu


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def paired(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a[i] / b[i]."""
    return statistics.median(s / t for s, t in zip(a, b, strict=True))


def linear_teacher_task(
    n: int, in_shape: Sequence[int], n_classes: int, gen: torch.Generator, teacher: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The speed benchmarks' sanity task: ``n`` uniform inputs of ``in_shape``, labelled by a fixed random linear
    teacher (drawn after the inputs unless given, e.g. to draw held-out inputs for the same teacher)."""
    x = torch.rand((n, *in_shape), generator=gen)
    if teacher is None:
        teacher = torch.randn(math.prod(in_shape), n_classes, generator=gen)
    return x, ((x.flatten(1) - 0.5) @ teacher).argmax(1), teacher
