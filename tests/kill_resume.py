"""Run a pretraining to completion, and the same run killed with SIGKILL then resumed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustssl.train.checkpoint import load_checkpoint


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustssl.cli", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def pretrain(out: Path, overrides: list[str], recipe: str = "acl_fmnist_cpu") -> None:
    subprocess.run(cli("pretrain", "--config", recipe, "--out", str(out), *overrides), check=True, env=ENV, capture_output=True)


def kill_when(out: Path, overrides: list[str], ready: Callable[[dict[str, Any]], bool], timeout: float = 120,
              recipe: str = "acl_fmnist_cpu") -> dict[str, Any]:
    """Start the run, SIGKILL it as soon as its checkpoint satisfies `ready`; return that checkpoint."""
    proc = subprocess.Popen(cli("pretrain", "--config", recipe, "--out", str(out), *overrides), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = load_checkpoint(out / "checkpoint.pt")
        except (FileNotFoundError, RuntimeError):  # not written yet
            state = None
        if state and ready(state):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return load_checkpoint(out / "checkpoint.pt")


def resume(out: Path) -> None:
    subprocess.run(cli("pretrain", "--out", str(out), "--resume"), check=True, env=ENV, capture_output=True)
