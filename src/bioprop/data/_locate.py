"""Where a named dataset's files are looked for, and what to tell the user when they are not there.

What the user names is used, or the load stops naming it; the default search path applies only when nothing is
named. For a dataset called ``<name>``:

1. a ``data_dir`` argument (``--data-dir``) is the only place searched: ``data_dir/<name>``, then ``data_dir``
   itself; it must be an existing directory holding the dataset's files;
2. else ``$BIOPROP_DATA``, when set (non-empty), is the only place searched, likewise (a variable the user set is
   as much a named place as an argument: a typo in it must not silently pick another copy);
3. else the default search path: ``~/.cache/bioprop/<name>``, then ``/usr/share/datasets/<name>`` (where Debian's
   ``dataset-fashion-mnist`` package puts its files); the first holding any of the dataset's files wins.

Downloads go into the named directory's ``<name>/`` (which is created; the named directory itself never is), else
into ``~/.cache/bioprop/<name>``.
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
from bioprop.errors import BioPropError

ENV_VAR = "BIOPROP_DATA"
# The system-wide location, a module attribute so that tests can point it elsewhere.
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Location:
    """Where a dataset was found: ``folder`` holds its files; ``archive`` is set when only the archive is."""

    folder: Path
    archive: Path | None = None


@dataclass(frozen=True)
class NamedDir:
    """A directory the user named for datasets: ``path``, and ``what`` named it (for messages)."""

    path: Path
    what: str


def named_dir(data_dir: str | Path | None) -> NamedDir | None:
    """The directory the user named: ``data_dir`` when given, else ``$BIOPROP_DATA`` when set (non-empty), else
    None. Raises :class:`BioPropError` when the named path is empty, does not exist or is not a directory."""
    if data_dir is not None:
        if not str(data_dir).strip():
            raise BioPropError("data_dir is empty; name a directory or leave it out")
        named = NamedDir(Path(data_dir).expanduser(), "data_dir")
    elif os.environ.get(ENV_VAR):
        named = NamedDir(Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}")
    else:
        return None
    problem = None if named.path.is_dir() else "is not a directory" if named.path.exists() else "does not exist"
    if problem:
        hint = f"unset it to use {default_search_text()}" if named.what.startswith("$") else "nothing else is searched"
        raise BioPropError(f"{named.what} {str(named.path)!r} {problem} ({hint})")
    return named


def default_search_text() -> str:
    """The default search path in words, for messages."""
    return f"~/.cache/bioprop/<name> and {SYSTEM_DATA_DIR}/<name>"


def cache_dir() -> Path:
    """``~/.cache/bioprop``: bioprop's own download root, created on demand."""
    return Path.home() / ".cache" / "bioprop"


def default_dir(name: str) -> Path:
    """Where dataset ``name`` is downloaded when no destination is given: ``$BIOPROP_DATA/<name>`` when set,
    else ``~/.cache/bioprop/<name>`` (not checked here; :func:`named_dir` checks ``$BIOPROP_DATA``)."""
    env = os.environ.get(ENV_VAR)
    return (Path(env).expanduser() if env else cache_dir()) / name


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order: the named directory's ``<name>/`` and itself, or
    the default search path when nothing is named. Raises :class:`BioPropError` on a bad named directory."""
    named = named_dir(data_dir)
    if named is not None:
        return [named.path / name, named.path]
    return [cache_dir() / name, SYSTEM_DATA_DIR / name]


def is_present(path: Path) -> bool:
    """Whether the file ``path`` is there: True for a regular file, False when nothing is there; anything else
    (a directory, a broken link, a device) where a dataset file should be is a :class:`BioPropError`."""
    if path.is_file():
        return True
    if path.is_symlink() and not path.exists():
        raise BioPropError(
            f"'{path}' is a broken symbolic link (to {os.readlink(path)}); a dataset file should be there"
        )
    if path.exists():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise BioPropError(f"'{path}' is {kind}; a dataset file should be there")
    return False


def idx_file(folder: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``folder``: the raw file if present, else the gzipped one, else None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if is_present(candidate):
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
            if candidate.is_dir() and any(is_present(candidate / n) for n in _cifar_names()):
                return Location(candidate)
        if is_present(folder / CIFAR10_ARCHIVE):
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
        return [n for n in _cifar_names() if not is_present(location.folder / n)]
    return []


def expected_files(spec: DatasetSpec) -> str:
    """The files ``spec`` is read from, in words, for messages."""
    if spec.kind == "idx":
        return f"the IDX files {', '.join(IDX_FILES)} (each raw or .gz)"
    return f"{CIFAR10_FOLDER}/ with {', '.join(_cifar_names())}, or {CIFAR10_ARCHIVE}"


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
