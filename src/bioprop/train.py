"""Train a network with any learning rule, measure it against backprop, checkpoint, resume.

    summary = bioprop.train.run(RunConfig(rule="fa", data="digits", arch="mlp:64"), "runs/fa")
    summary = bioprop.train.resume("runs/fa")        # continues from the last epoch's checkpoint

Each step: ``zero_grad``, ``rule.backward(x, y)`` (the rule fills ``.grad``), a divergence check, ``step``. Each
epoch end: train (running mean over the epoch) and test loss and accuracy, the update angle to backprop on the
held-out probe batches (the first ``probe_batches`` batches of the test set), the rule's diagnostics; then
``metrics.csv``, ``summary.json`` and the checkpoint (see :mod:`bioprop.report.logs` for the files).

Determinism: the network is initialised after ``torch.manual_seed(seed)``; shuffling draws from a dedicated CPU
generator; angle probes call the pure ``rule.grads`` and leave the global RNG as they found it, so measuring never
changes the trajectory. Train and test loss are the run's one output loss (``rule.loss``, named in summary.json);
test predictions go through ``rule.predict``.

The checkpoint is ONE safetensors file (weights, optimizer, rule state, RNG states as tensors; the epoch, optimizer
settings, metric history and config fingerprint as JSON metadata) replaced atomically, so a run killed at any
moment resumes bit-identically on the same CPU. Its metadata holds the SHA-256 of its tensors
(:func:`payload_sha256`), checked with their finiteness when it is read, so a damaged checkpoint is refused as
such. Nothing is lost: every input (config, data, network size against the memory available, run directory) is
checked before anything is written; a run directory is held by one process at a time and cleared only of what
bioprop wrote (see :mod:`bioprop.report.logs`); a run that stops early (Ctrl-C, SIGTERM, a divergence, a file that
cannot be written) records why in ``summary.json``, keeps its last checkpoint and can be resumed.

Before the first step (of a fresh run, or of a resumed one) the rule is told how many steps the run will make, and
what it says a run of that length does other than it seems (:meth:`bioprop.rules.Rule.plan_warnings`, e.g. a
pre-training of the feedback that lasts the whole run) is given as a :class:`~bioprop.rules.base.PlanWarning`
(:func:`warn_plan`), which the CLI prints as ``bioprop: warning: ...``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor, nn

import bioprop
from bioprop import checks, data, metrics, nets, rules
from bioprop.config import MAX_THREADS, NOT_FINGERPRINTED, RunConfig, dataset_name, short_dataset_name, torch_threads
from bioprop.errors import BioPropError, DivergenceError
from bioprop.report import logs
from bioprop.report.progress import Progress
from bioprop.rules.base import PlanWarning

CHECKPOINT = logs.CHECKPOINT
MODEL = logs.MODEL
CONFIG = logs.CONFIG
FORMAT = 2  # checkpoint layout version; 2 added the tensors' SHA-256 (1 is still read, unverified)
GIB = 2**30


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, ``docker stop``) during training; handled exactly as Ctrl-C is."""


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
    validation: tuple[Tensor, Tensor] | None  # the held-out training examples (--validation), None without
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    history: dict[str, Any] = field(default_factory=lambda: {"rows": [], "alignment": [], "init": {}, "traces": []})


# ------------------------------------------------------------------------------------------------- set-up


def build(config: RunConfig, run_dir: Path) -> Session:
    """Load the data, build the network, rule and optimizer; touches no file, raises BioPropError on bad input
    (including non-finite data and a network too large for the memory available, see :func:`check_memory`)."""
    device, dtype = config.resolved_device(), config.torch_dtype()
    dataset = data.load(config.data, config.data_dir, device, dtype, config.download, config.limit)
    config.check_arch(dataset.in_shape, dataset.n_classes, dataset.temporal)  # for the data as it is, not as assumed
    dataset, validation = hold_out(dataset, config.validation)
    bad = checks.first_nonfinite([("train_x", dataset.train_x), ("test_x", dataset.test_x)])
    if bad is not None:
        raise BioPropError(f"dataset {config.data} ({dataset.source}) has non-finite values in {bad}: they come "
                           f"from the data, before any training")  # fmt: skip
    check_memory(config, dataset.in_shape, dataset.n_classes, max(len(dataset.train_x), len(dataset.test_x)))
    torch.manual_seed(config.seed)
    net = nets.build(config.arch, dataset.in_shape, dataset.n_classes, config.resolved_activation()).to(device, dtype)
    entry, opts = rules.entry(config.rule), dict(config.rule_opts)
    if "seed" in entry.cls.options and "seed" not in opts and "seed" not in entry.presets:
        opts["seed"] = config.seed  # one seed for the whole run unless the rule's is given
    if dataset.train_y.is_floating_point() and "output" in entry.cls.options and "output" not in entry.presets:
        if opts.setdefault("output", "se") != "se":  # regression targets: squared error is the one loss they have
            raise BioPropError(f"dataset {config.data} has float targets (regression): use --rule-opt output=se, "
                               f"not output={opts['output']}")  # fmt: skip
    rule = rules.create(config.rule, net, **opts)
    params = net.parameters()
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)
    test = data.batches(dataset.test_x, dataset.test_y, config.probe_batch_size, shuffle=False,
                        time_major=dataset.temporal)  # fmt: skip
    probes = [(xb.to(dtype), yb) for xb, yb in itertools.islice(test, config.probe_batches)]
    return Session(config, run_dir, dataset, net, rule, optimizer, shuffle, probes, validation)


#: The seed of the draw that picks the validation examples: fixed, so every run holds out the same ones.
VALIDATION_SEED = 0


def hold_out(dataset: data.Dataset, n: int) -> tuple[data.Dataset, tuple[Tensor, Tensor] | None]:
    """The dataset without ``n`` of its training examples, and those (x, y), the last ``n`` of a permutation drawn
    from a generator seeded with :data:`VALIDATION_SEED` (the training examples keep their order). The inputs keep
    the standardisation computed on the whole training set. ``n`` = 0: the dataset as it is and None. A
    :class:`BioPropError` when ``n`` leaves no training example."""
    if n == 0:
        return dataset, None
    total = len(dataset.train_y)
    if n >= total:
        raise BioPropError(f"--validation {n} leaves no training example: dataset {dataset.name} has {total} "
                           f"training examples (after --limit); hold out fewer")  # fmt: skip
    order = torch.randperm(total, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held = order[total - n :].to(dataset.train_y.device)
    kept = order[: total - n].sort().values.to(dataset.train_y.device)
    validation = (dataset.train_x[held], dataset.train_y[held])
    return dataclasses.replace(dataset, train_x=dataset.train_x[kept], train_y=dataset.train_y[kept]), validation


def weight_copies(config: RunConfig) -> int:
    """How many tensors the size of the weights a run holds at least: the weights, their ``.grad``, the
    optimizer's state (SGD with momentum: 1 buffer; Adam and AdamW: 2 moments) and, while the update angles are
    probed, the rule's update and backprop's gradient side by side. Rule state (FA's feedback matrices, the
    inference states of PC and EP) and activations come on top, so the estimate is a lower bound."""
    optimizer_slots = {"sgd": 1 if config.momentum > 0 else 0, "adam": 2, "adamw": 2}[config.optimizer]
    return 2 + optimizer_slots + 2


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: the free GPU memory, or on the CPU ``MemAvailable`` of
    ``/proc/meminfo`` capped by a cgroup (container) limit; None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = next(int(line.split()[1]) * 1024 for line in meminfo.splitlines()
                         if line.startswith("MemAvailable:"))  # fmt: skip
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable
    return available


#: Values autograd keeps per neuron and time step for BPTT through a spiking cell (v, z, a, A, ψ, the input
#: current and their products): the memory estimate of a recurrent run (:func:`check_memory`).
STATES_KEPT = 12


def check_memory(config: RunConfig, in_shape: tuple[int, ...], n_classes: int, examples: int | None = None) -> None:
    """Refuse a network whose weights, counted on the ``meta`` device (nothing is allocated), need more memory
    than is available: at least :func:`weight_copies` times the weights' bytes; for a recurrent network also the
    states BPTT keeps (T × batch × n × :data:`STATES_KEPT`). The dataset is already in memory when this runs, so the
    memory available excludes it. ``examples``: the larger split's size, which bounds a batch."""
    with torch.device("meta"):
        net = nets.build(config.arch, in_shape, n_classes, config.resolved_activation())
        n_params = sum(p.numel() for p in net.parameters())
    weights = n_params * config.torch_dtype().itemsize
    copies = weight_copies(config)
    available = available_memory(config.resolved_device())
    if available is not None and weights * copies > available:
        raise BioPropError(
            f"network {config.arch!r} is too large: {n_params:,} parameters need at least "
            f"{weights * copies / GIB:.1f} GiB ({copies} x {weights / GIB:.1f} GiB of {config.dtype} weights: weights, "
            f"gradients, optimizer state, the update probes) but {available / GIB:.1f} GiB of memory is available "
            f"on {config.resolved_device()}"
        )
    if available is not None and checks.time_major(net):  # BPTT (the reference every probe computes) keeps every step
        steps, hidden = in_shape[0], getattr(net, "n_hidden", 0)
        batch = max(config.batch_size, config.probe_batch_size)
        batch = batch if examples is None else min(batch, examples)  # a batch holds at most the split's examples
        kept = steps * batch * hidden * STATES_KEPT * config.torch_dtype().itemsize
        if kept > available:
            raise BioPropError(
                f"sequences of {steps:,} steps are too long for {config.arch!r}: backprop through time (the reference "
                f"gradient of every probe) keeps ~{STATES_KEPT} values per neuron and step, {kept / GIB:.1f} GiB for "
                f"a batch of {batch}, but {available / GIB:.1f} GiB is available; use shorter sequences or a smaller "
                "--batch-size and --probe-batch-size"
            )


# ------------------------------------------------------------------------------------------------ measuring


def warn_plan(s: Session) -> None:
    """Give each line of :meth:`bioprop.rules.Rule.plan_warnings` for the steps the run has left (the rest of its
    epochs, from the rule's step count as it stands) as a :class:`~bioprop.rules.base.PlanWarning`, pointing at the
    caller of :func:`run` or :func:`resume`. Before the first step and before anything is written."""
    steps = (s.config.epochs - s.epoch) * math.ceil(len(s.dataset.train_x) / s.config.batch_size)
    for message in s.rule.plan_warnings(steps):
        warnings.warn(message, PlanWarning, stacklevel=3)


def probe_angles(s: Session) -> dict[str, float]:
    """Update angles to the reference gradient on the probe batches. ``rule.grads`` is pure and
    :func:`~bioprop.metrics.update_angles` leaves the global random state as it found it, so probing never changes
    the trajectory."""
    return metrics.update_angles(s.rule, s.probes)


def kept(s: Session) -> str:
    """What the run keeps on disk: the checkpoint of the last finished epoch, if any."""
    return f"the checkpoint of epoch {s.epoch} is kept" if s.epoch else "no checkpoint was written yet"


def check_finite(s: Session, xb: Tensor, loss: Tensor, epoch: int, batch: int, n_batches: int) -> None:
    """After ``rule.backward``: raise :func:`diverged`'s error on a non-finite loss or update; the checkpoint on
    disk stays the last good one."""
    if not math.isfinite(float(loss)):
        raise diverged(s, xb, epoch, batch, n_batches, f"loss is {float(loss)}")
    grads = [p.grad for p in s.net.parameters() if p.grad is not None]
    if not all(checks.all_finite(g) for g in grads):  # a sum per tensor: ~30 µs, where isfinite().all() is ~1 ms
        raise diverged(s, xb, epoch, batch, n_batches, "the update has non-finite entries")


def diverged(s: Session, xb: Tensor, epoch: int, batch: int, n_batches: int, reason: str,
             by_rule: bool = False) -> BioPropError:  # fmt: skip
    """The error for a step that failed for ``reason``: a non-finite input (BioPropError: from the data), parameter
    or rule state is named first (:meth:`bioprop.rules.Rule.blame_nonfinite`, the one place that looks); then a
    reason the rule gave (``by_rule``) stands as it is; only when nothing else explains it is the learning rate
    suspected, after the options the user set."""
    where = f"at epoch {epoch + 1}, step {batch + 1}/{n_batches}"
    try:
        s.rule.blame_nonfinite(xb)
    except BioPropError as exc:
        if isinstance(exc, DivergenceError):
            return DivergenceError(f"training diverged {where}, after the last step (step {s.step}): {exc}; {kept(s)}")
        return BioPropError(f"training stopped {where}: {exc}, from the data; {kept(s)}")
    if by_rule:
        return DivergenceError(f"training diverged {where}: {reason}; {kept(s)}")
    lr = s.optimizer.param_groups[0]["lr"]
    # the trainer passes the run's seed to the rule itself: only a seed the user set is a suspect
    given = s.rule.describe_given(skip=() if "seed" in s.config.rule_opts else ("seed",))
    suspects = f"suspects, first the options you set: {given}; then " if given else ""
    return DivergenceError(f"training diverged {where} ({reason}); {kept(s)}; {suspects}try a smaller --lr "
                           f"(now {lr:g})")  # fmt: skip


def train_epoch(s: Session, epoch: int, bar: Progress) -> dict[str, float]:
    """One pass over the shuffled training set; returns the running-mean train loss/accuracy and the seconds
    spent training (excluding step-level probes)."""
    c, x, y = s.config, s.dataset.train_x, s.dataset.train_y
    n_batches = math.ceil(len(x) / c.batch_size)
    loss_sum, correct, seen, probe_seconds = 0.0, 0, 0, 0.0
    start = time.perf_counter()
    sequence, dtype, regression = s.dataset.temporal, c.torch_dtype(), y.is_floating_point()
    batches = data.batches(x, y, c.batch_size, generator=s.shuffle, with_index=True, time_major=sequence)
    for batch, (xb, yb, ib) in enumerate(batches):
        xb = xb.to(dtype)  # spike trains are stored as uint8 (bioprop.data)
        s.optimizer.zero_grad(set_to_none=True)
        try:
            loss, logits = s.rule.backward(xb, yb, ib)
        except DivergenceError as exc:  # the rule's own guard: say where, and whether the data or a step caused it
            raise diverged(s, xb, epoch, batch, n_batches, str(exc), by_rule=True) from None
        check_finite(s, xb, loss, epoch, batch, n_batches)
        if c.clip is not None:
            torch.nn.utils.clip_grad_norm_(s.net.parameters(), c.clip)
        s.optimizer.step()
        s.step += 1
        size = len(ib)
        loss_sum += float(loss) * size
        correct += metrics.sequence_correct(logits, yb) if sequence else int((logits.argmax(1) == yb).sum())
        seen += size
        if c.probe_every and s.step % c.probe_every == 0:
            tic = time.perf_counter()
            angles = probe_angles(s)
            s.history["alignment"] += [[s.step, epoch + 1, name, angle] for name, angle in angles.items()]
            probe_seconds += time.perf_counter() - tic
        bar.advance(epoch, batch + 1, n_batches, loss_sum / seen, math.nan if regression else correct / seen)
    seconds = time.perf_counter() - start - probe_seconds
    accuracy = math.nan if regression else correct / seen  # float targets have no classes
    return {"train_loss": loss_sum / seen, "train_accuracy": accuracy, "seconds": seconds}


def end_of_epoch(s: Session, epoch: int, lr: float, trained: dict[str, float]) -> dict[str, Any]:
    """The epoch's metrics.csv row."""
    diagnostics = s.rule.diagnostics()  # before probing, so they describe the last training step
    record_traces(s, epoch + 1, s.rule.epoch_traces())
    test_x, test_y = s.dataset.test_x, s.dataset.test_y
    if s.dataset.temporal:  # stored (N, T, ...); the rules take time-major sequences
        test_x, test_y = test_x.transpose(0, 1), test_y.transpose(0, 1)
    test_loss, test_accuracy = metrics.evaluate(s.rule, test_x, test_y)
    row: dict[str, Any] = {"epoch": epoch + 1, "loss": s.rule.loss.name, "train_loss": trained["train_loss"],
                           "train_accuracy": trained["train_accuracy"], "test_loss": test_loss,
                           "test_accuracy": test_accuracy, "seconds": trained["seconds"], "lr": lr}  # fmt: skip
    if s.validation is not None:
        val_x, val_y = s.validation
        if s.dataset.temporal:
            val_x, val_y = val_x.transpose(0, 1), val_y.transpose(0, 1)
        row["val_loss"], row["val_accuracy"] = metrics.evaluate(s.rule, val_x, val_y)
    row.update({f"angle/{name}": angle for name, angle in probe_angles(s).items()})
    row.update({f"diag/{key}": float(value) for key, value in diagnostics.items()})
    return row


def validation_summary(s: Session) -> dict[str, Any]:
    """With --validation: how many examples were held out, the last epoch's validation accuracy, the epoch (1-based)
    of the best validation accuracy (of the lowest validation loss for a regression, which has no accuracy; the
    first such epoch) and the test accuracy and loss at that epoch. Empty without."""
    if s.validation is None:
        return {}
    rows = s.history["rows"]
    out: dict[str, Any] = {"n_validation": len(s.validation[1]), "val_accuracy": rows[-1]["val_accuracy"] if rows
                           else None, "best_val_epoch": None, "test_accuracy_at_best_val": None,
                           "test_loss_at_best_val": None}  # fmt: skip
    scored = [(r["val_loss"] if math.isnan(r["val_accuracy"]) else -r["val_accuracy"], i) for i, r in enumerate(rows)
              if r.get("val_accuracy") is not None and not math.isnan(r["val_loss"])]  # fmt: skip
    if scored:
        best = rows[min(scored)[1]]
        out.update(best_val_epoch=best["epoch"], test_accuracy_at_best_val=best["test_accuracy"],
                   test_loss_at_best_val=best["test_loss"])  # fmt: skip
    return out


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
        "rule": c.rule, "dataset": short_dataset_name(c.data), "arch": c.arch, "activation": c.resolved_activation(),
        "seed": c.seed, "optimizer": c.optimizer, "lr": c.lr, "epochs": c.epochs, "epochs_done": s.epoch,
        "steps_done": s.step, "status": status, "message": message,
        "test_accuracy": accuracies[-1] if rows else None,
        "best_test_accuracy": max(accuracies) if rows else None,
        "loss": s.rule.loss.name, "loss_label": s.rule.loss.label,
        "test_loss": rows[-1]["test_loss"] if rows else None,
        "train_accuracy": rows[-1]["train_accuracy"] if rows else None,
        "epoch_seconds": [row["seconds"] for row in rows],
        "alignment_deg": {k[6:]: [row.get(k) for row in rows] for k in columns if k.startswith("angle/")},
        "alignment_init_deg": s.history["init"],
        "diagnostics": {k[5:]: [row.get(k) for row in rows] for k in columns if k.startswith("diag/")},
        "rule_options": s.rule.opts.as_dict(), "parameters": sum(p.numel() for p in s.net.parameters()),
        "n_train": len(s.dataset.train_y), "n_test": len(s.dataset.test_y), "data_source": s.dataset.source,
        "in_shape": list(s.dataset.in_shape), "n_classes": s.dataset.n_classes, "task": s.dataset.task or None,
        **validation_summary(s),
        "bioprop_version": bioprop.__version__, "torch_version": torch.__version__,
        "device": str(c.resolved_device()), "dtype": c.dtype,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- checkpoints


def payload_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of the tensors' raw bytes (C order, as stored), concatenated in the order of their sorted names."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    meta = {"format": FORMAT, "epoch": s.epoch, "step": s.step, "fingerprint": s.config.fingerprint(),
            "config": s.config.to_dict(), "optimizer_groups": optim["param_groups"],
            "optimizer_state": plain_state, "history": s.history, "sha256": payload_sha256(tensors)}  # fmt: skip
    blob = safetensors.torch.save(tensors, metadata={"bioprop": json.dumps(meta)})
    logs.write_atomic(s.run_dir / CHECKPOINT, blob)


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of a checkpoint, verified: a missing, truncated or unreadable file, tensors that
    do not match the SHA-256 written at save time, or non-finite tensors are a one-line BioPropError."""
    if not path.is_file():
        raise BioPropError(f"no checkpoint in {path.parent} (looked for {path.name})")
    try:
        with safe_open(path, framework="pt") as checkpoint:
            meta = json.loads(checkpoint.metadata()["bioprop"])
            tensors = {key: checkpoint.get_tensor(key) for key in checkpoint.keys()}
        if meta.get("format") not in (1, FORMAT) or not {"epoch", "step", "fingerprint", "history"} <= set(meta):
            raise ValueError("unknown layout")
    except Exception as exc:  # safetensors, JSON and key errors alike mean the file is unusable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BioPropError(f"corrupt or truncated checkpoint '{path}' ({reason})") from None
    if meta["format"] >= 2 and payload_sha256(tensors) != meta.get("sha256"):
        raise BioPropError(
            f"corrupt checkpoint '{path}': its tensors do not match the SHA-256 written when it was saved"
        )
    bad = checks.first_nonfinite(tensors.items())
    if bad is not None:
        raise BioPropError(f"corrupt checkpoint '{path}': tensor {bad!r} has non-finite values, from the checkpoint "
                           f"(training never saves them)")  # fmt: skip
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
        raise BioPropError(f"checkpoint in '{s.run_dir}' does not fit its config.yaml ({reason})") from None
    s.epoch, s.step, s.history = meta["epoch"], meta["step"], meta["history"]


# ------------------------------------------------------------------------------------------------- running


def run(config: RunConfig, out_dir: str | Path, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train from scratch into ``out_dir`` and return the summary; see the module docstring. With ``overwrite``
    an earlier run there is cleared, never anything bioprop did not write (:func:`bioprop.report.logs.open_run`).
    Trains with ``config.threads`` torch threads when set (torch's count as it stands when None), put back after.
    Raises BioPropError on bad input before anything is written, DivergenceError, WriteError
    (:class:`bioprop.report.logs.WriteError`), KeyboardInterrupt (Ctrl-C; :class:`Terminated` on SIGTERM)."""
    config.check()
    out = Path(out_dir)
    logs.check_out_dir(out, overwrite)
    with torch_threads(config.threads):
        return _run(config, out, overwrite, quiet)


def _run(config: RunConfig, out: Path, overwrite: bool, quiet: bool) -> dict[str, Any]:
    s = build(config, out)  # every input error surfaces here, before anything is written
    warn_plan(s)
    with logs.open_run(out, overwrite) as lock, sigterm_interrupts(), recorded(s):
        note_takeover(lock, quiet)
        logs.write_atomic(out / CONFIG, config.to_yaml().encode())
        record_traces(s, 0, s.rule.prepare())
        s.history["init"] = probe_angles(s)  # e.g. an unstable inference step size shows on the first probe
        if config.probe_every:
            s.history["alignment"] += [[0, 0, name, angle] for name, angle in s.history["init"].items()]
        logs.write_summary(out, summary(s, "running"))
        return loop(s, quiet)


def resume(run_dir: str | Path, quiet: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint. Returns the summary with ``resumed_from``, the epoch
    the checkpoint held, and ``reported_only``: True when the run had already finished and is only reported (a run
    stopped after its last epoch, before its model was written, gets its plots, model and summary written now).
    Nothing is written unless ``run_dir`` holds a config and a valid checkpoint of it. Trains with ``threads`` torch
    threads, by default those its config recorded (None there: torch's count as it stands), put back after; raises
    as :func:`run`, and BioPropError for ``threads`` not a whole number from 1 to 1024."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):  # fmt: skip
        raise BioPropError(f"threads must be a whole number from 1 to {MAX_THREADS}, not {threads!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BioPropError(f"'{run_dir}' is a file, not a run directory" if run_dir.exists()
                           else f"no run directory '{run_dir}'")  # fmt: skip
    if not (run_dir / CONFIG).is_file():
        raise BioPropError(f"no {CONFIG} in '{run_dir}'; is it a bioprop run directory?")
    logs.check_not_in_use(run_dir)
    config = RunConfig.from_yaml(run_dir / CONFIG).check()
    checkpoint = run_dir / CHECKPOINT
    read = checkpoint.stat() if checkpoint.is_file() else None
    tensors, meta = read_checkpoint(checkpoint)
    if meta["fingerprint"] not in config.fingerprints():  # the current one, or that of a config.yaml written before
        was = recorded_config(meta)
        differ = [key for key, value in config.to_dict().items()
                  if key not in NOT_FINGERPRINTED and was.get(key, value) != value]  # fmt: skip
        which = f" ({', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'})" if differ else ""
        raise BioPropError(
            f"checkpoint is from another config than '{run_dir / CONFIG}'{which}: that file was edited, or the "
            f"checkpoint copied from another run; to train longer or otherwise, start a new run with `bioprop train`"
        )
    if finished(run_dir, meta["epoch"], config.epochs):
        return {**logs.read_summary(run_dir), "resumed_from": meta["epoch"], "reported_only": True}
    with torch_threads(config.threads if threads is None else threads):
        return _resume(config, run_dir, tensors, meta, read, quiet)


def _resume(config: RunConfig, run_dir: Path, tensors: dict[str, Tensor], meta: dict[str, Any],
            read: os.stat_result | None, quiet: bool) -> dict[str, Any]:  # fmt: skip
    checkpoint = run_dir / CHECKPOINT
    s = build(config, run_dir)
    restore(s, tensors, meta)
    warn_plan(s)
    with logs.claim_run(run_dir) as lock, sigterm_interrupts(), recorded(s):
        now = checkpoint.stat()
        if read is None or (now.st_ino, now.st_mtime_ns, now.st_size) != (read.st_ino, read.st_mtime_ns, read.st_size):
            raise BioPropError(f"{checkpoint} changed while it was being resumed; run `bioprop resume` again")
        note_takeover(lock, quiet)
        return {**loop(s, quiet, resumed=True), "resumed_from": meta["epoch"], "reported_only": False}


def recorded_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The config a checkpoint's metadata holds, its dataset written with every setting (:func:`dataset_name`), as
    :class:`RunConfig` holds it now: what a differing key is told by."""
    was = dict(meta.get("config") or {})
    if isinstance(was.get("data"), str):
        try:
            was["data"] = dataset_name(was["data"])
        except BioPropError:
            pass
    return was


def finished(run_dir: Path, epochs_done: int, epochs: int) -> bool:
    """Whether a run whose checkpoint holds ``epochs_done`` has written everything: its model, and a summary that
    says so (else resuming it writes the plots, model and summary again)."""
    if epochs_done < epochs or not (run_dir / MODEL).is_file():
        return False
    try:
        return logs.read_summary(run_dir).get("status") == "finished"
    except BioPropError:
        return False


def loop(s: Session, quiet: bool, resumed: bool = False) -> dict[str, Any]:
    """Train the remaining epochs, writing a checkpoint, then the logs after each; then the plots, the model and
    the final summary, in that order: a run is finished once its summary says so (see :func:`finished`)."""
    c = s.config
    batches = math.ceil(len(s.dataset.train_x) / c.batch_size)
    with Progress(c.epochs, batches, s.epoch, quiet, s.run_dir if resumed else None) as bar:
        for epoch in range(s.epoch, c.epochs):
            lr = c.lr_at(epoch)
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            row = end_of_epoch(s, epoch, lr, train_epoch(s, epoch, bar))
            s.history["rows"].append(row)
            s.epoch = epoch + 1
            try:
                save_checkpoint(s)  # first: the logs never get ahead of it (resuming rewrites them from it)
            except BaseException:
                s.history["rows"].pop()  # the run is as far as its checkpoint on disk
                s.epoch = epoch
                raise
            write_logs(s)
            logs.write_summary(s.run_dir, summary(s, "running"))
            bar.epoch_done(row)
    write_example(s)
    write_plots(s.run_dir)
    model = {key: value.detach().cpu().contiguous() for key, value in s.net.state_dict().items()}
    about = {"bioprop_version": bioprop.__version__, "config_fingerprint": c.fingerprint(), "rule": c.rule,
             "arch": c.arch, "activation": c.resolved_activation(), "dataset": c.data}  # fmt: skip
    blob = safetensors.torch.save(model, metadata={"bioprop": json.dumps(about)})  # one key: Rust orders a map anyhow
    logs.write_atomic(s.run_dir / MODEL, blob)
    final = summary(s, "finished")
    logs.write_summary(s.run_dir, final)  # last: a run is finished once its summary says so
    return final


# ----------------------------------------------------------------------------------------- ending early


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While in the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread, once; the
    previous handler is restored after. Outside the main thread signals cannot be handled, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:  # a second SIGTERM must not break the recording of the first
            fired = True
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def recorded(s: Session) -> Iterator[None]:
    """Record how a run that stops early ended: ``summary.json`` with its status and message, the metrics, and
    the plots of a diverged or interrupted run (its epochs so far). What cannot be written (a full disk), or drawn
    (Ctrl-C that landed while matplotlib was being imported leaves it half-imported), is added to the error's
    message: the error that stopped the run is the one raised."""
    try:
        yield
    except BaseException as exc:
        status, message = ending(s, exc)
        writes = [lambda: logs.write_summary(s.run_dir, summary(s, status, message)), lambda: write_logs(s)]
        if status in ("diverged", "interrupted") and s.history["rows"]:  # the epochs so far, drawn
            writes.append(lambda: write_plots(s.run_dir))
        failures = []
        for write in writes:  # each on its own: a summary that cannot be written must not stop the metrics
            try:
                write()
            except BioPropError as failed:
                failures.append(str(failed))
            except Exception as failed:  # noqa: BLE001 - recording must not hide the error that stopped the run
                failures.append(f"{type(failed).__name__}: {failed}")
        if failures:
            message = f"{message}; recording this failed too: {'; '.join(failures)}"
        if isinstance(exc, BioPropError) and message != str(exc):
            raise type(exc)(message) from None
        raise


def ending(s: Session, exc: BaseException) -> tuple[str, str]:
    """The status and message that ``summary.json`` records for a run stopped by ``exc``."""
    how = f"resume with `bioprop resume {s.run_dir}`"
    if isinstance(exc, Terminated):
        return "interrupted", f"terminated by SIGTERM; {kept(s)}; {how}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", f"interrupted; {how}"
    if isinstance(exc, DivergenceError):
        return "diverged", str(exc)
    if isinstance(exc, logs.WriteError):
        after = f"once it can be written, {how}" if s.epoch else "once it can be written, start the run again"
        return "failed", f"{exc}; {kept(s)}; {after}"
    return "failed", str(exc) if isinstance(exc, BioPropError) else f"{type(exc).__name__}: {exc}"


def note_takeover(lock: logs.RunLock, quiet: bool) -> None:
    """Say on stderr (unless ``quiet``) that the run directory's lock was left by a process that died."""
    if lock.taken_over is not None and not quiet:
        print(f"bioprop: taking over {lock.path.parent} from {logs.describe_holder(lock.taken_over)}, which "
              f"ended without releasing it", file=sys.stderr)  # fmt: skip


def write_logs(s: Session) -> None:
    logs.write_metrics(s.run_dir, s.history["rows"])
    if s.config.probe_every:
        logs.write_alignment(s.run_dir, s.history["alignment"])
    if s.history.get("traces"):
        logs.write_traces(s.run_dir, s.history["traces"])


def write_example(s: Session) -> None:
    """For a recurrent network with a ``run`` method: the first test sequence through the trained network, as
    ``example.safetensors`` (the input x (T, C), the target (T,) or (T, K), and every recorded state of
    :class:`~bioprop.nets.recurrent.Trajectory` for that example, (T, n) or (T, K)), drawn as ``example.png``."""
    if not (s.dataset.temporal and hasattr(s.net, "run")):
        return
    x = s.dataset.test_x[:1].transpose(0, 1).to(s.config.torch_dtype())  # (T, 1, C)
    with torch.no_grad():
        trajectory = s.net.run(x)
    tensors = {f"state.{name}": value[:, 0] for name, value in trajectory._asdict().items() if value is not None}
    tensors.update({"input": x[:, 0], "target": s.dataset.test_y[0]})
    blob = safetensors.torch.save({k: v.detach().double().cpu().contiguous() for k, v in tensors.items()})
    logs.write_atomic(s.run_dir / logs.EXAMPLE, blob)


def write_plots(run_dir: Path) -> None:
    """Draw the run's plots; a file that cannot be written is a :class:`~bioprop.report.logs.WriteError`."""
    from bioprop.report import plots  # matplotlib is imported only when plots are drawn

    try:
        plots.alignment_plot(run_dir)
        plots.curves_plot(run_dir)
        for file in plots.declared_figures(run_dir):  # what the rule declares (energy.png, apical.png, ...)
            plots.declared_plot(run_dir, file)
        if (run_dir / logs.EXAMPLE).is_file():
            plots.example_plot(run_dir)
    except OSError as exc:
        raise logs.WriteError(f"cannot write {exc.filename or 'the plots'} in '{run_dir}': {exc.strerror or exc}"
                              ) from None  # fmt: skip
