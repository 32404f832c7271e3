"""Side-by-side comparison of runs, read from their run directories (``summary.json`` and ``config.yaml``).

    print(bioprop.report.compare(["runs/bp-s0", "runs/bp-s1", "runs/fa-s0"]))
    print(bioprop.report.compare(["runs"]))      # every run directory under runs/, at any depth

A run directory holds ``summary.json`` and ``config.yaml``. A path given that is not one is searched, at any depth,
for run directories (hidden directories are skipped; a run reached twice through symbolic links counts once); one
that holds none is an error. A directory that looks like a run but lacks one of the two (:func:`half_written`) is
not counted; ``bioprop compare`` warns about it. The same run given twice (the same path, or a link to it, or inside
a directory also given) is an error too: it would count as two seeds.

A row groups the runs that differ only in their seed: each run's whole ``config.yaml`` is compared, leaving out
``seed``, the fields the run's fingerprint leaves out (where the data came from, ``data_dir`` and ``download``, and
the number of CPU threads) and a rule ``seed`` option equal to the run's seed
(``activation: auto`` counts as the activation it stands for; rule options as the rule parsed them, defaults
included, from ``summary.json``). Runs that differ in anything else get rows of their own, and a ``settings`` column
then says what tells the rows apart: each setting that is not the same in every row, and each rule option that
differs between rows of the same rule (the ``epochs`` column already shows the epochs).

Test and best accuracy (mean ± sample standard deviation, in %), the final test loss (mean ± standard deviation,
with the run's loss: the figure of a regression run, which has no accuracy), the final angle to the rule's
reference gradient per weight tensor and the seconds per epoch are over a row's *finished* runs. Runs that
diverged, failed, were interrupted or are still running are counted in the ``runs`` column (``3 (1 diverged)``)
and left out of those numbers; a row with no finished run shows ``–`` there. A run whose summary says ``running``
while no process holds its lock (:func:`bioprop.report.logs.held`) was killed before it could say so: interrupted.

Two runs with the same settings *and* the same seed (a run directory copied, or a run repeated) are refused, naming
both: they are not independent seeds, and counting both would shrink the standard deviation and inflate the count.

What compare reads is checked before any row is built (:func:`check_summary`): in ``summary.json``, ``rule``,
``dataset`` and ``arch`` are text; ``status`` is text; ``seed`` an integer; ``epochs`` and ``epochs_done`` whole
numbers ≥ 0; ``test_accuracy`` and ``best_test_accuracy`` fractions from 0 to 1; ``epoch_seconds`` a list of
seconds ≥ 0; ``alignment_deg`` an object of lists (one per weight tensor) of angles from 0 to 180; ``rule_options``
an object; in ``config.yaml``, ``rule`` is text, ``seed`` an integer and ``rule_opts`` a mapping. Every number is
finite, and every field but rule, dataset and arch may be null or absent (a list's entries may be null). Anything
else is a one-line :class:`~bioprop.errors.BioPropError` naming the file and the field and quoting the value.

:func:`implausibility_table` renders every rule's card (rule × the six implausibilities of backprop, Bengio et al.
2015, each cell a mark, ✓ removed or ✗ not, and the card's reason) as Markdown, as in the README, or as plain
text for a terminal (``bioprop rules --table``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioprop import data, nets, rules
from bioprop.config import ADDED_LATER, NOT_FINGERPRINTED, read_yaml
from bioprop.errors import BioPropError
from bioprop.report import logs

FINISHED = "finished"
IDENTITY = ("rule", "data", "arch")  # shown in columns of their own
NOT_SETTINGS = (*IDENTITY, "epochs")  # the epochs column shows these
RULE_OPTION = "rule_opts."  # prefix of rule options among a run's settings
REQUIRED = ("rule", "dataset", "arch")  # a summary without these is not a run's
RESUME_HINT = re.compile(r"`bioprop resume [^`]*`")  # the command a stopped run's message names, with its path
RUN_HINTS = (logs.MARKER, logs.CONFIG, logs.SUMMARY, logs.METRICS)  # a directory with one of these is a run's


@dataclass
class Run:
    """One run directory: where it is, its ``summary.json``, the settings it is grouped by (see the module
    docstring: ``{config key: value}``, rule options as ``"rule_opts.<option>"``) and its seed (None when neither
    file records one)."""

    path: Path
    summary: dict[str, Any]
    settings: dict[str, Any]
    seed: int | None = None

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == FINISHED


# ------------------------------------------------------------------------------------------ finding the runs


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: a directory holding ``summary.json`` and ``config.yaml``."""
    return path.is_dir() and (path / logs.SUMMARY).is_file() and (path / logs.CONFIG).is_file()


def looks_like_run(path: Path) -> bool:
    """Whether ``path`` holds one of :data:`RUN_HINTS`: a run directory, whole or half-written."""
    return any((path / name).exists() for name in RUN_HINTS)


def incomplete(folder: Path) -> str | None:
    """Why ``folder`` is not a whole run directory (``"no summary.json: half-written or not a run"``), or None when
    it holds both ``summary.json`` and ``config.yaml``."""
    missing = [name for name in (logs.SUMMARY, logs.CONFIG) if not (folder / name).is_file()]
    return f"no {' and no '.join(missing)}: half-written or not a run" if missing else None


def half_written(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """The directories among and under ``paths`` that look like a run (:func:`looks_like_run`) but lack
    ``summary.json`` or ``config.yaml`` (a run killed before it wrote both, or not a run), each with the reason
    (:func:`incomplete`). :func:`find_runs` does not count them; ``bioprop compare`` warns about each. Paths that
    do not exist or are files are left out."""
    visited: set[Path] = set()
    found = [path for given in map(Path, paths) if given.is_dir() for path in search(given, looks_like_run, visited)]
    return [(path, reason) for path in found if (reason := incomplete(path)) is not None]


def skipped_text(skipped: Sequence[tuple[Path, str]]) -> str:
    """The first of the (path, reason) pairs ``skipped`` as an error names it, ``skipped 'PATH' (reason)``, with
    `` and N more`` for the others."""
    (first, reason), more = skipped[0], len(skipped) - 1
    return f"skipped {str(first)!r} ({reason})" + (f" and {more} more" if more else "")


def search(root: Path, is_run: Callable[[Path], bool] = is_run_dir, visited: set[Path] | None = None) -> list[Path]:
    """The folders under ``root`` (``root`` included) that ``is_run`` accepts, depth first, in name order, not
    looking inside them; hidden folders skipped; each resolved path once (``visited``, shared between calls when
    given: a folder reached again through a link or another root is skipped)."""
    found, stack = [], [root]
    visited = set() if visited is None else visited
    while stack:
        folder = stack.pop()
        if folder.resolve() in visited:
            continue
        visited.add(folder.resolve())
        if is_run(folder):
            found.append(folder)
            continue
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            raise BioPropError(f"cannot read {str(folder)!r} ({exc.strerror or exc})") from None
        stack += reversed(children)
    return found


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories among ``paths`` and under those that are not run directories, in order.

    Raises :class:`BioPropError` naming the path when one does not exist, is a file, holds no run directory, or
    when a run would be counted twice (given twice, as a link to one given, or inside a directory given).
    """
    if not paths:
        raise BioPropError("compare needs at least one run directory")
    seen: dict[Path, Path] = {}  # resolved path -> the path it was reached by
    runs: list[Path] = []
    for given in map(Path, paths):
        if is_run_dir(given):
            found = [given]
        elif given.is_dir():
            found = search(given)
            if not found:
                half = half_written([given])
                why = f"; {skipped_text(half)}" if half else ""
                raise BioPropError(f"no run directories in {str(given)!r} (a run directory holds {logs.SUMMARY} and "
                                   f"{logs.CONFIG}){why}")  # fmt: skip
        elif given.exists():
            raise BioPropError(f"{str(given)!r} is not a run directory (one holds {logs.SUMMARY} and {logs.CONFIG})")
        else:
            raise BioPropError(f"run directory {str(given)!r} does not exist")
        for run in found:
            first = seen.get(run.resolve())
            if first is not None:
                also = "" if first == run else f" (also reached as {str(first)!r})"
                raise BioPropError(f"run directory {str(run)!r} is given twice{also}; each run may count only once")
            seen[run.resolve()] = run
            runs.append(run)
    return runs


# ------------------------------------------------------------------------------------ what a run directory holds


def _number_from(low: float, high: float) -> Callable[[Any], bool]:
    """A check passing null and finite numbers (not booleans) from ``low`` to ``high``."""

    def ok(value: Any) -> bool:
        if value is None:
            return True
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high

    return ok  # NaN fails both comparisons and ±inf fails one, so only finite numbers pass


def _integer(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _count(value: Any) -> bool:
    return _integer(value) and (value is None or value >= 0)


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _mapping(value: Any) -> bool:
    return value is None or isinstance(value, dict)


# field: (form, check of each value, what each value must be). "one": the field is the value; "list": a list of
# values; "per tensor": an object {weight tensor: list of values}. A list or object field may also be null.
Field = tuple[str, Callable[[Any], bool], str]
SUMMARY_FIELDS: dict[str, Field] = {
    "rule": ("one", _text, "text"),
    "dataset": ("one", _text, "text"),
    "arch": ("one", _text, "text"),
    "status": ("one", _text, "text or null"),
    "seed": ("one", _integer, "an integer or null"),
    "epochs": ("one", _count, "a whole number ≥ 0 or null"),
    "epochs_done": ("one", _count, "a whole number ≥ 0 or null"),
    "test_accuracy": ("one", _number_from(0, 1), "a finite number from 0 to 1 (a fraction, not %) or null"),
    "best_test_accuracy": ("one", _number_from(0, 1), "a finite number from 0 to 1 (a fraction, not %) or null"),
    "epoch_seconds": ("list", _number_from(0, math.inf), "a finite number of seconds ≥ 0 or null"),
    "alignment_deg": ("per tensor", _number_from(0, 180), "a finite angle from 0 to 180 degrees or null"),
    "rule_options": ("one", _mapping, "an object or null"),
}
CONFIG_FIELDS: dict[str, Field] = {
    "rule": ("one", _text, "text"),
    "seed": ("one", _integer, "an integer or null"),
    "rule_opts": ("one", _mapping, "a mapping or null"),
}
QUOTE_MAX = 60  # characters of a bad value quoted in an error


def _quote(value: Any) -> str:
    """The value as it is written in the JSON file, quoted: ``'"x"'`` (text), ``'85.48'``, ``'[1, 2]'``, ``'NaN'``."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return repr(text if len(text) <= QUOTE_MAX else text[: QUOTE_MAX - 1] + "…")


def check_fields(path: Path, values: dict[str, Any], fields: dict[str, Field], required: Sequence[str] = ()) -> None:
    """Check the ``fields`` of ``values`` (read from the file ``path``) that are there; see the module docstring.

    Raises :class:`BioPropError` naming the file and the field (``epoch_seconds[1]``,
    ``alignment_deg['1.weight'][0]``) and quoting the value when one is not what ``fields`` says, or when a field
    in ``required`` is missing or null."""
    for name, (form, ok, what) in fields.items():
        value = values.get(name)
        if value is None and name in required:
            raise BioPropError(f"{str(path)!r} has no {name}; is it a bioprop run directory?")
        cells = [(name, value)] if form == "one" else []
        if form == "list" and value is not None:
            if not isinstance(value, list):
                raise BioPropError(f"{str(path)!r}: {name} must be a list, each {what}; not {_quote(value)}")
            cells = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
        if form == "per tensor" and value is not None:
            if not isinstance(value, dict):
                raise BioPropError(f"{str(path)!r}: {name} must be an object of lists (one per weight tensor), "
                                   f"not {_quote(value)}")  # fmt: skip
            for tensor, series in value.items():
                if not isinstance(series, list):
                    raise BioPropError(f"{str(path)!r}: {name}[{tensor!r}] must be a list, each {what}; "
                                       f"not {_quote(series)}")  # fmt: skip
                cells += [(f"{name}[{tensor!r}][{i}]", item) for i, item in enumerate(series)]
        for field, item in cells:
            if not ok(item):
                raise BioPropError(f"{str(path)!r}: {field} must be {what}, not {_quote(item)}")


def check_summary(path: Path, summary: Any) -> dict[str, Any]:
    """``summary`` (read from the file ``path``) when it is a JSON object holding what compare reads (see the module
    docstring); otherwise a one-line :class:`BioPropError` naming the file and the field and quoting the value."""
    if not isinstance(summary, dict):
        raise BioPropError(f"{str(path)!r} is not a JSON object; is it a bioprop run directory?")
    check_fields(path, summary, SUMMARY_FIELDS, REQUIRED)
    return summary


# ----------------------------------------------------------------------------------------- reading and grouping


def _canonical_dataset(name: Any) -> Any:
    try:
        return data.canonical_name(name)
    except BioPropError:
        return name


def settings_of(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What a run computes, but for its seed (see the module docstring): its config without ``seed``, the
    fields left out of its fingerprint and a rule seed that follows the run's seed; settings and rule options added
    after the run was written count at their defaults, which the run used."""
    seed = seed_of(config, summary)
    settings = {key: value for key, value in config.items() if key not in ("seed", "rule_opts", *NOT_FINGERPRINTED)}
    for key, default in ADDED_LATER.items():  # a config.yaml written before the setting existed ran at its default
        settings.setdefault(key, default)
    settings["data"] = _canonical_dataset(settings.get("data"))
    settings["arch"] = str(settings.get("arch", "")).strip().lower()
    recorded = summary.get("activation")
    if settings.get("activation", "auto") == "auto" and isinstance(recorded, str) and recorded != "auto":
        settings["activation"] = recorded  # what the run resolved auto to (e.g. spike, tanh for recurrent nets)
    elif settings.get("activation", "auto") == "auto":
        settings["activation"] = nets.default_activation(settings["arch"])
        declared = rules.entry(config["rule"]).cls.activation if config.get("rule") in rules.names() else None
        if settings["activation"] == "relu" and declared:
            settings["activation"] = declared
    options = summary.get("rule_options")
    if not isinstance(options, dict):  # a summary without the parsed options: the options as given
        options = config.get("rule_opts") or {}
    if config.get("rule") in rules.names():  # an option added since the run was written: it ran at the default
        declared = rules.entry(config["rule"]).cls.options
        options = {**{key: option.default for key, option in declared.items() if key != "seed"}, **options}
    for key, value in options.items():
        if not (key == "seed" and str(value) == str(seed)):
            settings[RULE_OPTION + key] = value
    return settings


def seed_of(config: dict[str, Any], summary: dict[str, Any]) -> int | None:
    """The run's seed: ``config.yaml``'s, else ``summary.json``'s, else None."""
    return config["seed"] if config.get("seed") is not None else summary.get("seed")


def read_run(path: Path) -> Run:
    """The run in ``path``. A summary or config that cannot be read, lacks rule/dataset/arch, or has a field compare
    reads of the wrong type or range (see the module docstring) is a :class:`BioPropError` naming file and field."""
    summary = check_summary(path / logs.SUMMARY, logs.read_summary(path))
    if summary.get("status") == "running" and not logs.held(path):  # its process died before it could say so
        summary = {**summary, "status": "interrupted", "message": "its process ended without recording how (killed, "
                   f"or its machine stopped); `bioprop resume {path}` continues from its last checkpoint"}  # fmt: skip
    elif isinstance(summary.get("message"), str):  # a run moved or copied since: its hint names where it is now
        summary = {**summary, "message": RESUME_HINT.sub(f"`bioprop resume {path}`", summary["message"])}
    config = read_yaml(path / logs.CONFIG)
    check_fields(path / logs.CONFIG, config, CONFIG_FIELDS, required=("rule",))
    return Run(path, summary, settings_of(config, summary), seed_of(config, summary))


def _key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def group(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs with equal settings (differing only in their seed) together, groups in order of first appearance.

    Raises :class:`BioPropError` naming both runs when two have the same settings and the same seed: they are not
    independent seeds (one is likely a copy of the other)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        mates = groups.setdefault(_key(run.settings), [])
        twin = next((mate for mate in mates if mate.seed == run.seed), None)
        if twin is not None:
            seed = "no seed recorded" if run.seed is None else f"seed {run.seed}"
            raise BioPropError(
                f"runs {str(twin.path)!r} and {str(run.path)!r} have the same configuration and seed ({seed}): "
                "they are not independent seeds (is one a copy of the other?); give only one of them"
            )
        mates.append(run)
    return list(groups.values())


def distinguishing(groups: Sequence[list[Run]]) -> list[list[str]]:
    """Per group, the settings that tell it apart from the other rows: each setting (not a rule option) whose value
    is not the same in every group, and each rule option whose value differs between groups of the same rule."""
    settings = [g[0].settings for g in groups]

    def varies(key: str, among: Sequence[dict[str, Any]]) -> bool:
        return len({_key({key: s[key]}) if key in s else None for s in among}) > 1

    shown = []
    for mine in settings:
        same_rule = [s for s in settings if s.get("rule") == mine.get("rule")]
        keys = [key for key in mine if key not in NOT_SETTINGS
                and varies(key, same_rule if key.startswith(RULE_OPTION) else settings)]  # fmt: skip
        shown.append([f"{key.removeprefix(RULE_OPTION)}={_shown(mine[key])}" for key in keys])
    return shown


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------------------------------------------- the table


def _mean_std(values: Sequence[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _loss(summaries: Sequence[dict[str, Any]]) -> str:
    """The final test loss, mean ± sample standard deviation, with the loss's name (``ce``, ``se``)."""
    values = [s["test_loss"] for s in summaries if isinstance(s.get("test_loss"), (int, float))]
    if not values:
        return "–"
    name = summaries[0].get("loss") or ""
    spread = f" ± {statistics.stdev(values):.3g}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4g}{spread} {name}".strip()


def _final_angles(summaries: Sequence[dict[str, Any]]) -> str:
    """Mean over the runs of each weight tensor's last measured angle (biases left out when weights exist)."""
    finals: dict[str, list[float]] = {}
    for summary in summaries:
        for name, values in (summary.get("alignment_deg") or {}).items():
            if values and values[-1] is not None:  # finite: checked on reading
                finals.setdefault(name, []).append(values[-1])
    shown = {name: vs for name, vs in finals.items() if not name.endswith(".bias")} or finals
    return ", ".join(f"{name} {statistics.fmean(vs):.1f}" for name, vs in shown.items()) or "–"


def _or_unknown(value: Any) -> str:
    return "?" if value is None else str(value)


def _runs(runs: Sequence[Run]) -> str:
    """``"3"``, or ``"3 (1 diverged, 1 running)"`` when not every run finished."""
    others = Counter(str(r.summary.get("status") or "unknown") for r in runs if not r.finished)
    detail = ", ".join(f"{n} {status}" for status, n in others.items())
    return f"{len(runs)} ({detail})" if detail else str(len(runs))


def table(paths: Sequence[str | Path]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and one row per group of runs found in ``paths`` (see the module docstring); the ``settings``
    column is there only when some rows differ in more than rule, dataset, arch and epochs."""
    groups = group([read_run(path) for path in find_runs(paths)])
    settings = distinguishing(groups)
    with_settings = any(settings)
    header = ("rule", "dataset", "arch", *(("settings",) if with_settings else ()), "runs", "epochs",
              "test acc (%)", "best acc (%)", "test loss", "final angle to reference (°)", "s/epoch")  # fmt: skip
    body = []
    for runs, shown in zip(groups, settings, strict=True):
        first = runs[0].summary
        done = [r.summary for r in runs if r.finished]
        seconds = [s for summary in done for s in summary.get("epoch_seconds") or [] if s is not None]
        epochs = sorted({f"{_or_unknown(r.summary.get('epochs_done'))}/{_or_unknown(r.summary.get('epochs'))}"
                         for r in runs})  # fmt: skip
        body.append((
            first["rule"], first["dataset"], first["arch"], *((", ".join(shown) or "–",) if with_settings else ()),
            _runs(runs), ", ".join(epochs),
            _mean_std([s.get("test_accuracy") for s in done]),
            _mean_std([s.get("best_test_accuracy") for s in done]),
            _loss(done),
            _final_angles(done),
            f"{statistics.fmean(seconds):.2f}" if seconds else "–",
        ))  # fmt: skip
    return header, body


def compare(paths: Sequence[str | Path]) -> str:
    """A Markdown table comparing the runs in and under ``paths`` (see the module docstring)."""
    header, body = table(paths)
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


# ------------------------------------------------------------------------------------ the implausibility table

MARKS = {True: "✓", False: "✗"}  # removed, not removed
IMPLAUSIBILITY_SOURCE = "Bengio et al. 2015, arXiv:1502.04156"


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: ``|`` escaped, line breaks as spaces."""
    return " ".join(text.split()).replace("|", "\\|")


def implausibility_table(markdown: bool = True, names: Sequence[str] | None = None) -> str:
    """Every rule's card, rule × implausibility (the six of :data:`bioprop.rules.IMPLAUSIBILITIES`, in that
    order), each cell the mark (✓ the rule removes it, ✗ it does not) and the card's reason; ``names`` picks and
    orders the rules (default: every registered rule, in :func:`bioprop.rules.names` order; an unknown name raises
    :class:`BioPropError`).

    ``markdown=True``: a legend of the six (one bullet each), then a Markdown table with a row per rule and a
    column per implausibility (the README's table, ``scripts/readme_tables.py``). ``markdown=False``, for a
    terminal: the legend, a compact table of the marks (a column per implausibility), then per rule one line per
    implausibility with its mark and reason."""
    entries = [rules.entry(name) for name in (rules.names() if names is None else names)]
    keys = list(rules.IMPLAUSIBILITIES)
    if markdown:
        legend = [f"- **{key}**: {_cell(about)}" for key, about in rules.IMPLAUSIBILITIES.items()]
        header = "| rule | " + " | ".join(keys) + " |"
        rows = [f"| `{entry.name}` | " + " | ".join(f"{MARKS[entry.card[key].removed]} {_cell(entry.card[key].why)}"
                                                   for key in keys) + " |" for entry in entries]  # fmt: skip
        intro = f"✓: the rule removes the implausibility, ✗: it does not ({IMPLAUSIBILITY_SOURCE}):"
        return "\n".join([intro, "", *legend, "", header, "|" + "---|" * (len(keys) + 1), *rows])
    width = max(map(len, keys))
    legend = [f"  {key.ljust(width)}  {about}" for key, about in rules.IMPLAUSIBILITIES.items()]
    rule_width = max([len("rule"), *(len(entry.name) for entry in entries)])
    marks = [("rule".ljust(rule_width), *keys)]
    marks += [(entry.name.ljust(rule_width), *(MARKS[entry.card[key].removed] for key in keys)) for entry in entries]
    widths = [max(len(row[i]) for row in marks) for i in range(len(keys) + 1)]
    matrix = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in marks]
    reasons = []
    for entry in entries:
        reasons += ["", entry.name]
        reasons += [f"  {MARKS[entry.card[key].removed]} {key.ljust(width)}  {' '.join(entry.card[key].why.split())}"
                    for key in keys]  # fmt: skip
    intro = f"✓ the rule removes the implausibility, ✗ it does not ({IMPLAUSIBILITY_SOURCE}):"
    return "\n".join([intro, *legend, "", *matrix, *reasons])
