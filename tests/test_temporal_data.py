"""Tests of the temporal tasks and sequence datasets (bioprop.data.temporal, and their names in bioprop.data.load).

Each task is checked against what its paper says it is, read back from the generated tensors by hand: the
cue-accumulation label is recounted from the input spikes, the store-recall target is the value read off the
input channels, the targets are fitted by the sines they are said to be sums of, SHD's binning is a hand-made
raster of a three-spike file. All files are written here, in tmp_path.
"""

from __future__ import annotations

import gzip
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bioprop.data import _locate, batches, canonical_name, download, find, load, temporal
from bioprop.errors import BioPropError

SMALL = {
    "cue-accumulation": "cue-accumulation:n_train=6,n_test=3",
    "pattern-generation": "pattern-generation:n_train=2,n_test=1",
    "periodic-target": "periodic-target:n_train=2,n_test=1",
    "store-recall": "store-recall:n_train=6,n_test=3",
}


@pytest.fixture(autouse=True)
def data_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh HOME, no $BIOPROP_DATA and an empty system dataset directory for every test."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    monkeypatch.setattr(_locate, "SYSTEM_DATA_DIR", tmp_path / "system")


def one_line_error(call) -> str:
    with pytest.raises(BioPropError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------- shapes and seeds


@pytest.mark.parametrize(
    ("name", "shape", "x_dtype", "y_shape", "k"),
    [
        ("cue-accumulation", (2250, 40), torch.uint8, (2250,), 2),
        ("pattern-generation", (1000, 100), torch.uint8, (1000, 1), 1),
        ("periodic-target", (200, 1), torch.float64, (200, 1), 1),
        ("store-recall", (70, 4), torch.float64, (70,), 2),
    ],
)
def test_generated_shapes_and_dtypes(name: str, shape: tuple, x_dtype: torch.dtype, y_shape: tuple, k: int) -> None:
    """The data contract: batch-major (N, T, C), spikes as uint8, other inputs and regression targets in the
    requested dtype, labels int64; in_shape (T, C), n_classes K, the settings and T recorded in ``task``."""
    data = load(SMALL[name], dtype=torch.float64)
    n_train = 2 if name in ("pattern-generation", "periodic-target") else 6
    assert data.temporal and data.in_shape == shape and data.n_classes == k
    assert data.train_x.shape == (n_train, *shape) and data.test_x.shape[1:] == shape
    assert data.train_x.dtype == x_dtype and data.test_x.dtype == x_dtype
    assert data.train_y.shape == (n_train, *y_shape)
    assert data.train_y.dtype == (torch.int64 if len(y_shape) == 1 else torch.float64)
    assert data.task["T"] == shape[0] and data.task["n_train"] == n_train
    if x_dtype == torch.uint8:
        assert set(data.train_x.unique().tolist()) <= {0, 1}
    assert load(SMALL[name], dtype=torch.float32).train_x.dtype == (
        torch.uint8 if x_dtype == torch.uint8 else torch.float32
    )


@pytest.mark.parametrize("name", ["cue-accumulation", "store-recall", "pattern-generation"])
def test_same_seed_same_tensors_other_seed_other_tensors(name: str) -> None:
    """Seeded from the name only (never the global RNG): equal names give equal tensors whatever the global state."""
    torch.manual_seed(1)
    np.random.seed(1)
    first = load(f"{SMALL[name]},seed=3")
    torch.manual_seed(2)
    np.random.seed(2)
    again, other = load(f"{SMALL[name]},seed=3"), load(f"{SMALL[name]},seed=4")
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    assert not torch.equal(first.train_x, other.train_x)


def test_training_and_test_sets_are_independent_draws_but_frozen_tasks_one_pair() -> None:
    """Cue accumulation draws test trials apart from the training ones; a frozen task repeats one pair everywhere."""
    cue = load("cue-accumulation:n_train=4,n_test=4")
    assert not torch.equal(cue.train_x, cue.test_x)
    for name in ("pattern-generation", "periodic-target"):
        data = load(SMALL[name])
        for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
            assert torch.equal(x, data.train_x[:1].expand_as(x)) and torch.equal(y, data.train_y[:1].expand_as(y))


def test_limit_keeps_the_first_examples() -> None:
    full, kept = load("store-recall:n_train=8,n_test=5"), load("store-recall:n_train=8,n_test=5", limit=3)
    assert torch.equal(kept.train_x, full.train_x[:3]) and torch.equal(kept.test_y, full.test_y[:3])


# ------------------------------------------------------------------------------------ cue accumulation


def test_cue_accumulation_label_is_the_side_with_more_cues_counted_from_the_spikes() -> None:
    """Bellec et al. 2020, Fig. 3: the label is the side that showed more cues. Each cue's side is read off the
    spikes of the left/right groups in its window (100 ms at 40 Hz on 10 channels: 0.96^1000 ~ 1e-18 odds of a
    silent cue), and the label is checked against that count, at the last 150 steps only."""
    cues, n = 5, 120
    x, y = temporal.cue_accumulation(n, seed=7, cues=cues)
    steps = 150 * cues + 1200
    assert x.shape == (n, steps, 40) and y.shape == (n, steps)
    right_cues = torch.zeros(n, dtype=torch.int64)
    for k in range(cues):
        window = x[:, 50 + 150 * k : 150 + 150 * k].to(torch.int64)  # (n, 100, 40)
        left, right = window[:, :, :10].sum(dim=(1, 2)), window[:, :, 10:20].sum(dim=(1, 2))
        assert torch.all((left == 0) != (right == 0)), "each cue fires exactly one side"
        right_cues += right > 0
    label = (right_cues > cues // 2).to(torch.int64)
    assert 0 < label.sum() < n, "both sides win some trials"
    assert torch.all(y[:, : steps - 150] == -1)
    assert torch.equal(y[:, steps - 150 :], label[:, None].expand(n, 150))


def test_cue_accumulation_timing_and_rates() -> None:
    """Cue channels fire only inside the cue windows [50 + 150k, 150 + 150k) ms, the recall group only in the last
    150 ms, both at 40 Hz (p = 0.04 per ms); the noise group at 10 Hz throughout."""
    x, _ = temporal.cue_accumulation(200, seed=1)
    x = x.to(torch.float64)
    inside = torch.zeros(2250, dtype=torch.bool)
    for k in range(7):
        inside[50 + 150 * k : 150 + 150 * k] = True
    cue = x[:, :, :20].sum(dim=2)  # (n, T)
    assert cue[:, ~inside].sum() == 0 and cue[:, inside].sum() > 0
    active = x[:, inside, :20].sum() / (200 * 700 * 10)  # half the 20 channels fire in each cue step
    assert abs(active.item() - 0.04) < 0.002  # 1.4M draws: sd 1.7e-4
    assert x[:, :2100, 20:30].sum() == 0
    assert abs(x[:, 2100:, 20:30].mean().item() - 0.04) < 0.003  # 300k draws: sd 3.6e-4
    assert abs(x[:, :, 30:].mean().item() - 0.01) < 0.0005  # 4.5M draws: sd 4.7e-5


# ------------------------------------------------------------------------------ the other generated tasks


def test_store_recall_target_is_the_stored_value_read_back_from_the_input() -> None:
    """The target at the recall steps is the value shown on the value channels while the store cue was on; the
    delay is silent and no other step has a target."""
    delay, values = 13, 3
    x, y = temporal.store_recall(50, seed=2, delay=delay, values=values)
    steps = 20 + delay
    assert x.shape == (50, steps, 2 + values) and y.shape == (50, steps)
    stored = x[:, :10, 2:].sum(dim=1).argmax(dim=1)  # (n,) the value channel lit during the store cue
    assert torch.all(x[:, :10, 2:].sum(dim=2) == 1), "one value channel at each store step"
    assert torch.all(x[:, :10, 0] == 1) and torch.all(x[:, 10:, 0] == 0)
    assert torch.all(x[:, 10 : 10 + delay] == 0)
    assert torch.all(x[:, -10:, 1] == 1) and torch.all(x[:, :-10, 1] == 0)
    assert torch.equal(y[:, -10:], stored[:, None].expand(50, 10))
    assert torch.all(y[:, :-10] == -1)
    assert set(stored.tolist()) == set(range(values))


def test_pattern_generation_target_is_a_sum_of_four_sines() -> None:
    """Bellec et al. 2020, Fig. S7: the target lies in the span of sines and cosines of periods 1000, 500, 333 and
    200 ms and a constant (least-squares residual at rounding level), starts at 0 with peak |y*| = 1; the input
    is 100 frozen channels at 50 Hz."""
    x, y = temporal.pattern_generation(2, seed=5)
    target = y[0, :, 0].numpy()
    t = np.arange(1000.0)
    basis = [np.ones_like(t)]
    for period in (1000.0, 500.0, 333.0, 200.0):
        basis += [np.sin(2 * np.pi * t / period), np.cos(2 * np.pi * t / period)]
    coef, *_ = np.linalg.lstsq(np.stack(basis, axis=1), target, rcond=None)
    assert np.abs(np.stack(basis, axis=1) @ coef - target).max() < 1e-10
    assert all(math.hypot(coef[i], coef[i + 1]) > 0.01 for i in (1, 3, 5, 7)), "all four sines present"
    assert target[0] == 0 and abs(np.abs(target).max() - 1) < 1e-12
    assert x.shape == (2, 1000, 100) and abs(x.double().mean().item() - 0.05) < 0.005


def test_periodic_target_is_murrays_sum_of_harmonics() -> None:
    """Murray 2019, Fig. 2 (its code): y*(t) = sin(2πt/P) + ½ sin(4πt/P) + ¼ sin(8πt/P), t = 1 … T; checked at
    t = P/8, P/4, P/2 by hand, and periodic over two cycles. The pulse drive is 1 at the first step only."""
    x, y = temporal.periodic_target(1, period=40, cycles=2)
    y = y[0, :, 0]
    assert y.shape == (80,)
    assert abs(y[40 // 8 - 1] - (math.sqrt(2) / 2 + 0.5)) < 1e-12  # t = P/8: sin(π/4) + ½ sin(π/2) + ¼ sin(π)
    assert abs(y[40 // 4 - 1] - 1.0) < 1e-12  # t = P/4: 1 + ½ sin(π) + ¼ sin(2π)
    assert abs(y[40 // 2 - 1]) < 1e-12  # t = P/2: all three vanish
    assert torch.allclose(y[:40], y[40:], atol=1e-12)
    assert x[0, 0, 0] == 1 and torch.all(x[0, 1:] == 0)
    constant, _ = temporal.periodic_target(1, period=40, drive="constant")
    assert torch.all(constant == 1)


# ------------------------------------------------------------------------------------ seq-fashion-mnist


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic 0x0000 08 ndim, big-endian dims, raw bytes."""
    return struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([5, 6, 7], dtype=np.uint8),
    }
    folder.mkdir(parents=True)
    for stem, array in arrays.items():
        (folder / stem).write_bytes(idx_bytes(array))
    return arrays


def test_seq_fashion_mnist_rows_and_pixels(tmp_path: Path) -> None:
    """Rows as steps (28 × 28) or pixels as steps (784 × 1), standardised with the training pixels' mean and
    population std after scaling to [0, 1] (computed here in float64); the label at the last step only."""
    arrays = write_fashion(tmp_path / "fashion-mnist")
    train = arrays["train-images-idx3-ubyte"] / 255.0
    standard = (arrays["t10k-images-idx3-ubyte"] / 255.0 - train.mean()) / train.std()  # (3, 28, 28)
    rows = load("seq-fashion-mnist", tmp_path, dtype=torch.float64)
    assert rows.in_shape == (28, 28) and rows.n_classes == 10 and rows.temporal
    assert np.allclose(rows.test_x.numpy(), standard, atol=1e-12)
    labels = arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    assert torch.equal(rows.test_y[:, -1], torch.from_numpy(labels)) and torch.all(rows.test_y[:, :-1] == -1)
    pixels = load("seq-fashion-mnist:pixels", tmp_path, dtype=torch.float64)
    assert pixels.in_shape == (784, 1) and pixels.train_y.shape == (6, 784)
    assert np.allclose(pixels.test_x.numpy()[:, :, 0], standard.reshape(3, 784), atol=1e-12)
    assert torch.all(pixels.train_y[:, :-1] == -1) and pixels.train_y[5, -1] == 9


def test_seq_fashion_mnist_missing_file_is_fashion_mnists_error(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte").unlink()
    message = one_line_error(lambda: load("seq-fashion-mnist", tmp_path))
    assert message == one_line_error(lambda: load("fashion-mnist", tmp_path))
    assert "t10k-labels-idx1-ubyte" in message


# ---------------------------------------------------------------------------------------------------- SHD


def write_shd(path: Path, times: list[list[float]], units: list[list[int]], labels: list[int]) -> Path:
    """An SHD-format file (float16 spike times in s, uint16 units, uint16 labels), written with h5py."""
    h5py = pytest.importorskip("h5py")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float16))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (ti, ui) in enumerate(zip(times, units, strict=True)):
            t[i], u[i] = np.asarray(ti, dtype=np.float16), np.asarray(ui, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
    return path


# Example 0: spikes at 4 ms (unit 3) and 998.5 ms (unit 699); example 1: at 500 ms (unit 0) and 1.2 s (unit 5).
SPIKES = ([[0.004, 0.9985], [0.5, 1.2]], [[3, 699], [0, 5]], [7, 19])


def test_shd_binning_by_hand(tmp_path: Path) -> None:
    """Cramer et al. 2020's events binned by hand: step ⌊t · bins / duration⌋, spikes at or past ``duration``
    dropped. 100 bins over 1 s: (0, 0, 3), (0, 99, 699), (1, 50, 0); the 1.2 s spike is gone. 4 bins over 0.5 s:
    only (0, 0, 3) (500 ms falls on the window's end)."""
    write_shd(tmp_path / "shd" / "shd_train.h5", *SPIKES)
    write_shd(tmp_path / "shd" / "shd_test.h5", [[0.25]], [[1]], [4])
    data = load("shd", tmp_path)
    expected = torch.zeros(2, 100, 700, dtype=torch.uint8)
    expected[0, 0, 3] = expected[0, 99, 699] = expected[1, 50, 0] = 1
    assert torch.equal(data.train_x, expected)
    assert data.in_shape == (100, 700) and data.n_classes == 20 and data.source == str(tmp_path / "shd")
    assert data.train_y[:, -1].tolist() == [7, 19] and torch.all(data.train_y[:, :-1] == -1)
    short = load("shd:bins=4,duration=0.5,target=all", tmp_path)
    expected = torch.zeros(2, 4, 700, dtype=torch.uint8)
    expected[0, 0, 3] = 1
    assert torch.equal(short.train_x, expected)
    assert torch.equal(short.train_y, torch.tensor([[7] * 4, [19] * 4])) and short.test_y.tolist() == [[4] * 4]


def test_shd_reads_the_published_gzip(tmp_path: Path) -> None:
    plain = write_shd(tmp_path / "plain" / "shd_train.h5", *SPIKES)
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "shd_train.h5.gz").write_bytes(gzip.compress(plain.read_bytes()))
    x, y = temporal.read_shd(tmp_path / "gz" / "shd_train.h5.gz")
    assert torch.equal(x, temporal.read_shd(plain)[0]) and torch.equal(y, temporal.read_shd(plain)[1])


def test_shd_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing files, a unit out of range, a file that is not HDF5, and no h5py: one line each, naming the file."""
    assert "shd not found" in one_line_error(lambda: load("shd"))
    write_shd(tmp_path / "shd" / "shd_train.h5", *SPIKES)
    assert "shd_test.h5" in one_line_error(lambda: load("shd", tmp_path))
    write_shd(tmp_path / "shd" / "shd_test.h5", [[0.1]], [[700]], [0])
    assert "unit outside 0 .. 699" in one_line_error(lambda: load("shd", tmp_path))
    (tmp_path / "shd" / "shd_test.h5").write_bytes(b"not hdf5")
    assert "shd_test.h5" in one_line_error(lambda: load("shd", tmp_path))
    monkeypatch.setitem(sys.modules, "h5py", None)
    assert "pip install h5py" in one_line_error(lambda: temporal.read_shd(tmp_path / "shd" / "shd_train.h5"))


# ---------------------------------------------------------------------------------------- names and keys


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("cue-accumulation:cues=4", "cues must be an odd integer >= 1, not '4'"),
        ("cue-accumulation:cues=x", "not 'x'"),
        ("cue-accumulation:speed=2", "unknown key 'speed' for cue-accumulation; known keys: n_train, n_test, cues"),
        ("cue-accumulation:seed=1,seed=2", "key 'seed' given twice"),
        ("cue-accumulation:", "empty key"),
        ("store-recall:delay", "key 'delay' needs a value"),
        ("store-recall:delay=-1", "delay must be an integer >= 0, not '-1'"),
        ("store-recall:n_train=0", "n_train must be an integer >= 1, not '0'"),
        ("periodic-target:drive=sine", "drive must be one of pulse, constant, not 'sine'"),
        ("periodic-target:seed=1", "unknown key 'seed'"),
        ("shd:duration=nan", "duration must be a number > 0, not 'nan'"),
        ("seq-fashion-mnist:pixels=maybe", "pixels must be true or false, not 'maybe'"),
        ("mnist:limit=5", "unknown key 'limit' for mnist; it takes none"),
        ("clock-task:seed=1", "unknown dataset 'clock-task'"),
    ],
)
def test_bad_keys_and_values_are_refused_in_one_line(name: str, fragment: str) -> None:
    assert fragment in one_line_error(lambda: load(name))
    assert fragment in one_line_error(lambda: canonical_name(name))


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: temporal.cue_accumulation(3, cues=4), "cue-accumulation: cues must be an odd integer >= 1, not 4"),
        (lambda: temporal.store_recall(0), "store-recall: n must be a positive number of examples, not 0"),
        (lambda: temporal.store_recall(2, delay=1.5), "delay must be an integer >= 0, not 1.5"),
        (lambda: temporal.periodic_target(1, drive="sine"), "drive must be one of pulse, constant, not 'sine'"),
        (lambda: temporal.pattern_generation(1, seed=-1), "seed must be an integer >= 0, not -1"),
        (lambda: temporal.read_shd("shd_train.h5", target="first"), "target must be one of last, all, not 'first'"),
    ],
)
def test_plain_functions_refuse_what_the_names_refuse(call, fragment: str) -> None:
    assert fragment in one_line_error(call)


def test_canonical_name_keeps_only_settings_that_differ_from_the_defaults() -> None:
    assert canonical_name("Cue_Accumulation: Seed=01 , n-train=1024") == "cue-accumulation:seed=1"
    assert canonical_name("cue-accumulation:seed=0") == "cue-accumulation"
    assert canonical_name("seq-fmnist:pixels") == "seq-fashion-mnist:pixels"
    assert canonical_name("shd:duration=1,bins=50") == "shd:bins=50"
    assert canonical_name("fashion_mnist") == "fashion-mnist"


def test_generated_tasks_have_no_files() -> None:
    """Always found (their module), nothing to download; a data_dir given must still exist (as for digits)."""
    assert find("store-recall") == Path(temporal.__file__)
    assert "no files to download" in one_line_error(lambda: download("cue-accumulation"))
    assert "download fashion-mnist" in one_line_error(lambda: download("seq-fashion-mnist"))
    assert "does not exist" in one_line_error(lambda: load(SMALL["store-recall"], "/nonexistent/data"))


# --------------------------------------------------------------------------------------- time-major batches


def test_batches_time_major() -> None:
    """Each batch transposed to (T, B, C) and (T, B) or (T, B, K), contiguous, holding the examples ``idx`` names."""
    x = torch.arange(5 * 4 * 3).reshape(5, 4, 3)  # (N, T, C)
    for y in (torch.arange(5 * 4).reshape(5, 4), torch.randn(5, 4, 2)):
        seen = []
        for xb, yb, idx in batches(x, y, 2, torch.Generator().manual_seed(0), with_index=True, time_major=True):
            assert xb.shape == (4, len(idx), 3) and yb.shape == (4, len(idx), *y.shape[2:]) and idx.shape == (len(idx),)
            assert xb.is_contiguous() and yb.is_contiguous()
            for j, i in enumerate(idx.tolist()):
                assert torch.equal(xb[:, j], x[i]) and torch.equal(yb[:, j], y[i])
            seen += idx.tolist()
        assert sorted(seen) == list(range(5))
    assert "time_major needs x (N, T, C)" in one_line_error(lambda: batches(x[:, 0], x[:, 0], 2, time_major=True))
