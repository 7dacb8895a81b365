"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A kill or a full disk during a write leaves the old file (or none), never half a file, and
the temp file is removed. Orphans of earlier kills can be cleared with `remove_orphans`.
`FolderLock` is the exclusive lock a command holds on the folder it writes (pretrain,
postprocess, compare); `check_output_path` refuses an empty output path or one under /proc, /sys.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys
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


# --- an exclusive lock on an output folder ------------------------------------------------------
LOCK_FILE = ".robustssl.lock"


class FolderLock:
    """An exclusive lock on an output folder: `folder/.robustssl.lock`, holding the pid, host and
    command of its holder, flock()ed while held.

    The kernel drops a flock when its process dies (kill -9 included), so a lock file left by a
    dead process is stale: the next command takes it over and says so. A lock held by a running
    process is refused with its pid, host and command. Released (the file removed) on exit; a
    folder the lock created is removed again if nothing was written into it.
    Use as a context manager; `command` names what holds the lock ("pretrain", "compare").
    """

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.created_folder = False
        self.stale: dict[str, object] | None = None  # the record of a dead holder this lock replaced

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        import fcntl
        import json
        import socket

        if self.folder.exists() and not self.folder.is_dir():
            raise RunError(f"--out {self.folder} is a file, not a folder; choose a folder path")
        try:
            if not self.folder.is_dir():
                self.folder.mkdir(parents=True)
                self.created_folder = True
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _lock_record(fd)
                    os.close(fd)
                    self._undo_folder()
                    raise RunError(
                        f"{self.folder} is in use by {holder.get('command', 'another robustssl command')} (pid "
                        f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, lock file {self.path}); wait "
                        "for it to finish or choose another folder") from None
                try:  # the file we locked may have been removed by its last holder meanwhile: lock the current one
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            previous = _lock_record(fd)
            if previous:
                self.stale = previous
                print(f"note: {self.path} was left by {previous.get('command', 'a robustssl command')} (pid "
                      f"{previous.get('pid', '?')} on host {previous.get('host', '?')}), which ended without "
                      "releasing it (killed?); taking it over", file=sys.stderr)
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
            self.fd = fd
        except OSError as e:
            self._undo_folder()
            raise RunError(f"cannot lock {self.folder}: {_reason(e)}") from e

    def release(self) -> None:
        if self.fd is None:
            return
        _unlink(str(self.path))  # before unlocking: a waiting command then locks a new file, never this one
        os.close(self.fd)
        self.fd = None
        self._undo_folder()

    def _undo_folder(self) -> None:
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty: nothing was written
            self.created_folder = False


def _lock_record(fd: int) -> dict[str, object]:
    """The holder record in a lock file ({} when empty or unreadable)."""
    import json

    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode()) if data else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_output_path(path: str | Path, flag: str) -> Path:
    """An output path given by the user: not empty, not under /proc or /sys (kernel interfaces,
    not storage). ConfigError naming `flag` and the fix otherwise."""
    from .errors import ConfigError

    text = str(path)
    if not text.strip():
        raise ConfigError(f"{flag} is empty; give a folder path (an empty path would write into the current folder)")
    try:
        resolved = Path(text).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ConfigError(f"{flag} {text}: cannot resolve the path ({e}); give a path without a symbolic-link loop") from None
    for system in ("/proc", "/sys"):
        if resolved == Path(system) or Path(system) in resolved.parents:
            raise ConfigError(f"{flag} {text} is under {system}, a kernel interface, not storage; choose a folder on disk")
    return Path(text)
