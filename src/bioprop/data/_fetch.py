"""Downloading a dataset's files from their canonical source, verified against the registry's SHA-256.

The storing is :func:`pooch.retrieve`'s: each file is streamed into a temporary file in the destination
directory and moved to its final name only once its SHA-256 matches; on any failure the temporary file is
removed, so an existing file is never damaged. A file already present with the right checksum is not fetched
again. The transfer itself is :func:`_http_get` (requests, closing its connection on every path, with a rich
progress bar), and pooch's errors become one-line :class:`BioPropError` messages. Nothing is downloaded unless
asked for.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pooch

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
USER_AGENT = "bioprop-dataset-download (pooch)"


def sklearn_data_dir() -> Path:
    """The directory of scikit-learn's bundled datasets (where ``digits`` lives), found without importing it."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise BioPropError("scikit-learn is not installed (it provides the digits dataset); pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


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


def _http_get(url: str, output_file: str, label: str, progress: bool) -> None:
    """Stream ``url`` into the file ``output_file``: the downloader handed to pooch. Unlike pooch's own
    ``HTTPDownloader``, it closes the connection when the server answers with an error status, and its
    progress bar is rich's. Raises ``requests.RequestException`` on any network or HTTP failure."""
    import requests

    headers = {"User-Agent": USER_AGENT}
    with requests.get(url, stream=True, timeout=TIMEOUT_S, headers=headers) as response, open(output_file, "wb") as out:
        response.raise_for_status()
        length = response.headers.get("Content-Length", "")
        with _progress_bar(progress, label, int(length) if length.isdigit() else None) as advance:
            for chunk in response.iter_content(CHUNK_BYTES):
                out.write(chunk)
                advance(len(chunk))


@contextlib.contextmanager
def _pooch_quiet() -> Iterator[None]:
    """Silence pooch's informational log lines ("Downloading data from ...") while downloading."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request: the HTTP status, else the underlying system error, else its text."""
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    seen, todo = set(), [exc]
    while todo:  # requests wraps urllib3's errors, which wrap the socket's: find the OSError with a strerror
        err = todo.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
        linked = [*err.args, getattr(err, "reason", None), err.__cause__, err.__context__]
        todo += [e for e in linked if isinstance(e, BaseException)]
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _fetch_file(spec: DatasetSpec, url: str, target: Path, remote: RemoteFile, progress: bool) -> None:
    """Make ``target`` hold ``url``'s file with ``remote``'s SHA-256: kept when it already does, else downloaded
    through a temporary file that replaces it only once verified. Raises :class:`BioPropError` on any failure."""
    import requests  # imported by pooch when it downloads; needed here only for its exception classes

    if target.exists() and not target.is_file():
        raise BioPropError(f"cannot download {spec.name}'s {remote.name}: {str(target)!r} is in the way (not a file)")
    existed = target.exists()

    def downloader(url: str, output_file: str, _pooch: object) -> None:
        _http_get(url, output_file, f"{spec.name}: {remote.name}", progress)

    def readable(path: str, action: str, _pooch: object) -> str:
        if action != "fetch":  # pooch wrote it (as a private temporary file); a dataset is for everyone to read
            os.chmod(path, 0o644)
        return path

    how = _locate.how_to_get(spec, offer_download=False, folder=target.parent)
    try:
        with _pooch_quiet():
            pooch.retrieve(url, known_hash=f"sha256:{remote.sha256}", fname=target.name, path=target.parent,
                           downloader=downloader, processor=readable)  # fmt: skip
    except requests.RequestException as exc:  # before ValueError and OSError, which some of these also are
        raise BioPropError(f"could not download {spec.name} from {url} ({_reason(exc)}); {how}") from None
    except ValueError as exc:  # pooch's checksum mismatch ("... expected sha256:X but got Y. ..."), download deleted
        got = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
        if got is None:  # some other malformed reply
            raise BioPropError(f"could not download {spec.name} from {url} ({_reason(exc)}); {how}") from None
        kept = f"; the existing {target} was left unchanged" if existed else ""
        raise BioPropError(
            f"downloaded {url} failed verification (SHA-256 mismatch: expected {remote.sha256.lower()}, "
            f"got {got[1].lower()}); not saved{kept}"
        ) from None
    except OSError as exc:
        raise BioPropError(f"cannot write {target} to download {spec.name} ({exc.strerror or exc})") from None


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
    demand. ``base_url`` replaces the canonical source (each file name is appended to it). Files already
    present with the right checksum are not fetched again. Every file is checked against the registry's SHA-256
    before it gets its final name. CIFAR-10's archive is then unpacked safely into ``dest/cifar-10-batches-bin/``.
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
        _fetch_file(spec, base + remote.name, target_dir / remote.name, remote, progress)
    if spec.kind == "cifar10-bin":
        extract_cifar(target_dir / CIFAR10_ARCHIVE, target_dir)
    return target_dir
