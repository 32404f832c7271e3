"""``bioprop sweep SWEEP.yaml``: grid and random search over rules, rule options, optimiser settings and seeds, on
Ray Tune (issue 13, item 3).

A sweep file::

    base:                       # the settings every trial shares: the keys of a run's config.yaml
      data: digits              # (`bioprop train --help`; rule, seed and rule_opts are set below)
      arch: mlp:32
      epochs: 3
      optimizer: adam
      validation: 300           # held-out training examples: the metric is measured on them
    rules:                      # the rules to search, each with its options: a value, or a search domain
      bp: {}
      fa:
        scale: {grid: [0.5, 1.0]}
    search:                     # settings searched for every rule
      lr: {loguniform: [1.0e-4, 1.0e-1]}
      batch_size: [32, 64]      # a list is a grid
    seeds: [0, 1]               # every configuration is trained with each seed; the metric is their mean
    samples: 4                  # random draws per grid point (Ray Tune's num_samples); default 1
    metric: val_accuracy        # default: val_accuracy with base.validation, else test_accuracy
    cpus_per_trial: 1           # torch threads and Ray CPUs of each trial
    retries: 2                  # a crashed trial is run again up to this many times
    sampler_seed: 0             # the random draws are the same for the same file

Search domains (Ray Tune's, :mod:`ray.tune.search.sample`): ``[a, b]`` or ``{grid: [a, b]}`` (every value),
``{choice: [a, b]}`` (one drawn per sample), ``{uniform: [low, high]}``, ``{loguniform: [low, high]}`` (0 < low)
and ``{randint: [low, high]}`` (low ≤ n < high); anything else is a fixed value. A configuration is a rule, its
options and the searched settings; the sweep has (grid points × ``samples``) of them per rule, and each is a Ray
Tune trial that trains one run per seed.

Each run is an ordinary run directory ``OUT/<rule>-<id>-s<seed>``, ``<id>`` the first 8 hex digits of the SHA-256
of the configuration (rule, options, searched settings), kept as it ends. What happens to a run whose directory
exists is :func:`bioprop.study_runner.plan`'s decision: a finished (or diverged) run is not trained again, an
interrupted one is resumed from its checkpoint, a directory of other settings is refused. So resuming a killed
sweep (``--resume``: the same file starts Ray Tune again, whose draws repeat with ``sampler_seed``) redoes no
finished run; Ray Tune's own saved state (``OUT/.ray``) is not restored (that would unpickle it). A trial whose
run fails (an error, or its worker process killed) is retried by Ray Tune (``retries``,
:class:`ray.tune.FailureConfig`); its finished seeds are kept and the interrupted one resumes. ``samples`` > 1
needs a uniform, loguniform or randint domain (else every draw is the same configuration). A configuration drawn
again (a randint's value drawn twice, or a rule with no domain drawn from under ``samples`` > 1) is trained once: its
second trial waits for the first, then skips its runs. SIGTERM stops a sweep as Ctrl-C does.
A worker whose Ray node died (the sweep killed) stops itself within a second, keeping its last checkpoint.

Ray is started on this machine with the CPUs this process may use (``address`` None), or joined at ``address``
(``host:port`` of a running cluster's head, ``ray://host:port`` for Ray Client, or ``auto``); an address that
cannot be reached is one line naming it. At the end: ``OUT/best.json`` and ``OUT/best.md``, the best configuration
per rule by the mean of ``metric`` over its seeds (the test accuracy beside it), the table printed, and
``report.md``/``report.html`` (:func:`bioprop.report.study.build_report`; ``bioprop report OUT`` rebuilds them).

Validated before Ray starts, each a one-line :class:`~bioprop.errors.BioPropError` naming the file and the key: an
unknown top-level key, setting, rule or rule option; a malformed domain or one with no values; a value a setting or
rule option refuses (each grid and choice value, and both ends of each range, are checked); two listed values
that mean the same to it (``[1e-3, 0.001]``: YAML 1.1 reads the first as a string); fewer than two
configurations (nothing to search: use ``bioprop compare``); then the data, network and rule options of each rule
(:func:`bioprop.study_runner.validate`). ``OUT`` holding another sweep's ``sweep.yaml`` is refused, and so is a
sweep there without ``--resume``, or ``--resume`` with a different file.

Ray Tune is an optional dependency: ``pip install 'bioprop[sweep]'``; without it, :func:`run_sweep` says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bioprop import rules, study_runner
from bioprop.config import load_yaml
from bioprop.errors import BioPropError
from bioprop.report import logs
from bioprop.rules.options import coerce

#: The top-level keys of a sweep file.
KEYS = ("base", "rules", "search", "seeds", "samples", "metric", "cpus_per_trial", "retries", "sampler_seed")
#: Search domains: name -> how many arguments (None: a list of values).
DOMAINS = {"grid": None, "choice": None, "uniform": 2, "loguniform": 2, "randint": 2}
LISTED = tuple(kind for kind, arity in DOMAINS.items() if arity is None)  # those that list values, not bounds
#: The domains whose every sample draws a value of a range: ``samples`` > 1 needs one (a choice alone is a grid).
SAMPLED = ("uniform", "loguniform", "randint")
#: The metrics a sweep can select on (fields of a run's summary.json), with the direction that is better.
METRICS = {"val_accuracy": "max", "test_accuracy": "max", "best_test_accuracy": "max",
           "test_accuracy_at_best_val": "max", "test_loss": "min"}  # fmt: skip
#: Settings a sweep file may not put in ``base`` or ``search``: they have sections of their own.
OWN = {"rule": "rules", "seed": "seeds", "rule_opts": "rules", "threads": "cpus_per_trial"}
MAX_CONFIGURATIONS = 100_000
#: Top-level keys that change no run: --resume accepts a file that differs in them.
RUN_NEUTRAL = ("retries",)
INSTALL = "pip install 'bioprop[sweep]'"
#: What bioprop writes at the top of a sweep folder (besides the runs and the report).
SPEC, BEST_JSON, BEST_MD, RAY_DIR = "sweep.yaml", "best.json", "best.md", ".ray"
MARK = "# written by bioprop sweep: the sweep file this folder was started with"
MARK_BEST = "# written by bioprop sweep: the best configuration per rule"


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: Ray Tune stopped its trials and saved its state, ``ended`` of the ``total``
    configurations had ended (best.json, best.md and the report cover them); ``--resume`` continues it."""

    def __init__(self, out: Path, ended: int, total: int) -> None:
        super().__init__(str(out))
        self.out, self.ended, self.total = out, ended, total


@dataclass(frozen=True)
class Domain:
    """A search domain: ``kind`` one of :data:`DOMAINS`, ``values`` its list (grid, choice) or its bounds."""

    kind: str
    values: tuple[Any, ...]

    def grid_size(self) -> int:
        return len(self.values) if self.kind == "grid" else 1

    def extremes(self) -> tuple[Any, ...]:
        """The values to check a setting with: every listed value, or both ends of a range (randint: high − 1)."""
        if self.kind == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values

    def tune(self) -> Any:
        """This domain in Ray Tune's terms."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)


@dataclass(frozen=True)
class Sweep:
    """A sweep file, parsed and checked (module docstring): ``base`` settings, per rule its options (values or
    :class:`Domain`), the searched settings, ``seeds``, ``samples``, ``metric``, ``cpus_per_trial``, ``retries``,
    ``sampler_seed``; ``source`` names the file in messages."""

    base: dict[str, Any]
    rules: dict[str, dict[str, Any]]
    search: dict[str, Any]
    seeds: tuple[int, ...]
    samples: int = 1
    metric: str = "test_accuracy"
    cpus_per_trial: int = 1
    retries: int = 2
    sampler_seed: int = 0
    source: str = "sweep file"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def configurations(self) -> int:
        """How many configurations the sweep trains (each with every seed): grid points × samples, per rule, Ray
        Tune's trials (a configuration drawn twice is two trials, trained once: :func:`run_trial`)."""
        grid = math.prod(d.grid_size() for d in self.search.values() if isinstance(d, Domain))
        per_rule = [
            math.prod(d.grid_size() for d in opts.values() if isinstance(d, Domain)) for opts in self.rules.values()
        ]
        return sum(per_rule) * grid * self.samples

    def param_space(self) -> dict[str, Any]:
        """The search space as Ray Tune reads it: ``rule`` a grid over ``{"name", "opts"}`` blocks (each rule's
        option domains nested in its block), ``settings`` the searched settings."""
        from ray import tune

        def resolve(values: dict[str, Any]) -> dict[str, Any]:
            return {key: value.tune() if isinstance(value, Domain) else value for key, value in values.items()}

        blocks = [{"name": rule, "opts": resolve(opts)} for rule, opts in self.rules.items()]
        return {"rule": tune.grid_search(blocks), "settings": resolve(self.search)}


# ------------------------------------------------------------------------------------------------ the file


def _domain(where: str, value: Any) -> Any:
    """A value of ``rules`` or ``search``: a list (a grid), a one-key mapping naming a domain, or a fixed value."""
    if isinstance(value, list):
        value = {"grid": value}
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DOMAINS):
        if isinstance(value, dict) and len(value) == 1:
            raise BioPropError(f"{where}: unknown search domain {next(iter(value))!r}; known: {', '.join(DOMAINS)}")
        return value
    kind, args = next(iter(value.items()))
    if not isinstance(args, list):
        raise BioPropError(f"{where}: {kind} takes a list, not {args!r}")
    if not args:
        raise BioPropError(f"{where}: {kind} has no values: the search space is empty")
    arity = DOMAINS[kind]
    if arity is not None:
        bounds = [_number(a, int if kind == "randint" else float) for a in args]
        if len(bounds) != arity or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in bounds):
            raise BioPropError(f"{where}: {kind} takes [low, high], two numbers, not {args!r}")
        low, high = bounds
        if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
            raise BioPropError(f"{where}: randint takes two integers, not {args!r}")
        if not (_finite(low) and _finite(high) and low < high):
            raise BioPropError(f"{where}: {kind} needs finite low < high, not {args!r}")
        if kind == "loguniform" and low <= 0:
            raise BioPropError(f"{where}: loguniform needs 0 < low, not {args[0]!r}")
        args = bounds
    for i, item in enumerate(args):
        if args.index(item) != i:
            raise BioPropError(f"{where}: {kind} gives {item!r} twice")
    return Domain(kind, tuple(args))


def _number(value: Any, kind: type) -> Any:
    """A bound of a range domain read as the settings read a number (:func:`bioprop.rules.options.coerce`): as
    ``kind`` (int for randint: ``5.0`` and ``"5"`` are 5), else as a float, so that a numeric string is its number
    (YAML 1.1 reads ``1e-3`` as a string); anything else as given, for the caller to refuse."""
    for as_kind in dict.fromkeys((kind, float)):
        try:
            return coerce(as_kind, value)
        except ValidationError:
            pass
    return value


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def _draws(values: list[Any]) -> int:
    """How many different draws the randint and choice domains among ``values`` hold together."""
    sizes = [d.values[1] - d.values[0] if d.kind == "randint" else len(d.values)
             for d in values if isinstance(d, Domain) and d.kind in ("randint", "choice")]  # fmt: skip
    return math.prod(sizes)


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BioPropError(f"{where} must be a mapping of key: value, not {value!r}")
    return {str(key): item for key, item in value.items()}


def _whole(where: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` read as the settings read an integer (:func:`bioprop.rules.options.coerce`: ``2.0`` and ``"2"``
    are 2, ``"1e1"`` and a bool are refused), from ``low`` to ``high``."""
    try:
        number = coerce(int, value)
    except ValidationError:
        number = None
    if number is None or number < low or high is not None and number > high:
        bound = f"from {low} to {high}" if high is not None else f"≥ {low}"
        raise BioPropError(f"{where} must be an integer {bound}, not {value!r}")
    return number


def parse(raw: Any, source: str = "sweep file") -> Sweep:
    """The sweep described by ``raw`` (the file's YAML), checked in form (module docstring); what each value means
    to a setting or a rule is checked by :func:`check`."""
    from bioprop import config as settings
    from bioprop import rules as registry

    if not isinstance(raw, dict):
        raise BioPropError(f"{source} must be a mapping with the keys {', '.join(KEYS)}")
    for key in raw:
        if key not in KEYS:
            raise BioPropError(f"{source}: unknown key {key!r}; known: {', '.join(KEYS)}")
    base = _mapping(f"{source}: base", raw.get("base"))
    search = {key: _domain(f"{source}: search.{key}", value)
              for key, value in _mapping(f"{source}: search", raw.get("search")).items()}  # fmt: skip
    for section, values in (("base", base), ("search", search)):
        for key in values:
            if key in OWN:
                raise BioPropError(f"{source}: {section}.{key}: {key} is set by the section {OWN[key]!r}")
            try:
                settings.field_of(key)
            except BioPropError as exc:
                raise BioPropError(f"{source}: {section}.{key}: {exc}") from None
    twice = sorted(set(base) & set(search))
    if twice:
        raise BioPropError(f"{source}: {twice[0]!r} is in both base and search")
    rule_map = _mapping(f"{source}: rules", raw.get("rules"))
    if not rule_map:
        raise BioPropError(f"{source}: rules is empty: the search space is empty (e.g. rules: {{bp: {{}}, fa: {{}}}})")
    rules = {}
    for rule, opts in rule_map.items():
        try:
            registry.entry(rule)
        except BioPropError:
            raise BioPropError(
                f"{source}: rules: unknown rule {rule!r}; known: {', '.join(registry.names())}"
            ) from None
        rules[rule] = {key: _domain(f"{source}: rules.{rule}.{key}", value)
                       for key, value in _mapping(f"{source}: rules.{rule}", opts).items()}  # fmt: skip
    seeds_raw = raw.get("seeds", [0])
    seeds_raw = seeds_raw if isinstance(seeds_raw, list) else [seeds_raw]
    if not seeds_raw:
        raise BioPropError(f"{source}: seeds is empty; e.g. seeds: [0, 1]")
    seeds = tuple(settings.parse_seed(f"{source}: seeds", seed) for seed in seeds_raw)
    if len(set(seeds)) != len(seeds):
        raise BioPropError(f"{source}: seeds gives {next(s for i, s in enumerate(seeds) if s in seeds[:i])} twice")
    metric = raw.get("metric", "val_accuracy" if base.get("validation") else "test_accuracy")
    if not isinstance(metric, str) or metric not in METRICS:
        raise BioPropError(f"{source}: metric {metric!r} is not one of {', '.join(METRICS)}")
    if metric in ("val_accuracy", "test_accuracy_at_best_val") and not (
        base.get("validation") or "validation" in search
    ):
        raise BioPropError(f"{source}: metric {metric} needs base.validation (held-out training examples)")
    sweep = Sweep(
        base=base, rules=rules, search=search, seeds=seeds,
        samples=_whole(f"{source}: samples", raw.get("samples", 1), 1),
        metric=metric,
        cpus_per_trial=_whole(f"{source}: cpus_per_trial", raw.get("cpus_per_trial", 1), 1, settings.MAX_THREADS),
        retries=_whole(f"{source}: retries", raw.get("retries", 2), 0, 100),
        sampler_seed=_whole(f"{source}: sampler_seed", raw.get("sampler_seed", 0), 0, 2**32 - 1),
        source=source, raw=raw,
    )  # fmt: skip
    sampled = [d for d in [*search.values(), *(v for o in rules.values() for v in o.values())]
               if isinstance(d, Domain) and d.kind in SAMPLED]  # fmt: skip
    if sweep.samples > 1 and not sampled:
        raise BioPropError(f"{source}: samples {sweep.samples} would draw the same configurations again: "
                           "without a uniform, loguniform or randint domain, list the values as a grid")  # fmt: skip
    if sweep.samples > 1 and all(d.kind == "randint" for d in sampled):  # finitely many draws: more samples repeat
        draws = max(_draws([*search.values(), *opts.values()]) for opts in rules.values())
        if sweep.samples > draws:
            raise BioPropError(f"{source}: samples {sweep.samples} would draw the same configurations again: the "
                               f"randint and choice domains hold {draws} combination{'s' if draws > 1 else ''}; "
                               "list the values as a grid")  # fmt: skip
    count = sweep.configurations()
    if count > MAX_CONFIGURATIONS:
        raise BioPropError(f"{source}: the search space holds {count} configurations; at most {MAX_CONFIGURATIONS}")
    if count < 2:
        raise BioPropError(f"{source}: the search space holds {count} configuration; a sweep needs at least two "
                           "(search a setting or a rule option, add a rule, or samples > 1 with a random domain); "
                           "`bioprop compare` trains fixed settings")  # fmt: skip
    return sweep


def load(path: str | Path) -> Sweep:
    """The sweep file at ``path`` (:func:`parse`); a missing or unreadable file, bad YAML or a key given twice in one
    mapping (at any depth) is a BioPropError."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BioPropError(f"sweep file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BioPropError(f"cannot read sweep file '{path}': {exc}") from None
    try:
        raw = load_yaml(text, f"sweep file '{path}'")  # a key given twice refused, as in a --config file
    except yaml.YAMLError as exc:
        raise BioPropError(f"sweep file '{path}' is not valid YAML: {' '.join(str(exc).split())}") from None
    return parse(raw, source=f"sweep file '{path}'")


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else value


def _first(value: Any) -> Any:
    return value.values[0] if isinstance(value, Domain) else value


def check(sweep: Sweep, out: Path) -> None:
    """What each value means to its setting or rule option: the fixed values, then every grid and choice value and
    both ends of each range beside them (the other searched keys at their defaults), are put in a run's config and
    checked (:meth:`~bioprop.config.RunConfig.check`); then each rule's data, network and options on it, with every
    searched key at its first value (:func:`bioprop.study_runner.validate`). BioPropError naming the file and the
    key."""
    seed = sweep.seeds[0]
    fixed_set = {key: value for key, value in sweep.search.items() if not isinstance(value, Domain)}
    searched = {key: _first(value) for key, value in sweep.search.items()}
    for rule, opts in sweep.rules.items():
        fixed_opts = {key: value for key, value in opts.items() if not isinstance(value, Domain)}
        try:
            study_runner.make_config(rule, seed, {}, dict(sweep.base))
        except BioPropError as exc:
            raise BioPropError(f"{sweep.source}: base: {exc}") from None
        # the fixed values first, then each domain's values alone with them (listed: a grid's or choice's)
        probes = [(f"rules.{rule}", {}, {}, False)]
        probes += [(f"rules.{rule}.{key}", {key: v}, {}, d.kind in LISTED) for key, d in opts.items()
                   if isinstance(d, Domain) for v in d.extremes()]  # fmt: skip
        probes += [(f"search.{key}", {}, {key: v}, d.kind in LISTED) for key, d in sweep.search.items()
                   if isinstance(d, Domain) for v in d.extremes()]  # fmt: skip
        meant: dict[tuple[str, Any], Any] = {}  # (where, what a listed value means) -> the value as written
        for where, opt_values, set_values, listed in probes:
            try:
                config = study_runner.make_config(rule, seed, {**fixed_opts, **opt_values},
                                                  {**sweep.base, **fixed_set, **set_values})  # fmt: skip
                if not listed:
                    continue
                [(key, given)] = (opt_values or set_values).items()
                meaning = (rules.entry(rule).cls.parse_options(rule, opt_values)[key] if opt_values
                           else getattr(config, key))  # fmt: skip
            except BioPropError as exc:
                raise BioPropError(f"{sweep.source}: {where}: {exc}") from None
            twin = meant.setdefault((where, _hashable(meaning)), given)
            if twin is not given:  # another value, unequal (_domain refused repeats): `[1e-3, 0.001]`, say
                raise BioPropError(f"{sweep.source}: {where}: {twin!r} and {given!r} mean the same, "
                                   f"{meaning!r}: give it once")  # fmt: skip
        firsts = {key: _first(value) for key, value in opts.items()}
        try:
            config = study_runner.make_config(rule, seed, firsts, {**sweep.base, **searched})
            study_runner.validate(config, out / "unused")
        except BioPropError as exc:
            raise BioPropError(f"{sweep.source}: rule {rule}: {exc}") from None


# ---------------------------------------------------------------------------------------------- the trials


def trial_name(rule: str, opts: dict[str, Any], searched: dict[str, Any]) -> str:
    """``<rule>-<id>``: ``id`` the first 8 hex digits of the SHA-256 of the configuration (rule, its options and the
    searched settings as JSON with sorted keys). The same configuration gets the same name in every sweep."""
    text = json.dumps({"rule": rule, "opts": opts, "settings": searched}, sort_keys=True, default=str)
    return f"{rule}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Context:
    """What every trial needs besides its configuration: the sweep folder (absolute), the ``base`` settings, the
    seeds, the torch threads of a trial and the metric."""

    out: str
    base: dict[str, Any]
    seeds: tuple[int, ...]
    threads: int
    metric: str


class TrialFailed(RuntimeError):
    """A run of a trial failed (an error in training, or its directory refused): Ray Tune retries the trial."""


def over_seeds(summaries: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """A configuration's runs (their summary.json, one per seed; {} where there is none) taken together: ``values``
    (``metric`` per seed, None where the run did not finish), ``mean`` and ``std`` (population) of the finite ones
    (None if none), ``test_accuracy`` (the mean of the finished runs'), ``statuses`` (``missing`` where none)."""

    def finite(items: list[Any]) -> list[float]:
        return [v for v in items if isinstance(v, int | float) and math.isfinite(v)]

    finished = [summary if summary.get("status") == "finished" else {} for summary in summaries]
    values = [summary.get(metric) for summary in finished]
    done, tested = finite(values), finite([summary.get("test_accuracy") for summary in finished])
    return {"values": values, "mean": statistics.fmean(done) if done else None,
            "std": statistics.pstdev(done) if done else None,
            "test_accuracy": statistics.fmean(tested) if tested else None,
            "statuses": [summary.get("status", "missing") for summary in summaries]}  # fmt: skip


def run_trial(params: dict[str, Any], context: Context) -> dict[str, Any]:
    """Train (or skip, or resume) the runs of one configuration, one per seed (module docstring), in this process
    with ``context.threads`` torch threads. Returns the metrics Ray Tune records: ``name``, ``rule``, ``status``
    (``finished``, or ``diverged`` when a seed diverged), ``context.metric`` (the mean over the seeds that finished;
    NaN if none), ``per_seed`` and ``test_accuracy`` (mean). Raises :class:`TrialFailed` when a run fails."""
    import torch

    rule, opts, searched = params["rule"]["name"], dict(params["rule"]["opts"]), dict(params.get("settings", {}))
    name = trial_name(rule, opts, searched)
    summaries, skipped = [], True
    torch.set_num_threads(context.threads)
    with _one_trial_of(Path(context.out), name):  # a configuration drawn twice: its second trial skips its runs
        for seed in context.seeds:
            config = study_runner.make_config(rule, seed, opts, {**context.base, **searched})
            config.threads = context.threads
            run = f"{name}-s{seed}"
            try:
                job = study_runner.plan(config, Path(context.out) / run, run)
            except BioPropError as exc:
                raise TrialFailed(f"{run}: {exc}") from None
            job.threads = context.threads
            if job.action == "skip":
                summary = job.before
            else:
                skipped = False
                result = study_runner.execute(job)
                if result["status"] not in ("finished", "diverged"):
                    raise TrialFailed(f"{run}: {result['status']}: {result['message']}")
                summary = logs.read_summary(job.run_dir)
            summaries.append(summary)
    seeds = over_seeds(summaries, context.metric)
    nan = math.nan  # what Ray Tune records where there is no value
    return {"name": name, "rule": rule, "status": "diverged" if "diverged" in seeds["statuses"] else "finished",
            "skipped": skipped, context.metric: nan if seeds["mean"] is None else seeds["mean"],
            "per_seed": seeds["values"],
            "test_accuracy": nan if seeds["test_accuracy"] is None else seeds["test_accuracy"]}  # fmt: skip


@contextlib.contextmanager
def _one_trial_of(out: Path, name: str, poll: float = 0.5) -> Iterator[None]:
    """Held while a trial of configuration ``name`` runs: the exclusive ``flock`` of ``OUT/.ray/<name>.lock``,
    waited for (polled every ``poll`` seconds), so that a configuration drawn twice is never trained by two trials at
    once. The kernel releases it when the process ends."""
    path = out / RAY_DIR / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(poll)
        yield
    finally:
        os.close(fd)


_WATCHED = False


def _stop_with_node() -> None:
    """In a Ray worker: kill this process within a second once its parent (the node's raylet) is gone, so that a
    killed sweep leaves no orphan training on (its run keeps its last checkpoint; the lock goes with the process)."""
    global _WATCHED
    if _WATCHED:  # a reused worker (Ray Tune's reuse_actors) is watched already
        return
    _WATCHED = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), 9)

    threading.Thread(target=watch, daemon=True, name="bioprop-stop-with-node").start()


def trainable(params: dict[str, Any], context: Context) -> None:
    """The Ray Tune function trainable: :func:`run_trial`, its metrics reported once."""
    from ray import tune

    _stop_with_node()
    tune.report(run_trial(params, context))


# ------------------------------------------------------------------------------------------------- running


def _ray() -> Any:
    """Import Ray Tune quietly (no usage statistics, no progress tables: bioprop prints its own lines), or say how
    to install it."""
    for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                       ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("RAY_DEDUP_LOGS", "0")):  # fmt: skip
        os.environ.setdefault(key, value)
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise BioPropError(f"bioprop sweep needs Ray Tune, an optional extra: {INSTALL}") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, in one line naming it, a Ray address that is malformed or whose host:port does not accept a TCP
    connection within ``timeout`` seconds (``auto`` is left to Ray)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BioPropError(f"--address {address!r} is not host:port (or ray://host:port, or auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise BioPropError(f"cannot reach the Ray cluster at --address {address!r}: {exc.strerror or exc}") from None


def _check_folder(sweep: Sweep, out: Path, resume: bool) -> None:
    """The sweep folder: new, or this sweep's with ``resume`` (module docstring). Touches nothing."""
    from bioprop.report import study

    study.check_out(out)  # a file, a run directory, a report bioprop did not write
    for path, ours in ((out / BEST_JSON, _best_json_ours), (out / BEST_MD, lambda p: logs.marked(p, MARK_BEST)),
                       (out / SPEC, lambda p: logs.marked(p, MARK))):  # fmt: skip
        if (path.exists() or path.is_symlink()) and not ours(path):
            raise BioPropError(f"'{path}' was not written by bioprop sweep; move it or choose another --out")
    spec = out / SPEC
    if spec.exists():
        try:
            started = yaml.safe_load(spec.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise BioPropError(f"cannot read '{spec}': {exc}") from None
        if not resume:
            raise BioPropError(f"'{out}' holds a sweep already; add --resume to continue it, or choose another --out")
        started = started if isinstance(started, dict) else {}
        differ = sorted(k for k in set(started) | set(sweep.raw)
                        if k not in RUN_NEUTRAL and started.get(k) != sweep.raw.get(k))  # fmt: skip
        if differ:
            raise BioPropError(f"--resume: '{out}' holds a sweep of another file ({', '.join(differ)} differs); "
                               "give the same sweep file, or choose another --out")  # fmt: skip
    elif resume:
        raise BioPropError(f"--resume: '{out}' holds no sweep to continue ({SPEC} is missing); leave out --resume "
                           "to start one")  # fmt: skip


def _best_json_ours(path: Path) -> bool:
    """Whether ``path`` is a best.json bioprop sweep wrote (a regular file of format ``bioprop-sweep/1``)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == "bioprop-sweep/1"
    except (OSError, ValueError, AttributeError):
        return False


class _Progress:
    """A Ray Tune callback: one line per trial as it ends, fails (and will be retried) or errors for good."""

    def __init__(self, total: int, say: Callable[[str], None], retries: int, metric: str) -> None:
        from ray.tune import Callback

        outer = self

        class Lines(Callback):
            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.done += 1
                result = trial.last_result or {}
                value = result.get(outer.metric)
                shown = (
                    f"{outer.metric} {value:.4f}" if isinstance(value, float) and math.isfinite(value) else "no value"
                )
                before = " before; skipped" if result.get("skipped") else ""
                say(f"[{outer.done}/{total}] {outer.name(trial)}: {result.get('status', 'ended')}{before}, "
                    f"{shown} (mean over seeds)")  # fmt: skip

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.done += 1
                say(f"[{outer.done}/{total}] {outer.name(trial)} failed after {retries} retries: "
                    f"{outer.error(trial)}")  # fmt: skip

            def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                say(f"trial {outer.name(trial)} failed ({outer.error(trial)}); retrying it")

        self.done, self.metric, self.callback = 0, metric, Lines()

    @staticmethod
    def name(trial: Any) -> str:
        """The trial's configuration name (:func:`trial_name`), or Ray's trial id if its config cannot be read."""
        try:
            config = trial.config
            return trial_name(config["rule"]["name"], config["rule"]["opts"], config.get("settings", {}))
        except (AttributeError, KeyError, TypeError):
            return str(getattr(trial, "trial_id", "?"))

    @staticmethod
    def error(trial: Any) -> str:
        text = ""
        path = getattr(trial, "error_file", None)
        try:
            text = Path(path).read_text() if path else ""
        except OSError:
            pass
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return " ".join(lines[-1].split())[:300] if lines else "its worker raised or died"


def _start_ray(ray: Any, address: str | None) -> None:
    """Start Ray on this machine with the CPUs this process may use, or join it at ``address``; a failure is one
    line. Joining, Ray's core logs its connection retries straight to file descriptor 2: they are held back (the
    reason is in the error)."""
    try:
        if address is None:
            ray.init(
                address="local",
                num_cpus=study_runner.cores(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
            )  # fmt: skip  (local: a new Ray, whatever RAY_ADDRESS or a running one says)
            return
        with _stderr_held():
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, its own errors...
        where = f"at --address {address!r}" if address else "on this machine"
        hint = ""
        if address and address != "auto" and not os.environ.get("RAY_AUTH_MODE"):
            hint = ("; if the cluster uses token authentication (`ray start`'s default), set RAY_AUTH_MODE=token "
                    "and give its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)")  # fmt: skip
        raise BioPropError(f"cannot start or join Ray {where}: {' '.join(str(exc).split())[:200]}{hint}") from None


@contextlib.contextmanager
def _stderr_held() -> Iterator[None]:
    """File descriptor 2 points at a temporary file inside the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as hold:
        os.dup2(hold.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_sweep(
    path: str | Path,
    out: str | Path | None = None,
    address: str | None = None,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the sweep file ``path`` into ``out`` (module docstring) and return ``{"out", "best", "trials",
    "report", "table"}``: ``best`` per rule (:func:`best_per_rule`), ``trials`` every configuration's record,
    ``report`` (report.md, report.html) or None, ``table`` the Markdown of best.md.

    Raises a one-line :class:`BioPropError` for bad input (before Ray starts) or a missing Ray;
    :class:`SweepInterrupted` on Ctrl-C once Ray Tune has stopped the trials and saved its state."""
    say = progress or (lambda line: None)
    sweep = load(path)
    if out is None or str(out) == "":
        raise BioPropError("--out needs a path: the sweep's folder")
    folder = Path(out).absolute()
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise BioPropError(f"--out {str(out)!r}: '{parent}' is a file, not a folder")
    if address is None and sweep.cpus_per_trial > study_runner.cores():
        raise BioPropError(f"{sweep.source}: cpus_per_trial {sweep.cpus_per_trial} is more than the "
                           f"{study_runner.cores()} CPUs this process may use: no trial could start")  # fmt: skip
    _check_folder(sweep, folder, resume)
    check(sweep, folder)
    if address is not None:
        check_address(address)
    if sweep.metric in ("test_accuracy", "best_test_accuracy", "test_loss"):
        say(f"metric {sweep.metric}: the configurations are chosen on the test set; add base.validation (held-out "
            "training examples) to choose them without it")  # fmt: skip
    ray = _ray()
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None  # the caller's, put back at the end
    started_here = not ray.is_initialized()
    if started_here:
        _start_ray(ray, address)
    if main_thread:  # Ray's core took SIGTERM (it would abort): as Ctrl-C while the sweep runs
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    threads = sweep.cpus_per_trial
    context = Context(str(folder), sweep.base, sweep.seeds, threads, sweep.metric)
    lines = _Progress(sweep.configurations(), say, sweep.retries, sweep.metric)
    function = tune.with_resources(tune.with_parameters(trainable, context=context), {"cpu": sweep.cpus_per_trial})
    storage = folder / RAY_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SPEC).exists():  # from now on the folder is this sweep's
            logs.write_atomic(folder / SPEC, (MARK + "\n" + yaml.safe_dump(sweep.raw, sort_keys=False)).encode())
        # --resume: the same draws again (sampler_seed), each finished run skipped and each interrupted one resumed;
        # Ray Tune's own saved state is not restored (Tuner.restore unpickles it)
        tuner = tune.Tuner(
            function,
            param_space=sweep.param_space(),
            tune_config=tune.TuneConfig(num_samples=sweep.samples, reuse_actors=True,
                                        search_alg=BasicVariantGenerator(random_state=sweep.sampler_seed)),
            run_config=tune.RunConfig(name=time.strftime("sweep-%Y%m%d-%H%M%S"), storage_path=str(storage),
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=sweep.retries),
                                      callbacks=[lines.callback]),
        )  # fmt: skip
        grid = tuner.fit()
    finally:
        try:
            if started_here:
                ray.shutdown()
        finally:
            if sigterm is not None:  # None: not set from Python, nothing to put back
                signal.signal(signal.SIGTERM, sigterm)
    outcomes = [(result.config, result.error) for result in grid if result.config]
    records = collect(sweep, folder, outcomes)
    best = best_per_rule(sweep, records)
    table = best_table(sweep, best)
    logs.write_atomic(folder / BEST_JSON, json.dumps({"format": "bioprop-sweep/1", "metric": sweep.metric,
                      "mode": sweep.mode, "seeds": list(sweep.seeds), "configurations": sweep.configurations(),
                      "best": best, "trials": records}, indent=1, default=str).encode())  # fmt: skip
    logs.write_atomic(folder / BEST_MD, f"{MARK_BEST}\n{table}\n".encode())
    report = None
    if any(record["status"] == "finished" for record in records):
        from bioprop.report import study

        report = study.build_report([folder], folder, on_skip=say)
    ended = [record for record in records if record["status"] in ("finished", "diverged", "failed")]
    # Ctrl-C: Ray Tune stopped before it returned every trial or before every configuration ended (a configuration
    # drawn twice is one record)
    if len(outcomes) < sweep.configurations() or len(ended) < len(records):
        raise SweepInterrupted(folder, len(ended), sweep.configurations())
    failed = [record["name"] for record in records if record["status"] != "finished"]
    return {"out": str(folder), "best": best, "trials": records, "report": report, "table": table, "failed": failed}


# --------------------------------------------------------------------------------------------- the results


def collect(sweep: Sweep, out: Path, outcomes: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    """One record per configuration Ray Tune ran (``outcomes``: its config and its error, None if it raised none),
    read from its runs' summary.json files (the run directories are the record, whatever Ray's state says):
    ``name``, ``rule``, ``rule_opts``, ``settings``, ``runs``, ``status`` (finished when every seed finished; else
    the first other status of its runs, or ``failed`` when Ray Tune gave up on it), ``message`` (Ray's error, one
    line), ``values`` (the metric per seed; None where not finished), ``mean``, ``std`` (population, over the
    finished seeds), ``test_accuracy`` (mean)."""
    records, seen = [], set()
    for params, error in outcomes:
        rule, opts, searched = params["rule"]["name"], params["rule"]["opts"], params.get("settings", {})
        name = trial_name(rule, opts, searched)
        if name in seen:
            continue
        seen.add(name)
        runs = [out / f"{name}-s{seed}" for seed in sweep.seeds]
        summaries = []
        for run_dir in runs:
            try:
                summaries.append(logs.read_summary(run_dir))
            except BioPropError:
                summaries.append({})
        seeds = over_seeds(summaries, sweep.metric)
        statuses = seeds.pop("statuses")
        status = next((s for s in statuses if s != "finished"), "finished")
        message = " ".join(str(error).split())[-300:] if error is not None else None
        if error is not None and status not in ("finished", "diverged"):
            status = "failed"
        records.append({"name": name, "rule": rule, "rule_opts": opts, "settings": searched,
                        "runs": [str(run_dir) for run_dir in runs], "status": status, "message": message,
                        **seeds})  # fmt: skip
    return records


def best_per_rule(sweep: Sweep, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per rule, the record (:func:`collect`) whose every seed finished with the best mean metric (highest, or
    lowest for a loss; the first in the sweep's order on a tie); a rule with none is left out."""
    best: dict[str, dict[str, Any]] = {}
    sign = 1 if sweep.mode == "max" else -1
    for record in records:
        if record["status"] != "finished" or record["mean"] is None:
            continue
        held = best.get(record["rule"])
        if held is None or sign * record["mean"] > sign * held["mean"]:
            best[record["rule"]] = record
    return best


def _settings_text(record: dict[str, Any]) -> str:
    items = {**{f"{record['rule']}.{k}": v for k, v in record["rule_opts"].items()}, **record["settings"]}
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items()) or "(defaults)"


def best_table(sweep: Sweep, best: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per rule, its best configuration, the metric's mean ± std over the seeds, the test
    accuracy, and the run directories' name."""
    seeds = f"{len(sweep.seeds)} seed{'s' if len(sweep.seeds) > 1 else ''}"
    lines = [f"| rule | {sweep.metric} (mean ± std, {seeds}) | test accuracy | configuration | runs |",
             "|---|---|---|---|---|"]  # fmt: skip
    for rule in sweep.rules:
        if rule not in best:
            lines.append(f"| {rule} | no configuration finished | | | |")
            continue
        record = best[rule]
        accuracy = f"{record['test_accuracy']:.4f}" if record["test_accuracy"] is not None else ""
        lines.append(f"| {rule} | {record['mean']:.4f} ± {record['std']:.4f} | {accuracy} | {_settings_text(record)} "
                     f"| {record['name']}-s* |")  # fmt: skip
    return "\n".join(lines)
