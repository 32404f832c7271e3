"""The ``bioprop`` command line: train, resume, list rules and datasets, compare runs.

    bioprop train --rule fa --data fashion-mnist --arch mlp:256x256 --epochs 20 --lr 0.05
    bioprop resume runs/fa-fashion-mnist-mlp-256x256-s0
    bioprop rules fa
    bioprop datasets --check fashion-mnist
    bioprop compare runs/*

Every error ends with ONE line on stderr, ``bioprop: error: <message>``, that quotes the offending token, and an
exit code: 2 for bad input (a value, a file, an unknown option or command, a missing or extra argument), 3 when
training diverged, 74 when a file cannot be read or written (disk full, I/O error); an interrupted command exits
with 130 (a run keeps its last checkpoint). ``--help`` prints help; ``bioprop`` alone prints the same as
``bioprop --help``. Numbers in flags are read as in a config file (see :mod:`bioprop.config`): ``--lr 1e-3`` is
accepted, ``--lr nan`` and ``--epochs 1e3`` are not.

Threads: torch's CPU thread pool is sized by the CLI, not left at torch's default (one thread per core), because
OpenMP threads spin-wait on each other and a small network on a busy machine then runs many times slower. The
count is ``--threads N``, else ``$BIOPROP_THREADS``, else ``$OMP_NUM_THREADS``, else half the CPUs this process
may use (at least 1): a count fixed per machine, never guessed from the current load, so that runs repeat. It is
recorded in the run's ``config.yaml`` and ``resume`` reuses it (the summation order, and so the last bits of the
result, can depend on it) unless ``--threads`` is given.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

import bioprop
from bioprop import data, rules
from bioprop.config import MAX_THREADS, RunConfig, parse_number, parse_rule_opts, source_labels
from bioprop.errors import BioPropError
from bioprop.report import logs

try:
    from typer._click import exceptions as click_errors  # recent typer carries its own copy of click
except ImportError:  # pragma: no cover - older typer, on the click package
    from click import exceptions as click_errors

THREADS_ENV = ("BIOPROP_THREADS", "OMP_NUM_THREADS")  # in order of precedence, after --threads
EXIT_IO_ERROR = 74  # EX_IOERR of sysexits.h, as bioprop.report.logs.WriteError
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C

DATA_DIR_HELP = (
    "The only directory searched for dataset files (its <name>/, then itself); it must exist. Without it: "
    "$BIOPROP_DATA, else ~/.cache/bioprop/<name> and /usr/share/datasets/<name>."
)

app = typer.Typer(
    name="bioprop",
    help="Train networks with biologically plausible learning rules and compare them with backprop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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


def _float_opt(help: str, *flags: str) -> Any:
    """A number flag, taken as text and parsed by :mod:`bioprop.config` (``1e-3`` yes, ``nan`` and ``inf`` no)."""
    return _opt(help, *flags, metavar="<float>")


def _path(text: str | None, name: str) -> Path | None:
    """``text`` as a path; an empty one is bad input (``Path("")`` would silently mean the current directory)."""
    if text is None:
        return None
    if not text:
        raise BioPropError(f"{name} needs a path, not {text!r}")
    return Path(text)


# ----------------------------------------------------------------------------------------------------- threads


def default_threads() -> int:
    """Threads for torch when ``--threads`` is not given: ``$BIOPROP_THREADS``, else ``$OMP_NUM_THREADS`` (its
    first entry; OpenMP allows one count per nesting level, ``4,2``), else half the CPUs this process may use, at
    least 1. A malformed or out-of-range variable is a BioPropError naming it."""
    for name in THREADS_ENV:
        text = os.environ.get(name, "").split(",")[0]
        if text.strip():
            count = parse_number(name, text, int)
            if not 1 <= count <= MAX_THREADS:
                raise BioPropError(f"{name} must be between 1 and {MAX_THREADS}, not {text!r}")
            return int(count)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // 2)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op thread pool at ``count`` threads inside the block, as it was after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


THREADS_HELP = (
    f"Torch CPU threads (default ${THREADS_ENV[0]}, else ${THREADS_ENV[1]}, else half the CPUs); recorded in "
    "config.yaml and reused by `bioprop resume`."
)

# ------------------------------------------------------------------------------------------------------ commands


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bioprop {bioprop.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, _opt("Print the version and exit.", "--version", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Train networks with biologically plausible learning rules and compare them with backprop."""


TRAIN_HELP = "\n\n".join([
    "Train a network with a learning rule and measure its updates against backprop.",
    f"Files a run can write into its directory (see bioprop.report.logs): {', '.join(sorted(logs.RUN_FILES))}; "
    f"each is written to <name>{logs.TMP} first, then renamed.",
    "Ctrl-C keeps the last epoch's checkpoint: continue with `bioprop resume DIR`. Exit codes: 2 for bad input, "
    "3 when training diverges, 74 when a file cannot be written, 130 when interrupted.",
])  # fmt: skip


@app.command(help=TRAIN_HELP)
def train(
    rule: Annotated[str | None, _opt("Learning rule (default bp); see `bioprop rules`.")] = None,
    data_name: Annotated[str | None, _opt("Dataset (default digits); see `bioprop datasets`.", "--data")] = None,
    arch: Annotated[
        str | None,
        _opt(
            "Network: mlp:H1xH2... (e.g. mlp:256x256), lenet, or the energy-based ebm:H1x... and "
            "ebm-conv[:C1xC2] for ep, chl, generec (default mlp:256)."
        ),
    ] = None,
    activation: Annotated[
        str | None,
        _opt(
            "Hidden nonlinearity: relu, tanh, sigmoid, ...; for ebm nets hard_sigmoid, sigmoid, hard_tanh, tanh "
            "(default auto: hard_sigmoid for ebm nets, else the rule's choice, tanh for dendritic, else relu)."
        ),
    ] = None,
    epochs: Annotated[str | None, _int_opt("Number of passes over the training set (default 10).")] = None,
    batch_size: Annotated[str | None, _int_opt("Examples per step (default 64).")] = None,
    optimizer: Annotated[str | None, _opt("sgd, adam or adamw, applied to the rule's update (default sgd).")] = None,
    lr: Annotated[str | None, _float_opt("Base learning rate, e.g. 0.01 or 1e-3 (default 0.01).")] = None,
    momentum: Annotated[str | None, _float_opt("SGD momentum (default 0.9).")] = None,
    weight_decay: Annotated[str | None, _float_opt("Weight decay (default 0).")] = None,
    schedule: Annotated[
        str | None, _opt("Learning-rate schedule: none, cosine, or step (x0.1 every --step-size epochs).")
    ] = None,
    step_size: Annotated[
        str | None, _int_opt("Epochs per x0.1 decay with --schedule step (default epochs // 3).")
    ] = None,
    seed: Annotated[str | None, _int_opt("Seed of the initialisation, the shuffling and the rule (default 0).")] = None,
    device: Annotated[str | None, _opt("auto (cuda if available), cpu or cuda (default auto).")] = None,
    dtype: Annotated[str | None, _opt("float32 or float64 (default float32).")] = None,
    threads: Annotated[str | None, _int_opt(THREADS_HELP)] = None,
    out: Annotated[
        str | None, _opt("Run directory (default runs/<rule>-<data>-<arch>-s<seed>).", "--out", "-o", metavar="DIR")
    ] = None,
    rule_opt: Annotated[
        list[str] | None,
        _opt("A rule option, repeatable; see `bioprop rules NAME`.", "--rule-opt", metavar="KEY=VALUE"),
    ] = None,
    config: Annotated[
        str | None,
        _opt("YAML file of settings (keys as the long flags, with _); flags given here override it.", metavar="FILE"),
    ] = None,
    data_dir: Annotated[str | None, _opt(DATA_DIR_HELP, metavar="DIR")] = None,
    download: Annotated[
        bool | None, _opt("Download missing dataset files from their source.", "--download/--no-download")
    ] = None,
    probe_every: Annotated[
        str | None,
        _int_opt("Also measure the update angles every N steps into alignment.csv (default 0: epoch ends)."),
    ] = None,
    limit: Annotated[str | None, _int_opt("Keep only the first N training and test examples.")] = None,
    overwrite: Annotated[
        bool, _opt("Clear the run directory first if it holds an earlier run.", "--overwrite")
    ] = False,
    quiet: Annotated[bool, _opt("No progress bar, per-epoch lines or result line.", "--quiet", "-q")] = False,
) -> None:
    from bioprop import train as training  # torch-heavy; imported only when training

    given = {
        "rule": rule, "data": data_name, "arch": arch, "activation": activation, "epochs": epochs,
        "batch_size": batch_size, "optimizer": optimizer, "lr": lr, "momentum": momentum,
        "weight_decay": weight_decay, "schedule": schedule, "step_size": step_size, "seed": seed, "device": device,
        "dtype": dtype, "threads": threads, "download": download, "probe_every": probe_every, "limit": limit,
        "data_dir": str(_path(data_dir, "--data-dir")) if data_dir is not None else None,
    }  # fmt: skip
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if rule_opt:
        overrides["rule_opts"] = parse_rule_opts(rule_opt)
    config_path = _path(config, "--config")
    run_config = RunConfig.from_sources(config_path, overrides)
    if run_config.threads is None:
        run_config.threads = default_threads()
    labels = source_labels(config_path, overrides)
    run_config.check(labels)
    run_config.data = data.canonical_name(run_config.data)  # `fashion_mnist` is recorded as `fashion-mnist`
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


@app.command()
def resume(
    run_dir: Annotated[
        str, typer.Argument(help="A run directory written by `bioprop train`.", show_default=False, metavar="DIR")
    ],
    threads: Annotated[
        str | None, _int_opt("Torch CPU threads (default: the count the run recorded in its config.yaml).")
    ] = None,
    quiet: Annotated[bool, _opt("No progress bar or per-epoch lines.", "--quiet", "-q")] = False,
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
            summary = training.resume(folder, quiet=quiet)
        except KeyboardInterrupt:
            raise Interrupted(folder) from None
    if summary["resumed_from"] >= summary["epochs"]:
        typer.echo(f"{folder} already finished ({summary['epochs']}/{summary['epochs']} epochs); nothing to do")
        return
    _report(summary, folder, quiet)


def _report(summary: dict[str, Any], run_dir: Path, quiet: bool) -> None:
    if not quiet:
        typer.echo(
            f"{summary['rule']} on {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} "
            f"(best {summary['best_test_accuracy']:.4f}) after {summary['epochs_done']} "
            f"epoch{'' if summary['epochs_done'] == 1 else 's'} -> {run_dir}"
        )


@app.command("rules")
def list_rules(
    name: Annotated[str | None, typer.Argument(help="Show only this rule.", show_default=False)] = None,
) -> None:
    """List the learning rules with their options and rule cards.

    For each rule: family, paper, summary, options (name, default, help) and the card, which says for each of
    the six implausibilities of backprop (Bengio et al. 2015) whether the rule removes it (✓) or not (✗), and why.
    """
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
            options.add_row(escape(key), escape(repr(default)), escape(f"{option.help}{choices}{fixed}"))
        card = Table("", "implausibility", "why", box=None, padding=(0, 1), header_style="bold")
        for key, item in entry.card.items():
            card.add_row("[green]✓[/]" if item.removed else "[red]✗[/]", escape(key), escape(item.why))
        body = Table.grid()
        body.add_row(grid)
        body.add_row(options if entry.cls.options else "[dim]no options[/]")
        body.add_row(card)
        console.print(Panel(body, title=f"[bold]{escape(entry.name)}[/] · {escape(entry.family)}", title_align="left"))


@app.command("datasets")
def list_datasets(
    data_dir: Annotated[str | None, _opt(DATA_DIR_HELP, metavar="DIR")] = None,
    download: Annotated[str | None, _opt("Download this dataset's files, checked by SHA-256.", "--download")] = None,
    check: Annotated[str | None, _opt("Exit 0 if this dataset's files are found, else 1.", "--check")] = None,
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


@app.command()
def compare(
    run_dirs: Annotated[
        list[str],
        typer.Argument(
            help="Run directories, or directories holding runs (e.g. runs/*).", show_default=False, metavar="DIR..."
        ),
    ],
) -> None:
    """Print a Markdown table comparing runs.

    Test and best accuracy (mean ± std over runs that differ only in their seed; runs with other differences get
    their own rows and a settings column naming them), final update angle to the reference gradient per weight
    tensor, seconds per epoch. Diverged, interrupted or running runs are counted apart and left out of the means.
    A directory that is not a run is searched for run directories. The same run given twice, or two runs with the
    same configuration and seed (e.g. a copied run directory), are refused: they are not independent seeds. A
    summary.json or config.yaml field of the wrong type or range is refused, naming the file and the field.
    """
    from bioprop.report import tables

    typer.echo(tables.compare([_path(text, "DIR") for text in run_dirs]))


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


def _fail(message: str, code: int) -> None:
    typer.echo(f"bioprop: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning every error into one line on stderr and its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args or ["--help"], prog_name="bioprop", standalone_mode=False)
    except Interrupted as stop:
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
