"""Datasets by name, as whole standardised tensors.

    from bioprop.data import load, batches
    data = load("fashion-mnist", device="cuda")          # Dataset: train_x (60000, 1, 28, 28), ...
    for xb, yb in batches(data.train_x, data.train_y, 128, generator=torch.Generator().manual_seed(0)):
        ...

Known names: ``digits`` (bundled with scikit-learn, always available), ``mnist``, ``fashion-mnist``,
``kmnist`` (IDX files, raw or gzipped) and ``cifar10`` (the binary version); and the sequence datasets of
:mod:`bioprop.data.temporal`, named with their settings (``cue-accumulation:cues=5,seed=1``): ``cue-accumulation``,
``pattern-generation``, ``periodic-target``, ``store-recall`` (generated), ``seq-fashion-mnist`` and ``shd``.

A directory the user names is the only place searched: ``data_dir`` when given, else ``$BIOPROP_DATA`` when set;
one that does not exist, is not a directory or holds none of the dataset's files is an error naming it. Only when
nothing is named are ``~/.cache/bioprop/<name>`` and ``/usr/share/datasets/<name>`` searched (see
:mod:`bioprop.data._locate`). Files are downloaded only when asked (``load(..., download=True)`` or
:func:`download`), and every download is checked against the SHA-256 recorded in :data:`DATASETS`. Every
malformed file (truncated, corrupt, mismatched, an empty split, a label out of range, a directory where a file
should be) is a one-line :class:`~bioprop.errors.BioPropError` naming it, raised before any tensor is made; dataset
files are never changed.
"""

from bioprop.data import temporal
from bioprop.data._core import Dataset, batches, catalog, download, find, load
from bioprop.data._registry import DATASETS, DatasetSpec, RemoteFile, canonical_name, parse_name

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "RemoteFile",
    "batches",
    "canonical_name",
    "catalog",
    "download",
    "find",
    "load",
    "parse_name",
    "temporal",
]
