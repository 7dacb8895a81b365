"""Download official dataset archives, verify their md5 and extract them.

Nothing here is required when the data are already on disk: a hand-downloaded archive
placed where the error message says is verified and extracted without any network.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from robustssl import dist
from robustssl.data.readers import DatasetError

__all__ = [
    "Archive",
    "download_and_verify",
    "extract_archive",
    "file_md5",
    "manual_download_help",
    "verify_md5"
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """An official archive (or data file): where to get it, its md5, and the folder it extracts to
    (for a file that is not an archive, the folder it is stored in). Each dataset's archives are
    listed in its `DatasetSpec` (data/catalog.py)."""

    url: str
    md5: str
    folder: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks so large archives need no memory."""
    digest = hashlib.md5(usedforsecurity=False)  # integrity check, not security
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | Path, md5: str) -> bool:
    """True when the file exists and its md5 equals `md5` (hex, case-insensitive)."""
    path = Path(path)
    return path.is_file() and file_md5(path) == md5.lower()


def manual_download_help(url: str, archive_path: str | Path, md5: str) -> str:
    """The instructions for fetching an archive by hand, used in every download error."""
    return (
        f"download it by hand from {url} (e.g. `curl -L -o {archive_path} {url}`) and put it at "
        f"{archive_path} (expected md5 {md5}). It is then verified and extracted on the next run, "
        "no network needed."
    )


def _fetch(url: str, part: Path, timeout: float) -> str:
    """Stream `url` into `part`; returns the md5 of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
        expected = response.headers.get("Content-Length")
        written = 0
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    if expected is not None and written != int(expected):
        raise OSError(f"connection closed after {written} of {expected} bytes")
    return digest.hexdigest()


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract refusing absolute paths, '..', links and device files (path traversal)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():  # Pythons without extraction filters
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing unsafe archive member {member.name!r}")
    tar.extractall(dest)


def extract_archive(archive: str | Path, dest: str | Path) -> list[Path]:
    """Extract a .tar / .tar.gz into `dest`; returns its top-level entries under `dest`.

    Extraction goes to a temporary folder first so a failure leaves no half-extracted
    data set; entries that already exist in `dest` are kept as they are.
    """
    archive, dest = Path(archive), Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with tarfile.open(archive, "r:*") as tar:
            _safe_extractall(tar, tmp)
        entries = []
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
            entries.append(target)
        return entries
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(
            f"Cannot extract {archive} into {dest} ({err}). Delete the archive and download it again, "
            "and check that the folder is writable with free space."
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(url: str, archive: Path, md5: str, timeout: float) -> None:
    """Download to `archive` via a .part file that is removed on any failure."""
    part = archive.with_name(archive.name + ".part")
    help_text = manual_download_help(url, archive, md5)
    try:
        log.info("downloading %s -> %s", url, archive)
        got = _fetch(url, part, timeout)
        if got != md5.lower():
            raise DatasetError(
                f"Downloaded {url} but its md5 is {got}, expected {md5}: the file is damaged. Fix: {help_text}"
            )
        os.replace(part, archive)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        raise DatasetError(f"Could not download {url} ({err}). Fix: {help_text}") from err
    finally:
        part.unlink(missing_ok=True)


def download_and_verify(
    url: str, dest: str | Path, md5: str, timeout: float = 60.0, extract: bool = True
) -> Path:
    """Fetch `url` into folder `dest`, check its md5 and (by default) extract it there.

    The archive is saved as dest/<last part of url>. An archive already there with the
    right md5 is not downloaded again; one with a wrong md5 is replaced. Network errors,
    timeouts (`timeout` seconds per socket operation) and md5 mismatches raise
    DatasetError with instructions for a manual download; no partial file is left.
    Returns the archive path.

    Under torchrun only rank 0 downloads (and extracts); the other ranks wait for it, then use
    its files, and a failed download is raised on every rank as the same one-line error.
    """
    return dist.main_first(lambda: _download_and_verify(url, dest, md5, timeout, extract),
                           then=lambda: _downloaded_by_rank0(url, Path(dest)))


def _downloaded_by_rank0(url: str, dest: Path) -> Path:
    """On a rank > 0, after rank 0's download: the archive it saved (and extracted) in `dest`."""
    archive = dest / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        raise DatasetError(
            f"rank 0 downloaded {url} into {dest}, which process rank {dist.rank()} does not see. Under torchrun on "
            "several nodes put data.root on a shared filesystem, or the dataset on every node."
        )
    return archive


def _download_and_verify(url: str, dest: str | Path, md5: str, timeout: float, extract: bool) -> Path:
    dest = Path(dest)
    archive = dest / url.rsplit("/", 1)[-1]
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"Cannot create the data folder {dest} ({err}). Pass a writable root.") from err
    if not verify_md5(archive, md5):
        if archive.exists():
            log.warning("%s has a wrong md5; downloading it again", archive)
        _download(url, archive, md5, timeout)
    if extract:
        extract_archive(archive, dest)
    return archive
