"""Independent training runs of an accuracy benchmark, one after another or side by side in worker processes.

``run_tasks(fn, tasks, jobs)`` calls ``fn(*task)`` for every task and returns the results in the tasks' order.
With ``jobs`` 1 it runs them in this process; with more, in up to ``jobs`` worker processes (started with
``spawn``, so each imports torch afresh and inherits this process's environment, ``OMP_NUM_THREADS`` and the CPU
pinning included: pin to as many CPUs as jobs). The runs are bioprop run directories that checkpoint every epoch,
so stopping is safe: on Ctrl-C or SIGTERM the workers are sent SIGTERM (bioprop's runs save their checkpoint on it)
and the same command resumes them. A run that raises stops the rest the same way and its error is raised here.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _call(item: tuple[int, Callable, tuple]) -> tuple[int, Any]:
    index, fn, args = item
    return index, fn(*args)


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and stops the workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int = 1,
              done: Callable[[tuple, Any], None] | None = None) -> list[Any]:  # fmt: skip
    """``[fn(*task) for task in tasks]``, with up to ``jobs`` tasks at a time in worker processes when ``jobs`` > 1.

    ``fn`` must be importable by name from a fresh process (a module-level function). ``done(task, result)`` is
    called in this process as each task finishes (in finishing order). Raises :class:`ValueError` for ``jobs`` < 1,
    the first error a task raised, or :class:`KeyboardInterrupt` on Ctrl-C or SIGTERM (the workers stopped first).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
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
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks)), initializer=_ignore_sigint)
    try:
        items = [(index, fn, tuple(task)) for index, task in enumerate(tasks)]
        for index, result in pool.imap_unordered(_call, items):
            results[index] = result
            if done is not None:
                done(tasks[index], result)
        pool.close()
    except BaseException:
        pool.terminate()  # SIGTERM to every worker: bioprop's runs keep their last checkpoint
        raise
    finally:
        pool.join()
        signal.signal(signal.SIGTERM, previous)
    return results


if __name__ == "__main__":
    sys.exit("runpool.py is a helper of the accuracy benchmarks; run accuracy_fmnist.py or accuracy_temporal.py")
