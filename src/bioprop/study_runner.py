"""Run a study: every rule × seed under one budget, in worker processes, then the report (issue 13, item 1).

    summary = run_study("bp,fa", "digits", "mlp:16", 1, "0,1", ["fa.scale=0.5"], "runs/study", jobs=2,
                        limit=200, lr="0.05")
    summary["runs"]       # one dict per rule × seed: name, dir, action, status, test accuracy, message
    summary["report"]     # (report.md, report.html), written by bioprop.report.study.build_report([out], out)

Each run is an ordinary run directory ``out/<rule>-s<seed>`` (:mod:`bioprop.train`), with every setting the same
for all runs but the rule, its options (``--rule-opt rule.key=value``) and the seed. What happens to each is decided
before any work, from what its directory holds:

- nothing (or no directory): the run is trained (``train``);
- a run of the same settings (its config.yaml's fingerprints, :meth:`RunConfig.fingerprints`, hold this one's) that
  finished, or that diverged (a divergence is deterministic: resuming it would diverge again at the same step; delete
  the directory to try again): nothing is done (``skip``);
- such a run stopped early (Ctrl-C, SIGTERM, a file that could not be written) with a checkpoint: it is resumed from
  it (``resume``, :func:`bioprop.train.resume`);
- such a run stopped before its first checkpoint: it is started again (``restart``; only files bioprop wrote are
  cleared, :func:`bioprop.report.logs.check_out_dir`);
- a run of other settings, a config.yaml that cannot be read, files bioprop did not write, or a run in use by another
  process: the whole study is refused in one line, before any run starts.

Validated before the first run, each as a one-line :class:`~bioprop.errors.BioPropError` naming the bad token: the
rules (unknown ones list the known ones; none, or one given twice), the seeds (:func:`bioprop.config.parse_seed`;
none, or one given twice), ``jobs`` (an integer ≥ 1), each ``--rule-opt`` (``rule.key=value``, for a rule in
``rules``, a key given once per rule), every other setting (a field of :class:`~bioprop.config.RunConfig`, read as
``bioprop train`` reads its flag), and then, for each rule, everything :func:`bioprop.train.build` checks (the data,
the network, the rule's options on it: the first seed's run is built without writing anything); the rules' plan
warnings (:meth:`bioprop.rules.Rule.plan_warnings`) are given then, once per rule, as
:class:`~bioprop.rules.base.PlanWarning`.

Workers: with ``jobs`` = 1 the runs are trained one after another in this process; with K > 1, in at most K worker
processes of a :class:`concurrent.futures.ProcessPoolExecutor` started with the ``spawn`` context (a fresh
interpreter: no torch thread pool or CUDA state inherited from the parent). Each worker sets torch's intra-op
threads to the ``threads`` setting when given, else ``max(1, cores // K)`` with ``cores`` the CPUs this process may
use and K the number of workers actually started (``min(jobs, runs to do)``), so that the workers do not fight over
the cores (OpenMP threads spin-wait: oversubscribed, a small network runs many times slower; see
:mod:`bioprop.cli`); the count is recorded in each new run's config.yaml (it is not fingerprinted). A run that
diverges (:class:`~bioprop.errors.DivergenceError`) or fails (any other error, even a bug) is reported with its
message and the others go on. Idle workers ignore SIGINT; on Ctrl-C (SIGINT to the whole process group, as a
terminal sends it, or to this process alone) the runs not started are cancelled, each running one is sent one
SIGINT, records ``interrupted`` and keeps its last checkpoint, and :class:`StudyInterrupted` is raised once every
worker has stopped: the same call again resumes them.

A progress line per run (``progress``, e.g. ``[3/4] fa-s0: finished in 4.1 s, test accuracy 0.8125``) as it ends.
At the end: ``report.md`` and ``report.html`` in ``out`` (:func:`bioprop.report.study.build_report` over ``out``;
lines about runs it skips go to ``progress``; a report file there bioprop did not write is refused before any
run) and the table of :func:`bioprop.report.tables.compare` over the study's runs.
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioprop import config as settings
from bioprop import rules as registry
from bioprop.config import NOT_FINGERPRINTED, RunConfig, parse_number, parse_seed, source_labels, torch_threads
from bioprop.errors import BioPropError, DivergenceError
from bioprop.report import logs
from bioprop.rules.base import PlanWarning

#: Settings given by :func:`run_study`'s own arguments, not through ``**settings``.
OWN = ("rule", "seed", "rule_opts", "data", "arch", "epochs")
#: What each of them is called in messages (the flags of ``bioprop compare``).
LABELS = {"rule": "--rules", "seed": "--seeds", "rule_opts": "--rule-opt"}
MAX_JOBS = settings.MAX_THREADS
#: The statuses of a run directory that are final: the run is not trained again.
FINAL = ("finished", "diverged")


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a study, raised once every worker has stopped; ``out`` is the study's folder,
    ``results`` the runs as far as they got (as in :func:`run_study`'s ``runs``)."""

    def __init__(self, out: Path, results: list[dict[str, Any]]) -> None:
        super().__init__(str(out))
        self.out, self.results = out, results


@dataclass
class Job:
    """One rule × seed: its config, its directory, and what is done with it (module docstring): ``train``,
    ``restart``, ``resume`` or ``skip``; ``threads``, torch's intra-op threads in the process that trains it."""

    name: str
    config: RunConfig
    run_dir: Path
    action: str
    threads: int = 1
    interruptible: bool = True  # whether SIGINT interrupts it in a worker: not when the caller ignores SIGINT
    before: dict[str, Any] = field(default_factory=dict)  # the summary of a run skipped


# -------------------------------------------------------------------------------------------------- parsing


def _tokens(value: str | Sequence[Any] | None, label: str) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` (or ``["a,b"]``) as stripped tokens; none at all, an empty one, or one given
    twice is a BioPropError naming ``label``."""
    items = [value] if isinstance(value, str | int) else list(value or [])
    tokens = [token.strip() for item in items for token in str(item).split(",")]
    if not tokens or tokens == [""]:
        raise BioPropError(f"{label} needs at least one value, e.g. {label} {'bp,fa' if label == '--rules' else '0,1'}")
    for token in tokens:
        if not token:
            raise BioPropError(f"{label} has an empty entry in {','.join(tokens)!r}")
    twice = next((token for i, token in enumerate(tokens) if token in tokens[:i]), None)
    if twice is not None:
        raise BioPropError(f"{label} gives {twice!r} twice")
    return tokens


def parse_rules(value: str | Sequence[str] | None) -> list[str]:
    """The rules of ``--rules`` (``"bp,fa"`` or a list), each registered (:func:`bioprop.rules.entry`: an unknown
    one is a BioPropError listing the known ones)."""
    names = _tokens(value, "--rules")
    for name in names:
        try:
            registry.entry(name)
        except BioPropError:
            raise BioPropError(f"--rules: unknown rule {name!r}; known: {', '.join(registry.names())}") from None
    return names


def parse_seeds(value: str | int | Sequence[Any] | None) -> list[int]:
    """The seeds of ``--seeds`` (``"0,1,2"``, an int or a list), each read by :func:`bioprop.config.parse_seed`."""
    return [parse_seed("--seeds", token) for token in _tokens(value, "--seeds")]


def parse_jobs(value: int | str) -> int:
    """``--jobs``: an integer from 1 to :data:`MAX_JOBS`, else a BioPropError quoting it."""
    jobs = parse_number("--jobs", value, int)
    if not 1 <= jobs <= MAX_JOBS:
        raise BioPropError(f"--jobs must be between 1 and {MAX_JOBS}, not {value!r}")
    return int(jobs)


def parse_rule_opts(items: Sequence[str] | dict[str, dict[str, Any]] | None, names: Sequence[str]) -> dict:
    """``["fa.scale=0.5", ...]`` (``--rule-opt``, repeatable) as ``{rule: {key: value}}``, or such a mapping as it
    is, checked: each item ``rule.key=value`` with a rule of ``names`` and a key given once per rule. The values
    are parsed by the rule (:meth:`RunConfig.check`). Anything else is a one-line BioPropError quoting the item."""
    if isinstance(items, dict):
        pairs = [(str(rule), str(key), value, f"{rule}.{key}={value}")
                 for rule, opts in items.items() for key, value in dict(opts).items()]  # fmt: skip
    else:
        pairs = []
        for item in items or []:
            target, sep, value = str(item).partition("=")
            rule, dot, key = target.strip().partition(".")
            if not sep or not dot or not rule.strip() or not key.strip():
                raise BioPropError(f"malformed --rule-opt {item!r}; expected rule.key=value, e.g. "
                                   "--rule-opt fa.scale=0.5")  # fmt: skip
            pairs.append((rule.strip(), key.strip(), value.strip(), item))
    out: dict[str, dict[str, Any]] = {}
    for rule, key, value, item in pairs:
        if rule not in names:
            raise BioPropError(f"--rule-opt {item!r} is for rule {rule!r}, which is not in --rules ({','.join(names)})")
        if key in out.setdefault(rule, {}):
            raise BioPropError(f"--rule-opt {rule}.{key} given twice ({out[rule][key]!r} and {value!r})")
        out[rule][key] = value
    return out


def _given(given: dict[str, Any]) -> dict[str, Any]:
    """The settings passed as keywords (None: not given), each a field of RunConfig other than :data:`OWN`."""
    out = {}
    for key, value in given.items():
        settings.field_of(key)  # an unknown setting lists the known ones
        if key in OWN:
            raise BioPropError(f"setting {key!r} is an argument of run_study itself (its own flag), not a keyword")
        if value is not None:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ planning


def make_config(rule: str, seed: int, opts: dict[str, Any], base: dict[str, Any]) -> RunConfig:
    """The run's config from the shared settings ``base`` (read as flags are), checked; errors name the flag."""
    overrides = {**base, "rule": rule, "seed": seed, "rule_opts": opts}
    config = RunConfig.from_sources(None, overrides)
    labels = {**source_labels(None, overrides), **LABELS}
    config.check(labels)
    for key, applies in (("momentum", config.optimizer == "sgd"), ("step_size", config.schedule == "step")):
        if key in base and not applies:  # as `bioprop train` says it
            needs = "--optimizer sgd" if key == "momentum" else "--schedule step"
            raise BioPropError(f"{labels[key]} {base[key]!r} has no effect without {needs}")
    return config


def _differences(config: RunConfig, other: RunConfig) -> list[str]:
    mine, theirs = config.to_dict(), other.to_dict()
    return [key for key in mine if key not in NOT_FINGERPRINTED and mine[key] != theirs.get(key)]


def plan(config: RunConfig, run_dir: Path, name: str) -> Job:
    """What to do with ``run_dir`` for ``config`` (module docstring); refuses, in one line naming the directory, a run
    of other settings, an unreadable config.yaml, a run in use, or files bioprop did not write. Touches nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise BioPropError(f"'{run_dir}' exists and is not a directory; remove it or choose another --out")
    recorded = run_dir / logs.CONFIG
    if not recorded.is_file():
        logs.check_out_dir(run_dir, overwrite=True)  # empty, or only what a run that died at its start wrote
        empty = not run_dir.is_dir() or all(path.name == logs.LOCK for path in run_dir.iterdir())
        return Job(name, config, run_dir, "train" if empty else "restart")
    try:
        there = RunConfig.from_yaml(recorded)
    except BioPropError as exc:
        raise BioPropError(f"'{run_dir}' holds a run whose config cannot be read ({exc}); remove it or choose "
                           "another --out") from None  # fmt: skip
    if config.fingerprint() not in there.fingerprints():
        differ = _differences(config, there)
        which = f" ({', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'})" if differ else ""
        raise BioPropError(f"'{run_dir}' holds a run with other settings{which}; remove it or choose another --out")
    logs.check_not_in_use(run_dir)
    try:
        summary = logs.read_summary(run_dir)
    except BioPropError:
        summary = {}
    status = summary.get("status")
    if status == "finished" and (run_dir / logs.MODEL).is_file() or status == "diverged":
        return Job(name, config, run_dir, "skip", before=summary)
    if (run_dir / logs.CHECKPOINT).is_file():
        return Job(name, config, run_dir, "resume")
    logs.check_out_dir(run_dir, overwrite=True)  # only files bioprop wrote are cleared by a restart
    return Job(name, config, run_dir, "restart")


def validate(config: RunConfig, run_dir: Path) -> None:
    """Everything :func:`bioprop.train.build` checks (data, network, the rule's options on it), without writing, and
    the rule's plan warnings (:func:`bioprop.train.warn_plan`) for a fresh run of ``config``."""
    from bioprop import train

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", PlanWarning)
        session = train.build(config, run_dir)
        train.warn_plan(session)
    for item in said:  # given again at the caller, each once
        warnings.warn(item.message, item.category, stacklevel=3)


def cores() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------- running


def execute(job: Job) -> dict[str, Any]:
    """Train, restart or resume ``job`` in this process with ``job.threads`` torch threads (the caller's count put
    back after) and return its result (see :func:`run_study`); a divergence or a failure is returned as such, Ctrl-C
    (KeyboardInterrupt) is raised."""
    from bioprop import train

    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch_threads(job.threads):
            warnings.simplefilter("ignore", PlanWarning)  # given once by validate
            if job.action == "resume":  # at job.threads, not the count the run recorded
                summary = train.resume(job.run_dir, quiet=True, threads=job.threads)
            else:
                summary = train.run(job.config, job.run_dir, overwrite=job.action == "restart", quiet=True)
    except DivergenceError as exc:
        return _result(job, "diverged", " ".join(str(exc).split()), start)
    except BioPropError as exc:
        return _result(job, "failed", " ".join(str(exc).split()), start)
    except Exception as exc:  # a bug in one run must not stop the others: it is reported with its type
        return _result(job, "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())}", start)
    return _result(job, summary.get("status", "finished"), summary.get("message"), start, summary)


def _result(job: Job, status: str, message: str | None, start: float | None, summary: dict | None = None) -> dict:
    summary = summary or {}
    return {"name": job.name, "dir": str(job.run_dir), "rule": job.config.rule, "seed": job.config.seed,
            "action": job.action, "status": status, "message": message,
            "test_accuracy": summary.get("test_accuracy"), "best_test_accuracy": summary.get("best_test_accuracy"),
            "seconds": None if start is None else time.perf_counter() - start}  # fmt: skip


def _interrupt_once(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second SIGINT must not break the recording of the first
    raise KeyboardInterrupt


def _worker_init() -> None:
    """Idle workers ignore SIGINT (Ctrl-C reaches the whole process group): only a running job is interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def work(job: Job) -> dict[str, Any]:
    """A worker process's job: :func:`execute` with ``job.threads`` torch threads; SIGINT interrupts it (once), and
    the run, which records ``interrupted`` and keeps its checkpoint, is returned as ``interrupted``."""
    start = time.perf_counter()
    if job.interruptible:
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return execute(job)
    except KeyboardInterrupt:
        return _result(job, "interrupted", "interrupted; run the study again to resume it", start)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _describe(result: dict[str, Any]) -> str:
    seconds = f" in {result['seconds']:.1f} s" if result.get("seconds") is not None else ""
    accuracy = result.get("test_accuracy")
    measured = f", test accuracy {accuracy:.4f}" if isinstance(accuracy, float) and math.isfinite(accuracy) else ""
    if result["action"] == "skip":
        why = f" ({result['message']})" if result["status"] != "finished" and result.get("message") else ""
        return f"{result['status']} before{measured}; skipped{why}"
    done = {"resume": "resumed and ", "restart": "restarted and "}.get(result["action"], "")
    said = f": {result['message']}" if result["status"] != "finished" and result.get("message") else ""
    return f"{done}{result['status']}{seconds}{measured}{said}"


def _in_process(jobs: list[Job], note: Callable[[dict], None]) -> list[dict[str, Any]]:
    results = []
    for job in jobs:
        try:
            result = execute(job)
        except KeyboardInterrupt:
            results.append(_result(job, "interrupted", "interrupted; run the study again to resume it", None))
            note(results[-1])
            raise StudyInterrupted(job.run_dir.parent, results) from None
        results.append(result)
        note(result)
    return results


def _in_workers(jobs: list[Job], workers: int, note: Callable[[dict], None]) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    before = {child.pid for child in multiprocessing.active_children()}
    pool = futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)
    interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # e.g. `nohup`, or `cmd &` in a script
    for job in jobs:
        job.interruptible = interruptible
    pending = {pool.submit(work, job): job for job in jobs}
    results: list[dict[str, Any]] = []
    try:
        for future in futures.as_completed(pending):
            results.append(_outcome(future, pending[future]))
            note(results[-1])
    except KeyboardInterrupt:
        for future in pending:
            future.cancel()  # those not started
        for child in multiprocessing.active_children():
            if child.pid not in before:  # ours: each running job gets one SIGINT (again, if the terminal sent one)
                os.kill(child.pid, signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        done = {result["name"] for result in results}
        for future, job in pending.items():
            if future.done() and not future.cancelled() and job.name not in done:
                results.append(_outcome(future, job))
                note(results[-1])
        raise StudyInterrupted(jobs[0].run_dir.parent, results) from None
    pool.shutdown(wait=True)
    return results


def _outcome(future: futures.Future, job: Job) -> dict[str, Any]:
    try:
        return future.result()
    except BrokenProcessPool:
        return _result(job, "failed", "its worker process died (killed, or out of memory)", None)
    except KeyboardInterrupt:  # SIGINT just as the job ended
        return _result(job, "interrupted", "interrupted; run the study again to resume it", None)
    except Exception as exc:  # e.g. a result that could not be sent back
        return _result(job, "failed", f"{type(exc).__name__}: {exc}", None)


# ------------------------------------------------------------------------------------------------ the study


def run_study(
    rules: str | Sequence[str],
    data: str | None,
    arch: str | None,
    epochs: int | str | None,
    seeds: str | int | Sequence[int | str],
    rule_opts: Sequence[str] | dict[str, dict[str, Any]] | None,
    out: str | Path,
    jobs: int | str = 1,
    progress: Callable[[str], None] | None = None,
    **given: Any,
) -> dict[str, Any]:
    """Train each of ``rules`` × ``seeds`` into ``out/<rule>-s<seed>``, then write the report (module docstring).

    ``rules``: ``"bp,fa"`` or a list of registered names; ``data``, ``arch`` (``auto``: each rule's default) and
    ``epochs``: as ``bioprop train``'s settings (None: their defaults); ``seeds``: ``"0,1,2"`` or a list, each 0
    to 2**32 − 1;
    ``rule_opts``: ``["fa.scale=0.5", ...]`` or ``{"fa": {"scale": 0.5}}``; ``jobs``: worker processes at most
    (1: in this process); ``progress``: called with each progress line (a run's end, a run skipped, the report's
    skipped runs). ``given``: any other :class:`~bioprop.config.RunConfig` setting (``lr="0.05"``,
    ``limit=200``, ``optimizer="adam"``; None means not given), read as its ``bioprop train`` flag is.

    Returns ``{"out", "runs", "failed", "report", "table", "threads", "workers"}``: ``runs`` one dict per rule ×
    seed in order (``name``, ``dir``, ``rule``, ``seed``, ``action`` (train, restart, resume, skip), ``status``
    (finished, diverged, failed), ``message``, ``test_accuracy``, ``best_test_accuracy``, ``seconds`` of this
    call), ``failed`` the names of those that did not finish, ``report`` the paths (report.md, report.html) or None
    when no run finished, ``table`` :func:`bioprop.report.tables.compare` of the study's runs (None likewise),
    ``threads`` torch threads per worker and ``workers`` the processes started (0: in this process).

    Raises a one-line :class:`BioPropError` for any bad input, before any run (module docstring);
    :class:`StudyInterrupted` on Ctrl-C, once the workers have stopped and recorded their checkpoints."""
    say = progress or (lambda line: None)
    names = parse_rules(rules)
    seed_list = parse_seeds(seeds)
    count = parse_jobs(jobs)
    options = parse_rule_opts(rule_opts, names)
    if out is None or str(out) == "":
        raise BioPropError(f"--out needs a path, not {out!r}")
    folder = Path(out)
    base = {**_given(given), "data": data, "arch": arch, "epochs": epochs}
    base = {key: value for key, value in base.items() if value is not None}
    if folder.exists() and not folder.is_dir():
        raise BioPropError(f"--out '{folder}' exists and is not a directory")
    from bioprop.report import study

    study.check_out(folder)  # a report.md or report.html there that bioprop did not write: refused now
    planned: list[Job] = []
    for rule in names:
        for seed in seed_list:
            name = f"{rule}-s{seed}"
            planned.append(plan(make_config(rule, seed, options.get(rule, {}), base), folder / name, name))
    for rule in names:  # the data, the network and the rule's options on it, once per rule
        first = next(job for job in planned if job.config.rule == rule)
        validate(first.config, first.run_dir)

    todo = [job for job in planned if job.action != "skip"]
    workers = min(count, len(todo))
    given_threads = planned[0].config.threads  # the same for every run
    threads = given_threads if given_threads is not None else max(1, cores() // max(workers, 1))
    results: dict[str, dict[str, Any]] = {}
    finished = 0

    def note(result: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        results[result["name"]] = result
        say(f"[{finished}/{len(planned)}] {result['name']}: {_describe(result)}")

    for job in planned:
        job.threads = job.config.threads = threads  # recorded in a new run's config.yaml; not fingerprinted
        if job.action == "skip":
            note(_result(job, job.before.get("status", "finished"), job.before.get("message"), None, job.before))
    try:  # every result is given to note, which keeps it in results
        if workers > 1:
            _in_workers(todo, workers, note)
        else:
            _in_process(todo, note)
    except StudyInterrupted as stop:
        stop.results = [results[job.name] for job in planned if job.name in results]
        raise
    ordered = [results[job.name] for job in planned]
    report, table = None, None
    if any(result["status"] == "finished" for result in ordered):
        from bioprop.report import tables

        report = study.build_report([folder], folder, on_skip=say)
        written = [Path(result["dir"]) for result in ordered if Path(result["dir"], logs.CONFIG).is_file()]
        table = tables.compare(written)
    return {"out": str(folder), "runs": ordered, "failed": [r["name"] for r in ordered if r["status"] != "finished"],
            "report": report, "table": table, "threads": threads, "workers": workers if workers > 1 else 0}  # fmt: skip
