"""One typed, validated configuration per training run.

    config = RunConfig(rule="fa", data="mnist", arch="mlp:256x256", epochs=20)
    config = RunConfig.from_sources("run.yaml", {"lr": 0.05})      # a YAML file, then flags on top
    config.check()                                                  # BioPropError on the first bad value

Every field can be given in a YAML file (``bioprop train --config run.yaml``) or as a flag; flags given on the
command line override the file. :meth:`RunConfig.fingerprint` identifies what a run computes, so a checkpoint
can refuse to be resumed under another configuration.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
import yaml

from bioprop import nets, rules
from bioprop.errors import BioPropError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Fields that say where inputs live, not what the run computes: left out of the fingerprint.
WHERE_FIELDS = ("data_dir", "download")


@dataclass
class RunConfig:
    # what is trained
    rule: str = "bp"  # learning rule, see `bioprop rules`
    data: str = "digits"  # dataset, see `bioprop datasets`
    arch: str = "mlp:256"  # network: mlp:H1xH2..., lenet, ebm:H1x..., ebm-conv
    activation: str = "auto"  # hidden nonlinearity; auto: relu (mlp, lenet), hard_sigmoid (ebm)
    rule_opts: dict[str, Any] = field(default_factory=dict)  # the rule's options; the rule's `seed` defaults to seed
    # how long and in what steps
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adam | adamw, applied to the rule's update in .grad
    lr: float = 0.01  # base learning rate
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "none"  # none | cosine (to 0 over the run) | step (x0.1 every step_size epochs)
    step_size: int = 0  # epochs per x0.1 decay of schedule=step; 0 means max(1, epochs // 3)
    # reproducibility and hardware
    seed: int = 0  # seeds the network's init, the shuffling order and (by default) the rule
    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str = "float32"  # float32 | float64
    # data
    data_dir: str | None = None  # where dataset files are looked for first
    download: bool = False  # fetch missing dataset files from their canonical source
    limit: int | None = None  # keep only the first `limit` train and test examples
    # measuring the update angle to backprop on held-out probe batches (the first batches of the test set)
    probe_batches: int = 4
    probe_batch_size: int = 256
    probe_every: int = 0  # steps; 0 = at epoch ends only, N > 0 also every N steps into alignment.csv

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """A config from a plain mapping; unknown keys and values of the wrong type are a BioPropError."""
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise BioPropError(f"{source}: unknown key {key!r}; known: {', '.join(sorted(known))}")
        return cls(**{key: _coerce(key, value, hints[key], source) for key, value in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """A config from a YAML file of ``key: value`` lines (any subset of the fields)."""
        return cls.from_dict(read_yaml(path), source=str(path))

    @classmethod
    def from_sources(cls, path: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
        """The YAML file at ``path`` (if any) with ``overrides`` (flags given on the command line) on top;
        ``rule_opts`` are merged key by key, the override winning."""
        values = read_yaml(path) if path is not None else {}
        merged = {**values, **{k: v for k, v in overrides.items() if k != "rule_opts"}}
        if "rule_opts" in overrides:
            base = values.get("rule_opts") or {}
            if not isinstance(base, dict):
                raise BioPropError(f"{path}: rule_opts must be a mapping of option: value")
            merged["rule_opts"] = {**base, **overrides["rule_opts"]}
        return cls.from_dict(merged, source=str(path) if path is not None else "config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """SHA-256 of everything that determines what the run computes (not where its data files live)."""
        what = {k: v for k, v in self.to_dict().items() if k not in WHERE_FIELDS}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    # -------------------------------------------------------------------------------------------- validation

    def check(self) -> RunConfig:
        """Raise BioPropError naming the first invalid value; returns self. The rule's options are checked
        when the rule is created (see :func:`bioprop.train.run`)."""
        for name in ("epochs", "batch_size", "probe_batches", "probe_batch_size"):
            if getattr(self, name) < 1:
                raise BioPropError(f"{name} must be a positive integer, not {getattr(self, name)}")
        if not self.lr > 0:  # also catches NaN
            raise BioPropError(f"lr must be positive, not {self.lr}")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise BioPropError(f"{name} must be non-negative, not {getattr(self, name)}")
        for name in ("step_size", "probe_every"):
            if getattr(self, name) < 0:
                raise BioPropError(f"{name} must be 0 or a positive integer, not {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise BioPropError(f"limit must be a positive number of examples, not {self.limit}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES),
                              ("dtype", tuple(DTYPES))):  # fmt: skip
            if getattr(self, name) not in choices:
                raise BioPropError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        rules.entry(self.rule)  # unknown rule: BioPropError listing the known ones
        with torch.device("meta"):  # checks the spec without allocating weights; shapes are checked at build
            nets.build(self.arch, (1, 28, 28), 10, self.activation)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BioPropError("device cuda requested but CUDA is not available; use --device cpu")
        return self

    def resolved_device(self) -> torch.device:
        """``auto`` becomes cuda when available, else cpu."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def effective_step_size(self) -> int:
        return self.step_size or max(1, self.epochs // 3)

    def lr_at(self, epoch: int) -> float:
        """Learning rate during ``epoch`` (0-based), from the schedule."""
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        if self.schedule == "step":
            return self.lr * 0.1 ** (epoch // self.effective_step_size())
        return self.lr

    def default_out(self) -> str:
        """``runs/<rule>-<data>-<arch>-s<seed>`` with characters unsafe in file names (such as ':') replaced."""
        name = f"{self.rule}-{self.data}-{self.arch}-s{self.seed}"
        return str(Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "-", name))


def parse_rule_opts(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` from ``--rule-opt`` flags as a dict; the values are parsed by the rule."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BioPropError(f"malformed --rule-opt {item!r}; expected key=value, e.g. --rule-opt scale=0.5")
        out[key.strip()] = value.strip()
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, a parse error or a non-mapping is a one-line BioPropError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BioPropError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BioPropError(f"cannot parse config {path}: {problem}{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise BioPropError(f"config {path} must be a mapping of key: value, not a {type(values).__name__}")
    return {str(k): v for k, v in values.items()}


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` checked against the field's type ``hint`` (ints are accepted for floats)."""
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    if value is None and optional:
        return None
    kind = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    kind = get_origin(kind) or kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a data_dir or arch that YAML read as a number
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise BioPropError(f"{source}: {key} must be {_kind_name(kind)}, not {value!r}")
    return dict(value) if kind is dict else value


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        kind, kind.__name__
    )
