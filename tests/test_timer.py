"""Phase timing: perf_counter on CPU, and the lazy bookkeeping behind CUDA-event timing, driven
by a fake clock whose 'GPU' reaches markers only when the test says so."""
import time

import pytest

from robustssl.timer import LazyIntervals, PhaseTimer, WallClock, resolve_timing


class FakeGPUClock:
    """Markers are ticks of a host counter; the 'GPU' has reached ticks <= `reached`. `wait` counts
    the waits (what `Event.synchronize` would be) and reaches the marker; measuring an unreached
    marker is an error, as `Event.elapsed_time` on an unfinished event is."""

    def __init__(self) -> None:
        self.now = 0
        self.reached = 0
        self.waits = 0

    def mark(self) -> int:
        self.now += 1
        return self.now

    def ready(self, marker: int) -> bool:
        return marker <= self.reached

    def wait(self, marker: int) -> None:
        self.waits += 1
        self.reached = max(self.reached, marker)

    def elapsed(self, start: int, end: int) -> float:
        assert end <= self.reached, f"measured marker {end} before the GPU reached it ({self.reached})"
        return float(end - start)


def test_resolve_timing_cpu_is_wall_clock_and_cuda_defaults_to_events():
    assert resolve_timing("cpu") == resolve_timing("cpu", "events") == resolve_timing("cpu", "sync") == "wall"
    assert resolve_timing("cuda") == "events" and resolve_timing("cuda", "sync") == "sync"
    with pytest.raises(ValueError, match="timing mode"):
        resolve_timing("cpu", "fast")


def test_cpu_timer_measures_each_phase_with_perf_counter():
    timer = PhaseTimer("cpu")
    assert isinstance(timer.intervals.clock, WallClock) and not timer.intervals.clock.synchronize
    with timer.phase("attack"):
        time.sleep(0.02)
    with timer.phase("update"):
        pass
    with timer.phase("attack"):
        time.sleep(0.02)
    assert not timer.intervals.pending  # CPU phases are measured when they end
    s = timer.seconds
    assert 0.04 <= s["attack"] < 1.0 and 0 <= s["update"] < s["attack"]
    assert timer.reset() == s and dict(timer.seconds) == {}


def test_lazy_intervals_measure_only_finished_markers_in_order():
    clock = FakeGPUClock()
    lazy = LazyIntervals(clock)
    for name in ("augment", "attack", "update"):
        lazy.add(name, clock.mark(), clock.mark())  # ticks (1,2), (3,4), (5,6)
    clock.reached = 4
    lazy.flush_ready()
    assert [p[0] for p in lazy.pending] == ["update"] and dict(lazy.resolved) == {"augment": 1.0, "attack": 1.0}
    assert clock.waits == 0
    lazy.add("augment", clock.mark(), clock.mark())  # (7, 8)
    clock.reached = 7  # the GPU is inside the last interval
    lazy.flush_ready()
    assert [p[1:] for p in lazy.pending] == [(7, 8)] and lazy.resolved["update"] == 1.0
    assert clock.waits == 0
    assert lazy.totals() == {"augment": 2.0, "attack": 1.0, "update": 1.0}
    assert clock.waits == 1 and not lazy.pending


def test_event_timer_never_waits_inside_steps_and_resolves_when_read():
    clock = FakeGPUClock()
    timer = PhaseTimer("cuda", "events", flush_every=4, clock=clock)  # the CUDA policy, with the fake clock
    assert timer.mode == "events"
    for _ in range(3):  # 3 steps of 3 phases; the GPU lags behind the host
        for name in ("augment", "attack", "update"):
            with timer.phase(name):
                clock.now += 10  # the phase's work
        clock.reached = clock.now - 25  # the GPU is about one step behind
    assert clock.waits == 0, "a phase waited for the GPU"
    assert 0 < len(timer.intervals.pending) < 9  # the finished ones were measured on the way
    seconds = timer.seconds  # reading waits once, for the last phases
    assert clock.waits == 1 and not timer.intervals.pending
    assert seconds == {"augment": 33.0, "attack": 33.0, "update": 33.0}


def test_event_timer_bounds_the_pending_markers():
    clock = FakeGPUClock()  # a GPU that never gets ahead: nothing is ever ready without a wait
    timer = PhaseTimer("cuda", "events", flush_every=2, clock=clock)
    for _ in range(40):
        with timer.phase("update"):
            pass
        assert len(timer.intervals.pending) < 16
    assert clock.waits >= 1
    assert timer.seconds["update"] == 40.0


def test_sync_mode_measures_at_once_with_the_given_clock():
    clock = FakeGPUClock()
    timer = PhaseTimer("cuda", "sync", clock=clock)
    clock.reached = 10**6
    with timer.phase("attack"):
        clock.now += 5
    assert not timer.intervals.pending and dict(timer.intervals.resolved) == {"attack": 6.0}
