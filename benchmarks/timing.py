"""Side-by-side timing shared by the speed benchmarks.

Every contender lives in one process and is sampled round-robin, the order rotated each repetition, so that a
change of load hits all of them alike; a *paired* ratio is the median over repetitions of the ratio of two
contenders' samples taken in the same repetition, the number to trust on a busy machine.

How long it runs: :func:`round_robin` repeats until ``repeats`` repetitions (``None``: no cap) or until the time
``budget`` (seconds since ``started``) would be exceeded, whichever comes first. The budget is honoured, not just
checked: a repetition is started only when, at the pace of the slowest of the last three, it ends within the
budget, so a run overshoots its budget by at most the misestimate of one repetition (and by the first repetition,
which always runs, when the budget is spent before timing starts). :class:`Timed` says which limit stopped it.

Samples taken on a GPU are synchronised (``torch.cuda.synchronize``) before the clock starts and before it stops,
so a sample times the work of its steps, not their launch.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Sample = Callable[[], tuple[float, float]]  # one sample: (ms per step, CPU time / wall time)
FEW = 5  # fewer repetitions than this and the quartiles rest on too few samples: say so


def timed(step: Callable[[torch.Tensor, torch.Tensor], None], x: torch.Tensor, y: torch.Tensor, inner: int) -> Sample:
    """A contender: ``inner`` calls of ``step(x, y)``, timed together; ms per step and CPU time / wall time.
    When ``x`` is on a CUDA device the device is synchronised before the clock starts and before it stops."""
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)

    def sample() -> tuple[float, float]:
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            step(x, y)
        sync()
        wall = time.perf_counter() - t0
        return wall * 1e3 / inner, (time.process_time() - c0) / wall

    return sample


@dataclass
class Timed:
    """What :func:`round_robin_run` measured: ms/step and CPU/wall samples per contender, one per repetition;
    ``stopped_by`` is ``"repeats"`` or ``"budget"``; ``elapsed_s`` the seconds from ``started`` to the end."""

    samples: dict[str, list[float]]
    cpu: dict[str, list[float]]
    stopped_by: str
    elapsed_s: float

    @property
    def repetitions(self) -> int:
        return len(next(iter(self.samples.values()), []))


def round_robin_run(
    contenders: dict[str, Sample],
    repeats: int | None,
    budget: float,
    log: Callable[..., None],
    started: float | None = None,
) -> Timed:
    """Sample every contender once per repetition, the order rotated each time, until ``repeats`` repetitions
    (``None`` or 0: no cap) or the time ``budget`` in seconds since ``started`` (a ``time.perf_counter()`` value;
    default: now), whichever comes first. A repetition starts only if it is expected to end within the budget (at
    the pace of the slowest of the last three); the first one always runs."""
    if budget <= 0 or not math.isfinite(budget):
        raise ValueError(f"the time budget must be a positive number of seconds, not {budget!r}")
    if repeats is not None and repeats < 0:
        raise ValueError(f"repeats must be a positive count (or None for no cap), not {repeats!r}")
    cap = repeats or None
    names = list(contenders)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter() if started is None else started
    durations: list[float] = []
    next_report, stopped_by = 0.1, "repeats"
    digits = 1 if budget < 10 else 0
    rep = 0
    while cap is None or rep < cap:
        now = time.perf_counter()
        if durations and now - started + max(durations[-3:]) > budget:
            stopped_by = "budget"
            break
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            ms, util = contenders[name]()
            samples[name].append(ms)
            cpu[name].append(util)
        durations.append(time.perf_counter() - now)
        rep += 1
        elapsed = time.perf_counter() - started
        if elapsed >= next_report * budget:
            log(f"  {rep}{f'/{cap}' if cap else ''} repetitions, {elapsed:.{digits}f} of {budget:.{digits}f} s")
            next_report = math.floor(elapsed / budget * 10 + 1) / 10
    elapsed = time.perf_counter() - started
    if stopped_by == "budget":
        log(f"  stopped by the time budget: {rep} repetitions in {elapsed:.1f} s of {budget:.{digits}f} s")
    else:
        log(f"  stopped after {rep} repetitions (the cap), {elapsed:.1f} s of the {budget:.{digits}f} s budget")
    if rep < FEW:
        log(f"  only {rep} repetition(s): the quartiles and paired ratios rest on few samples; raise the budget")
    return Timed(samples, cpu, stopped_by, elapsed)


def round_robin(
    contenders: dict[str, Sample],
    repeats: int | None,
    budget: float,
    log: Callable[..., None],
    started: float | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """:func:`round_robin_run`, returning only the ms/step and CPU/wall samples per contender."""
    result = round_robin_run(contenders, repeats, budget, log, started)
    return result.samples, result.cpu


def cpu_ms(samples: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, list[float]]:
    """CPU milliseconds per step of each sample: its ms/step times its CPU time / wall time (what
    :func:`round_robin` returns); on a shared core another job's share of it does not count here."""
    return {name: [ms * util for ms, util in zip(samples[name], cpu[name], strict=True)] for name in samples}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile (all three the value itself for a single sample)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
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


class JsonLinesProcess:
    """An anchor's harness as a subprocess (in the anchor's own venv), spoken to in JSON lines: one request per line
    on its stdin, one reply per line on its stdout (its stderr passes through). The first line it writes must hold
    ``"ready": true``; ``hello`` keeps it (versions, compile times)."""

    def __init__(self, cmd: list[str], env: dict[str, str], name: str, quit_timeout: float = 60.0) -> None:
        self.name, self.quit_timeout = name, quit_timeout
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self.read()
        if not self.hello.get("ready"):
            raise RuntimeError(f"the {name} harness failed to start: {self.hello}")

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} harness exited (status {self.proc.wait()}); its stderr is above")
        return json.loads(line)

    def ask(self, **request: object) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=self.quit_timeout)
