"""Datasets by name, as whole standardised tensors.

    from bioprop.data import load, batches
    data = load("fashion-mnist", device="cuda")          # Dataset: train_x (60000, 1, 28, 28), ...
    for xb, yb in batches(data.train_x, data.train_y, 128, generator=torch.Generator().manual_seed(0)):
        ...

Known names: ``digits`` (bundled with scikit-learn, always available), ``mnist``, ``fashion-mnist``,
``kmnist`` (IDX files, raw or gzipped) and ``cifar10`` (the binary version). Files are looked for in
``data_dir``, ``$BIOPROP_DATA``, ``~/.cache/bioprop/<name>`` and ``/usr/share/datasets/<name>``, in that
order; they are downloaded only when asked (``load(..., download=True)`` or :func:`download`), and every
download is checked against the SHA-256 recorded in :data:`DATASETS`.
"""

from bioprop.data._core import Dataset, batches, catalog, find, load
from bioprop.data._fetch import download
from bioprop.data._registry import DATASETS, DatasetSpec, RemoteFile, canonical_name

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
]
