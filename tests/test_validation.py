"""``--validation N``: N training examples held out (the same for every run and seed), evaluated each epoch, and an
epoch chosen on them without reading the test set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bioprop import data, train
from bioprop.config import RunConfig, _fingerprint
from bioprop.errors import BioPropError


def digits(limit: int = 200) -> data.Dataset:
    return data.load("digits", None, torch.device("cpu"), torch.float32, False, limit)


def test_hold_out_is_a_fixed_disjoint_split_that_keeps_the_training_order() -> None:
    """The held-out examples are the last N of the permutation drawn with seed 0, the rest keep their order; together
    they are the training set, each example once."""
    whole = digits()
    kept, (val_x, val_y) = train.hold_out(whole, 50)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    held, rest = order[150:], order[:150].sort().values
    assert torch.equal(val_x, whole.train_x[held]) and torch.equal(val_y, whole.train_y[held])
    assert torch.equal(kept.train_x, whole.train_x[rest]) and torch.equal(kept.train_y, whole.train_y[rest])
    assert torch.equal(kept.test_x, whole.test_x) and len(set(held.tolist()) | set(rest.tolist())) == 200
    assert train.hold_out(whole, 0) == (whole, None)
    with pytest.raises(BioPropError, match="--validation 200 leaves no training example: dataset digits has 200"):
        train.hold_out(whole, 200)


def test_the_epoch_is_chosen_on_validation(tmp_path: Path) -> None:
    """Each epoch's row has val_loss and val_accuracy; the
    summary's best_val_epoch is the first epoch of the highest val_accuracy in metrics.csv and
    test_accuracy_at_best_val that epoch's test accuracy; n_train excludes the held-out examples."""
    config = RunConfig(data="digits", limit=300, validation=60, epochs=3, arch="mlp:16", lr=0.05, seed=2)
    summary = train.run(config, tmp_path / "run", quiet=True)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best = accuracies.index(max(accuracies))
    assert summary["n_validation"] == 60 and summary["n_train"] == 240
    assert summary["best_val_epoch"] == best + 1
    assert summary["test_accuracy_at_best_val"] == pytest.approx(float(rows[best]["test_accuracy"]))
    assert summary["val_accuracy"] == pytest.approx(accuracies[-1])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_val_epoch"] == best + 1


def test_runs_written_before_the_setting_keep_their_fingerprint() -> None:
    """validation = 0 is left out of the fingerprint (a setting added later), so older runs still resume; any other
    value changes it."""
    config = RunConfig(data="digits", epochs=2)
    before = {k: v for k, v in config.to_dict().items() if k != "validation"}
    assert config.fingerprint() == _fingerprint(before)
    assert RunConfig(data="digits", epochs=2, validation=10).fingerprint() != config.fingerprint()


def test_negative_validation_is_refused() -> None:
    with pytest.raises(BioPropError, match="validation must be 0 or a positive integer"):
        RunConfig(validation=-1).check()
