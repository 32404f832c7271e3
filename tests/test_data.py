"""Tests of bioprop.data: IDX / CIFAR-10 readers, search order, bad input, batches, digits, downloads.

All data is generated here, in tmp_path; nothing depends on datasets installed on the machine or on the
network (downloads are served by a local http.server on 127.0.0.1).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bioprop.data import DATASETS, Dataset, _locate, batches, catalog, download, find, load
from bioprop.data._registry import RemoteFile
from bioprop.errors import BioPropError

IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = ["test_batch.bin"]


# ----------------------------------------------------------------------------------------------------
# Fixtures and writers (independent of the library: struct + numpy only)


@pytest.fixture(autouse=True)
def data_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME, no $BIOPROP_DATA and an empty system dataset directory for every test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    monkeypatch.setattr(_locate, "SYSTEM_DATA_DIR", tmp_path / "system")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return home


def data_idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic (0x0000 08 ndim), big-endian dims, raw bytes."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def data_write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def data_make_idx(
    folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = True, seed: int = 0, hw: tuple = (28, 28)
) -> dict[str, np.ndarray]:
    """Write the four IDX files of a small random dataset into ``folder``; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, *hw), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 128, size=(n_test, *hw), dtype=np.uint8),
        "test_y": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for key, stem in IDX_NAMES.items():
        data_write(folder / stem, data_idx_bytes(arrays[key]), gz)
    return arrays


def data_cifar_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    return records.astype(np.uint8).tobytes()


def data_make_cifar(folder: Path, per_file: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Write tiny CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin) into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for i, name in enumerate(CIFAR_TRAIN + CIFAR_TEST):
        images = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        labels = ((np.arange(per_file) + i) % 10).astype(np.uint8)
        (folder / name).write_bytes(data_cifar_bytes(images, labels))
        split = "test" if name in CIFAR_TEST else "train"
        out[f"{split}_x"].append(images)
        out[f"{split}_y"].append(labels)
    return {k: np.concatenate(v) for k, v in out.items()}


def data_checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def data_snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` with its SHA-256 and mtime (to check that nothing was modified or rewritten)."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def data_expected(raw_train: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Independent standardisation: per-channel train mean/std of pixels/255 applied to ``raw``."""
    train = raw_train.astype(np.float64) / 255.0
    axes = (0, 2, 3)
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True)
    return (raw.astype(np.float64) / 255.0 - mean) / std


# ----------------------------------------------------------------------------------------------------
# IDX round trip


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    folder = tmp_path / "data" / "mnist"
    arrays = data_make_idx(folder, gz=gz)
    before = data_snapshot(folder)
    data = load("mnist", data_dir=tmp_path / "data")
    assert isinstance(data, Dataset)
    assert data.name == "mnist" and data.n_classes == 10 and data.in_shape == (1, 28, 28)
    assert data.source == str(folder)
    assert data.train_x.shape == (50, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_y, torch.from_numpy(arrays["train_y"].astype(np.int64)))
    assert torch.equal(data.test_y, torch.from_numpy(arrays["test_y"].astype(np.int64)))
    # Standardised with the train statistics: train mean 0 / std 1; test uses the same statistics.
    assert abs(data.train_x.mean().item()) < 1e-5
    assert abs(data.train_x.std(correction=0).item() - 1.0) < 1e-5
    train_raw, test_raw = arrays["train_x"][:, None], arrays["test_x"][:, None]
    np.testing.assert_allclose(data.train_x.numpy(), data_expected(train_raw, train_raw), atol=1e-5)
    np.testing.assert_allclose(data.test_x.numpy(), data_expected(train_raw, test_raw), atol=1e-5)
    assert data.test_x.mean().item() < -0.5  # test pixels are darker than train: not re-standardised
    assert data_snapshot(folder) == before  # reading modifies nothing
    assert "train=(50, 1, 28, 28)" in repr(data)


def test_idx_any_image_size_limit_and_dtype(tmp_path: Path) -> None:
    arrays = data_make_idx(tmp_path / "fashion-mnist", n_train=30, n_test=12, hw=(5, 7))
    data = load("fashion-mnist", data_dir=tmp_path, dtype=torch.float64, limit=10)
    assert data.train_x.shape == (10, 1, 5, 7) and data.test_x.shape == (10, 1, 5, 7)
    assert data.in_shape == (1, 5, 7) and data.train_x.dtype == torch.float64
    kept = arrays["train_x"][:10, None]
    np.testing.assert_allclose(data.train_x.numpy(), data_expected(kept, kept), atol=1e-12)
    assert torch.equal(data.test_y, torch.from_numpy(arrays["test_y"][:10].astype(np.int64)))


def test_mixed_raw_and_gz_files(tmp_path: Path) -> None:
    arrays = data_make_idx(tmp_path / "kmnist", gz=True)
    (tmp_path / "kmnist" / "t10k-images-idx3-ubyte.gz").unlink()
    data_write(tmp_path / "kmnist" / "t10k-images-idx3-ubyte", data_idx_bytes(arrays["test_x"]), gz=False)
    data = load("KMNIST", data_dir=tmp_path)
    assert data.name == "kmnist" and data.test_x.shape[0] == 20


def test_load_rejects_bad_arguments(tmp_path: Path) -> None:
    data_make_idx(tmp_path / "mnist")
    with pytest.raises(BioPropError, match="floating"):
        load("mnist", data_dir=tmp_path, dtype=torch.int32)
    with pytest.raises(BioPropError, match="limit"):
        load("mnist", data_dir=tmp_path, limit=0)


# ----------------------------------------------------------------------------------------------------
# Search order


def test_search_order(tmp_path: Path, data_isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locations = {
        "data_dir": tmp_path / "arg" / "mnist",
        "env": tmp_path / "env" / "mnist",
        "cache": data_isolated / ".cache" / "bioprop" / "mnist",
        "system": tmp_path / "system" / "mnist",
    }
    for i, folder in enumerate(locations.values()):
        data_make_idx(folder, n_train=10 + i, n_test=5)
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "env"))
    # A data_dir given wins over $BIOPROP_DATA, which wins over the default search path.
    assert find("mnist", data_dir=tmp_path / "arg") == locations["data_dir"]
    assert load("mnist", data_dir=tmp_path / "arg").train_x.shape[0] == 10
    assert find("mnist") == locations["env"]
    assert load("mnist").train_x.shape[0] == 11
    monkeypatch.delenv("BIOPROP_DATA")
    assert find("mnist") == locations["cache"]
    assert load("mnist").source == str(locations["cache"])
    for path in locations["cache"].iterdir():
        path.unlink()
    assert find("mnist") == locations["system"]
    assert load("mnist").train_x.shape[0] == 13
    entries = {entry["name"]: entry for entry in catalog()}
    assert entries["mnist"]["found"] == locations["system"] and entries["kmnist"]["found"] is None


def test_directories_directly_holding_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_make_idx(tmp_path / "flat-arg", n_train=7)
    assert find("mnist", data_dir=tmp_path / "flat-arg") == tmp_path / "flat-arg"
    data_make_idx(tmp_path / "flat-env", n_train=8)
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "flat-env"))
    assert find("fashion-mnist") == tmp_path / "flat-env"
    assert load("fashion-mnist").train_x.shape[0] == 8


def test_not_found_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    assert find("fashion-mnist") is None
    with pytest.raises(BioPropError) as err:
        load("fashion-mnist")
    message = str(err.value)
    assert "\n" not in message
    assert "fashion-mnist not found" in message and str(tmp_path / "system" / "fashion-mnist") in message
    assert "~/.cache/bioprop/fashion-mnist" in message and "apt-get install dataset-fashion-mnist" in message


# ----------------------------------------------------------------------------------------------------
# What the user names is used, or the load stops naming it (never a silent fall-through to another copy)


@pytest.fixture
def data_everywhere(tmp_path: Path, data_isolated: Path) -> dict[str, Path]:
    """A complete mnist in the cache and in the system directory: what a bad named place must NOT fall back to."""
    places = {"cache": data_isolated / ".cache" / "bioprop" / "mnist", "system": tmp_path / "system" / "mnist"}
    for folder in places.values():
        data_make_idx(folder)
    return places


def _refused(call, *fragments: str) -> str:
    with pytest.raises(BioPropError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_named_data_dir_is_the_only_place_searched(tmp_path: Path, data_everywhere: dict[str, Path]) -> None:
    typo = tmp_path / "some" / "typo"
    for call in (lambda: load("mnist", data_dir=typo), lambda: find("mnist", data_dir=typo),
                 lambda: catalog(data_dir=typo)):  # fmt: skip
        _refused(call, f"data_dir '{typo}' does not exist", "nothing else is searched")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    _refused(lambda: load("mnist", data_dir=a_file), f"data_dir '{a_file}' is not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    message = _refused(lambda: load("mnist", data_dir=empty), f"data_dir '{empty}' holds none of mnist's files")
    assert "train-images-idx3-ubyte" in message and str(empty / "mnist") in message  # what it expected, and where
    assert find("mnist", data_dir=empty) is None  # found nowhere it was told to look
    _refused(lambda: load("mnist", data_dir=""), "data_dir is empty")
    assert not typo.exists() and not (tmp_path / "some").exists()  # nothing was created
    assert load("mnist").source == str(data_everywhere["cache"])  # the copies that must not have been used are fine


def test_bioprop_data_set_is_a_named_place(
    tmp_path: Path, data_everywhere: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "typo"))
    for call in (lambda: load("mnist"), lambda: find("mnist"), lambda: download("mnist", progress=False)):
        _refused(call, f"$BIOPROP_DATA '{tmp_path / 'typo'}' does not exist", "unset it")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "typo").mkdir()
    _refused(lambda: load("mnist"), f"$BIOPROP_DATA '{tmp_path / 'typo'}' holds none of mnist's files")
    assert find("mnist") is None
    # A data_dir given in the call is named more directly than the environment: it alone is searched.
    data_make_idx(tmp_path / "mine" / "mnist", n_train=7)
    assert load("mnist", data_dir=tmp_path / "mine").train_x.shape[0] == 7
    monkeypatch.setenv("BIOPROP_DATA", "")  # set but empty is unset: the default search path
    assert find("mnist") == data_everywhere["cache"]


def test_digits_reads_no_files_but_a_named_data_dir_must_exist(tmp_path: Path) -> None:
    assert load("digits", data_dir=tmp_path, limit=5).source == "scikit-learn"
    assert find("digits", data_dir=tmp_path) is not None
    typo = tmp_path / "typo"
    for call in (lambda: load("digits", data_dir=typo), lambda: find("digits", data_dir=typo)):
        _refused(call, f"data_dir '{typo}' does not exist")


def test_cli_refuses_a_data_dir_that_is_not_there(cli, tmp_path: Path, data_everywhere: dict[str, Path]) -> None:
    typo = tmp_path / "typo"
    before = {name: data_snapshot(folder) for name, folder in data_everywhere.items()}
    commands = [
        ("train", "--data", "mnist", "--data-dir", typo, "--out", tmp_path / "run", "--epochs", "1", "--quiet"),
        ("datasets", "--check", "mnist", "--data-dir", typo),
        ("datasets", "--data-dir", typo),
        ("datasets", "--download", "mnist", "--data-dir", typo),
    ]
    for args in commands:
        code, out, err = cli(*args)
        assert code == 2 and out == "", args
        assert err.count("\n") == 1 and err.startswith("bioprop: error: ") and f"'{typo}'" in err, (args, err)
    assert not typo.exists() and not (tmp_path / "run").exists()
    assert {name: data_snapshot(folder) for name, folder in data_everywhere.items()} == before


def test_catalog_lists_every_dataset() -> None:
    entries = catalog()
    assert [e["name"] for e in entries] == list(DATASETS)
    assert {"digits", "mnist", "fashion-mnist", "kmnist", "cifar10"} <= set(DATASETS)
    for entry in entries:
        assert set(entry) == {"name", "found", "how"}
        assert entry["how"] and "\n" not in entry["how"]
    by_name = {e["name"]: e for e in entries}
    assert by_name["digits"]["found"] is not None and by_name["cifar10"]["found"] is None


# ----------------------------------------------------------------------------------------------------
# Bad input: one-line BioPropError naming the problem and the file; files unchanged


def _expect_error(root: Path, name: str, *fragments: str, **kwargs) -> str:
    before = data_snapshot(root)
    with pytest.raises(BioPropError) as err:
        load(name, data_dir=root, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert data_snapshot(root) == before
    return message


def test_unknown_dataset_lists_known_names() -> None:
    for call in (lambda: load("imagenet"), lambda: find("imagenet"), lambda: download("imagenet")):
        with pytest.raises(BioPropError) as err:
            call()
        assert "unknown dataset 'imagenet'" in str(err.value)
        assert "fashion-mnist" in str(err.value) and "cifar10" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    data_make_idx(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    _expect_error(tmp_path, "mnist", "missing file", "t10k-labels-idx1-ubyte", "put the IDX files in")


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_truncated_idx(tmp_path: Path, gz: bool) -> None:
    arrays = data_make_idx(tmp_path / "mnist", gz=gz)
    data_write(tmp_path / "mnist" / "train-images-idx3-ubyte", data_idx_bytes(arrays["train_x"])[:-100], gz)
    _expect_error(tmp_path, "mnist", "truncated IDX file", "train-images-idx3-ubyte")


def test_truncated_idx_header(tmp_path: Path) -> None:
    data_make_idx(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    _expect_error(tmp_path, "mnist", "truncated IDX file", "t10k-labels-idx1-ubyte")


def test_trailing_bytes(tmp_path: Path) -> None:
    arrays = data_make_idx(tmp_path / "mnist", gz=False)
    data_write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", data_idx_bytes(arrays["test_y"]) + b"xx", False)
    _expect_error(tmp_path, "mnist", "2 bytes after", "t10k-labels-idx1-ubyte")


@pytest.mark.parametrize("damage", ["garbage", "cut", "crc"])
def test_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    data_make_idx(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    if damage == "garbage":
        blob = bytearray(b"this is not gzip data at all")
    elif damage == "cut":
        blob = blob[: len(blob) // 2]
    else:
        blob[-6] ^= 0xFF  # inside the CRC-32 trailer
    path.write_bytes(bytes(blob))
    _expect_error(tmp_path, "mnist", "corrupt gzip file", "train-images-idx3-ubyte.gz")


def test_wrong_magic(tmp_path: Path) -> None:
    arrays = data_make_idx(tmp_path / "mnist", gz=True)
    # A label file where the images should be, and images with a wrong type byte.
    data_write(tmp_path / "mnist" / "train-images-idx3-ubyte", data_idx_bytes(arrays["train_y"]), True)
    _expect_error(tmp_path, "mnist", "wrong magic number 0x00000801", "train-images-idx3-ubyte.gz")
    data_make_idx(tmp_path / "mnist", gz=True)
    data_write(tmp_path / "mnist" / "t10k-images-idx3-ubyte", data_idx_bytes(arrays["test_x"], 0x0D03), True)
    _expect_error(tmp_path, "mnist", "wrong magic number 0x00000d03", "t10k-images-idx3-ubyte.gz")


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    arrays = data_make_idx(tmp_path / "mnist", gz=False)
    data_write(tmp_path / "mnist" / "train-labels-idx1-ubyte", data_idx_bytes(arrays["train_y"][:-1]), False)
    _expect_error(tmp_path, "mnist", "count mismatch", "50 images", "49 labels", "train-labels-idx1-ubyte")


def test_label_out_of_range(tmp_path: Path) -> None:
    arrays = data_make_idx(tmp_path / "mnist", gz=True)
    labels = arrays["test_y"].copy()
    labels[7] = 10
    data_write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", data_idx_bytes(labels), True)
    _expect_error(tmp_path, "mnist", "label 10 out of range", "example 7", "t10k-labels-idx1-ubyte.gz")


def test_train_and_test_image_sizes_must_agree(tmp_path: Path) -> None:
    data_make_idx(tmp_path / "mnist", gz=False)
    other = np.zeros((20, 14, 14), dtype=np.uint8)
    data_write(tmp_path / "mnist" / "t10k-images-idx3-ubyte", data_idx_bytes(other), False)
    _expect_error(tmp_path, "mnist", "28x28", "14x14")


def _replace(folder: Path, key: str, payload: bytes) -> None:
    """Put ``payload`` where the raw IDX file ``key`` of ``folder`` is."""
    (folder / IDX_NAMES[key]).write_bytes(payload)


def _with_label(labels: np.ndarray, index: int, value: int) -> np.ndarray:
    labels = labels.copy()
    labels[index] = value
    return labels


def _gz_garbage(folder: Path) -> None:
    (folder / IDX_NAMES["train_x"]).unlink()
    (folder / f"{IDX_NAMES['train_x']}.gz").write_bytes(b"plain text, not gzip")


def _directory_for_file(folder: Path) -> None:
    (folder / IDX_NAMES["test_y"]).unlink()
    (folder / IDX_NAMES["test_y"]).mkdir()


def _broken_link(folder: Path) -> None:
    (folder / IDX_NAMES["test_x"]).unlink()
    (folder / IDX_NAMES["test_x"]).symlink_to(folder / "nowhere")


EMPTY_IMAGES, EMPTY_LABELS = np.zeros((0, 28, 28), dtype=np.uint8), np.zeros(0, dtype=np.uint8)
# Each fault of a raw (not gzipped) mnist folder: how to make it, and what the one-line error must say.
DATA_CORPUS = {
    "truncated data": (lambda f, a: _replace(f, "train_x", data_idx_bytes(a["train_x"])[:-1]),
                       ["truncated IDX file", IDX_NAMES["train_x"]]),
    "truncated header": (lambda f, a: _replace(f, "test_y", b"\x00\x00\x08\x01\x00"),
                         ["truncated IDX file", IDX_NAMES["test_y"]]),
    "trailing bytes": (lambda f, a: _replace(f, "train_y", data_idx_bytes(a["train_y"]) + b"\x00"),
                       ["1 bytes after", IDX_NAMES["train_y"]]),
    "labels as images": (lambda f, a: _replace(f, "train_x", data_idx_bytes(a["train_y"])),
                         ["wrong magic number 0x00000801", IDX_NAMES["train_x"]]),
    "label out of range": (lambda f, a: _replace(f, "test_y", data_idx_bytes(_with_label(a["test_y"], 4, 10))),
                           ["label 10 out of range", "example 4", IDX_NAMES["test_y"]]),
    "count mismatch": (lambda f, a: _replace(f, "test_y", data_idx_bytes(a["test_y"][:-2])),
                       ["20 images", "18 labels", IDX_NAMES["test_x"], IDX_NAMES["test_y"]]),
    "empty test split": (lambda f, a: (_replace(f, "test_x", data_idx_bytes(EMPTY_IMAGES)),
                                       _replace(f, "test_y", data_idx_bytes(EMPTY_LABELS))),
                         ["holds no images", IDX_NAMES["test_x"]]),
    "empty train split": (lambda f, a: (_replace(f, "train_x", data_idx_bytes(EMPTY_IMAGES)),
                                        _replace(f, "train_y", data_idx_bytes(EMPTY_LABELS))),
                          ["holds no images", IDX_NAMES["train_x"]]),
    "zero-pixel images": (lambda f, a: _replace(f, "test_x", data_idx_bytes(np.zeros((20, 28, 0), np.uint8))),
                          ["images of 28x0 pixels", IDX_NAMES["test_x"]]),
    "train/test sizes differ": (lambda f, a: _replace(f, "test_x", data_idx_bytes(np.zeros((20, 14, 14), np.uint8))),
                                ["28x28", "14x14"]),
    ".gz that is not gzip": (lambda f, a: _gz_garbage(f), ["corrupt gzip file", f"{IDX_NAMES['train_x']}.gz"]),
    "directory for a file": (lambda f, a: _directory_for_file(f), [f"{IDX_NAMES['test_y']}' is a directory"]),
    "broken link": (lambda f, a: _broken_link(f), [f"{IDX_NAMES['test_x']}' is a broken symbolic link"]),
    "missing file": (lambda f, a: (f / IDX_NAMES["train_y"]).unlink(), ["missing file", IDX_NAMES["train_y"]]),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(DATA_CORPUS))
def test_bad_dataset_corpus_through_the_cli(cli, tmp_path: Path, fault: str) -> None:
    """Each fault stops `bioprop train` with one line naming the file, exit 2, before anything is written."""
    folder = tmp_path / "data" / "mnist"
    damage, says = DATA_CORPUS[fault]
    damage(folder, data_make_idx(folder, gz=False))
    before = data_snapshot(tmp_path / "data")
    code, out, err = cli("train", "--data", "mnist", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         "--epochs", "1", "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("bioprop: error: "), err
    for fragment in says:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "run").exists()
    assert data_snapshot(tmp_path / "data") == before


def test_a_directory_or_broken_link_where_a_file_should_be(tmp_path: Path) -> None:
    data_make_idx(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").unlink()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").mkdir()
    _expect_error(tmp_path, "mnist", f"'{tmp_path / 'mnist' / 'train-labels-idx1-ubyte.gz'}' is a directory")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").rmdir()
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").symlink_to(tmp_path / "gone")
    _expect_error(tmp_path, "mnist", "train-labels-idx1-ubyte' is a broken symbolic link", str(tmp_path / "gone"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_is_refused_at_load(tmp_path: Path, split: str) -> None:
    data_make_idx(tmp_path / "mnist", gz=True)
    stem = IDX_NAMES[f"{split}_x"]
    data_write(tmp_path / "mnist" / stem, data_idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8)), True)
    data_write(tmp_path / "mnist" / IDX_NAMES[f"{split}_y"], data_idx_bytes(np.zeros(0, dtype=np.uint8)), True)
    _expect_error(tmp_path, "mnist", f"IDX image file '{tmp_path / 'mnist' / stem}.gz' holds no images")
    _expect_error(tmp_path, "mnist", "holds no images", limit=1)


def test_images_of_zero_pixels_are_refused(tmp_path: Path) -> None:
    data_make_idx(tmp_path / "mnist", gz=False)
    data_write(tmp_path / "mnist" / IDX_NAMES["train_x"], data_idx_bytes(np.zeros((50, 0, 28), dtype=np.uint8)), False)
    _expect_error(tmp_path, "mnist", "declares images of 0x28 pixels", IDX_NAMES["train_x"])


def test_cifar_directory_where_a_batch_should_be(tmp_path: Path) -> None:
    data_make_cifar(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "data_batch_2.bin").unlink()
    (tmp_path / "cifar10" / "data_batch_2.bin").mkdir()
    _expect_error(tmp_path, "cifar10", f"'{tmp_path / 'cifar10' / 'data_batch_2.bin'}' is a directory")


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 binary


def _check_cifar(data: Dataset, arrays: dict[str, np.ndarray]) -> None:
    assert data.name == "cifar10" and data.in_shape == (3, 32, 32) and data.n_classes == 10
    assert data.train_x.shape == (15, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert torch.equal(data.train_y, torch.from_numpy(arrays["train_y"].astype(np.int64)))
    assert torch.equal(data.test_y, torch.from_numpy(arrays["test_y"].astype(np.int64)))
    means = data.train_x.mean(dim=(0, 2, 3))
    stds = data.train_x.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(means, torch.zeros(3), atol=1e-5) and torch.allclose(stds, torch.ones(3), atol=1e-5)
    expected = data_expected(arrays["train_x"], arrays["test_x"])
    np.testing.assert_allclose(data.test_x.numpy(), expected, atol=1e-5)


def test_cifar_bin_folder_and_parent(tmp_path: Path) -> None:
    arrays = data_make_cifar(tmp_path / "cifar10" / "cifar-10-batches-bin")
    before = data_snapshot(tmp_path)
    # The parent holding cifar-10-batches-bin/ ...
    data = load("cifar10", data_dir=tmp_path)
    assert data.source == str(tmp_path / "cifar10" / "cifar-10-batches-bin")
    _check_cifar(data, arrays)
    # ... and the folder holding the .bin files directly.
    _check_cifar(load("cifar-10", data_dir=tmp_path / "cifar10" / "cifar-10-batches-bin"), arrays)
    assert data_snapshot(tmp_path) == before


def test_cifar_read_from_archive_without_extracting(tmp_path: Path) -> None:
    arrays = data_make_cifar(tmp_path / "build" / "cifar-10-batches-bin")
    folder = tmp_path / "cifar10"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    data = load("cifar10", data_dir=tmp_path)
    _check_cifar(data, arrays)
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_cifar_record_file_of_wrong_size(tmp_path: Path) -> None:
    data_make_cifar(tmp_path / "cifar10")
    path = tmp_path / "cifar10" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    _expect_error(tmp_path, "cifar10", "CIFAR-10 record file", "data_batch_3.bin", "3073")


def test_cifar_missing_batch_and_bad_label(tmp_path: Path) -> None:
    data_make_cifar(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "test_batch.bin").unlink()
    _expect_error(tmp_path, "cifar10", "missing file", "test_batch.bin")
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "cifar10" / "test_batch.bin").write_bytes(data_cifar_bytes(images, np.array([3, 200])))
    _expect_error(tmp_path, "cifar10", "label 200 out of range", "test_batch.bin")


# ----------------------------------------------------------------------------------------------------
# batches


def test_batches_cover_every_index_once_and_keep_the_last_partial_batch() -> None:
    x = torch.arange(23, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(23)
    got = list(batches(x, y, 5, generator=torch.Generator().manual_seed(1)))
    assert [len(b[1]) for b in got] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in got])
    assert sorted(seen.tolist()) == list(range(23))
    assert not torch.equal(seen, torch.arange(23))  # shuffled
    for xb, yb in got:
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay paired


def test_batches_same_seed_same_order_and_no_shuffle() -> None:
    x, y = torch.randn(40, 2), torch.arange(40)

    def order(seed: int) -> list[int]:
        return torch.cat([b[1] for b in batches(x, y, 8, generator=torch.Generator().manual_seed(seed))]).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    # Two epochs from one generator differ from each other, but each covers every index.
    gen = torch.Generator().manual_seed(3)
    first = torch.cat([b[1] for b in batches(x, y, 8, generator=gen)]).tolist()
    second = torch.cat([b[1] for b in batches(x, y, 8, generator=gen)]).tolist()
    assert first == order(3) and first != second and sorted(second) == list(range(40))
    plain = list(batches(x, y, 16, shuffle=False))
    assert [b[1].tolist() for b in plain] == [list(range(16)), list(range(16, 32)), list(range(32, 40))]
    assert len(list(batches(x, y, 100))) == 1


def test_batches_bad_arguments() -> None:
    with pytest.raises(BioPropError, match="batch size"):
        batches(torch.zeros(4, 1), torch.zeros(4), 0)
    with pytest.raises(BioPropError, match="y has 3"):
        batches(torch.zeros(4, 1), torch.zeros(3), 2)


# ----------------------------------------------------------------------------------------------------
# digits


def test_digits() -> None:
    data = load("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert data.n_classes == 10 and data.in_shape == (1, 8, 8) and data.source == "scikit-learn"
    assert set(data.train_y.unique().tolist()) == set(range(10))
    assert abs(data.train_x.mean().item()) < 1e-5 and abs(data.train_x.std(correction=0).item() - 1) < 1e-4
    again = load("digits", limit=100)
    assert torch.equal(again.train_y, data.train_y[:100])  # the split is fixed
    assert find("digits") is not None


# ----------------------------------------------------------------------------------------------------
# download, from a local http.server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def data_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 (free port) serving tmp_path/served; yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve_idx(served: Path, monkeypatch: pytest.MonkeyPatch, name: str = "mnist", **spec_changes) -> None:
    """Serve a small gzipped IDX dataset and point the registry's checksums at it."""
    data_make_idx(served, gz=True)
    files = tuple(
        RemoteFile(f"{stem}.gz", hashlib.sha256((served / f"{stem}.gz").read_bytes()).hexdigest())
        for stem in IDX_NAMES.values()
    )
    changes = {"files": files, **spec_changes}
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], **changes))


def _parts(folder: Path) -> list[Path]:
    """What a download left in ``folder`` besides the IDX files it was for (a temporary file, whatever its name)."""
    wanted = {f"{stem}.gz" for stem in IDX_NAMES.values()}
    return [p for p in folder.iterdir() if p.name not in wanted] if folder.exists() else []


def test_download_success_without_progress(
    tmp_path: Path, data_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    base, served = data_server
    _serve_idx(served, monkeypatch)
    dest = tmp_path / "dest"
    assert download("mnist", dest=dest, base_url=base, progress=False) == dest
    assert data_checksums(dest) == data_checksums(served)
    assert _parts(dest) == []
    assert capsys.readouterr().err == ""
    assert load("mnist", data_dir=dest).train_x.shape == (50, 1, 28, 28)
    # Already there and verified: nothing is fetched again (the server may even be gone).
    assert download("mnist", dest=dest, base_url="http://127.0.0.1:9/", progress=False) == dest


def test_download_default_destination_with_progress(
    data_isolated: Path, data_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base, served = data_server
    _serve_idx(served, monkeypatch, name="kmnist")
    path = download("kmnist", base_url=base.rstrip("/"), progress=True)
    assert path == data_isolated / ".cache" / "bioprop" / "kmnist"
    assert len(list(path.glob("*.gz"))) == 4 and _parts(path) == []
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "envdata"))
    with pytest.raises(BioPropError, match="does not exist"):  # a named root is never created
        download("kmnist", base_url=base, progress=False)
    (tmp_path / "envdata").mkdir()
    assert download("kmnist", base_url=base, progress=False) == tmp_path / "envdata" / "kmnist"


def test_load_with_download(tmp_path: Path, data_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, served = data_server
    _serve_idx(served, monkeypatch, base_url=base)
    with pytest.raises(BioPropError, match=f"data_dir '{tmp_path / 'data'}' does not exist"):
        load("mnist", data_dir=tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()
    (tmp_path / "data").mkdir()
    data = load("mnist", data_dir=tmp_path / "data", download=True)
    assert data.source == str(tmp_path / "data" / "mnist") and data.test_x.shape[0] == 20


def test_download_into_a_missing_parent_is_refused(tmp_path: Path, data_server: tuple[str, Path], monkeypatch) -> None:
    base, served = data_server
    _serve_idx(served, monkeypatch)
    with pytest.raises(BioPropError) as err:
        download("mnist", dest=tmp_path / "typo" / "mnist", base_url=base, progress=False)
    assert f"'{tmp_path / 'typo'}' is not an existing directory" in str(err.value)
    assert not (tmp_path / "typo").exists()


def test_download_sha256_mismatch_keeps_existing_file(
    tmp_path: Path, data_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = data_server
    _serve_idx(served, monkeypatch)
    spec = DATASETS["mnist"]
    bad = dataclasses.replace(spec.files[1], sha256="0" * 64)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, files=(spec.files[0], bad)))
    dest = tmp_path / "dest"
    dest.mkdir()
    existing = dest / "train-labels-idx1-ubyte.gz"
    existing.write_bytes(b"the existing file")
    with pytest.raises(BioPropError) as err:
        download("mnist", dest=dest, base_url=base, progress=False)
    message = str(err.value)
    assert "SHA-256 mismatch" in message and "train-labels-idx1-ubyte.gz" in message and "\n" not in message
    assert existing.read_bytes() == b"the existing file"
    assert _parts(dest) == []
    # Without an existing file, no final file appears either.
    existing.unlink()
    with pytest.raises(BioPropError, match="SHA-256 mismatch"):
        download("mnist", dest=dest, base_url=base, progress=True)
    assert not existing.exists() and _parts(dest) == []
    assert (dest / "train-images-idx3-ubyte.gz").exists()  # the good file before it was kept


def test_download_http_error(tmp_path: Path, data_server: tuple[str, Path], monkeypatch) -> None:
    base, served = data_server
    _serve_idx(served, monkeypatch)
    (served / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(BioPropError) as err:
        download("mnist", dest=tmp_path / "dest", base_url=base, progress=False)
    assert "HTTP 404" in str(err.value) and "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert _parts(tmp_path / "dest") == []


def test_download_server_unreachable(tmp_path: Path, data_isolated: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(BioPropError) as err:
        download("fashion-mnist", base_url=f"http://127.0.0.1:{port}/", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"could not download fashion-mnist from http://127.0.0.1:{port}/")
    assert "put the IDX files in ~/.cache/bioprop/fashion-mnist or pass --data-dir" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert list((data_isolated / ".cache" / "bioprop" / "fashion-mnist").iterdir()) == []
    # With an explicit destination, the message points there.
    with pytest.raises(BioPropError, match=f"put the IDX files in {tmp_path / 'dest'} or pass --data-dir"):
        download("mnist", dest=tmp_path / "dest", base_url=f"http://127.0.0.1:{port}/", progress=False)
    assert list((tmp_path / "dest").iterdir()) == []


def _cifar_archive(tmp_path: Path, served: Path, evil: bool = False) -> dict[str, np.ndarray]:
    arrays = data_make_cifar(tmp_path / "build" / "cifar-10-batches-bin", per_file=2)
    (tmp_path / "build" / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\n")
    with tarfile.open(served / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        if evil:
            for name in ("../escaped.bin", "/tmp/absolute.bin", "cifar-10-batches-bin/../../up.bin"):
                info = tarfile.TarInfo(name)
                info.size = 3
                tar.addfile(info, io.BytesIO(b"bad"))
            link = tarfile.TarInfo("cifar-10-batches-bin/link.bin")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return arrays


def test_download_cifar_archive_and_extract_safely(
    tmp_path: Path, data_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = data_server
    arrays = _cifar_archive(tmp_path, served, evil=True)
    digest = hashlib.sha256((served / "cifar-10-binary.tar.gz").read_bytes()).hexdigest()
    spec = DATASETS["cifar10"]
    monkeypatch.setitem(
        DATASETS, "cifar10", dataclasses.replace(spec, files=(RemoteFile("cifar-10-binary.tar.gz", digest),))
    )
    dest = tmp_path / "root" / "cifar10"
    dest.parent.mkdir()
    assert download("cifar10", dest=dest, base_url=base, progress=False) == dest
    extracted = sorted(p.name for p in (dest / "cifar-10-batches-bin").iterdir())
    assert extracted == sorted(CIFAR_TRAIN + CIFAR_TEST + ["batches.meta.txt"])
    assert not (tmp_path / "root" / "escaped.bin").exists() and not (tmp_path / "up.bin").exists()
    assert not Path("/tmp/absolute.bin").exists()
    data = load("cifar10", data_dir=tmp_path / "root")
    assert data.train_x.shape == (10, 3, 32, 32)
    assert torch.equal(data.test_y, torch.from_numpy(arrays["test_y"].astype(np.int64)))


@pytest.mark.slow
def test_debian_fashion_mnist_if_installed() -> None:
    """Manual check (deselected by default): Debian's dataset-fashion-mnist package loads fully."""
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load("fashion-mnist", data_dir=folder)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_y.bincount().tolist() == [6000] * 10
