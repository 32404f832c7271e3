"""Independent training runs of an accuracy benchmark, one after another or side by side in worker processes.

``run_tasks(fn, tasks, jobs)`` calls ``fn(*task)`` for every task and returns the results in the tasks' order.
With ``jobs`` 1 it runs them in this process; with more, in up to ``jobs`` worker processes (started with
``spawn``, so each imports torch afresh and inherits this process's environment, ``OMP_NUM_THREADS`` and the CPU
pinning included: pin to as many CPUs as jobs). The runs are bioprop run directories that checkpoint every epoch,
so stopping is safe: on Ctrl-C or SIGTERM the workers are sent SIGTERM (bioprop's runs save their checkpoint on it)
and the same command resumes them. A run that raises stops the rest the same way and its error is raised here; a
worker that dies (killed, out of memory) raises :class:`WorkerDied` naming its task, never a hang.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: whole numbers ≥ 0, each once; a :class:`ValueError` naming the bad token otherwise."""
    seeds: list[int] = []
    for token in text.split(","):
        try:
            seed = int(token)
        except ValueError:
            raise ValueError(f"--seeds: not a whole number: {token!r}") from None
        if seed < 0:
            raise ValueError(f"--seeds: {token!r} is negative; seeds are whole numbers from 0")
        if seed in seeds:
            raise ValueError(f"--seeds: {token!r} is given twice")
        seeds.append(seed)
    return seeds


def check_jobs(jobs: int, threads: int, available: int, where: str) -> None:
    """``--jobs`` at least 1, and ``jobs`` × ``threads`` no more than the ``available`` CPUs (more would oversubscribe
    them: the runs would fight over cores and their seconds per epoch would time the contention); ``where`` names
    those CPUs in the message (``--cpus 0-1``, ``this process``). A :class:`ValueError` naming the flags otherwise."""
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: at least 1")
    if jobs * threads > available:
        raise ValueError(f"--jobs {jobs} × --threads {threads} needs {jobs * threads} CPUs; {where} has {available}")


def default_threads(jobs: int) -> int:
    """Torch threads per run when a script's ``--threads`` is not given: ``$OMP_NUM_THREADS`` (its first entry) when
    set to a whole number ≥ 1, else the CPUs this process may use shared among the ``jobs`` runs, at least 1."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if text.isascii() and text.isdigit() and int(text) >= 1:
        return int(text)
    return max(1, len(os.sched_getaffinity(0)) // max(1, jobs))


def epochs_done(run_dir: Path, epochs: int) -> int:
    """How many of its ``epochs`` a run directory has trained: all of them once its summary says finished, else the
    rows of its ``metrics.csv`` (0 when it has none yet)."""
    try:
        if json.loads((run_dir / "summary.json").read_text()).get("status") == "finished":
            return epochs
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open(run_dir / "metrics.csv", encoding="utf-8") as rows:
            return min(epochs, max(0, sum(1 for line in rows if line.strip()) - 1))
    except OSError:
        return 0


class RunProgress:
    """Where a set of runs stands, read from their run directories, ``runs`` (run directory, epochs it is given)
    pairs: ``2/12 runs finished, 310/1200 epochs, about 3.1 h left``. The time left is the epochs left at the rate
    trained since this object was made (a resumed suite's earlier epochs do not count), so it appears once an epoch
    has been trained."""

    def __init__(self, runs: Sequence[tuple[Path, int]]) -> None:
        self.runs = list(runs)
        self.started = time.perf_counter()
        self.at_start = self.counts()[1]

    def counts(self) -> tuple[int, int]:
        """(runs finished, epochs trained)."""
        done = [(epochs_done(run_dir, epochs), epochs) for run_dir, epochs in self.runs]
        return sum(d == epochs for d, epochs in done), sum(d for d, _ in done)

    def __call__(self) -> str:
        finished, trained = self.counts()
        total = sum(epochs for _, epochs in self.runs)
        line = f"{finished}/{len(self.runs)} runs finished, {trained}/{total} epochs"
        rate = (trained - self.at_start) / max(time.perf_counter() - self.started, 1e-9)
        if rate > 0 and trained < total:
            left = (total - trained) / rate
            if left >= 5400:
                line += f", about {left / 3600:.1f} h left"
            else:
                line += f", about {left / 60:.0f} min left" if left >= 60 else ", under a minute left"
        return line


@contextlib.contextmanager
def heartbeat(tick: Callable[[], None] | None, every: float) -> Iterator[None]:
    """Call ``tick()`` every ``every`` seconds from a background thread while the block runs (None: nothing). A tick
    that raises says so in one line on stderr and the block goes on: a progress line never stops the runs."""
    if tick is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                tick()
            except Exception as exc:  # noqa: BLE001 (a progress line must not end hours of training)
                print(f"runpool: no progress line: {exc}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class WorkerDied(RuntimeError):
    """A worker process ended abruptly (killed, out of memory, a crash in native code) while running a task."""


#: Set in a worker once it has been told to stop (SIGTERM, or a run ended by it): the tasks already queued to it
#: are then refused instead of started.
_stopping = False
#: Seconds the workers get to save their checkpoints after SIGTERM before they are killed.
GRACE_S = 60.0


def _stop(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and stops the workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)  # a bioprop run replaces it while it trains, and restores it after


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker, unless the worker was told to stop: a bioprop run that took SIGTERM saves its
    checkpoint and raises (a KeyboardInterrupt), and the worker would otherwise go on to the next queued task."""
    global _stopping
    if _stopping:
        raise KeyboardInterrupt("stopping")
    try:
        return fn(*args)
    except KeyboardInterrupt:
        _stopping = True
        raise


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Cancel what has not started, SIGTERM every worker, give them :data:`GRACE_S` to save their checkpoints,
    then kill those still alive."""
    executor.shutdown(wait=False, cancel_futures=True)
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + GRACE_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int = 1,
              done: Callable[[tuple, Any], None] | None = None, tick: Callable[[], None] | None = None,
              every: float = 300.0) -> list[Any]:  # fmt: skip
    """``[fn(*task) for task in tasks]``, with up to ``jobs`` tasks at a time in worker processes when ``jobs`` > 1.

    ``fn`` must be importable by name from a fresh process (a module-level function). ``done(task, result)`` is
    called in this process as each task finishes (in finishing order); ``tick()`` every ``every`` seconds while
    they run (:func:`heartbeat`; a progress line). Raises :class:`ValueError` for ``jobs`` < 1,
    the first error a task raised, :class:`WorkerDied` naming the task whose worker ended abruptly, or
    :class:`KeyboardInterrupt` on Ctrl-C or SIGTERM; in each case the other workers are stopped first.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    with heartbeat(tick, every):
        return _run_tasks(fn, tasks, jobs, done)


def _run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int,
               done: Callable[[tuple, Any], None] | None) -> list[Any]:  # fmt: skip
    results: list[Any] = [None] * len(tasks)
    if jobs == 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            results[index] = fn(*task)
            if done is not None:
                done(task, results[index])
        return results
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_worker_init)
    try:
        futures = {executor.submit(_guarded, fn, *task): index for index, task in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                raise WorkerDied(f"a worker process ended abruptly (killed? out of memory?) while running "
                                 f"{fn.__name__}{tuple(tasks[index])}") from None  # fmt: skip
            if done is not None:
                done(tasks[index], results[index])
    except BaseException:
        _stop_workers(executor)  # SIGTERM first: bioprop's runs keep their last checkpoint
        raise
    else:
        executor.shutdown(wait=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return results


if __name__ == "__main__":
    sys.exit("runpool.py is a helper of the accuracy benchmarks; run accuracy_fmnist.py or accuracy_temporal.py")
