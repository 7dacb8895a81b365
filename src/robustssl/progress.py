"""Progress lines: the training bar's style, and a staged display for evaluation, post-processing and compare.

`progress_bar` is the one bar style. In a terminal it redraws every 0.1 s; in a log file
(stderr is not a terminal) at most once a minute (tqdm's monitor would otherwise force a
redraw every 10 s), so a long run writes a few lines an hour, not one a step.

`showing(title)` makes a `Progress` the active display for the code it wraps (a context
variable, so library functions need no extra argument). Code that does long work opens a
stage (`stage(name, total)`) and calls `advance(n)` as it goes: the bar then reads, e.g.,

    evaluate SLF | pgd20 eps=0.1:  40%|####      | 400/1000 [00:12<00:18, 33.1 img/s]

(which protocol and attack runs, examples done, the stage's ETA). Outside `showing` the
calls do nothing, so a function used inside training (the online probe reuses the linear
probe and the attacks) prints nothing. `section(name)` adds a prefix (the protocol) to the
stages it wraps.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm import tqdm

__all__ = ["Progress", "active", "advance", "progress_bar", "section", "showing", "stage"]


def progress_bar(total: int | None = None, *, initial: int = 0, enabled: bool = True, unit: str = "step",
                 desc: str | None = None) -> Any:
    """A tqdm bar on stderr: redrawn every 0.1 s in a terminal, at most once a minute in a log file."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit=unit, desc=desc, dynamic_ncols=True,
                mininterval=0.1 if tty else 60.0, maxinterval=10.0 if tty else 600.0)


class Progress:
    """One bar reused for a sequence of stages; each stage resets its count, total and ETA."""

    def __init__(self, title: str, enabled: bool = True) -> None:
        self.title, self.enabled = title, enabled
        self.prefix: list[str] = []
        self.bar: Any = None  # created by the first stage

    def start(self, name: str, total: int, unit: str = "img") -> None:
        """A new stage: `name` (shown after the title and sections), `total` units of `unit` to do."""
        desc = " | ".join([self.title + (" " + " ".join(self.prefix) if self.prefix else ""), name])
        if self.bar is None:
            self.bar = progress_bar(total, enabled=self.enabled, unit=unit, desc=desc)
            return
        self.bar.unit = unit
        self.bar.set_description(desc, refresh=False)
        self.bar.reset(total=total)  # redraws once: one line per stage in a log file

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_ACTIVE: ContextVar[Progress | None] = ContextVar("robustssl_progress", default=None)


@contextmanager
def showing(title: str, enabled: bool = True) -> Iterator[Progress]:
    """Make a display titled `title` the active one for the duration (enabled=False: a silent one)."""
    progress = Progress(title, enabled)
    token = _ACTIVE.set(progress)
    try:
        yield progress
    finally:
        _ACTIVE.reset(token)
        progress.close()


@contextmanager
def section(name: str) -> Iterator[None]:
    """Prefix the stages inside with `name` (e.g. the protocol); nothing without an active display."""
    progress = _ACTIVE.get()
    if progress is not None:
        progress.prefix.append(name)
    try:
        yield
    finally:
        if progress is not None:
            progress.prefix.pop()


def active() -> bool:
    """Whether a display is active (code may then do extra work to feed it, e.g. follow AutoAttack's log)."""
    return _ACTIVE.get() is not None


def stage(name: str, total: int, unit: str = "img") -> None:
    """Start a stage of the active display (a no-op without one)."""
    progress = _ACTIVE.get()
    if progress is not None:
        progress.start(name, total, unit)


def advance(n: int = 1) -> None:
    """Count `n` units of the current stage done (a no-op without an active display)."""
    progress = _ACTIVE.get()
    if progress is not None:
        progress.advance(n)
