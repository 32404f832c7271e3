"""One typed, validated configuration per training run, and the one definition of its settings.

    config = RunConfig(rule="fa", data="mnist", arch="mlp:256x256", epochs=20)
    config = RunConfig.from_sources("run.yaml", {"lr": 0.05})      # a YAML file, then flags on top
    config.check()                                                  # BioPropError on the first bad value
    config.check_arch(dataset.in_shape, dataset.n_classes)          # once the data is loaded

Every field of :class:`RunConfig` is a setting: a key of a YAML file (``bioprop train --config run.yaml``) and a
flag of ``bioprop train``, whose name, metavar and ``--help`` text are generated from the field (its type,
default and ``metadata``, see :func:`setting`): nothing about a setting is written twice. Flags given on the
command line override the file. :meth:`RunConfig.fingerprint` identifies what a run computes, so a checkpoint
can refuse to be resumed under another configuration.

Values are parsed by one set of rules whether they come from YAML or from a flag (flags arrive as strings): those
of the rules' options, :func:`bioprop.rules.options.coerce` (pydantic's lax mode, with strict pieces), so that

- a float field takes a finite number, also written as a string (YAML 1.1 reads ``1e-3``, ``1E-3`` as strings);
  ``nan`` and ``inf`` (``.nan``, ``.inf`` in YAML) are refused, and so is a bool;
- an int field takes an integer: a YAML integer, a YAML float that is a whole number (``5.0``, as the rules'
  options do), or a string of one; ``1e3`` as a string is refused (write ``1000``), and so is anything outside
  the 64-bit range (``-2**63 .. 2**63 - 1``);
- a string field takes a number as its text (a ``data_dir`` or ``arch`` that YAML read as a number); a bool field
  a bool or a word such as ``true`` or ``no``;
- a path field (``data_dir``) refuses the empty string, which would silently mean the current directory;
- every error is a :class:`~bioprop.errors.BioPropError` of one line naming the key (``--lr`` for a flag,
  ``config 'run.yaml': lr`` for a file) and quoting the value as it was written (``--lr -1`` is refused quoting
  ``'-1'``, not the ``-1.0`` it reads as; :meth:`RunConfig.written`); a file that is missing, binary, empty, not YAML
  or not a mapping is named the same way;
- a seed is an integer from 0 to 2**32 − 1 (:func:`parse_seed`, the one validator of ``bioprop train`` and
  ``bioprop experiment``): torch's CPU generator keeps 32 bits of a seed, so a larger or negative one would repeat
  the draws of another.

The dataset is recorded with every setting of its task, defaults included (:func:`dataset_name`: ``store-recall`` is
recorded as ``store-recall:n_train=4096,n_test=1024,delay=50,values=2,seed=0``), so that config.yaml says what ran.
A config.yaml written before (the short name) still loads with the same meaning, and its checkpoint is still
recognised: :meth:`RunConfig.fingerprints` holds the fingerprint bioprop computed then, from the name as written.

The network is checked in two steps: :meth:`RunConfig.check` checks what needs no data (the rule, the activation,
the choices, the ranges); :meth:`RunConfig.check_arch` builds the network, without allocating its weights, for
the input shape and class count the dataset really has, once it is loaded and before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import types
from collections.abc import Iterator
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
import yaml
from pydantic import ValidationError

from bioprop import checks, data, nets, rules
from bioprop.errors import BioPropError
from bioprop.rules.options import INT_RANGE, SEED_MAX, coerce, problem

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
THREADS_ENV = ("BIOPROP_THREADS", "OMP_NUM_THREADS")  # in order of precedence, after --threads (see bioprop.cli)
# Fields that say where inputs live or how many threads compute, not what the run computes: left out of the
# fingerprint, so a run can be resumed with another --data-dir or --threads.
NOT_FINGERPRINTED = ("data_dir", "download", "threads")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Torch's intra-op thread pool at ``count`` threads inside the block (``None``: as it stands), as it was after
    it. :func:`bioprop.train.run` and :func:`~bioprop.train.resume` apply a run's ``threads`` setting this way."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Settings added after runs were first written: left out of the fingerprint while at their default, so that those
#: runs still resume.
ADDED_LATER = {"clip": None, "validation": 0}
MAX_THREADS = 1024
#: What ``arch: auto`` stands for, by the kind of network the rule trains.
DEFAULT_ARCH = {"feedforward": "mlp:256", "energy": "ebm:256", "recurrent": "lsnn:50+50"}
MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; this stops `--config /dev/zero` from filling memory
#: What a value of each kind of setting must be, as its errors say.
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def parse_seed(label: str, value: Any) -> int:
    """``value`` (a flag's text, a YAML value or a Python int) as a seed, an integer from 0 to :data:`SEED_MAX`: the
    one validator of ``bioprop train --seed`` (the setting ``seed``, :meth:`RunConfig.check`) and ``bioprop
    experiment --seed``. Anything else is a one-line BioPropError naming ``label`` and quoting ``value``, the same
    for every reason (not a number, not whole, negative, too large)."""
    try:
        seed = coerce(int, value)
    except ValidationError:
        seed = None
    if seed is None or not 0 <= seed <= SEED_MAX:
        hint = _whole_number_hint(value, int, (0, SEED_MAX)) if seed is None else ""  # `1e3`: write 1000
        raise BioPropError(f"{label} must be an integer from 0 to {SEED_MAX} (torch's CPU generator keeps 32 bits), "
                           f"not {value!r}{hint}")  # fmt: skip
    return seed


def dataset_name(name: str) -> str:
    """The dataset ``name`` as a run records it: the registry's name (:func:`bioprop.data.parse_name`: case, ``_`` and
    aliases do not matter) followed, for a sequence task, by every setting of its name in the task's order, defaults
    included: ``store-recall`` and ``Store_Recall:seed=0`` are both
    ``store-recall:n_train=4096,n_test=1024,delay=50,values=2,seed=0``, ``digits`` stays ``digits``. The recorded name
    says what ran even where a default changes later; :func:`bioprop.data.canonical_name` of it is the short form.
    Raises as :func:`bioprop.data.parse_name` (an unknown name, key or value)."""
    spec, values = data.parse_name(name)
    keys = spec.task.keys if spec.task is not None else ()
    items = [f"{key.name}={_say_setting(values[key.name])}" for key in keys]
    return f"{spec.name}:{','.join(items)}" if items else spec.name


def short_dataset_name(name: str) -> str:
    """``name`` with only the settings away from their defaults (:func:`bioprop.data.canonical_name`), for messages
    and folder names; ``name`` itself when it is no dataset's."""
    try:
        return data.canonical_name(name)
    except BioPropError:
        return name


def _say_setting(value: Any) -> str:
    """A task setting as its name writes it: booleans as true/false (a key alone also means true), others as text."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Any = MISSING,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] = (),
    unset: str | None = None,
    path: bool = False,
    check: Any = None,
) -> Any:
    """A :class:`RunConfig` field with what the command line and its ``--help`` need, in ``field.metadata``:

    ``help`` (one sentence or two, without the default: :func:`help_text` adds it from the field), ``flag`` (the long
    flag when it is not ``--`` + the name with ``-`` for ``_``), ``metavar`` (the value's placeholder in the help;
    ``NAME`` where there are choices, which the help lists; else ``<int>``, ``<float>``, ``<str>``), ``choices``
    (the only values :meth:`RunConfig.check` accepts), ``unset`` (what a ``None`` or empty default means, shown as
    the default), ``path`` (an empty string is refused) and ``check`` (the setting's own validator, ``check(label,
    value)``, which returns the value or raises its one message: :func:`parse_seed`; applied by
    :meth:`RunConfig.check`, and in place of the type's message where a value does not even parse). ``default`` or
    ``factory`` is the dataclass default."""
    metavar = metavar or ("NAME" if choices else None)  # a list of choices in the metavar crowds out the help
    metadata = {"help": help, "flag": flag, "metavar": metavar, "choices": choices, "unset": unset, "path": path,
                "check": check}  # fmt: skip
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class RunConfig:
    """Every setting of a training run; each field is a key of config.yaml and a flag of ``bioprop train`` (see
    :func:`setting`; ``bioprop train --help`` lists them with their defaults)."""

    # what is trained
    rule: str = setting("bp", "Learning rule; see `bioprop rules`.", metavar="NAME")
    data: str = setting("digits", "Dataset; see `bioprop datasets`.", metavar="NAME")
    arch: str = setting(
        "auto",
        "Network: mlp:H1xH2... (e.g. mlp:256x256; mlp:256:lateral adds learned lateral inhibition), lenet "
        "(28x28 or 32x32 images), or the energy-based ebm:H1x... "
        "and ebm-conv[:C1xC2[:H1x...]], or for sequence data the recurrent rnn:N (rate), lif:N, alif:N and lsnn:N+M "
        "(N LIF + M ALIF spiking neurons; lsnn:50+50:lateral adds learned lateral inhibition); checked against "
        "the dataset when it is loaded. auto: "
        f"{DEFAULT_ARCH['feedforward']}, {DEFAULT_ARCH['energy']} for a rule that trains energy-based networks "
        f"only, {DEFAULT_ARCH['recurrent']} for a temporal rule, unless the rule declares its own; recorded "
        "as such in config.yaml.",
        metavar="SPEC",
    )
    activation: str = setting(
        "auto",
        "Hidden nonlinearity; auto: hard_sigmoid on an energy-based net, else the one the rule declares (see "
        "`bioprop rules NAME`), else relu.",
        metavar="NAME",
        choices=("auto", *nets.ACTIVATIONS),
    )
    rule_opts: dict[str, Any] = setting(
        factory=dict,
        help="A rule option, repeatable; see `bioprop rules NAME`. A rule's seed option follows --seed unless given.",
        flag="--rule-opt",
        metavar="KEY=VALUE",
        unset="the rule's own",
    )
    # how long and in what steps
    epochs: int = setting(10, "Passes over the training set.")
    batch_size: int = setting(64, "Examples per step.")
    optimizer: str = setting("sgd", "Optimizer, applied to the rule's update (written into .grad).", choices=OPTIMIZERS)
    lr: float = setting(0.01, "Base learning rate, e.g. 0.01 or 1e-3.")
    momentum: float = setting(0.9, "Momentum of --optimizer sgd, in [0, 1).")
    weight_decay: float = setting(0.0, "Weight decay (L2 penalty, as torch.optim applies it).")
    schedule: str = setting(
        "none", "Learning-rate schedule: cosine decays to 0 over the run, step is x0.1 every --step-size epochs.",
        choices=SCHEDULES,
    )  # fmt: skip
    step_size: int = setting(0, "Epochs per x0.1 decay of --schedule step; 0 means max(1, epochs // 3).")
    clip: float | None = setting(
        None, "Clip the update's global L2 norm to this before each optimizer step, as recurrent networks are often "
        "trained (e.g. 1.0).", unset="no clipping",
    )  # fmt: skip
    # reproducibility and hardware
    seed: int = setting(
        0, f"Seed of the initialisation, the shuffling order and, unless --rule-opt seed=N, the rule; 0 to {SEED_MAX}.",
        check=parse_seed,
    )  # fmt: skip
    device: str = setting("auto", "Device; auto is cuda when available, else cpu.", choices=DEVICES)
    threads: int | None = setting(  # None from Python: torch's count as it stands; the CLI chooses one and records it;
        # bioprop.train.run and resume set torch's threads to it for the run's duration
        None,
        "Torch's intra-op CPU threads; recorded in config.yaml and reused by `bioprop resume`.",
        unset=f"${THREADS_ENV[0]}, else ${THREADS_ENV[1]}, else half the CPUs",
    )
    dtype: str = setting("float32", "Floating-point type of the weights and the data.", choices=tuple(DTYPES))
    # data
    data_dir: str | None = setting(
        None,
        "The only directory searched for dataset files (its <name>/, then itself); it must exist.",
        metavar="DIR",
        unset="$BIOPROP_DATA, else ~/.cache/bioprop/<name> and /usr/share/datasets/<name>",
        path=True,
    )
    download: bool = setting(False, "Download missing dataset files from their source, checked by SHA-256.")
    limit: int | None = setting(None, "Keep only the first N training and test examples.", unset="all")
    validation: int = setting(
        0,
        "Hold out N training examples as a validation set, the same ones for every run and seed (a fixed draw): "
        "trained on the rest, evaluated each epoch (val_loss, val_accuracy), and summary.json's best_val_epoch and "
        "test_accuracy_at_best_val choose an epoch without reading the test set. 0: none.",
    )
    # measuring the update angle to backprop on held-out probe batches (the first batches of the test set)
    probe_batches: int = setting(4, "Test-set batches (the first ones) on which the update angles are measured.")
    probe_batch_size: int = setting(256, "Examples per probe batch.")
    probe_every: int = setting(0, "Also measure the update angles every N steps, into alignment.csv; 0: epoch ends.")

    # ---------------------------------------------------------------------------------------------- building

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """A config from a plain mapping (``source`` names it in errors); unknown keys and values of the wrong type
        are a BioPropError (see the module docstring for how numbers are read)."""
        config = cls(**_checked_values(values, source))
        config._typed = dict(values)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """A config from a YAML file of ``key: value`` lines (any subset of the fields)."""
        return cls.from_dict(read_yaml(path), source=_file_source(path))

    @classmethod
    def from_sources(cls, path: str | Path | None, overrides: dict[str, Any]) -> RunConfig:
        """The YAML file at ``path`` (if any) with ``overrides`` (flags given on the command line, named in errors
        as ``--key``) on top; ``rule_opts`` are merged key by key, the override winning."""
        written = read_yaml(path) if path is not None else {}
        values = _checked_values(written, _file_source(path)) if path is not None else {}
        flags = _checked_values(overrides, source=None)
        if "rule_opts" in flags:
            flags["rule_opts"] = {**values.get("rule_opts", {}), **flags["rule_opts"]}
        config = cls(**{**values, **flags})
        config._typed = {**written, **overrides}
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """SHA-256 of everything that determines what the run computes (not where its data files live)."""
        return _fingerprint(self.to_dict())

    def fingerprints(self) -> tuple[str, ...]:
        """The fingerprints a checkpoint of this config may carry (what ``resume`` accepts): :meth:`fingerprint`, then
        the one bioprop computed before the dataset was recorded with every setting of its task, from the name as
        written (e.g. ``store-recall:delay=200`` in a config.yaml of then; the same meaning: :func:`dataset_name`)."""
        written = getattr(self, "_written_data", self.data)
        return tuple(dict.fromkeys((self.fingerprint(), _fingerprint({**self.to_dict(), "data": written}))))

    def written(self, name: str) -> Any:
        """What was written for setting ``name`` (a flag's text, a YAML value), for errors to quote as typed (``'-1'``,
        not ``-1.0``), when it still reads as the value held; else the value."""
        value = getattr(self, name)
        typed = getattr(self, "_typed", {}).get(name, _UNSET)
        if typed is _UNSET or typed is None or isinstance(typed, dict):
            return value
        try:
            same = parse_value(name, typed, value_kind(name)) == value
        except BioPropError:
            same = False
        return typed if same else value

    # -------------------------------------------------------------------------------------------- validation

    def __post_init__(self) -> None:
        """``arch: auto`` becomes the network the rule trains (:data:`DEFAULT_ARCH`) and ``data`` the dataset's name
        with every setting of its task (:func:`dataset_name`), so that the run records them. An unknown dataset is
        left as given, to be refused when the data are loaded (the CLI refuses it first)."""
        self._written_data = self.data
        if isinstance(self.data, str):
            try:
                self.data = dataset_name(self.data)
            except BioPropError:
                pass
        if self.arch == "auto" and isinstance(self.rule, str) and self.rule in rules.names():
            cls = rules.entry(self.rule).cls
            kind = next(k for k in ("feedforward", "recurrent", "energy") if k in cls.networks)
            self.arch = cls.arch or DEFAULT_ARCH[kind]

    def check(self, labels: dict[str, str] | None = None) -> RunConfig:
        """Raise BioPropError naming the first invalid value, quoted; returns self. ``labels`` say how each key was
        given (``--lr``, ``config 'run.yaml': lr``; see :func:`source_labels`), the key itself by default.

        Checks what needs no data: ranges, choices (``metadata["choices"]`` of each field), the rule's name. The
        network is checked by :meth:`check_arch` once the dataset's shape is known; the rule's options here too (what
        depends on the network, when the rule is created: :func:`bioprop.train.build`)."""
        labels = labels or {}

        def bad(name: str, rule: str) -> BioPropError:
            return BioPropError(f"{labels.get(name, name)} must be {rule}, not '{self.written(name)}'")

        for name in ("epochs", "batch_size", "probe_batches", "probe_batch_size"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("lr", "momentum", "weight_decay"):  # a RunConfig built in Python skips parse_value
            if not math.isfinite(getattr(self, name)):
                raise bad(name, "a finite number")
        if not self.lr > 0:
            raise bad("lr", "positive")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise bad(name, "non-negative")
        if not self.momentum < 1:  # heavy-ball momentum of 1 or more never forgets a step: the run diverges
            raise bad("momentum", "below 1")
        for name in ("step_size", "probe_every", "validation"):
            if getattr(self, name) < 0:
                raise bad(name, "0 or a positive integer")
        if self.clip is not None and not (math.isfinite(self.clip) and self.clip > 0):
            raise bad("clip", "a positive finite number")
        if self.limit is not None and self.limit < 1:
            raise bad("limit", "a positive number of examples")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise bad("threads", f"between 1 and {MAX_THREADS}")
        for item in fields(self):
            validate = item.metadata.get("check")
            if validate is not None:
                validate(labels.get(item.name, item.name), self.written(item.name))
        for item in fields(self):
            choices = item.metadata.get("choices")
            if choices and getattr(self, item.name) not in choices:
                raise BioPropError(f"unknown {labels.get(item.name, item.name)} {getattr(self, item.name)!r}; "
                                   f"choose one of {', '.join(choices)}")  # fmt: skip
        entry = rules.entry(self.rule)  # unknown rule: BioPropError listing the known ones
        fixed = sorted(set(self.rule_opts) & set(entry.presets))
        if fixed:
            raise BioPropError(f"rule {self.rule}: option {fixed[0]!r} is fixed by the rule's name")
        entry.cls.Options.parse(self.rule, {**entry.presets, **self.rule_opts})  # before the data, not after it
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BioPropError("device cuda requested but CUDA is not available; use --device cpu")
        return self

    def check_arch(self, in_shape: tuple[int, ...], n_classes: int, temporal: bool = False) -> RunConfig:
        """Raise BioPropError unless ``arch`` is a network for this run's dataset as it is: inputs of
        ``in_shape`` (C, H, W), e.g. (1, 8, 8) for digits, (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR-10, and
        ``n_classes`` outputs (both from the loaded :class:`bioprop.data.Dataset`). The network is built on the
        ``meta`` device, so no weight is allocated; what the network cannot take (e.g. :func:`bioprop.nets.lenet`
        refuses any image that is not 28x28 or 32x32 rather than padding it) is refused by the network itself. The
        one-line message names the arch and the dataset's shape. A ``temporal`` dataset (sequences, in_shape (T, C))
        needs a recurrent arch, and an image dataset one that is not. Returns self."""
        shape = "x".join(str(int(size)) for size in in_shape)
        name = short_dataset_name(self.data)
        dataset = f"dataset {name} has {shape} inputs and {n_classes} classes"
        try:
            with torch.device("meta"):
                net = nets.build(self.arch, in_shape, n_classes, self.resolved_activation())
        except BioPropError as exc:
            named = f"'{self.arch.strip().lower()}'" in str(exc)  # nets quotes the spec it cannot parse
            raise BioPropError(f"{exc} ({'' if named else f'arch {self.arch!r}; '}{dataset})") from None
        fixed = nets.fixed_nonlinearity(self.arch)
        if fixed is not None and self.activation not in ("auto", fixed):
            raise BioPropError(f"--activation {self.activation}: arch {self.arch!r} fixes its nonlinearity ({fixed}); "
                               "leave --activation at auto")  # fmt: skip
        if temporal and not checks.time_major(net):
            raise BioPropError(f"dataset {name} is a sequence task ({shape}: steps x channels): use a recurrent "
                               f"arch (rnn:N, lif:N, alif:N, lsnn:N+M or sab:N), not {self.arch!r}")  # fmt: skip
        if not temporal and checks.time_major(net):
            raise BioPropError(f"arch {self.arch!r} is a recurrent network for sequence tasks; {dataset}: use a "
                               "sequence dataset (e.g. cue-accumulation) or an mlp/lenet arch")  # fmt: skip
        return self

    def resolved_device(self) -> torch.device:
        """``auto`` becomes cuda when available, else cpu."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_activation(self) -> str:
        """What ``activation="auto"`` stands for: hard_sigmoid on an energy-based net, else the rule's declared
        activation (:attr:`bioprop.rules.Rule.activation`; tanh for ``dendritic``), else relu."""
        fixed = nets.fixed_nonlinearity(self.arch)
        if fixed is not None:  # a recurrent network's nonlinearity is part of its cell
            return fixed
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
        """``runs/<rule>-<data>-<arch>-s<seed>`` with characters unsafe in file names (such as ':') replaced; the data
        by its short name (:func:`short_dataset_name`), as before it was recorded in full."""
        name = f"{self.rule}-{short_dataset_name(self.data)}-{self.arch}-s{self.seed}"
        return str(Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "-", name))


def source_labels(path: str | Path | None, overrides: dict[str, Any]) -> dict[str, str]:
    """How each key reached :meth:`RunConfig.from_sources`, for :meth:`RunConfig.check`'s messages: its flag
    (``--lr``, ``--rule-opt``) for a flag, ``config 'run.yaml': key`` for a key read from the file."""
    labels = {f.name: f"{_file_source(path)}: {f.name}" for f in fields(RunConfig)} if path is not None else {}
    return {**labels, **{key: flag(key) for key in overrides}}


def field_of(name: str) -> Field:
    """The :class:`RunConfig` field called ``name``; an unknown name is a BioPropError listing the known ones."""
    for item in fields(RunConfig):
        if item.name == name:
            return item
    raise BioPropError(f"unknown setting {name!r}; known: {', '.join(f.name for f in fields(RunConfig))}")


def flag(name: str) -> str:
    """The long flag of setting ``name``: ``metadata["flag"]``, else ``--`` and the name with ``-`` for ``_``
    (also for a name that is no setting, as :func:`source_labels` may be given one)."""
    given = next((f.metadata.get("flag") for f in fields(RunConfig) if f.name == name), None)
    return given or f"--{name.replace('_', '-')}"


def value_kind(name: str) -> type:
    """The type of setting ``name``'s values, ``None`` aside: int, float, str, bool or dict."""
    return _kind(get_type_hints(RunConfig)[name])


def default_text(item: Field) -> str:
    """The default of a :class:`RunConfig` field as ``--help`` shows it: ``metadata["unset"]`` for a ``None`` or
    empty default, the flag that gives it for a bool (``--no-download``), else the value."""
    default = item.default_factory() if item.default is MISSING else item.default  # type: ignore[misc]
    if item.metadata.get("unset") is not None and default in (None, {}):
        return item.metadata["unset"]
    if isinstance(default, bool):
        return flag(item.name) if default else f"--no-{flag(item.name)[2:]}"
    return str(default)


def help_text(item: Field) -> str:
    """The ``--help`` text of a :class:`RunConfig` field: its ``metadata["help"]``, its choices (the metavar says
    only ``NAME``, see :func:`setting`) and its default (:func:`default_text`), which no help sentence states."""
    text = item.metadata["help"]
    choices = item.metadata.get("choices")
    if choices:
        text += f" One of {', '.join(choices)}."
    return f"{text} [default: {default_text(item)}]"


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
        values = load_yaml(text, _file_source(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BioPropError(f"cannot parse {_file_source(path)}: {problem}{where}") from None
    if values is None:
        raise BioPropError(f"{_file_source(path)} is empty; expected key: value lines such as `rule: fa`")
    if not isinstance(values, dict):
        raise BioPropError(f"{_file_source(path)} must be a mapping of key: value, not a {type(values).__name__}")
    return {str(k): v for k, v in values.items()}


def load_yaml(text: str, source: str) -> Any:
    """The document in ``text`` by YAML's safe loader, except that a key given twice in one mapping (at any depth),
    an integer of more than 4300 digits or nesting too deep is a one-line BioPropError naming ``source`` (e.g.
    ``config 'run.yaml'``); a syntax error is left to the caller to word (``yaml.YAMLError``)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise BioPropError(f"{source}: key {exc.key!r} given twice (line {exc.line})") from None
    except (ValueError, RecursionError) as exc:
        raise BioPropError(f"cannot parse {source}: {' '.join(str(exc).split()[:12])}") from None


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


def parse_value(label: str, value: Any, kind: type) -> Any:
    """``value`` (from YAML, a flag or an environment variable) as a setting of type ``kind``: int, float, str,
    bool or dict, read by :func:`bioprop.rules.options.coerce` (see the module docstring). A value it refuses is a
    one-line BioPropError naming ``label`` and quoting the value, with a hint where a whole number was written in
    another notation (``1e3``: write 1000)."""
    try:
        return coerce(kind, value)
    except ValidationError as error:
        found = problem(kind, error)
    if found == "finite":
        raise BioPropError(f"{label} must be a finite number, not {value!r}")
    if found == "range":
        raise BioPropError(f"{label} must be an integer from {INT_RANGE[0]} to {INT_RANGE[1]}, not {value!r}")
    says = KIND_NAMES.get(kind, kind.__name__)
    raise BioPropError(f"{label} must be {says}, not {value!r}{_whole_number_hint(value, kind)}")


parse_number = parse_value  # the name bioprop.cli reads the thread variables with


def _whole_number_hint(value: Any, kind: type, bounds: tuple[int, int] = INT_RANGE) -> str:
    """`` (write 1000)`` when ``value`` is a string that writes a whole number within ``bounds`` (64 bits by default)
    in another notation (``1e3``) and ``kind`` is int."""
    if kind is not int or not isinstance(value, str):
        return ""
    try:
        number = coerce(float, value)
    except ValidationError:
        return ""
    return f" (write {int(number)})" if number.is_integer() and bounds[0] <= number <= bounds[1] else ""


def _checked_values(values: dict[str, Any], source: str | None) -> dict[str, Any]:
    """``values`` with unknown keys refused and each value parsed as its field's type (:func:`parse_value`; ``None``
    stays ``None`` where the field allows it). ``source`` is the file (or other origin) named in errors; None means
    flags, named by their flag (``--lr``)."""
    hints = get_type_hints(RunConfig)
    paths = {f.name for f in fields(RunConfig) if f.metadata.get("path")}
    validators = {f.name: f.metadata["check"] for f in fields(RunConfig) if f.metadata.get("check")}
    out = {}
    for key, value in values.items():
        if key not in hints:
            origin = source if source is not None else "flags"
            raise BioPropError(f"{origin}: unknown key {key!r}; known: {', '.join(sorted(hints))}")
        label = flag(key) if source is None else f"{source}: {key}"
        try:
            out[key] = None if value is None and _optional(hints[key]) else parse_value(label, value, _kind(hints[key]))
        except BioPropError:
            if key in validators:  # the setting's own message (the seed's range), for every reason it is refused
                validators[key](label, value)
            raise
        if key in paths and out[key] == "":
            raise BioPropError(f"{label} needs a path, not ''")
    return out


_UNSET = object()


def _fingerprint(values: dict[str, Any]) -> str:
    """SHA-256 of a config's values (:meth:`RunConfig.to_dict`) as sorted JSON, without the fields that do not change
    what a run computes (:data:`NOT_FINGERPRINTED`) and those added later while at their default
    (:data:`ADDED_LATER`)."""
    what = {k: v for k, v in values.items()
            if k not in NOT_FINGERPRINTED and not (k in ADDED_LATER and v == ADDED_LATER[k])}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _optional(hint: Any) -> bool:
    """Whether a field's type hint allows ``None`` (``int | None``)."""
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _kind(hint: Any) -> type:
    """The type a field's hint holds, ``None`` aside: ``int | None`` is int, ``dict[str, Any]`` is dict."""
    kind = next(a for a in get_args(hint) if a is not type(None)) if _optional(hint) else hint
    return get_origin(kind) or kind
