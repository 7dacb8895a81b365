"""Wall-clock time per training phase (augment, attack, update, selection).

Three ways to time a phase (`train.timing`):

- CPU (any mode): `time.perf_counter` around the phase, as the work is done when it returns.
- CUDA, `events` (the default there): a CUDA event is recorded on the current stream at the
  start and end of each phase; nothing waits for the GPU. The intervals are turned into
  seconds lazily: when `seconds` is read (once per epoch in the trainer), or, to keep the
  number of live events bounded, for the already finished ones every `flush_every` phases
  (a non-blocking query; with 8 x flush_every pending it waits). A phase's time is then the
  GPU time between its two events (host time spent before the GPU is reached is not in it).
- CUDA, `sync`: synchronize before and after each phase and use perf_counter (exact host
  wall-clock per phase, at the price of stalling the GPU pipeline six times per step).
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch

TIMING_MODES = ("auto", "events", "sync")


class Clock(Protocol):
    """Makes markers now and measures the seconds between two of them."""

    def mark(self) -> Any:
        """A marker of 'now' (a time, or a recorded CUDA event)."""

    def ready(self, marker: Any) -> bool:
        """Whether `marker` can be measured without waiting (a CUDA event: the GPU has reached it)."""

    def wait(self, marker: Any) -> None:
        """Block until `marker` is reached (a CUDA event: `Event.synchronize`)."""

    def elapsed(self, start: Any, end: Any) -> float:
        """Seconds from `start` to `end`, both reached."""


class WallClock:
    """perf_counter markers: always ready; optionally synchronizing CUDA before each mark (`sync` mode)."""

    def __init__(self, synchronize: bool = False) -> None:
        self.synchronize = synchronize

    def mark(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize()
        return time.perf_counter()

    def ready(self, marker: Any) -> bool:
        return True

    def wait(self, marker: Any) -> None:
        pass

    def elapsed(self, start: float, end: float) -> float:
        return end - start


class CudaEventClock:
    """CUDA events recorded on the current stream; measured with `Event.elapsed_time` (ms -> s)."""

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ready(self, marker: torch.cuda.Event) -> bool:
        return bool(marker.query())

    def wait(self, marker: torch.cuda.Event) -> None:
        marker.synchronize()

    def elapsed(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end) / 1000.0


class LazyIntervals:
    """Per-phase totals from (name, start, end) marker pairs, measured only when needed.

    `add` keeps a pair; `flush_ready` measures the finished pairs in order (stopping at the
    first unfinished one: markers on one stream finish in order); `totals` waits once, for
    the last marker, then measures all of them and returns the seconds per name.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[tuple[str, Any, Any]] = []
        self.resolved: dict[str, float] = defaultdict(float)

    def add(self, name: str, start: Any, end: Any) -> None:
        self.pending.append((name, start, end))

    def flush_ready(self) -> None:
        done = 0
        for name, start, end in self.pending:
            if not self.clock.ready(end):
                break
            self.resolved[name] += self.clock.elapsed(start, end)
            done += 1
        del self.pending[:done]

    def totals(self) -> dict[str, float]:
        if self.pending:
            self.clock.wait(self.pending[-1][2])
        for name, start, end in self.pending:
            self.resolved[name] += self.clock.elapsed(start, end)
        self.pending.clear()
        return self.resolved

    def clear(self) -> None:
        self.pending.clear()
        self.resolved = defaultdict(float)


def resolve_timing(device: torch.device | str, mode: str = "auto") -> str:
    """The timing a device gets: 'wall' on CPU whatever the mode; on CUDA 'events' (auto) or the mode asked."""
    if mode not in TIMING_MODES:
        raise ValueError(f"unknown timing mode {mode!r}; valid: {', '.join(TIMING_MODES)}")
    if torch.device(device).type != "cuda":
        return "wall"
    return "events" if mode == "auto" else mode


class PhaseTimer:
    """Accumulates seconds per named phase (see the module docstring for the modes).

    `seconds` is {phase: seconds} so far; reading it measures every pending interval (on CUDA
    with events, that waits for the GPU to reach the last phase's end).
    """

    def __init__(self, device: torch.device | str = "cpu", mode: str = "auto", flush_every: int = 64,
                 clock: Clock | None = None) -> None:
        """clock: markers to use instead of the mode's own (another event source); the mode still
        decides when intervals are measured: lazily for 'events', at once otherwise."""
        self.mode = resolve_timing(device, mode)
        if clock is None:
            clock = CudaEventClock() if self.mode == "events" else WallClock(synchronize=self.mode == "sync")
        self.intervals = LazyIntervals(clock)
        self.flush_every = flush_every

    @property
    def seconds(self) -> dict[str, float]:
        return self.intervals.totals()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        clock = self.intervals.clock
        start = clock.mark()
        try:
            yield
        finally:
            self.intervals.add(name, start, clock.mark())
            pending = len(self.intervals.pending)
            if pending >= 8 * self.flush_every:  # the GPU is far behind: wait rather than hold more events
                self.intervals.totals()
            elif pending >= self.flush_every or self.mode != "events":
                self.intervals.flush_ready()

    def reset(self) -> dict[str, float]:
        """Return the accumulated seconds and start again from zero."""
        out = dict(self.seconds)
        self.intervals.clear()
        return out
