"""Shared helpers for the benchmarks: repeats, median and spread, machine description, and the
accuracy numbers of evaluation reports (per protocol, mean ± sd over seeds)."""
from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from robustssl.run_setup import describe_hardware, hardware


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def spread(values: list[float]) -> str:
    """'median (min..max, n=N)'."""
    return f"{statistics.median(values):.4g} ({min(values):.4g}..{max(values):.4g}, n={len(values)})"


def machine(device: torch.device) -> str:
    """One line naming what a benchmark's numbers depend on: on CPU the model and the instruction set torch's
    kernels use (another one rounds differently, so the same seed gives other numbers), cores and threads."""
    hw = hardware(device)
    if device.type == "cuda":
        return f"{describe_hardware(hw)}, torch {hw['torch']}"
    return f"{platform.machine()} {describe_hardware(hw)}, {hw['cores']} cores, torch {hw['torch']}"


def protocol_numbers(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{protocol: {clean, pgd20, autoattack, sanity_passed (1.0 / 0.0)}} from an evaluation report."""
    out: dict[str, dict[str, float | None]] = {}
    for name, p in report["protocols"].items():
        acc = {a["attack"]: a["accuracy"] for a in p["attacks"]}
        out[name] = {"clean": p["clean"]["accuracy"], "pgd20": acc.get("pgd20"), "autoattack": acc.get("autoattack"),
                     "sanity_passed": float(bool(p["sanity_passed"]))}
    return out


def mean_sd(values: list[float]) -> str:
    """Accuracies in [0, 1] as 'mean ± sd' in percent (sd 0 for one value; 'n/a' for none)."""
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def accuracies(entries: list[dict[str, float | None]]) -> dict[str, list[float]]:
    """{clean, pgd20, autoattack: the values present} over `protocol_numbers` entries (one per run)."""
    return {k: [v for e in entries if (v := e[k]) is not None] for k in ("clean", "pgd20", "autoattack")}
