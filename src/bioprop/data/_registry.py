"""The registry of datasets bioprop knows by name: their files, canonical sources and checksums."""

from __future__ import annotations

from dataclasses import dataclass

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
    raw or gzipped) or ``"cifar10-bin"`` (CIFAR-10 binary record files). ``base_url`` is the canonical
    download location, to which each of ``files`` is appended.
    """

    name: str
    kind: str
    n_classes: int
    base_url: str | None
    files: tuple[RemoteFile, ...]
    extra_how: str = ""


# Checksums. The SHA-256 values are those of the files as served by the canonical sources; each was
# found identically in several independent public download scripts (among them torchvision's prototype
# dataset definitions), and the files' sizes and MD5s agree with the dataset authors' and torchvision's lists.
# Debian's `dataset-fashion-mnist` package re-compressed its .gz files (gzip header without the file
# name, new mtime), so they do NOT have the canonical checksums, although the deflate payload sizes match.
# Reading a dataset never checks these; they are only used to verify downloads.
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
}

_ALIASES = {
    "fashion": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "k-mnist": "kmnist",
    "kuzushiji-mnist": "kmnist",
}


def known_names() -> str:
    """The registered dataset names, comma-separated, for messages."""
    return ", ".join(DATASETS)


def canonical_name(name: str) -> str:
    """The registry key for ``name`` (case and ``_``/``-`` insensitive, a few aliases); raises if unknown."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise BioPropError(f"unknown dataset {name!r}; known datasets: {known_names()}")
    return key


def spec_for(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (looked up at call time, so tests may patch ``DATASETS``)."""
    return DATASETS[canonical_name(name)]
