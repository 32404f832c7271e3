"""The ``bioprop`` command line: train, resume, list rules and datasets, compare runs, run experiments.

    bioprop train --rule fa --data fashion-mnist --arch mlp:256x256 --epochs 20 --lr 0.05
    bioprop resume runs/fa-fashion-mnist-mlp-256x256-s0
    bioprop rules fa
    bioprop datasets --check fashion-mnist
    bioprop compare runs/*
    bioprop experiment --list

Every error ends with ONE line on stderr, ``bioprop: error: <message>``, that quotes the offending token as typed,
and an exit code: 2 for bad input (a value, a file, an unknown option or command, a missing or extra argument), 3
when training diverged, 74 when a file cannot be read or written (disk full, I/O error); an interrupted command exits
with 130 (a run keeps its last checkpoint). A run about to do other than it seems (a rule's pre-training as long as
the run) is said before its first step as one line ``bioprop: warning: <message>`` (:func:`warnings_as_lines`).
``--help`` prints help; ``bioprop`` alone prints the same as ``bioprop --help``. Numbers in flags are read as in a
config file (see :mod:`bioprop.config`): ``--lr 1e-3`` is accepted, ``--lr nan`` and ``--epochs 1e3`` are not.

The settings of ``bioprop train`` are not declared here: one option per field of
:class:`~bioprop.config.RunConfig` is generated from the field (:func:`setting_option`), so a new setting is a new
field, and its flag, metavar, help and default in ``--help`` follow.

Threads: torch's CPU thread pool is sized by the CLI, not left at torch's default (one thread per core), because
OpenMP threads spin-wait on each other and a small network on a busy machine then runs many times slower. The
count is ``--threads N``, else ``$BIOPROP_THREADS``, else ``$OMP_NUM_THREADS``, else half the CPUs this process
may use (at least 1): a count fixed per machine, never guessed from the current load, so that runs repeat. It is
recorded in the run's ``config.yaml`` and ``resume`` reuses it (the summation order, and so the last bits of the
result, can depend on it) unless ``--threads`` is given.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import Field, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

import bioprop
from bioprop import config as settings
from bioprop import data, rules
from bioprop.config import (
    MAX_THREADS,
    THREADS_ENV,
    RunConfig,
    parse_number,
    parse_rule_opts,
    parse_seed,
    source_labels,
    torch_threads,
)
from bioprop.errors import EXIT_INTERRUPTED, BioPropError
from bioprop.report import logs
from bioprop.rules.base import PlanWarning
from bioprop.rules.options import say

try:
    from typer._click import exceptions as click_errors  # recent typer carries its own copy of click
except ImportError:  # pragma: no cover - older typer, on the click package
    from click import exceptions as click_errors

EXIT_IO_ERROR = 74  # EX_IOERR of sysexits.h, as bioprop.report.logs.WriteError


class _NoFlagTypes:
    """Help without a ``<bool>`` type beside a flag that takes no value (``--help``, ``--version``): the help
    option click adds gets an empty metavar, as every flag declared here has (see :func:`_flag`)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


def reflow(text: str) -> str:
    """A docstring as help: its paragraphs (separated by blank lines) each joined into one line, which the help
    formatter wraps to the terminal (it keeps a docstring's own line breaks otherwise)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class Command(_NoFlagTypes, TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("help"):
            kwargs["help"] = reflow(kwargs["help"])
        super().__init__(*args, **kwargs)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The help without a column of its own for ``--no-download``: that column alone would leave the help
        texts 20 characters at 80 columns. Each such flag shows as its default (``[default: --no-download]``)."""
        negatives = {param: param.secondary_opts for param in self.params if getattr(param, "secondary_opts", None)}
        try:
            for param in negatives:
                param.secondary_opts = []
            super().format_help(ctx, formatter)
        finally:
            for param, opts in negatives.items():
                param.secondary_opts = opts


class Group(_NoFlagTypes, TyperGroup):
    pass


app = typer.Typer(
    name="bioprop",
    help="Train networks with biologically plausible learning rules and compare them with backprop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during training; carries the run directory so the message can say how to resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def _opt(help: str, *flags: str, **kwargs: Any) -> Any:
    return typer.Option(*flags, help=help, show_default=False, **kwargs)


def _int_opt(help: str, *flags: str) -> Any:
    """An integer flag, taken as text and parsed by :mod:`bioprop.config` (one rule for flags and YAML)."""
    return _opt(help, *flags, metavar="<int>")


def _flag(help: str, *flags: str, **kwargs: Any) -> Any:
    """A flag that takes no value: no metavar (typer would show ``<bool>``)."""
    return _opt(help, *flags, metavar="", **kwargs)


def _path(text: str | None, name: str) -> Path | None:
    """``text`` as a path; an empty one is bad input (``Path("")`` would silently mean the current directory)."""
    if text is None:
        return None
    if not text:
        raise BioPropError(f"{name} needs a path, not {text!r}")
    return Path(text)


# ----------------------------------------------------------------------------------------------------- threads


def thread_count(label: str, text: str) -> int:
    """``text`` (a flag's or an environment variable's value) as a thread count from 1 to MAX_THREADS; anything
    else is a BioPropError naming ``label`` and quoting ``text``."""
    count = parse_number(label, text, int)
    if not 1 <= count <= MAX_THREADS:
        raise BioPropError(f"{label} must be between 1 and {MAX_THREADS}, not {text!r}")
    return int(count)


def default_threads() -> int:
    """Threads for torch when ``--threads`` is not given: ``$BIOPROP_THREADS``, else ``$OMP_NUM_THREADS`` (its
    first entry; OpenMP allows one count per nesting level, ``4,2``), else half the CPUs this process may use, at
    least 1. A malformed or out-of-range variable is a BioPropError naming it."""
    for name in THREADS_ENV:
        text = os.environ.get(name, "").split(",")[0]
        if text.strip():
            return thread_count(name, text)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // 2)


# ------------------------------------------------------------------------------------------------------ commands


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bioprop {bioprop.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, _flag("Print the version and exit.", "--version", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Train networks with biologically plausible learning rules and compare them with backprop."""


TRAIN_HELP = "\n\n".join([
    "Train a network with a learning rule and measure its updates against backprop.",
    f"Files a run can write into its directory (see bioprop.report.logs): {', '.join(sorted(logs.run_files()))}; "
    f"each is written to <name>{logs.TMP} first, then renamed.",
    "Ctrl-C keeps the last epoch's checkpoint: continue with `bioprop resume DIR`. Exit codes: 2 for bad input, "
    "3 when training diverges, 74 when a file cannot be written, 130 when interrupted.",
])  # fmt: skip


def _setting_help(name: str) -> str:
    """The ``--help`` text of setting ``name`` (:func:`bioprop.config.help_text`), escaped for rich."""
    return escape(settings.help_text(settings.field_of(name)))


SETTINGS_PANEL = "Run settings (each also a key of --config FILE)"
TEXT_METAVARS = {int: "<int>", float: "<float>", str: "<str>"}


def setting_option(item: Field) -> inspect.Parameter:
    """The ``bioprop train`` option of the :class:`~bioprop.config.RunConfig` field ``item``, generated from it:
    the flag (:func:`bioprop.config.flag`), the help with the default (:func:`bioprop.config.help_text`) and the
    metavar. Numbers are taken as text and parsed by :mod:`bioprop.config` (one rule for flags and YAML); a bool
    is a ``--name/--no-name`` flag; a mapping (``rule_opts``) a repeatable ``KEY=VALUE``. Every option defaults to
    None, "not given", so that a value from ``--config`` stands unless a flag overrides it."""
    kind, meta, name = settings.value_kind(item.name), item.metadata, settings.flag(item.name)
    help = _setting_help(item.name)  # escaped: `[default: ...]` is not rich markup
    if kind is bool:
        option, annotation = _flag(help, f"{name}/--no-{name[2:]}", rich_help_panel=SETTINGS_PANEL), bool | None
    else:
        metavar = meta.get("metavar") or TEXT_METAVARS.get(kind, "<str>")
        option = _opt(help, name, metavar=metavar, rich_help_panel=SETTINGS_PANEL)
        annotation = list[str] | None if kind is dict else str | None
    return inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[annotation, option])  # fmt: skip


def _train_options(
    config: Annotated[
        str | None,
        _opt(
            "YAML file of settings: the keys are the names below with _ (rule_opts a mapping); flags given "
            "override it.",
            metavar="FILE",
        ),
    ] = None,
    out: Annotated[
        str | None,
        _opt(escape("Run directory. [default: runs/<rule>-<data>-<arch>-s<seed>]"), "--out", "-o", metavar="DIR"),
    ] = None,
    overwrite: Annotated[
        bool, _flag("Clear the run directory first if it holds an earlier run.", "--overwrite")
    ] = False,
    quiet: Annotated[bool, _flag("No progress bar, per-epoch lines or result line.", "--quiet", "-q")] = False,
) -> None:
    """The options of ``bioprop train`` that are not settings of the run (see :func:`train`)."""


def train(**given: Any) -> None:
    """``bioprop train``: ``given`` holds a value per :class:`RunConfig` field, None where its flag was not given,
    and the options of :func:`_train_options`; its signature, which typer reads, is set below."""
    from bioprop import train as training  # torch-heavy; imported only when training

    config, out, overwrite, quiet = (given.pop(key) for key in ("config", "out", "overwrite", "quiet"))
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if "rule_opts" in overrides:
        overrides["rule_opts"] = parse_rule_opts(overrides["rule_opts"])
    config_path = _path(config, "--config")
    run_config = RunConfig.from_sources(config_path, overrides)
    if run_config.threads is None:
        run_config.threads = default_threads()
    labels = source_labels(config_path, overrides)
    run_config.check(labels)
    run_config.data = settings.dataset_name(run_config.data)  # `Store_Recall` as `store-recall:n_train=4096,...`
    for key, applies in (("momentum", run_config.optimizer == "sgd"), ("step_size", run_config.schedule == "step")):
        if key in overrides and not applies:
            needs = "--optimizer sgd" if key == "momentum" else "--schedule step"
            raise BioPropError(f"{labels[key]} {overrides[key]!r} has no effect without {needs}")
    run_dir = _path(out, "--out") or Path(run_config.default_out())
    with torch_threads(run_config.threads):
        try:
            summary = training.run(run_config, run_dir, overwrite=overwrite, quiet=quiet)
        except KeyboardInterrupt:
            raise Interrupted(run_dir) from None
    _report(summary, run_dir, quiet)


# The signature typer reads: one option per RunConfig field, generated, then the options of the command itself.
train.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    *(setting_option(item) for item in fields(RunConfig)),
    *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in
      inspect.signature(_train_options, eval_str=True).parameters.values()),
])  # fmt: skip
app.command("train", help=TRAIN_HELP, cls=Command)(train)


@app.command(cls=Command)
def resume(
    run_dir: Annotated[
        str, typer.Argument(help="A run directory written by `bioprop train`.", show_default=False, metavar="DIR")
    ],
    threads: Annotated[
        str | None, _int_opt(escape("Torch CPU threads. [default: the count the run recorded in its config.yaml]"))
    ] = None,
    quiet: Annotated[bool, _flag("No progress bar or per-epoch lines.", "--quiet", "-q")] = False,
) -> None:
    """Continue an interrupted run from its last checkpoint.

    Uses the run's config.yaml, and the thread count recorded there unless --threads is given; on the same CPU
    the result is then bit-identical to an uninterrupted run. A finished run is only reported.
    """
    from bioprop import train as training

    folder = _path(run_dir, "DIR")
    recorded = folder / logs.CONFIG  # absent or unreadable: training.resume says so, as it would without threads
    given = {"threads": threads} if threads is not None else {}
    settings = RunConfig.from_sources(recorded if recorded.is_file() else None, given)
    if settings.threads is None:  # a run from before threads were recorded
        settings.threads = default_threads()
    settings.check(source_labels(recorded if recorded.is_file() else None, given))
    with torch_threads(settings.threads):
        try:
            summary = training.resume(folder, quiet=quiet, threads=settings.threads)
        except KeyboardInterrupt:
            raise Interrupted(folder) from None
    if summary["reported_only"]:
        typer.echo(f"{folder} already finished ({summary['epochs']}/{summary['epochs']} epochs); nothing to do")
        return
    _report(summary, folder, quiet)


def _report(summary: dict[str, Any], run_dir: Path, quiet: bool) -> None:
    if not quiet:
        accuracy = summary["test_accuracy"]
        measured = (f"test loss {summary['test_loss']:.4g} ({summary['loss']}; regression: no accuracy)"
                    if accuracy is None or math.isnan(accuracy)
                    else f"test accuracy {accuracy:.4f} (best {summary['best_test_accuracy']:.4f})")  # fmt: skip
        typer.echo(f"{summary['rule']} on {summary['dataset']}: {measured} after {summary['epochs_done']} "
                   f"epoch{'' if summary['epochs_done'] == 1 else 's'} -> {run_dir}")  # fmt: skip


@app.command("rules", cls=Command)
def list_rules(
    name: Annotated[str | None, typer.Argument(help="Show only this rule.", show_default=False)] = None,
    table: Annotated[
        bool, _flag("One table instead: rule × implausibility, each mark (✓/✗) with its reason.", "--table")
    ] = False,
) -> None:
    """List the learning rules with their options and rule cards.

    For each rule: family, paper, summary, options (name, default, help) and the card, which says for each of
    the six implausibilities of backprop (Bengio et al. 2015) whether the rule removes it (✓) or not (✗), and why.
    With --table, the cards alone as one table (the README's, as text; scripts/readme_tables.py writes it there).
    """
    if table:
        from bioprop.report import tables

        typer.echo(tables.implausibility_table(markdown=False, names=None if name is None else [name]))
        return
    entries = [rules.entry(name)] if name is not None else [rules.entry(n) for n in rules.names()]
    console = Console()
    for entry in entries:
        grid = Table.grid(padding=(0, 1))
        grid.add_row("[bold]summary[/]", escape(entry.summary))
        grid.add_row("[bold]paper[/]", escape(entry.paper))
        options = Table("option", "default", "help", box=None, padding=(0, 1), header_style="bold")
        for key, option in entry.cls.options.items():
            default = entry.presets.get(key, option.default)
            fixed = " (fixed by the name)" if key in entry.presets else ""
            choices = f" (one of {', '.join(map(str, option.choices))})" if option.choices else ""
            options.add_row(escape(key), escape(say(default)), escape(f"{option.help}{choices}{fixed}"))
        card = Table("", "implausibility", "why", box=None, padding=(0, 1), header_style="bold")
        for key, item in entry.card.items():
            card.add_row("[green]✓[/]" if item.removed else "[red]✗[/]", escape(key), escape(item.why))
        body = Table.grid()
        body.add_row(grid)
        body.add_row(options if entry.cls.options else "[dim]no options[/]")
        body.add_row(card)
        console.print(Panel(body, title=f"[bold]{escape(entry.name)}[/] · {escape(entry.family)}", title_align="left"))


@app.command("datasets", cls=Command)
def list_datasets(
    data_dir: Annotated[str | None, _opt(_setting_help("data_dir"), metavar="DIR")] = None,
    download: Annotated[
        str | None, _opt("Download this dataset's files, checked by SHA-256.", "--download", metavar="NAME")
    ] = None,
    check: Annotated[
        str | None, _opt("Exit 0 if this dataset's files are found, else 1.", "--check", metavar="NAME")
    ] = None,
) -> None:
    """List the datasets and where their files were found, or how to get them.

    A directory you name (--data-dir, else $BIOPROP_DATA) is the only one searched, its <name>/ and then itself;
    only when none is named are ~/.cache/bioprop/<name> and /usr/share/datasets/<name> searched, in that order.
    """
    folder = _path(data_dir, "--data-dir")
    if download is not None:
        key = data.canonical_name(download)
        dest = folder / key if folder is not None else None
        path = data.download(key, dest=dest, progress=True)
        typer.echo(f"{key}: files in {path}")
        return
    if check is not None:
        found = data.find(check, folder)  # unknown names raise BioPropError
        if found is None:
            how = next((e["how"] for e in data.catalog(folder) if e["name"] == check), "see `bioprop datasets`")
            typer.echo(f"bioprop: {check} not found; {how}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{check}: found in {found}")
        return
    table = Table(header_style="bold")
    table.add_column("dataset", no_wrap=True)
    table.add_column("found in", overflow="fold")
    table.add_column("how to get it", overflow="fold", ratio=1)
    for item in data.catalog(folder):
        found = f"[green]{escape(str(item['found']))}[/]" if item["found"] is not None else "[red]not found[/]"
        table.add_row(item["name"], found, escape(item["how"]))
    Console().print(table)


STUDY_PANEL = "Study: run each rule x seed (with --rules)"
#: The settings of a study's runs, as `bioprop train` declares them: every RunConfig field but those the study varies.
STUDY_SETTINGS = tuple(item for item in fields(RunConfig) if item.name not in ("rule", "seed", "rule_opts"))


def _compare_options(
    run_dirs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Run directories, or directories holding runs (e.g. runs/*), to compare; not with --rules.",
            show_default=False,
            metavar="DIR...",
        ),
    ] = None,
    study_rules: Annotated[
        str | None,
        _opt(
            "Run a study instead: these rules (comma-separated, e.g. bp,fa; see `bioprop rules`), each with every "
            "seed of --seeds and the same settings, into --out DIR/<rule>-s<seed>; then write DIR/report.md and "
            "DIR/report.html.",
            "--rules",
            metavar="R1,R2,...",
            rich_help_panel=STUDY_PANEL,
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        _opt(
            escape("Seeds of each rule's runs, comma-separated. [default: 0]"),
            "--seeds",
            metavar="S1,S2,...",
            rich_help_panel=STUDY_PANEL,
        ),
    ] = None,
    rule_opt: Annotated[
        list[str] | None,
        _opt(
            "An option of one rule of --rules, repeatable; see `bioprop rules NAME`.",
            "--rule-opt",
            metavar="RULE.KEY=VALUE",
            rich_help_panel=STUDY_PANEL,
        ),
    ] = None,
    out: Annotated[
        str | None,
        _opt("The study's folder (required with --rules).", "--out", "-o", metavar="DIR", rich_help_panel=STUDY_PANEL),
    ] = None,
    jobs: Annotated[
        str | None,
        _opt(
            escape(
                "Worker processes at most, each with max(1, CPUs // K) torch threads unless --threads is "
                "given. [default: 1]"
            ),
            "--jobs",
            "-j",
            metavar="K",
            rich_help_panel=STUDY_PANEL,
        ),
    ] = None,
) -> None:
    """The options of ``bioprop compare`` that are not settings of a run (see :func:`compare`)."""


def compare(**given: Any) -> None:
    """Print a Markdown table comparing runs, or run a study (--rules) and write its report.

    Test and best accuracy (mean ± std over runs that differ only in their seed; runs with other differences get
    their own rows and a settings column naming them), final update angle to the reference gradient per weight
    tensor, seconds per epoch. Diverged, interrupted or running runs are counted apart and left out of the means.
    A directory that is not a run is searched for run directories; one holding only part of a run's files (killed
    before it wrote summary.json) is left out with a warning. The same run given twice, or two runs with the
    same configuration and seed (e.g. a copied run directory), are refused: they are not independent seeds. A
    summary.json or config.yaml field of the wrong type or range is refused, naming the file and the field.

    With --rules R1,R2 --seeds 0,1,2 --out DIR: trains each rule x seed with the same settings (the run settings
    below, as for `bioprop train`) into DIR/<rule>-s<seed>, in --jobs worker processes; a run already finished
    there (or diverged) is skipped, an interrupted one resumed, a folder holding a run of other settings refused
    before any work. A line per run as it ends; then DIR/report.md and DIR/report.html (see `bioprop report`) and
    the table. Ctrl-C stops the workers, each keeping its last checkpoint: the same command resumes them. Exit
    code 3 when a run diverged or failed (the others are still reported).
    """
    from bioprop.report import tables

    run_dirs, names, seeds, rule_opt, out, jobs = (
        given.pop(key) for key in ("run_dirs", "study_rules", "seeds", "rule_opt", "out", "jobs")
    )
    if names is None:
        study_flags = {"--seeds": seeds, "--rule-opt": rule_opt, "--out": out, "--jobs": jobs}
        flags = [flag for flag, value in study_flags.items() if value]
        flags += [settings.flag(key) for key, value in given.items() if value is not None]
        if flags:
            raise BioPropError(f"{flags[0]} needs --rules (a study); without --rules, compare reads existing runs")
        if not run_dirs:
            raise BioPropError("missing argument 'DIR...' (the runs to compare), or --rules R1,R2 --out DIR: a study")
        paths = [_path(text, "DIR") for text in run_dirs]
        typer.echo(tables.compare(paths))
        for folder, reason in tables.half_written(paths):
            typer.echo(f"bioprop: warning: skipped {str(folder)!r} ({reason})", err=True)
        return
    from bioprop import study_runner
    from bioprop.train import sigterm_interrupts

    if run_dirs:
        raise BioPropError(f"give directories to compare ({run_dirs[0]!r}) or --rules for a study, not both")
    folder = _path(out, "--out")
    if folder is None:
        raise BioPropError("--rules needs --out DIR, the folder of the study's runs and report")
    settings_given = {key: value for key, value in given.items() if value is not None}
    data, arch, epochs = (settings_given.pop(key, None) for key in ("data", "arch", "epochs"))

    def progress(line: str) -> None:
        typer.echo(line if line.startswith("[") else f"bioprop: warning: {line}", err=True)

    try:
        with sigterm_interrupts():
            result = study_runner.run_study(names, data, arch, epochs, "0" if seeds is None else seeds,
                                            rule_opt or [], folder, jobs="1" if jobs is None else jobs,
                                            progress=progress, **settings_given)  # fmt: skip
    except study_runner.StudyInterrupted:
        _fail(f"interrupted; each run keeps its last checkpoint in {folder}; run the same command again to resume",
              EXIT_INTERRUPTED)  # fmt: skip
    if result["table"] is not None:
        typer.echo(result["table"])
    _end_of_study(result["report"], result["runs"], "runs")


def _end_of_study(report: tuple[Path, Path] | None, items: list[dict[str, Any]], noun: str) -> None:
    """Where a study's or a sweep's report is; then, when any of ``items`` (runs or configurations, each with its
    ``name`` and ``status``) did not finish, one error line listing them, exit code 3."""
    if report is not None:
        typer.echo(f"report: {report[1]} (and {report[0]})")
    failed = [item for item in items if item["status"] != "finished"]
    if failed:
        listed = ", ".join(f"{item['name']} ({item['status']})" for item in failed)
        _fail(f"error: {len(failed)} of {len(items)} {noun} did not finish: {listed}", 3)


# The signature typer reads: the options of compare itself, then one option per run setting a study shares.
compare.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in
      inspect.signature(_compare_options, eval_str=True).parameters.values()),
    *(setting_option(item) for item in STUDY_SETTINGS),
])  # fmt: skip
app.command("compare", cls=Command)(compare)


@app.command("report", cls=Command)
def report(
    run_dirs: Annotated[
        list[str],
        typer.Argument(help="Run directories, or directories holding runs.", show_default=False, metavar="DIR..."),
    ],
    out: Annotated[
        str | None,
        _opt(
            escape(
                "Folder for report.md and report.html. [default: DIR when one is given; beside it when DIR is a run]"
            ),
            "--out",
            "-o",
            metavar="DIR",
        ),  # fmt: skip
    ] = None,
) -> None:
    """Write report.md and a self-contained report.html (figures embedded) about the runs in DIR...

    A leaderboard (the rows of compare, with each row's seconds per epoch over those of bp's row), the
    implausibility matrix of the rules present, and figures: learning curves, the update angle to the reference
    gradient per weight tensor, the figures each rule declares, the seconds per epoch. Half-written, unreadable,
    running or diverged runs are skipped, each with a warning. A report.md or report.html in --out that bioprop did
    not write is refused.
    """
    from bioprop.report import study

    def warn(line: str) -> None:
        typer.echo(f"bioprop: warning: {line}", err=True)

    md, page = study.build_report([_path(text, "DIR") for text in run_dirs], _path(out, "--out"), on_skip=warn)
    typer.echo(f"wrote {md} and {page}")


def _print_catalog(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table of named entries (experiments, reproductions): the first column, the name, is never cut."""
    table = Table(header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column == columns[0], overflow="fold")
    for row in rows:
        table.add_row(row[0], *map(escape, row[1:]))
    Console().print(table)


@app.command("experiment", cls=Command)
def run_experiment(
    name: Annotated[
        str | None, typer.Argument(help="The experiment to run (see --list).", show_default=False, metavar="NAME")
    ] = None,
    out: Annotated[
        str, _opt(escape("Folder for its figures and NAME.json. [default: runs/experiments]"), metavar="DIR")
    ] = "runs/experiments",
    seed: Annotated[
        str, _int_opt(escape(f"Seed of every random draw, 0 to {settings.SEED_MAX}. [default: 0]"), "--seed")
    ] = "0",
    quick: Annotated[bool, _flag("A smaller version of the same computation, for a first look.", "--quick")] = False,
    threads: Annotated[str | None, _int_opt(escape("Torch CPU threads. [default: as for train]"), "--threads")] = None,
    show: Annotated[bool, _flag("List the experiments (name, source, summary) and exit.", "--list")] = False,
) -> None:
    """Run one experiment: it writes its figures and NAME.json (its numbers, seed, time) into --out.

    Without NAME, or with --list, lists the experiments. Only files of the names the experiment writes are written;
    one of those names that bioprop did not write is refused before any work.
    """
    from bioprop import experiments
    from bioprop.train import sigterm_interrupts

    if show and name is not None:
        raise BioPropError(f"give NAME ({name!r}) or --list, not both")
    if show or name is None:
        _print_catalog(
            ("experiment", "source", "what it shows"),
            [(e.name, e.source, e.summary) for e in map(experiments.get, experiments.names())],
        )
        return
    folder = _path(out, "--out")
    count = default_threads() if threads is None else thread_count("--threads", threads)
    with torch_threads(count), sigterm_interrupts():
        record = experiments.run_experiment(name, folder, seed=parse_seed("--seed", seed), quick=quick)
    figures = ", ".join(record["figures"]) or "no figure"
    typer.echo(f"{name}: {record['seconds']:.1f} s; wrote {folder / (name + '.json')} and {figures}")


@app.command("reproduce", cls=Command)
def run_reproduction(
    name: Annotated[
        str | None,
        typer.Argument(help="The paper's result to reproduce (see --list).", show_default=False, metavar="NAME"),
    ] = None,
    out: Annotated[
        str, _opt(escape("Folder for its figures and NAME.json. [default: runs/reproduce]"), metavar="DIR")
    ] = "runs/reproduce",
    full: Annotated[
        bool,
        _flag(
            "The paper's scale instead of the default (about a minute): minutes, over half an hour a run "
            "for bellec2020.",
            "--full",
        ),
    ] = False,
    quick: Annotated[
        bool, _flag("A smaller version of the same computation (seconds), for a first look.", "--quick")
    ] = False,
    seed: Annotated[
        str, _int_opt(escape(f"Seed of every random draw, 0 to {settings.SEED_MAX}. [default: 0]"), "--seed")
    ] = "0",
    threads: Annotated[str | None, _int_opt(escape("Torch CPU threads. [default: as for train]"), "--threads")] = None,
    show: Annotated[bool, _flag("List the reproductions (name, paper, claim) and exit.", "--list")] = False,
    every: Annotated[
        bool, _flag("Run every reproduction and write the gallery (gallery.md, gallery.html) into --out.", "--all")
    ] = False,
) -> None:
    """Reproduce a seed paper's headline result: writes its figure(s) and NAME.json (the paper's claim and value,
    ours beside it, whether it holds) into --out. With --all, every one, and the gallery page.

    Without NAME, or with --list, lists the reproductions. Only files of the names the reproduction writes are
    written; one of those names that bioprop did not write is refused before any work.
    """
    from bioprop import reproduce
    from bioprop.train import sigterm_interrupts

    if show and name is not None:
        raise BioPropError(f"give NAME ({name!r}) or --list, not both")
    if every and (show or name is not None):
        raise BioPropError("give --all alone, without NAME or --list")
    if full and quick:
        raise BioPropError("give --full or --quick, not both")
    if show or (name is None and not every):
        _print_catalog(
            ("reproduction", "paper", "claim"),
            [(r.name, r.paper, r.claim) for r in map(reproduce.get, reproduce.names())],
        )
        return
    if name is not None:
        reproduce.get(name)  # an unknown name before anything else is read
    folder = _path(out, "--out")
    scale = "full" if full else "quick" if quick else "default"
    count = default_threads() if threads is None else thread_count("--threads", threads)
    with torch_threads(count), sigterm_interrupts():
        if every:
            md, page = reproduce.gallery(folder, seed=parse_seed("--seed", seed), scale=scale,
                                         progress=lambda line: typer.echo(line, err=True))  # fmt: skip
        else:
            record = reproduce.reproduce(name, folder, seed=parse_seed("--seed", seed), scale=scale)
    if every:
        typer.echo(f"gallery: {page} (and {md})")
        return
    verdict = "holds" if record["holds"] else "does NOT hold"
    figures = ", ".join(record["figures"]) or "no figure"
    typer.echo(f"{name} ({scale}): {record['seconds']:.1f} s; the claim {verdict}; wrote "
               f"{folder / (name + '.json')} and {figures}")  # fmt: skip


@app.command("sweep", cls=Command)
def run_sweep(
    file: Annotated[
        str,
        typer.Argument(
            help="The sweep file (YAML): base settings, rules and options, search, seeds; see examples/sweep.yaml.",
            show_default=False,
            metavar="SWEEP.yaml",
        ),
    ],
    out: Annotated[
        str | None,
        _opt(
            "The sweep's folder (required): a run directory per configuration x seed, best.json, best.md, the report.",
            "--out",
            "-o",
            metavar="DIR",
        ),
    ] = None,
    address: Annotated[
        str | None,
        _opt(
            escape(
                "Join the Ray cluster at host:port (ray://host:port for Ray Client, or auto) instead of starting "
                "Ray on this machine. [default: local, every CPU this process may use]"
            ),
            "--address",
            metavar="ADDR",
        ),
    ] = None,
    resume: Annotated[
        bool,
        _flag(
            "Continue a sweep that was killed or interrupted in --out: finished runs are kept, "
            "interrupted ones resume from their checkpoints.",
            "--resume",
        ),
    ] = False,
) -> None:
    """Search rules, rule options, optimiser settings and seeds on Ray Tune (grid and random search).

    Each configuration (a rule, its options, the searched settings) is a Ray Tune trial that trains one run per
    seed into --out; a trial that crashes is retried (retries in the file). At the end: the best configuration per
    rule (mean of the metric over the seeds) printed and written to best.json and best.md, and report.md and
    report.html (`bioprop report DIR` rebuilds them). Ctrl-C stops the trials, each run keeping its last
    checkpoint; --resume continues. Needs Ray Tune: pip install 'bioprop\\[sweep]'.
    """
    from bioprop import sweep
    from bioprop.train import sigterm_interrupts

    folder = _path(out, "--out")
    if folder is None:
        raise BioPropError("missing --out DIR: the sweep's folder")

    def progress(line: str) -> None:
        typer.echo(line if line.startswith(("[", "trial ")) else f"bioprop: warning: {line}",
                   err=True)  # fmt: skip

    try:
        with sigterm_interrupts():
            result = sweep.run_sweep(file, folder, address=address, resume=resume, progress=progress)
    except sweep.SweepInterrupted as stop:
        _fail(f"interrupted after {stop.ended} of {stop.total} configurations; each run keeps its last checkpoint "
              f"in {folder}; continue with `bioprop sweep {file} --out {folder} --resume`",
              EXIT_INTERRUPTED)  # fmt: skip
    typer.echo(result["table"])
    typer.echo(f"best configuration per rule: {folder / sweep.BEST_JSON} (and {sweep.BEST_MD})")
    _end_of_study(result["report"], result["trials"], "configurations")


# ------------------------------------------------------------------------------------------------- entry point


def usage_message(err: click_errors.ClickException) -> str:
    """One line for a click usage error (unknown option or command, missing or extra argument, option without its
    value), the offending token quoted and click's suggestion kept."""
    if isinstance(err, click_errors.NoSuchOption):
        guesses = " or ".join(repr(p) for p in err.possibilities or ())
        return f"no such option {err.option_name!r}" + (f"; did you mean {guesses}?" if guesses else "")
    extra = re.search(r"unexpected extra arguments?(?:\(s\))? \((.*)\)", err.message)
    if extra is not None:
        return f"unexpected extra argument {extra.group(1)!r}"
    sentences = " ".join(err.format_message().split()).rstrip(".").split(". ")
    return "; ".join(s[:1].lower() + s[1:] for s in sentences)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Inside the block, each :class:`~bioprop.rules.base.PlanWarning` (a run about to do other than it seems, said
    before its first step) is printed as one line on stderr, ``bioprop: warning: <message>``, every time it is given;
    other warnings as Python shows them. The warning filters and ``warnings.showwarning`` are restored after."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", PlanWarning)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], *where: Any, **more: Any) -> None:
            if issubclass(category, PlanWarning):
                typer.echo(f"bioprop: warning: {' '.join(str(message).split())}", err=True)
            else:
                shown(message, category, *where, **more)

        warnings.showwarning = show
        yield


def _fail(message: str, code: int) -> None:
    typer.echo(f"bioprop: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning every error into one line on stderr and its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        with warnings_as_lines():
            code = app(args=args or ["--help"], prog_name="bioprop", standalone_mode=False)
    except Interrupted as stop:
        if not stop.run_dir.exists():
            _fail("interrupted before anything was written", EXIT_INTERRUPTED)
        if not (stop.run_dir / logs.CHECKPOINT).is_file():
            _fail(f"interrupted before the first checkpoint: nothing to resume in {stop.run_dir}; start again with "
                  "--overwrite", EXIT_INTERRUPTED)  # fmt: skip
        _fail(f"interrupted; the last checkpoint in {stop.run_dir} is kept; "
              f"continue with `bioprop resume {stop.run_dir}`", EXIT_INTERRUPTED)  # fmt: skip
    except BioPropError as err:
        _fail(f"error: {' '.join(str(err).split()) or type(err).__name__}", err.exit_code)
    except click_errors.ClickException as err:
        _fail(f"error: {usage_message(err)}", err.exit_code)
    except KeyboardInterrupt:  # outside a command: while parsing, or after it
        _fail("interrupted", EXIT_INTERRUPTED)
    except OSError as err:
        where = f" {str(err.filename)!r}" if err.filename is not None else ""
        _fail(f"error: cannot read or write{where}: {err.strerror or err}", EXIT_IO_ERROR)
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command other than train/resume into this code
        _fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
