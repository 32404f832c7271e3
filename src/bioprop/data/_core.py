"""Loading whole datasets as standardised tensors, listing them, and iterating over minibatches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bioprop.data import _fetch, _locate
from bioprop.data._readers import (
    check_counts,
    read_cifar_archive,
    read_cifar_dir,
    read_idx_images,
    read_idx_labels,
)
from bioprop.data._registry import (
    DATASETS,
    IDX_TEST_IMAGES,
    IDX_TEST_LABELS,
    IDX_TRAIN_IMAGES,
    IDX_TRAIN_LABELS,
    DatasetSpec,
    spec_for,
)
from bioprop.errors import BioPropError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360


@dataclass(repr=False)
class Dataset:
    """A whole dataset in memory, as tensors on one device.

    ``train_x`` and ``test_x`` are ``(N, C, H, W)`` floating tensors, standardised per channel with the
    mean and standard deviation of the training images (after scaling the pixels to [0, 1]); the test
    images use the training statistics. ``train_y`` and ``test_y`` are ``int64`` class indices.
    ``source`` says where the data was read from (a path, or ``"scikit-learn"``).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    in_shape: tuple[int, ...]
    source: str

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
            f"n_classes={self.n_classes}, dtype={self.train_x.dtype}, device={self.train_x.device}, "
            f"source={self.source!r})"
        )


def find(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The directory where dataset ``name``'s files were found, else None.

    Searched: ``data_dir`` (``data_dir/<name>``, then ``data_dir`` itself) when given, else ``$BIOPROP_DATA``
    likewise when set, else ``~/.cache/bioprop/<name>`` and ``/usr/share/datasets/<name>``; the first directory
    holding any of the dataset's files wins. A named directory (``data_dir`` or ``$BIOPROP_DATA``) is the only
    place searched, and one that does not exist or is not a directory raises :class:`BioPropError`. ``digits``
    is always found (scikit-learn's data directory): it has no files to look for, but a ``data_dir`` given with it
    must still be an existing directory.
    """
    spec = spec_for(name)
    if spec.kind == "sklearn":
        if data_dir is not None:
            _locate.named_dir(data_dir)
        return _fetch.sklearn_data_dir()
    location = _locate.locate(spec, data_dir)
    return None if location is None else location.folder


def catalog(data_dir: str | Path | None = None) -> list[dict]:
    """One entry per registered dataset: ``{"name", "found": Path or None, "how": one line}``."""
    return [
        {"name": name, "found": find(name, data_dir), "how": _locate.how_to_get(spec)}
        for name, spec in DATASETS.items()
    ]


def _not_found(spec: DatasetSpec, data_dir: str | Path | None) -> BioPropError:
    named = _locate.named_dir(data_dir)
    if named is not None:
        return BioPropError(
            f"{named.what} {str(named.path)!r} holds none of {spec.name}'s files (expected "
            f"{_locate.expected_files(spec)} in {named.path / spec.name} or {named.path}; nothing else is searched "
            f"when a directory is named); "
            f"{_locate.how_to_get(spec, folder=named.path / spec.name)}"
        )
    looked = ", ".join(_locate.tilde(d) for d in _locate.search_dirs(spec.name))
    return BioPropError(f"{spec.name} not found (looked in {looked}); {_locate.how_to_get(spec)}")


def _read_files(spec: DatasetSpec, location: _locate.Location) -> tuple[np.ndarray, ...]:
    """``(train_x, train_y, test_x, test_y)`` as uint8 arrays from a complete location."""
    if spec.kind == "cifar10-bin":
        if location.archive is not None:
            return read_cifar_archive(location.archive, spec.n_classes)
        return read_cifar_dir(location.folder, spec.n_classes)
    arrays = []
    for images_stem, labels_stem in (
        (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS),
        (IDX_TEST_IMAGES, IDX_TEST_LABELS),
    ):
        images_path = _locate.idx_file(location.folder, images_stem)
        labels_path = _locate.idx_file(location.folder, labels_stem)
        assert images_path is not None and labels_path is not None  # checked by missing_files
        images = read_idx_images(images_path)
        labels = read_idx_labels(labels_path, spec.n_classes)
        check_counts(images, labels, images_path, labels_path)
        arrays += [images, labels]
    train_x, test_x = arrays[0], arrays[2]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise BioPropError(
            f"{spec.name} train images are {train_x.shape[2]}x{train_x.shape[3]} but test images are "
            f"{test_x.shape[2]}x{test_x.shape[3]} (in '{location.folder}')"
        )
    return tuple(arrays)


def _read_digits() -> tuple[np.ndarray, ...]:
    """scikit-learn's digits as uint8 (values 0..16), split 1437 / 360 by a permutation seeded with 0."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64).round().astype(np.uint8)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.uint8)
    generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    order = torch.randperm(len(labels), generator=generator).numpy()
    n_train = len(labels) - DIGITS_TEST_SIZE
    train, test = order[:n_train], order[n_train:]
    return images[train], labels[train], images[test], labels[test]


def channel_stats(images: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of uint8 ``images`` (N, C, H, W) divided by ``scale``.

    Computed exactly in float64 from per-channel value histograms; a zero std is replaced by 1.
    """
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = torch.from_numpy(images[:, c].copy().reshape(-1))  # torch's bincount is fast on uint8
        counts = torch.bincount(channel, minlength=256).numpy().astype(np.float64)
        values = np.arange(counts.size, dtype=np.float64) / scale
        total = counts.sum()
        mean = float((counts * values).sum() / total) if total else 0.0
        var = float((counts * (values - mean) ** 2).sum() / total) if total else 0.0
        means.append(mean)
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return np.array(means), np.array(stds)


def _to_tensor(
    images: np.ndarray,
    scale: float,
    mean: np.ndarray,
    std: np.ndarray,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    work = np.float64 if dtype == torch.float64 else np.float32
    x = torch.from_numpy(images.astype(work))  # astype copies into a fresh, writable array
    shape = (1, -1, 1, 1)
    x.mul_(1.0 / scale).sub_(torch.from_numpy(mean.astype(work)).view(shape))
    x.div_(torch.from_numpy(std.astype(work)).view(shape))
    return x.to(device=device, dtype=dtype)


def load(
    name: str,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    download: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Load dataset ``name`` whole, as standardised tensors on ``device`` with floating ``dtype``.

    The files are looked for as :func:`find` says: in ``data_dir`` only when it is given, else in
    ``$BIOPROP_DATA`` only when it is set, else in the default search path. With ``download=True`` missing
    files are fetched (into ``<data_dir>/<name>`` when ``data_dir`` is given, else as :func:`download` does);
    otherwise nothing is downloaded. ``digits`` is bundled with scikit-learn and reads no files, but a
    ``data_dir`` given with it must still be an existing directory. ``limit`` keeps only the first ``limit``
    train and test examples (the statistics are then those of the kept training examples).

    Everything is checked before any tensor is made: an unknown name, a named directory that does not exist,
    is not a directory or holds none of the dataset's files, a missing, truncated, corrupt or mismatched file,
    an empty split or a label outside ``0 .. n_classes - 1`` raise :class:`BioPropError` with one line naming
    the file or directory. Dataset files are only read, never changed.
    """
    spec = spec_for(name)
    if not dtype.is_floating_point:
        raise BioPropError(f"dtype must be a floating-point type, not {dtype}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BioPropError(f"limit must be a positive number of examples, not {limit!r}")
    device = torch.device(device)
    if spec.kind == "sklearn":
        find(spec.name, data_dir)  # checks a data_dir given, which digits does not read
        train_x, train_y, test_x, test_y = _read_digits()
        scale, source = 16.0, "scikit-learn"
    else:
        location = _locate.locate(spec, data_dir)
        if download and (location is None or _locate.missing_files(spec, location)):
            dest = Path(data_dir).expanduser() / spec.name if data_dir is not None else None
            location = _locate.locate_in(spec, _fetch.download(spec.name, dest=dest))
        if location is None:
            raise _not_found(spec, data_dir)
        missing = _locate.missing_files(spec, location)
        if missing:
            suffix = "[.gz]" if spec.kind == "idx" else ""
            raise BioPropError(
                f"missing file {location.folder / missing[0]}{suffix} for {spec.name} "
                f"({len(missing)} of its files are missing there); "
                f"{_locate.how_to_get(spec, folder=location.folder)}"
            )
        train_x, train_y, test_x, test_y = _read_files(spec, location)
        scale, source = 255.0, str(location.archive or location.folder)
    if limit is not None:  # limit >= 1 of non-empty splits (checked by the readers) leaves them non-empty
        train_x, train_y, test_x, test_y = train_x[:limit], train_y[:limit], test_x[:limit], test_y[:limit]
    mean, std = channel_stats(train_x, scale)
    return Dataset(
        name=spec.name,
        train_x=_to_tensor(train_x, scale, mean, std, device, dtype),
        train_y=torch.from_numpy(train_y.astype(np.int64)).to(device),
        test_x=_to_tensor(test_x, scale, mean, std, device, dtype),
        test_y=torch.from_numpy(test_y.astype(np.int64)).to(device),
        n_classes=spec.n_classes,
        in_shape=tuple(int(d) for d in train_x.shape[1:]),
        source=source,
    )


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    with_index: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Minibatches ``(x[idx], y[idx])`` covering every example exactly once; the last may be smaller. With
    ``with_index``, ``(x[idx], y[idx], idx)``: ``idx`` (B,) int64 on ``x``'s device, the examples' positions, which a
    rule with per-example state (persistent particles) keys it by.

    With ``shuffle`` the order is ``torch.randperm`` drawn on the CPU from ``generator`` (the global RNG
    when None) and then moved to ``x``'s device, so equal generator seeds give equal orders on any
    device; without it the examples come in order.
    """
    n = int(x.shape[0])
    if int(y.shape[0]) != n:
        raise BioPropError(f"batches: x has {n} examples but y has {int(y.shape[0])}")
    if int(batch_size) < 1:
        raise BioPropError(f"batch size must be at least 1, not {batch_size}")
    if shuffle:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device)
    else:
        order = torch.arange(n)
    return _iterate(x, y, order, int(batch_size), with_index)


def _iterate(
    x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int, with_index: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    order_x = order.to(x.device)
    order_y = order_x if y.device == x.device else order.to(y.device)
    for start in range(0, int(order.shape[0]), batch_size):
        index = order_x[start : start + batch_size]
        batch = x[index], y[order_y[start : start + batch_size]]
        yield (*batch, index) if with_index else batch
