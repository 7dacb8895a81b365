"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A kill or a full disk during a write leaves the old file (or none), never half a file, and
the temp file is removed. Orphans of earlier kills can be cleared with `remove_orphans`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import RunError

TMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call write(f) on a temp file beside `path`, fsync it, then rename it to `path`.

    An OSError (disk full, read-only folder, a file where a folder should be) becomes a
    RunError naming `path`; the temp file never outlives the call.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise RunError(f"cannot write {path}: {_reason(e)}") from e
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600 files; a run file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise RunError(f"cannot write {path}: {_reason(e)}") from e
    except BaseException:
        _unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_orphans(folder: str | Path, name: str) -> list[Path]:
    """Delete temp files `name.*.tmp` left in `folder` by writes that were killed; returns them."""
    removed = []
    for p in Path(folder).glob(f"{name}.*{TMP_SUFFIX}"):
        _unlink(str(p))
        removed.append(p)
    return removed


def _mode_for(path: Path) -> int:
    """The existing file's permissions, else the process default (0o666 less the umask)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "the disk is full; free space (or choose another --out) and run again"
    if isinstance(e, NotADirectoryError) or e.errno == errno.ENOTDIR:
        return f"a part of the path is a file, not a folder ({e.strerror}); choose another --out"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{e.strerror}; choose a folder you can write to"
    return e.strerror or str(e)
