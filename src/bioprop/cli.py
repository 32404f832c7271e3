"""The ``bioprop`` command line: train, resume, list rules and datasets, compare runs.

    bioprop train --rule fa --data fashion-mnist --arch mlp:256x256 --epochs 20 --lr 0.05
    bioprop resume runs/fa-fashion-mnist-mlp-256x256-s0
    bioprop rules fa
    bioprop datasets --check fashion-mnist
    bioprop compare runs/*

User errors end with one line on stderr, ``bioprop: error: <message>``, and exit code 2 (3 when training
diverged); an interrupted run exits with 130 and keeps its last checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from bioprop import data, rules
from bioprop.config import RunConfig, parse_rule_opts
from bioprop.errors import BioPropError

app = typer.Typer(
    name="bioprop",
    help="Train networks with biologically plausible learning rules and compare them with backprop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Interrupted(Exception):
    """Ctrl-C during training; carries the run directory so the message can say how to resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def _opt(help: str, *flags: str, **kwargs: Any) -> Any:
    return typer.Option(*flags, help=help, show_default=False, **kwargs)


@app.command()
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
            "(default relu; hard_sigmoid for ebm)."
        ),
    ] = None,
    epochs: Annotated[int | None, _opt("Number of passes over the training set (default 10).")] = None,
    batch_size: Annotated[int | None, _opt("Examples per step (default 64).")] = None,
    optimizer: Annotated[str | None, _opt("sgd, adam or adamw, applied to the rule's update (default sgd).")] = None,
    lr: Annotated[float | None, _opt("Base learning rate (default 0.01).")] = None,
    momentum: Annotated[float | None, _opt("SGD momentum (default 0.9).")] = None,
    weight_decay: Annotated[float | None, _opt("Weight decay (default 0).")] = None,
    schedule: Annotated[
        str | None, _opt("Learning-rate schedule: none, cosine, or step (x0.1 every --step-size epochs).")
    ] = None,
    step_size: Annotated[int | None, _opt("Epochs per x0.1 decay with --schedule step (default epochs // 3).")] = None,
    seed: Annotated[int | None, _opt("Seed of the initialisation, the shuffling and the rule (default 0).")] = None,
    device: Annotated[str | None, _opt("auto (cuda if available), cpu or cuda (default auto).")] = None,
    dtype: Annotated[str | None, _opt("float32 or float64 (default float32).")] = None,
    out: Annotated[
        Path | None, _opt("Run directory (default runs/<rule>-<data>-<arch>-s<seed>).", "--out", "-o")
    ] = None,
    rule_opt: Annotated[
        list[str] | None,
        _opt("A rule option, repeatable; see `bioprop rules NAME`.", "--rule-opt", metavar="KEY=VALUE"),
    ] = None,
    config: Annotated[
        Path | None, _opt("YAML file of settings (keys as the long flags, with _); flags given here override it.")
    ] = None,
    data_dir: Annotated[Path | None, _opt("Directory searched first for dataset files.")] = None,
    download: Annotated[
        bool | None, _opt("Download missing dataset files from their source.", "--download/--no-download")
    ] = None,
    probe_every: Annotated[
        int | None, _opt("Also measure the update angles every N steps into alignment.csv (default 0: epoch ends).")
    ] = None,
    limit: Annotated[int | None, _opt("Keep only the first N training and test examples.")] = None,
    overwrite: Annotated[
        bool, _opt("Clear the run directory first if it holds an earlier run.", "--overwrite")
    ] = False,
    quiet: Annotated[bool, _opt("No progress bar, per-epoch lines or result line.", "--quiet", "-q")] = False,
) -> None:
    """Train a network with a learning rule and measure its updates against backprop.

    Writes config.yaml, metrics.csv, summary.json, checkpoint.safetensors (every epoch), model.safetensors,
    alignment.png and curves.png into the run directory. Ctrl-C keeps the last epoch's checkpoint: continue
    with `bioprop resume DIR`. Exit codes: 2 for bad input, 3 when training diverges, 130 when interrupted.
    """
    from bioprop import train as training  # torch-heavy; imported only when training

    given = {
        "rule": rule, "data": data_name, "arch": arch, "activation": activation, "epochs": epochs,
        "batch_size": batch_size, "optimizer": optimizer, "lr": lr, "momentum": momentum,
        "weight_decay": weight_decay, "schedule": schedule, "step_size": step_size, "seed": seed, "device": device,
        "dtype": dtype, "data_dir": str(data_dir) if data_dir is not None else None, "download": download,
        "probe_every": probe_every, "limit": limit,
    }  # fmt: skip
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if rule_opt:
        overrides["rule_opts"] = parse_rule_opts(rule_opt)
    run_config = RunConfig.from_sources(config, overrides).check()
    run_dir = out if out is not None else Path(run_config.default_out())
    try:
        summary = training.run(run_config, run_dir, overwrite=overwrite, quiet=quiet)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    _report(summary, run_dir, quiet)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `bioprop train`.", show_default=False)],
    quiet: Annotated[bool, _opt("No progress bar or per-epoch lines.", "--quiet", "-q")] = False,
) -> None:
    """Continue an interrupted run from its last checkpoint.

    Uses the run's config.yaml; on the same CPU the result is bit-identical to an uninterrupted run. A finished
    run is only reported.
    """
    from bioprop import train as training

    try:
        summary = training.resume(run_dir, quiet=quiet)
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    if summary["resumed_from"] >= summary["epochs"]:
        typer.echo(f"{run_dir} already finished ({summary['epochs']}/{summary['epochs']} epochs); nothing to do")
        return
    _report(summary, run_dir, quiet)


def _report(summary: dict[str, Any], run_dir: Path, quiet: bool) -> None:
    if not quiet:
        typer.echo(
            f"{summary['rule']} on {summary['dataset']}: test accuracy {summary['test_accuracy']:.4f} "
            f"(best {summary['best_test_accuracy']:.4f}) after {summary['epochs_done']} epochs -> {run_dir}"
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
    data_dir: Annotated[Path | None, _opt("Directory searched first for dataset files.")] = None,
    download: Annotated[str | None, _opt("Download this dataset's files, checked by SHA-256.", "--download")] = None,
    check: Annotated[str | None, _opt("Exit 0 if this dataset's files are found, else 1.", "--check")] = None,
) -> None:
    """List the datasets and where their files were found, or how to get them.

    Files are looked for in --data-dir, $BIOPROP_DATA, ~/.cache/bioprop/<name> and /usr/share/datasets/<name>,
    in that order.
    """
    if download is not None:
        key = data.canonical_name(download)
        dest = Path(data_dir) / key if data_dir is not None else None
        path = data.download(key, dest=dest, progress=True)
        typer.echo(f"{key}: files in {path}")
        return
    if check is not None:
        found = data.find(check, data_dir)  # unknown names raise BioPropError
        if found is None:
            how = next((e["how"] for e in data.catalog(data_dir) if e["name"] == check), "see `bioprop datasets`")
            typer.echo(f"bioprop: {check} not found; {how}", err=True)
            raise typer.Exit(1)
        typer.echo(f"{check}: found in {found}")
        return
    table = Table(header_style="bold")
    table.add_column("dataset", no_wrap=True)
    table.add_column("found in", overflow="fold")
    table.add_column("how to get it", overflow="fold", ratio=1)
    for item in data.catalog(data_dir):
        found = f"[green]{escape(str(item['found']))}[/]" if item["found"] is not None else "[red]not found[/]"
        table.add_row(item["name"], found, escape(item["how"]))
    Console().print(table)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (e.g. runs/*).", show_default=False)],
) -> None:
    """Print a Markdown table comparing runs.

    Test and best accuracy (mean ± std over runs sharing rule, dataset and arch, e.g. seeds), final update angle
    to backprop per weight tensor, seconds per epoch.
    """
    from bioprop.report import tables

    typer.echo(tables.compare(run_dirs))


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app, turning user errors into one line on stderr and their exit code."""
    try:
        app(args=argv, prog_name="bioprop")
    except Interrupted as stop:
        typer.echo(
            f"bioprop: interrupted; the last checkpoint in {stop.run_dir} is kept; "
            f"continue with `bioprop resume {stop.run_dir}`",
            err=True,
        )
        sys.exit(130)
    except BioPropError as err:
        message = " ".join(str(err).split()) or type(err).__name__
        typer.echo(f"bioprop: error: {message}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
