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

import multiprocessing
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class WorkerDied(RuntimeError):
    """A worker process ended abruptly (killed, out of memory, a crash in native code) while running a task."""


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and stops the workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], jobs: int = 1,
              done: Callable[[tuple, Any], None] | None = None) -> list[Any]:  # fmt: skip
    """``[fn(*task) for task in tasks]``, with up to ``jobs`` tasks at a time in worker processes when ``jobs`` > 1.

    ``fn`` must be importable by name from a fresh process (a module-level function). ``done(task, result)`` is
    called in this process as each task finishes (in finishing order). Raises :class:`ValueError` for ``jobs`` < 1,
    the first error a task raised, :class:`WorkerDied` naming the task whose worker ended abruptly, or
    :class:`KeyboardInterrupt` on Ctrl-C or SIGTERM; in each case the other workers are stopped first.
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
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_ignore_sigint)
    try:
        futures = {executor.submit(fn, *task): index for index, task in enumerate(tasks)}
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
        for child in multiprocessing.active_children():  # SIGTERM: bioprop's runs keep their last checkpoint
            child.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        executor.shutdown(wait=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return results


if __name__ == "__main__":
    sys.exit("runpool.py is a helper of the accuracy benchmarks; run accuracy_fmnist.py or accuracy_temporal.py")
