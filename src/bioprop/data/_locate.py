"""Where a named dataset's files are looked for, and what to tell the user when they are not there.

Search order for a dataset called ``<name>`` (the first directory holding any of its files wins):

1. the ``data_dir`` argument: ``data_dir/<name>``, then ``data_dir`` itself;
2. ``$BIOPROP_DATA``: ``$BIOPROP_DATA/<name>``, then ``$BIOPROP_DATA`` itself;
3. ``~/.cache/bioprop/<name>``;
4. ``/usr/share/datasets/<name>`` (where Debian's ``dataset-fashion-mnist`` package puts its files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bioprop.data._registry import (
    CIFAR10_ARCHIVE,
    CIFAR10_FOLDER,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    IDX_FILES,
    DatasetSpec,
)

ENV_VAR = "BIOPROP_DATA"
# The system-wide location, a module attribute so that tests can point it elsewhere.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Location:
    """Where a dataset was found: ``folder`` holds its files; ``archive`` is set when only the archive is."""

    folder: Path
    archive: Path | None = None


def cache_root() -> Path:
    """``$BIOPROP_DATA`` when set, else ``~/.cache/bioprop``: the root of default download directories."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bioprop"


def default_dir(name: str) -> Path:
    """The directory a dataset is downloaded to by default: ``<cache_root()>/<name>``."""
    return cache_root() / name


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order (duplicates removed)."""
    dirs: list[Path] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        dirs += [base / name, base]
    env = os.environ.get(ENV_VAR)
    if env:
        base = Path(env).expanduser()
        dirs += [base / name, base]
    dirs.append(Path.home() / ".cache" / "bioprop" / name)
    dirs.append(SYSTEM_DATA_DIR / name)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def idx_file(folder: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``folder``: the raw file if present, else the gzipped one, else None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _cifar_names() -> tuple[str, ...]:
    return CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES


def locate_in(spec: DatasetSpec, folder: Path) -> Location | None:
    """The location of ``spec``'s files in ``folder`` (or its ``cifar-10-batches-bin/``), else None."""
    if not folder.is_dir():
        return None
    if spec.kind == "idx":
        if any(idx_file(folder, stem) for stem in IDX_FILES):
            return Location(folder)
        return None
    if spec.kind == "cifar10-bin":
        for candidate in (folder, folder / CIFAR10_FOLDER):
            if any((candidate / n).is_file() for n in _cifar_names()):
                return Location(candidate)
        if (folder / CIFAR10_ARCHIVE).is_file():
            return Location(folder, folder / CIFAR10_ARCHIVE)
        return None
    return None


def locate(spec: DatasetSpec, data_dir: str | Path | None = None) -> Location | None:
    """The first location holding any of ``spec``'s files, per the search order, else None."""
    for folder in search_dirs(spec.name, data_dir):
        found = locate_in(spec, folder)
        if found is not None:
            return found
    return None


def missing_files(spec: DatasetSpec, location: Location) -> list[str]:
    """Names of the files ``spec`` needs that ``location`` lacks (empty when complete)."""
    if location.archive is not None:
        return []
    if spec.kind == "idx":
        return [stem for stem in IDX_FILES if idx_file(location.folder, stem) is None]
    if spec.kind == "cifar10-bin":
        return [n for n in _cifar_names() if not (location.folder / n).is_file()]
    return []


def tilde(path: Path) -> str:
    """``path`` as text, with the home directory written as ``~``."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def how_to_get(spec: DatasetSpec, offer_download: bool = True, folder: Path | None = None) -> str:
    """One line (no trailing period) telling the user how to get ``spec``'s files (into ``folder``)."""
    if spec.kind == "sklearn":
        return "bundled with scikit-learn; always available"
    where = tilde(folder if folder is not None else default_dir(spec.name))
    what = "the IDX files" if spec.kind == "idx" else f"{CIFAR10_FOLDER}/ (or {CIFAR10_ARCHIVE})"
    text = f"put {what} in {where} or pass --data-dir"
    if offer_download:
        source = f"{spec.base_url}{spec.files[0].name}" if len(spec.files) == 1 else spec.base_url
        text = (
            f"`bioprop datasets --download {spec.name}` (or bioprop.data.download({spec.name!r})) "
            f"fetches them from {source}, or {text}"
        )
    if spec.extra_how:
        text += f", {spec.extra_how}"
    return text
