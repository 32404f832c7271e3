"""Train a network with any learning rule, measure it against backprop, checkpoint, resume.

    summary = bioprop.train.run(RunConfig(rule="fa", data="digits", arch="mlp:64"), "runs/fa")
    summary = bioprop.train.resume("runs/fa")        # continues from the last epoch's checkpoint

Each step: ``zero_grad``, ``rule.backward(x, y)`` (the rule fills ``.grad``), a divergence check, ``step``. Each
epoch end: train (running mean over the epoch) and test loss and accuracy, the update angle to backprop on the
held-out probe batches (the first ``probe_batches`` batches of the test set), the rule's diagnostics; then
``metrics.csv``, ``summary.json`` and the checkpoint (see :mod:`bioprop.report.logs` for the files).

Determinism: the network is initialised after ``torch.manual_seed(seed)``; shuffling draws from a dedicated CPU
generator; angle probes restore the rule's state and the global RNG afterwards, so measuring never changes the
trajectory. The checkpoint is ONE safetensors file (weights, optimizer, rule state, RNG states as tensors; the
epoch, optimizer settings, metric history and config fingerprint as JSON metadata) replaced atomically, so a run
killed at any moment resumes bit-identically on the same CPU.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

import bioprop
from bioprop import data, metrics, nets, rules
from bioprop.config import RunConfig
from bioprop.errors import BioPropError, DivergenceError
from bioprop.report import logs
from bioprop.report.progress import Progress

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
CONFIG = logs.CONFIG
FORMAT = 1  # checkpoint layout version


@dataclass
class Session:
    """Everything a run holds in memory; ``history`` is what the checkpoint carries besides tensors."""

    config: RunConfig
    run_dir: Path
    dataset: data.Dataset
    net: nn.Module
    rule: rules.Rule
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator  # CPU generator of the training order
    probes: list[tuple[Tensor, Tensor]]  # held-out batches for the update angles
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    history: dict[str, Any] = field(default_factory=lambda: {"rows": [], "alignment": [], "init": {}, "traces": []})


# ------------------------------------------------------------------------------------------------- set-up


def build(config: RunConfig, run_dir: Path) -> Session:
    """Load the data, build the network, rule and optimizer; touches no file, raises BioPropError on bad input."""
    device, dtype = config.resolved_device(), config.torch_dtype()
    dataset = data.load(config.data, config.data_dir, device, dtype, config.download, config.limit)
    torch.manual_seed(config.seed)
    net = nets.build(config.arch, dataset.in_shape, dataset.n_classes, config.activation).to(device, dtype)
    entry, opts = rules.entry(config.rule), dict(config.rule_opts)
    if "seed" in entry.cls.options and "seed" not in opts and "seed" not in entry.presets:
        opts["seed"] = config.seed  # one seed for the whole run unless the rule's is given
    rule = rules.create(config.rule, net, **opts)
    params = net.parameters()
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)
    test = data.batches(dataset.test_x, dataset.test_y, config.probe_batch_size, shuffle=False)
    probes = list(itertools.islice(test, config.probe_batches))
    return Session(config, run_dir, dataset, net, rule, optimizer, shuffle, probes)


# ------------------------------------------------------------------------------------------------ measuring


def probe_angles(s: Session) -> dict[str, float]:
    """Update angles to backprop on the probe batches; the rule's state and the global RNG are restored after."""
    saved_rule = {key: value.clone() for key, value in s.rule.state_dict().items()}
    saved_rng = torch.get_rng_state()
    angles = metrics.update_angles(s.rule, s.probes)
    s.rule.load_state_dict(saved_rule)
    torch.set_rng_state(saved_rng)
    return angles


def check_finite(s: Session, loss: Tensor, epoch: int, batch: int, n_batches: int) -> None:
    """Raise DivergenceError on a non-finite loss or update; the checkpoint on disk stays the last good one."""
    what = None
    if not math.isfinite(float(loss)):
        what = f"loss is {float(loss)}"
    else:
        grads = [p.grad for p in s.net.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            what = "the update has non-finite entries"
    if what is not None:
        kept = f"the checkpoint of epoch {s.epoch} is kept" if s.epoch else "no checkpoint was written yet"
        lr = s.optimizer.param_groups[0]["lr"]
        raise DivergenceError(
            f"training diverged at epoch {epoch + 1}, step {batch + 1}/{n_batches} ({what}); {kept}; "
            f"try a smaller --lr (now {lr:g})"
        )


def train_epoch(s: Session, epoch: int, bar: Progress) -> dict[str, float]:
    """One pass over the shuffled training set; returns the running-mean train loss/accuracy and the seconds
    spent training (excluding step-level probes)."""
    c, x, y = s.config, s.dataset.train_x, s.dataset.train_y
    n_batches = math.ceil(len(x) / c.batch_size)
    loss_sum, correct, seen, probe_seconds = 0.0, 0, 0, 0.0
    start = time.perf_counter()
    for batch, (xb, yb) in enumerate(data.batches(x, y, c.batch_size, generator=s.shuffle)):
        s.optimizer.zero_grad(set_to_none=True)
        loss, logits = s.rule.backward(xb, yb)
        check_finite(s, loss, epoch, batch, n_batches)
        s.optimizer.step()
        s.step += 1
        loss_sum += float(loss) * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
        if c.probe_every and s.step % c.probe_every == 0:
            tic = time.perf_counter()
            angles = probe_angles(s)
            s.history["alignment"] += [[s.step, epoch + 1, name, angle] for name, angle in angles.items()]
            probe_seconds += time.perf_counter() - tic
        bar.advance(epoch, batch + 1, n_batches, loss_sum / seen, correct / seen)
    seconds = time.perf_counter() - start - probe_seconds
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "seconds": seconds}


def end_of_epoch(s: Session, epoch: int, lr: float, trained: dict[str, float]) -> dict[str, Any]:
    """The epoch's metrics.csv row."""
    diagnostics = s.rule.diagnostics()  # before probing, so they describe the last training step
    record_traces(s, epoch + 1, s.rule.epoch_traces())
    test_loss, test_accuracy = metrics.evaluate(s.net, s.dataset.test_x, s.dataset.test_y)
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": trained["train_loss"],
                           "train_accuracy": trained["train_accuracy"], "test_loss": test_loss,
                           "test_accuracy": test_accuracy, "seconds": trained["seconds"], "lr": lr}  # fmt: skip
    row.update({f"angle/{name}": angle for name, angle in probe_angles(s).items()})
    row.update({f"diag/{key}": float(value) for key, value in diagnostics.items()})
    return row


def record_traces(s: Session, epoch: int, traces: dict[str, list[float]]) -> None:
    """Keep per-step traces (epoch 0: the rule's preparation phase) as ``[epoch, name, step, value]`` rows."""
    s.history.setdefault("traces", [])
    for name, values in traces.items():
        s.history["traces"] += [[epoch, name, step, logs.finite_or_none(float(v))] for step, v in enumerate(values)]


def summary(s: Session, status: str, message: str | None = None) -> dict[str, Any]:
    """What summary.json holds; see :mod:`bioprop.report.logs`."""
    c, rows = s.config, s.history["rows"]
    columns = logs.metric_columns(rows)
    accuracies = [row["test_accuracy"] for row in rows]
    return {
        "rule": c.rule, "dataset": c.data, "arch": c.arch, "activation": c.activation, "seed": c.seed,
        "optimizer": c.optimizer, "lr": c.lr, "epochs": c.epochs, "epochs_done": s.epoch, "steps_done": s.step,
        "status": status, "message": message,
        "test_accuracy": accuracies[-1] if rows else None,
        "best_test_accuracy": max(accuracies) if rows else None,
        "test_loss": rows[-1]["test_loss"] if rows else None,
        "train_accuracy": rows[-1]["train_accuracy"] if rows else None,
        "epoch_seconds": [row["seconds"] for row in rows],
        "alignment_deg": {k[6:]: [row.get(k) for row in rows] for k in columns if k.startswith("angle/")},
        "alignment_init_deg": s.history["init"],
        "diagnostics": {k[5:]: [row.get(k) for row in rows] for k in columns if k.startswith("diag/")},
        "rule_options": s.rule.config, "parameters": sum(p.numel() for p in s.net.parameters()),
        "n_train": len(s.dataset.train_y), "n_test": len(s.dataset.test_y), "data_source": s.dataset.source,
        "bioprop_version": bioprop.__version__, "torch_version": torch.__version__,
        "device": str(c.resolved_device()), "dtype": c.dtype,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(s: Session) -> None:
    """Write the whole training state to ``checkpoint.safetensors`` atomically (see the module docstring)."""
    tensors = {f"model.{key}": value for key, value in s.net.state_dict().items()}
    optim = s.optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    tensors.update({f"rule.{key}": value for key, value in s.rule.state_dict().items()})
    tensors["rng.torch"], tensors["rng.shuffle"] = torch.get_rng_state(), s.shuffle.get_state()
    meta = {"format": FORMAT, "epoch": s.epoch, "step": s.step, "fingerprint": s.config.fingerprint(),
            "config": s.config.to_dict(), "optimizer_groups": optim["param_groups"],
            "optimizer_state": plain_state, "history": s.history}  # fmt: skip
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    blob = safetensors.torch.save(tensors, metadata={"bioprop": json.dumps(meta)})
    logs.write_atomic(s.run_dir / CHECKPOINT, blob)


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of a checkpoint; a missing, truncated or corrupt file is a BioPropError."""
    if not path.is_file():
        raise BioPropError(f"no checkpoint in {path.parent} (looked for {path.name})")
    try:
        blob = path.read_bytes()
        tensors = safetensors.torch.load(blob)
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        meta = json.loads(header["__metadata__"]["bioprop"])
        if meta.get("format") != FORMAT or not {"epoch", "step", "fingerprint", "history"} <= set(meta):
            raise ValueError("unknown layout")
    except Exception as exc:  # safetensors, JSON and key errors alike mean the file is unusable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BioPropError(f"corrupt or truncated checkpoint {path} ({reason})") from None
    return tensors, meta


def restore(s: Session, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Put a checkpoint's state into a freshly built session."""
    try:
        s.net.load_state_dict({key[6:]: value for key, value in tensors.items() if key.startswith("model.")})
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["optimizer_state"].items()}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
                  for group in meta["optimizer_groups"]]  # fmt: skip
        s.optimizer.load_state_dict({"state": state, "param_groups": groups})
        s.rule.load_state_dict({key[5:]: value for key, value in tensors.items() if key.startswith("rule.")})
        torch.set_rng_state(tensors["rng.torch"])
        s.shuffle.set_state(tensors["rng.shuffle"])
    except (KeyError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BioPropError(f"checkpoint in {s.run_dir} does not fit its config.yaml ({reason})") from None
    s.epoch, s.step, s.history = meta["epoch"], meta["step"], meta["history"]


# ------------------------------------------------------------------------------------------------- running


def run(config: RunConfig, out_dir: str | Path, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train from scratch into ``out_dir`` and return the summary; see the module docstring."""
    config.check()
    out = Path(out_dir)
    logs.check_out_dir(out, overwrite)
    s = build(config, out)  # every input error surfaces here, before anything is written
    logs.make_out_dir(out, overwrite)
    logs.write_atomic(out / CONFIG, config.to_yaml().encode())
    try:
        record_traces(s, 0, s.rule.prepare())
        s.history["init"] = probe_angles(s)
    except DivergenceError as exc:  # e.g. an unstable inference step size shows on the first probe batch
        logs.write_summary(out, summary(s, "diverged", str(exc)))
        raise
    if config.probe_every:
        s.history["alignment"] += [[0, 0, name, angle] for name, angle in s.history["init"].items()]
    logs.write_summary(out, summary(s, "running"))
    return loop(s, quiet)


def resume(run_dir: str | Path, quiet: bool = False) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint. Returns the summary with ``resumed_from``, the epoch
    the checkpoint held: equal to ``epochs`` when the run had already finished, which is then only reported."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BioPropError(f"no run directory {run_dir}")
    if not (run_dir / CONFIG).is_file():
        raise BioPropError(f"no {CONFIG} in {run_dir}; is it a bioprop run directory?")
    config = RunConfig.from_yaml(run_dir / CONFIG).check()
    tensors, meta = read_checkpoint(run_dir / CHECKPOINT)
    if meta["fingerprint"] != config.fingerprint():
        raise BioPropError(f"checkpoint is from another config: {run_dir / CONFIG} was changed after the run started")
    if meta["epoch"] >= config.epochs and (run_dir / MODEL).is_file():
        return {**logs.read_summary(run_dir), "resumed_from": meta["epoch"]}
    s = build(config, run_dir)
    restore(s, tensors, meta)
    resumed_from = s.epoch
    return {**loop(s, quiet), "resumed_from": resumed_from}


def loop(s: Session, quiet: bool) -> dict[str, Any]:
    """Train the remaining epochs, writing logs and a checkpoint after each; then the final model and plots."""
    c = s.config
    try:
        with Progress(c.epochs, math.ceil(len(s.dataset.train_x) / c.batch_size), s.epoch, quiet) as bar:
            for epoch in range(s.epoch, c.epochs):
                lr = c.lr_at(epoch)
                for group in s.optimizer.param_groups:
                    group["lr"] = lr
                row = end_of_epoch(s, epoch, lr, train_epoch(s, epoch, bar))
                s.history["rows"].append(row)
                s.epoch = epoch + 1
                save_checkpoint(s)  # first: the logs never get ahead of it (resuming rewrites them from it)
                write_logs(s)
                logs.write_summary(s.run_dir, summary(s, "finished" if s.epoch == c.epochs else "running"))
                bar.epoch_done(row)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "diverged" if isinstance(exc, DivergenceError) else "interrupted" if interrupted else "failed"
        message = f"interrupted; resume with `bioprop resume {s.run_dir}`" if interrupted else str(exc)
        write_logs(s)
        logs.write_summary(s.run_dir, summary(s, status, message))
        if s.history["rows"] and status == "diverged":
            write_plots(s.run_dir)
        raise
    model = {key: value.detach().cpu().contiguous() for key, value in s.net.state_dict().items()}
    about = {"bioprop_version": bioprop.__version__, "config_fingerprint": c.fingerprint(), "rule": c.rule,
             "arch": c.arch, "activation": c.activation, "dataset": c.data}  # fmt: skip
    blob = safetensors.torch.save(model, metadata={"bioprop": json.dumps(about)})  # one key: Rust orders a map anyhow
    logs.write_atomic(s.run_dir / MODEL, blob)
    write_plots(s.run_dir)
    return summary(s, "finished")


def write_logs(s: Session) -> None:
    logs.write_metrics(s.run_dir, s.history["rows"])
    if s.config.probe_every:
        logs.write_alignment(s.run_dir, s.history["alignment"])
    if s.history.get("traces"):
        logs.write_traces(s.run_dir, s.history["traces"])


def write_plots(run_dir: Path) -> None:
    from bioprop.report import plots  # matplotlib is imported only when plots are drawn

    plots.alignment_plot(run_dir)
    plots.curves_plot(run_dir)
    if (run_dir / logs.TRACES).is_file() and any(row["epoch"] for row in logs.read_csv(run_dir / logs.TRACES)):
        plots.traces_plot(run_dir)  # traces of the preparation phase alone are apical.png's business
    if any(key.startswith("diag/apical_norm") for key in (logs.read_metrics(run_dir) or [{}])[0]):
        plots.apical_plot(run_dir)
