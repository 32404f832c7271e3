"""The registry of datasets bioprop knows by name: their files, canonical sources and checksums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bioprop.data.temporal import TASKS, Task
from bioprop.errors import BioPropError

# File names of the four IDX files shared by MNIST, Fashion-MNIST and KMNIST (each may also be gzipped).
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS, IDX_TEST_IMAGES, IDX_TEST_LABELS)

# CIFAR-10, binary version: the archive, the folder it unpacks to and the record files inside it.
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_RECORDS_PER_FILE = 10000


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published at its canonical source: its name and SHA-256 (hex), which every
    download of it is verified against."""

    name: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """What bioprop knows about one named dataset.

    ``kind`` selects the reader: ``"sklearn"`` (bundled with scikit-learn), ``"idx"`` (four IDX files,
    raw or gzipped) or ``"cifar10-bin"`` (CIFAR-10 binary record files); for sequence datasets (``task`` set:
    its keys and how it is made, :class:`bioprop.data.temporal.Task`) ``"generated"`` (made by a generator, no
    files), ``"sequence"`` (the images of the registered dataset ``base`` as sequences) or ``"shd"`` (the user's
    Spiking Heidelberg Digits files). ``base_url`` is the canonical download location, to which each of ``files``
    is appended.
    """

    name: str
    kind: str
    n_classes: int
    base_url: str | None
    files: tuple[RemoteFile, ...]
    extra_how: str = ""
    task: Task | None = None
    base: str | None = None


# Checksums. The SHA-256 values are those of the files as served by the canonical sources; each was
# found identically in several independent public download scripts (among them torchvision's prototype
# dataset definitions), and the files' sizes and MD5s agree with the dataset authors' and torchvision's lists.
# Debian's `dataset-fashion-mnist` package re-compressed its .gz files (gzip header without the file
# name, new mtime), so they do NOT have the canonical checksums, although the deflate payload sizes match.
# Reading a dataset never checks these; they are only used to verify downloads.
def generated(name: str, outputs: int) -> DatasetSpec:
    """The entry of a task generated from a seed (:mod:`bioprop.data.temporal`): no files, ``outputs`` readouts."""
    return DatasetSpec(name=name, kind="generated", n_classes=outputs, base_url=None, files=(), task=TASKS[name])


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits",
        kind="sklearn",
        n_classes=10,
        base_url=None,
        files=(),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        kind="idx",
        n_classes=10,
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        kind="idx",
        n_classes=10,
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        ),
        extra_how="or `apt-get install dataset-fashion-mnist`",
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        kind="idx",
        n_classes=10,
        base_url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            ),
        ),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        kind="cifar10-bin",
        n_classes=10,
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(
            RemoteFile(
                CIFAR10_ARCHIVE,
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            ),
        ),
    ),
    **{
        name: generated(name, outputs)
        for name, outputs in (
            ("cue-accumulation", 2),
            ("pattern-generation", 1),
            ("periodic-target", 1),
            ("store-recall", 2),
        )
    },  # fmt: skip
    "seq-fashion-mnist": DatasetSpec(
        name="seq-fashion-mnist",
        kind="sequence",
        n_classes=10,
        base_url=None,
        files=(),
        task=TASKS["seq-fashion-mnist"],
        base="fashion-mnist",
    ),
    "shd": DatasetSpec(
        name="shd",
        kind="shd",
        n_classes=20,
        base_url="https://zenkelab.org/datasets/",
        files=(),
        task=TASKS["shd"],
    ),
}

_ALIASES = {
    "fashion": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "k-mnist": "kmnist",
    "kuzushiji-mnist": "kmnist",
    "evidence-accumulation": "cue-accumulation",
    "sequential-fashion-mnist": "seq-fashion-mnist",
    "seq-fmnist": "seq-fashion-mnist",
    "spiking-heidelberg-digits": "shd",
}


def known_names() -> str:
    """The registered dataset names, comma-separated, for messages."""
    return ", ".join(DATASETS)


def parse_name(name: str) -> tuple[DatasetSpec, dict[str, Any]]:
    """The registry entry of ``name`` and its settings.

    ``name`` is ``NAME`` or ``NAME:key=value,...`` (``NAME:flag`` sets a boolean key); the name is case and
    ``_``/``-`` insensitive and may be an alias. The settings hold every key of the dataset's task
    (:class:`bioprop.data.temporal.Task`), the default where not given. An unknown name, an unknown, repeated or
    empty key and a bad value each raise one-line :class:`BioPropError` (an unknown key lists the known ones).
    """
    base, colon, items = str(name).strip().partition(":")
    key = base.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        given_name = base.strip() if colon else name
        raise BioPropError(f"unknown dataset {given_name!r}; known datasets: {known_names()}")
    spec = DATASETS[key]
    keys = {k.name: k for k in spec.task.keys} if spec.task is not None else {}
    settings = {k: option.default for k, option in keys.items()}
    given: set[str] = set()
    for item in items.split(",") if colon else ():
        word, equals, value = (part.strip() for part in item.lower().partition("="))
        word = word.replace("-", "_")
        if not word:
            raise BioPropError(f"{spec.name}: empty key in {str(name).strip()!r}")
        if word not in keys:
            known = f"known keys: {', '.join(keys)}" if keys else "it takes none"
            raise BioPropError(f"unknown key {word!r} for {spec.name}; {known}")
        if word in given:
            raise BioPropError(f"{spec.name}: key {word!r} given twice")
        given.add(word)
        settings[word] = keys[word].parse(value if equals else None, spec.name)
    return spec, settings


def canonical_name(name: str) -> str:
    """The registry key for ``name`` (case and ``_``/``-`` insensitive, a few aliases), followed by
    ``:key=value,...`` for the keys set to other than their defaults, in the task's order (``NAME:flag`` for a
    boolean key set); raises as :func:`parse_name` does."""
    spec, settings = parse_name(name)
    changed = [k for k in (spec.task.keys if spec.task else ()) if settings[k.name] != k.default]
    items = [_item(k.name, settings[k.name]) for k in changed]
    return f"{spec.name}:{','.join(items)}" if items else spec.name


def _item(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return key if value else f"{key}=false"
    return f"{key}={value}"


def spec_for(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (looked up at call time, so tests may patch ``DATASETS``); keys in the
    name are checked as :func:`parse_name` does."""
    return parse_name(name)[0]
