"""Readers for the on-disk formats: IDX (raw or gzipped) and CIFAR-10 binary records.

Every reader only opens files for reading and raises :class:`BioPropError` with a one-line message that
names the file and the problem. Arrays are returned as ``uint8`` numpy arrays (read-only views on the
file's bytes where possible); nothing is converted to floating point here.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from bioprop.data._registry import (
    CIFAR10_FOLDER,
    CIFAR10_RECORD_BYTES,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
)
from bioprop.errors import BioPropError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, columns)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: Path) -> bytes:
    """The contents of ``path``, decompressed when it is gzipped (by ``.gz`` suffix or by content)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BioPropError(f"cannot read '{path}' ({exc.strerror or exc})") from None
    if path.suffix == ".gz" or data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            reason = str(exc) or type(exc).__name__
            raise BioPropError(f"corrupt gzip file '{path}' ({reason})") from None
    return data


def parse_idx(data: bytes, path: Path | str, magic: int) -> np.ndarray:
    """Parse the IDX bytes ``data`` read from ``path``, requiring the header's magic number to be ``magic``.

    Returns a read-only ``uint8`` array with the header's dimensions.
    """
    kind = "image" if magic == IDX_IMAGES_MAGIC else "label"
    if len(data) < 4:
        raise BioPropError(f"truncated IDX file '{path}': {len(data)} bytes, too short for the header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise BioPropError(
            f"wrong magic number 0x{found:08x} in '{path}' (an IDX {kind} file starts with 0x{magic:08x})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BioPropError(f"truncated IDX file '{path}': {len(data)} bytes, too short for the header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = 1
    for d in dims:
        count *= d
    expected = header + count
    shape = "x".join(str(d) for d in dims)
    if len(data) < expected:
        raise BioPropError(
            f"truncated IDX file '{path}': {len(data)} bytes, but its header ({shape}) implies {expected}"
        )
    if len(data) > expected:
        raise BioPropError(
            f"IDX file '{path}' has {len(data) - expected} bytes after the {shape} data its header declares"
        )
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims)


def read_idx_images(path: Path) -> np.ndarray:
    """Images of an IDX image file as a ``(N, 1, H, W)`` ``uint8`` array; N, H and W must be positive."""
    images = parse_idx(read_file_bytes(path), path, IDX_IMAGES_MAGIC)
    if images.shape[0] == 0:
        raise BioPropError(f"IDX image file '{path}' holds no images (its header declares 0); a split cannot be empty")
    if 0 in images.shape[1:]:
        raise BioPropError(f"IDX image file '{path}' declares images of {images.shape[1]}x{images.shape[2]} pixels")
    return images[:, None, :, :]


def read_idx_labels(path: Path, n_classes: int) -> np.ndarray:
    """Labels of an IDX label file as a ``(N,)`` ``uint8`` array, N positive and each label below ``n_classes``."""
    labels = parse_idx(read_file_bytes(path), path, IDX_LABELS_MAGIC)
    if labels.shape[0] == 0:
        raise BioPropError(f"IDX label file '{path}' holds no labels (its header declares 0); a split cannot be empty")
    check_labels(labels, n_classes, path)
    return labels


def check_labels(labels: np.ndarray, n_classes: int, path: Path | str) -> None:
    """Raise when a label is ``>= n_classes``, naming the first offending example."""
    if labels.size and int(labels.max()) >= n_classes:
        index = int(np.argmax(labels >= n_classes))
        raise BioPropError(
            f"label {int(labels[index])} out of range (must be below {n_classes} classes) "
            f"at example {index} of '{path}'"
        )


def check_counts(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path) -> None:
    """Raise when an image file and its label file hold different numbers of examples."""
    if images.shape[0] != labels.shape[0]:
        raise BioPropError(
            f"image/label count mismatch: '{images_path}' has {images.shape[0]} images "
            f"but '{labels_path}' has {labels.shape[0]} labels"
        )


def parse_cifar_records(data: bytes, path: Path | str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Split CIFAR-10 binary records (1 label byte + 3x32x32 pixel bytes each) into images and labels.

    Returns ``(images, labels)`` as ``uint8`` arrays of shapes ``(N, 3, 32, 32)`` and ``(N,)``.
    """
    if len(data) == 0 or len(data) % CIFAR10_RECORD_BYTES:
        raise BioPropError(
            f"CIFAR-10 record file '{path}' has {len(data)} bytes, not a positive multiple of "
            f"{CIFAR10_RECORD_BYTES} (1 label byte + 3072 pixel bytes per record); is it the binary version?"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0]
    check_labels(labels, n_classes, path)
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return images, labels


def read_cifar_dir(folder: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images/labels from the ``.bin`` record files in ``folder``."""

    def read_all(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [parse_cifar_records(read_file_bytes(folder / n), folder / n, n_classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train_x, train_y = read_all(CIFAR10_TRAIN_FILES)
    test_x, test_y = read_all(CIFAR10_TEST_FILES)
    return train_x, train_y, test_x, test_y


def read_cifar_archive(archive: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images/labels read straight out of ``cifar-10-binary.tar.gz`` (nothing is extracted)."""
    wanted = {f"{CIFAR10_FOLDER}/{n}": n for n in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES}
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = str(PurePosixPath(member.name))
                if member.isfile() and name in wanted:
                    stream = tar.extractfile(member)
                    if stream is not None:
                        contents[wanted[name]] = stream.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        reason = str(exc) or type(exc).__name__
        raise BioPropError(f"corrupt CIFAR-10 archive '{archive}' ({reason})") from None
    missing = [n for n in wanted.values() if n not in contents]
    if missing:
        raise BioPropError(f"CIFAR-10 archive '{archive}' lacks {CIFAR10_FOLDER}/{missing[0]}")

    def read_all(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [parse_cifar_records(contents[n], f"{archive}:{n}", n_classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train_x, train_y = read_all(CIFAR10_TRAIN_FILES)
    test_x, test_y = read_all(CIFAR10_TEST_FILES)
    return train_x, train_y, test_x, test_y
