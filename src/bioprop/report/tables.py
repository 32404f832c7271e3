"""Side-by-side comparison of runs, read from their run directories (``summary.json`` and ``config.yaml``).

    print(bioprop.report.compare(["runs/bp-s0", "runs/bp-s1", "runs/fa-s0"]))
    print(bioprop.report.compare(["runs"]))      # every run directory under runs/, at any depth

A run directory holds ``summary.json`` and ``config.yaml``. A path given that is not one is searched, at any depth,
for run directories (hidden directories are skipped; a run reached twice through symbolic links counts once); one
that holds none is an error. The same run given twice (the same path, or a link to it, or inside a directory also
given) is an error too: it would count as two seeds.

A row groups the runs that differ only in their seed: each run's whole ``config.yaml`` is compared, leaving out
``seed``, the fields the run's fingerprint leaves out (where the data came from, ``data_dir`` and ``download``, and
the number of CPU threads) and a rule ``seed`` option equal to the run's seed
(``activation: auto`` counts as the activation it stands for; rule options as the rule parsed them, defaults
included, from ``summary.json``). Runs that differ in anything else get rows of their own, and a ``settings`` column
then says what tells the rows apart: each setting that is not the same in every row, and each rule option that
differs between rows of the same rule (the ``epochs`` column already shows the epochs).

Test and best accuracy (mean ± sample standard deviation, in %), the final angle to the rule's reference gradient
per weight tensor and the seconds per epoch are over a row's *finished* runs. Runs that diverged, failed, were
interrupted or are still running are counted in the ``runs`` column (``3 (1 diverged)``) and left out of those
numbers; a row with no finished run shows ``–`` there.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioprop import data, nets
from bioprop.config import NOT_FINGERPRINTED, read_yaml
from bioprop.errors import BioPropError
from bioprop.report import logs

FINISHED = "finished"
IDENTITY = ("rule", "data", "arch")  # shown in columns of their own
NOT_SETTINGS = (*IDENTITY, "epochs")  # the epochs column shows these
RULE_OPTION = "rule_opts."  # prefix of rule options among a run's settings


@dataclass
class Run:
    """One run directory: where it is, its ``summary.json``, and the settings it is grouped by (see the module
    docstring): ``{config key: value}``, rule options as ``"rule_opts.<option>"``."""

    path: Path
    summary: dict[str, Any]
    settings: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.summary.get("status") == FINISHED


# ------------------------------------------------------------------------------------------ finding the runs


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory: a directory holding ``summary.json`` and ``config.yaml``."""
    return path.is_dir() and (path / logs.SUMMARY).is_file() and (path / logs.CONFIG).is_file()


def _search(root: Path) -> list[Path]:
    """The run directories under ``root`` (depth first, in name order), each resolved path once."""
    found, visited, stack = [], set(), [root]
    while stack:
        folder = stack.pop()
        if folder.resolve() in visited:
            continue
        visited.add(folder.resolve())
        if is_run_dir(folder):
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
            found = _search(given)
            if not found:
                raise BioPropError(
                    f"no run directories in {str(given)!r} (a run directory holds {logs.SUMMARY} and {logs.CONFIG})"
                )
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


# ----------------------------------------------------------------------------------------- reading and grouping


def _canonical_dataset(name: Any) -> Any:
    try:
        return data.canonical_name(name)
    except BioPropError:
        return name


def settings_of(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What a run computes, but for its seed (see the module docstring): its config without ``seed``, the
    fields left out of its fingerprint and a rule seed that follows the run's seed."""
    seed = config.get("seed", summary.get("seed"))
    settings = {key: value for key, value in config.items() if key not in ("seed", "rule_opts", *NOT_FINGERPRINTED)}
    settings["data"] = _canonical_dataset(settings.get("data"))
    settings["arch"] = str(settings.get("arch", "")).strip().lower()
    if settings.get("activation", "auto") == "auto":
        settings["activation"] = nets.default_activation(settings["arch"])
    options = summary.get("rule_options")
    if not isinstance(options, dict):  # a summary without the parsed options: the options as given
        options = config.get("rule_opts") or {}
    for key, value in options.items():
        if not (key == "seed" and str(value) == str(seed)):
            settings[RULE_OPTION + key] = value
    return settings


def read_run(path: Path) -> Run:
    """The run in ``path``; a summary or config that cannot be read, or lacks rule/dataset/arch, is an error."""
    summary = logs.read_summary(path)
    if not isinstance(summary, dict):
        raise BioPropError(f"{path / logs.SUMMARY} is not a JSON object; is it a bioprop run directory?")
    config = read_yaml(path / logs.CONFIG)
    for key, where in (("rule", summary), ("dataset", summary), ("arch", summary), ("rule", config)):
        if not isinstance(where.get(key), str):
            source = logs.SUMMARY if where is summary else logs.CONFIG
            raise BioPropError(f"{path / source} has no {key}; is it a bioprop run directory?")
    return Run(path, summary, settings_of(config, summary))


def _key(settings: dict[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def group(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs with equal settings (differing at most in their seed) together, groups in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_key(run.settings), []).append(run)
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
        shown.append([f"{key.removeprefix(RULE_OPTION)}={_text(mine[key])}" for key in keys])
    return shown


def _text(value: Any) -> str:
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


def _final_angles(summaries: Sequence[dict[str, Any]]) -> str:
    """Mean over the runs of each weight tensor's last measured angle (biases left out when weights exist)."""
    finals: dict[str, list[float]] = {}
    for summary in summaries:
        for name, values in (summary.get("alignment_deg") or {}).items():
            if values and values[-1] is not None and math.isfinite(values[-1]):
                finals.setdefault(name, []).append(values[-1])
    shown = {name: vs for name, vs in finals.items() if not name.endswith(".bias")} or finals
    return ", ".join(f"{name} {statistics.fmean(vs):.1f}" for name, vs in shown.items()) or "–"


def _count(runs: Sequence[Run]) -> str:
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
              "test acc (%)", "best acc (%)", "final angle to reference (°)", "s/epoch")  # fmt: skip
    body = []
    for runs, shown in zip(groups, settings, strict=True):
        first = runs[0].summary
        done = [r.summary for r in runs if r.finished]
        seconds = [s for summary in done for s in summary.get("epoch_seconds") or [] if s is not None]
        epochs = sorted({f"{r.summary.get('epochs_done', '?')}/{r.summary.get('epochs', '?')}" for r in runs})
        body.append((
            first["rule"], first["dataset"], first["arch"], *((", ".join(shown) or "–",) if with_settings else ()),
            _count(runs), ", ".join(epochs),
            _mean_std([s.get("test_accuracy") for s in done]),
            _mean_std([s.get("best_test_accuracy") for s in done]),
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
