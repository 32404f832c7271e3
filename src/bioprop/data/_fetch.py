"""Downloading a dataset's files from their canonical source, verified against the registry's checksums.

Each file is streamed into a temporary file in the destination directory, hashed on the way, and moved
to its final name with :func:`os.replace` only once its checksum matches; on any failure the temporary
file is removed, so an existing file is never damaged. Nothing is downloaded unless asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from bioprop.data import _locate
from bioprop.data._registry import (
    CIFAR10_ARCHIVE,
    CIFAR10_FOLDER,
    CIFAR10_RECORD_BYTES,
    CIFAR10_RECORDS_PER_FILE,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    DatasetSpec,
    RemoteFile,
    spec_for,
)
from bioprop.errors import BioPropError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
USER_AGENT = "bioprop-dataset-download (python urllib)"


def sklearn_data_dir() -> Path:
    """The directory of scikit-learn's bundled datasets (where ``digits`` lives), found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise BioPropError("scikit-learn is not installed (it provides the digits dataset); pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def file_digests(path: Path) -> tuple[str, str]:
    """``(sha256, md5)`` hex digests of the file at ``path``."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def checksum_problem(remote: RemoteFile, sha256: str, md5: str) -> str | None:
    """None when the digests match ``remote``'s checksum (SHA-256, else MD5), else what did not match."""
    if remote.sha256 is not None:
        if sha256 != remote.sha256.lower():
            return f"SHA-256 mismatch: expected {remote.sha256.lower()}, got {sha256}"
        return None
    if remote.md5 is not None:
        if md5 != remote.md5.lower():
            return f"MD5 mismatch: expected {remote.md5.lower()}, got {md5}"
        return None
    return "no checksum is known for it, so it cannot be verified"


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield a function that advances a rich progress bar on stderr (or does nothing when disabled)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch_file(spec: DatasetSpec, url: str, target: Path, remote: RemoteFile, progress: bool) -> None:
    """Download ``url`` to ``target`` through a temporary file, verifying ``remote``'s checksum first."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise BioPropError(f"cannot write in {target.parent} to download {spec.name} ({exc.strerror})") from None
    tmp = Path(tmp_name)
    moved = False
    try:
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with _progress_bar(progress, f"{spec.name}: {remote.name}", total) as advance:
                        while chunk := response.read(CHUNK_BYTES):
                            out.write(chunk)
                            sha.update(chunk)
                            md5.update(chunk)
                            received += len(chunk)
                            advance(len(chunk))
                if total is not None and received != total:
                    raise BioPropError(
                        f"could not download {spec.name} from {url} (got {received} of {total} bytes); "
                        f"{_locate.how_to_get(spec, offer_download=False, folder=target.parent)}"
                    )
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()  # it holds the response and its socket
                raise BioPropError(
                    f"could not download {spec.name} from {url} ({_reason(exc)}); "
                    f"{_locate.how_to_get(spec, offer_download=False, folder=target.parent)}"
                ) from None
        problem = checksum_problem(remote, sha.hexdigest(), md5.hexdigest())
        if problem is not None:
            kept = f"; the existing {target} was left unchanged" if target.exists() else ""
            raise BioPropError(f"downloaded {url} failed verification ({problem}); not saved{kept}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a dataset file is for everyone to read
        os.replace(tmp, target)
        moved = True
    finally:
        if not moved:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _cifar_extracted(dest: Path) -> bool:
    folder = dest / CIFAR10_FOLDER
    size = CIFAR10_RECORD_BYTES * CIFAR10_RECORDS_PER_FILE
    names = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES
    return all((folder / n).is_file() and (folder / n).stat().st_size == size for n in names)


def extract_cifar(archive: Path, dest: Path) -> Path:
    """Safely unpack ``cifar-10-batches-bin/*`` from ``archive`` into ``dest``; returns the folder.

    Only regular files directly inside ``cifar-10-batches-bin/`` are written (no links, no absolute or
    ``..`` paths); each goes through a temporary file and :func:`os.replace`.
    """
    folder = dest / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 2 or parts[0] != CIFAR10_FOLDER:
                    continue
                if parts[1] in ("", ".", "..") or "/" in parts[1] or "\\" in parts[1]:
                    continue
                stream = tar.extractfile(member)
                if stream is None:
                    continue
                fd, tmp_name = tempfile.mkstemp(prefix=f".{parts[1]}.", suffix=".part", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(stream, out, CHUNK_BYTES)
                    os.chmod(tmp_name, 0o644)
                    os.replace(tmp_name, folder / parts[1])
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp_name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BioPropError(f"could not unpack CIFAR-10 archive '{archive}' ({reason})") from None
    missing = [n for n in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES if not (folder / n).is_file()]
    if missing:
        raise BioPropError(f"CIFAR-10 archive '{archive}' lacks {CIFAR10_FOLDER}/{missing[0]}")
    return folder


def download(name: str, dest: Path | None = None, base_url: str | None = None, progress: bool = True) -> Path:
    """Download dataset ``name``'s files into ``dest`` and return that directory.

    ``dest`` defaults to ``$BIOPROP_DATA/<name>`` when ``$BIOPROP_DATA`` is set, else
    ``~/.cache/bioprop/<name>``. ``dest`` itself is created if needed, but the directory it is in must exist
    (``$BIOPROP_DATA`` too): a mistyped path is refused, not created; only ``~/.cache/bioprop`` is made on
    demand. ``base_url`` replaces the canonical source (each file name is appended
    to it). Files already present with the right checksum are not fetched again. Every file is checked
    against the registry's SHA-256 (or, where no SHA-256 is recorded, its MD5) before it gets its final
    name. CIFAR-10's archive is then unpacked safely into ``dest/cifar-10-batches-bin/``.
    ``progress`` shows a rich progress bar on stderr. Raises :class:`BioPropError` on any failure.
    """
    spec = spec_for(name)
    if spec.kind == "sklearn":
        return sklearn_data_dir()
    if dest is not None:
        target_dir = Path(dest).expanduser()
        if not target_dir.parent.is_dir():
            raise BioPropError(
                f"cannot download {spec.name} into {str(target_dir)!r}: {str(target_dir.parent)!r} is not an existing "
                f"directory (only {target_dir.name}/ itself would be created)"
            )
    else:
        named = _locate.named_dir(None)  # $BIOPROP_DATA, checked
        target_dir = (named.path if named is not None else _locate.cache_dir()) / spec.name
    try:
        target_dir.mkdir(parents=dest is None, exist_ok=True)
    except OSError as exc:
        raise BioPropError(f"cannot create {target_dir} to download {spec.name} into ({exc.strerror})") from None
    if spec.kind == "cifar10-bin" and _cifar_extracted(target_dir):
        return target_dir
    base = base_url or spec.base_url or ""
    if not base.endswith("/"):
        base += "/"
    for remote in spec.files:
        target = target_dir / remote.name
        if target.is_file() and checksum_problem(remote, *file_digests(target)) is None:
            continue
        _fetch_file(spec, base + remote.name, target, remote, progress)
    if spec.kind == "cifar10-bin":
        extract_cifar(target_dir / CIFAR10_ARCHIVE, target_dir)
    return target_dir
