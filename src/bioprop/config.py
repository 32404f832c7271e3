"""One typed, validated configuration per training run.

    config = RunConfig(rule="fa", data="mnist", arch="mlp:256x256", epochs=20)
    config = RunConfig.from_sources("run.yaml", {"lr": 0.05})      # a YAML file, then flags on top
    config.check()                                                  # BioPropError on the first bad value

Every field can be given in a YAML file (``bioprop train --config run.yaml``) or as a flag; flags given on the
command line override the file. :meth:`RunConfig.fingerprint` identifies what a run computes, so a checkpoint
can refuse to be resumed under another configuration.

Values are parsed by one set of rules whether they come from YAML or from a flag (flags arrive as strings):

- a float field takes a finite number, also written as a string (YAML 1.1 reads ``1e-3``, ``1E-3`` as strings);
  ``nan`` and ``inf`` (``.nan``, ``.inf`` in YAML) are refused;
- an int field takes an integer: a YAML integer, a YAML float that is a whole number (``5.0``, as the rules'
  options do), or a string of digits; ``1e3`` as a string is refused (write ``1000``), and so is anything outside
  the 64-bit range (``-2**63 .. 2**63 - 1``);
- every error is a :class:`~bioprop.errors.BioPropError` of one line naming the key (``--lr`` for a flag,
  ``config 'run.yaml': lr`` for a file) and quoting the value; a file that is missing, binary, empty, not YAML
  or not a mapping is named the same way.
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
# Fields that say where inputs live or how many threads compute, not what the run computes: left out of the
# fingerprint, so a run can be resumed with another --data-dir or --threads.
NOT_FINGERPRINTED = ("data_dir", "download", "threads")
INT_RANGE = (-(2**63), 2**63 - 1)  # what torch, safetensors' JSON and numpy all hold
MAX_THREADS = 1024
MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; this stops `--config /dev/zero` from filling memory


@dataclass
class RunConfig:
    # what is trained
    rule: str = "bp"  # learning rule, see `bioprop rules`
    data: str = "digits"  # dataset, see `bioprop datasets`
    arch: str = "mlp:256"  # network: mlp:H1xH2..., lenet, ebm:H1x..., ebm-conv
    activation: str = "auto"  # hidden nonlinearity; auto: hard_sigmoid (ebm), else the rule's choice, else relu
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
    threads: int | None = None  # torch's intra-op CPU threads; None: as torch has it. The CLI records its choice
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
        """A config from a plain mapping (``source`` names it in errors); unknown keys and values of the wrong type
        are a BioPropError (see the module docstring for how numbers are read)."""
        return cls(**_checked_values(values, source))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """A config from a YAML file of ``key: value`` lines (any subset of the fields)."""
        return cls.from_dict(read_yaml(path), source=_file_source(path))

    @classmethod
    def from_sources(cls, path: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
        """The YAML file at ``path`` (if any) with ``overrides`` (flags given on the command line, named in errors
        as ``--key``) on top; ``rule_opts`` are merged key by key, the override winning."""
        values = _checked_values(read_yaml(path), _file_source(path)) if path is not None else {}
        flags = _checked_values(overrides, source=None)
        if "rule_opts" in flags:
            flags["rule_opts"] = {**values.get("rule_opts", {}), **flags["rule_opts"]}
        return cls(**{**values, **flags})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """SHA-256 of everything that determines what the run computes (not where its data files live)."""
        what = {k: v for k, v in self.to_dict().items() if k not in NOT_FINGERPRINTED}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    # -------------------------------------------------------------------------------------------- validation

    def check(self, labels: dict[str, str] | None = None) -> RunConfig:
        """Raise BioPropError naming the first invalid value, quoted; returns self. ``labels`` say how each key was
        given (``--lr``, ``config 'run.yaml': lr``; see :func:`source_labels`), the key itself by default. The
        rule's options are checked when the rule is created (see :func:`bioprop.train.run`)."""
        labels = labels or {}

        def bad(name: str, rule: str) -> BioPropError:
            return BioPropError(f"{labels.get(name, name)} must be {rule}, not '{getattr(self, name)}'")

        for name in ("epochs", "batch_size", "probe_batches", "probe_batch_size"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("lr", "momentum", "weight_decay"):  # a RunConfig built in Python skips _coerce
            if not math.isfinite(getattr(self, name)):
                raise bad(name, "a finite number")
        if not self.lr > 0:
            raise bad("lr", "positive")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise bad(name, "non-negative")
        for name in ("step_size", "probe_every"):
            if getattr(self, name) < 0:
                raise bad(name, "0 or a positive integer")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", "a positive number of examples")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise bad("threads", f"between 1 and {MAX_THREADS}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("device", DEVICES),
                              ("dtype", tuple(DTYPES))):  # fmt: skip
            if getattr(self, name) not in choices:
                raise BioPropError(
                    f"unknown {labels.get(name, name)} {getattr(self, name)!r}; choose one of {', '.join(choices)}"
                )
        rules.entry(self.rule)  # unknown rule: BioPropError listing the known ones
        with torch.device("meta"):  # checks the spec without allocating weights; shapes are checked at build
            nets.build(self.arch, (1, 28, 28), 10, self.resolved_activation())
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BioPropError("device cuda requested but CUDA is not available; use --device cpu")
        return self

    def resolved_device(self) -> torch.device:
        """``auto`` becomes cuda when available, else cpu."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_activation(self) -> str:
        """What ``activation="auto"`` stands for: hard_sigmoid on an energy-based net, else the rule's declared
        activation (:attr:`bioprop.rules.Rule.activation`; tanh for ``dendritic``), else relu."""
        if self.activation != "auto":
            return self.activation
        by_arch = nets.default_activation(self.arch)
        if by_arch != "relu":
            return by_arch
        return rules.entry(self.rule).cls.activation or by_arch

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


def source_labels(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, str]:
    """How each key reached :meth:`RunConfig.from_sources`, for :meth:`RunConfig.check`'s messages: ``--key`` for a
    flag, ``config 'run.yaml': key`` for a key read from the file."""
    labels = {f.name: f"{_file_source(path)}: {f.name}" for f in fields(RunConfig)} if path is not None else {}
    return {**labels, **{key: f"--{key.replace('_', '-')}" for key in overrides}}


def parse_rule_opts(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` from ``--rule-opt`` flags as a dict; the values are parsed by the rule."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BioPropError(f"malformed --rule-opt {item!r}; expected key=value, e.g. --rule-opt scale=0.5")
        if key.strip() in out:
            raise BioPropError(f"--rule-opt {key.strip()!r} given twice ({out[key.strip()]!r} and {value.strip()!r})")
        out[key.strip()] = value.strip()
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file. A missing or unreadable file, one over MAX_CONFIG_BYTES, a binary file, a parse
    error, an empty file or a non-mapping is a one-line BioPropError naming the file."""
    try:
        with open(path, "rb") as handle:
            blob = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise BioPropError(f"cannot read {_file_source(path)}: {exc.strerror or exc}") from None
    if len(blob) > MAX_CONFIG_BYTES:
        raise BioPropError(f"{_file_source(path)} is larger than {MAX_CONFIG_BYTES} bytes; is it a config file?")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise BioPropError(f"{_file_source(path)} is not a text YAML file (it is binary or not UTF-8)")
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise BioPropError(f"{_file_source(path)}: key {exc.key!r} given twice (line {exc.line})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BioPropError(f"cannot parse {_file_source(path)}: {problem}{where}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits, nesting too deep
        raise BioPropError(f"cannot parse {_file_source(path)}: {' '.join(str(exc).split()[:12])}") from None
    if values is None:
        raise BioPropError(f"{_file_source(path)} is empty; expected key: value lines such as `rule: fa`")
    if not isinstance(values, dict):
        raise BioPropError(f"{_file_source(path)} must be a mapping of key: value, not a {type(values).__name__}")
    return {str(k): v for k, v in values.items()}


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error instead of the last one
    silently winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _file_source(path: str | Path) -> str:
    return f"config {str(path)!r}"


def parse_number(label: str, text: str, kind: type[int] | type[float]) -> int | float:
    """``text`` (a flag's or environment variable's value, or a YAML string such as ``1e-3``) as a finite float
    or a 64-bit integer; anything else is a BioPropError naming ``label`` and quoting ``text``."""
    token = text.strip()
    if kind is int:
        digits = token.lstrip("+-")
        if digits.isdigit() and len(digits) > 19:  # past 64 bits, and maybe past Python's 4300-digit limit
            raise BioPropError(f"{label} must be an integer from {INT_RANGE[0]} to {INT_RANGE[1]}, not {text!r}")
        try:
            return _in_range(label, int(token))
        except ValueError:
            hint = _whole_number_hint(token)
            raise BioPropError(f"{label} must be an integer, not {text!r}{hint}") from None
    try:
        number = float(token)
    except ValueError:
        raise BioPropError(f"{label} must be a number, not {text!r}") from None
    if not math.isfinite(number):
        raise BioPropError(f"{label} must be a finite number, not {text!r}")
    return number


def _in_range(label: str, number: int) -> int:
    if not INT_RANGE[0] <= number <= INT_RANGE[1]:
        raise BioPropError(f"{label} must be an integer from {INT_RANGE[0]} to {INT_RANGE[1]}, not {number}")
    return number


def _whole_number_hint(token: str) -> str:
    """`` (write 1000)`` when ``token`` is a whole number in another notation, such as ``1e3``."""
    try:
        number = float(token)
    except ValueError:
        return ""
    return f" (write {int(number)})" if number.is_integer() and abs(number) < 2**63 else ""


def _checked_values(values: dict[str, Any], source: str | None) -> dict[str, Any]:
    """``values`` with unknown keys refused and each value coerced to its field's type. ``source`` is the file (or
    other origin) named in errors; None means flags, named ``--key``."""
    hints = get_type_hints(RunConfig)
    out = {}
    for key, value in values.items():
        if key not in hints:
            origin = source if source is not None else "flags"
            raise BioPropError(f"{origin}: unknown key {key!r}; known: {', '.join(sorted(hints))}")
        label = f"--{key.replace('_', '-')}" if source is None else f"{source}: {key}"
        out[key] = _coerce(label, value, hints[key])
    return out


def _coerce(label: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type ``hint``; numbers as the module docstring says."""
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    if value is None and optional:
        return None
    kind = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    kind = get_origin(kind) or kind
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (int, float) and isinstance(value, str):
        return parse_number(label, value, kind)
    if kind is float and is_number:
        if not math.isfinite(value):
            raise BioPropError(f"{label} must be a finite number, not {value!r}")
        return float(value)
    if kind is int and is_number and (isinstance(value, int) or value.is_integer()):
        return _in_range(label, int(value))
    if kind is str and is_number:
        return str(value)  # e.g. a data_dir or arch that YAML read as a number
    if kind in (int, float) or not isinstance(value, kind):
        raise BioPropError(f"{label} must be {_kind_name(kind)}, not {value!r}")
    return dict(value) if kind is dict else value


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        kind, kind.__name__
    )
