"""Run a pretraining to completion, and the same run killed with SIGKILL then resumed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.run_dir import CHECKPOINT


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustssl.cli", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def pretrain(out: Path, overrides: list[str], recipe: str = "acl_fmnist_cpu") -> None:
    subprocess.run(cli("pretrain", "--config", recipe, "--out", str(out), *overrides), check=True, env=ENV, capture_output=True)


# The child is the real CLI; it SIGKILLs itself right after writing the first checkpoint for
# which `ready` (a Python expression over the loaded checkpoint `ck`) holds. Killing from the
# inside makes the moment exact: a parent polling the checkpoint file raced a fast tiny run, which
# on a loaded machine could finish before the signal arrived.
_KILL_CHILD = """
import os, signal, sys
from robustssl import cli
from robustssl.train import trainer
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.run_dir import CHECKPOINT

ready = sys.argv.pop(1)
write = trainer.save_checkpoint

def write_then_maybe_die(state, run):
    write(state, run)
    if eval(ready, {}, {"ck": load_checkpoint(run.out / CHECKPOINT)}):
        os.kill(os.getpid(), signal.SIGKILL)

trainer.save_checkpoint = write_then_maybe_die
sys.exit(cli.main(sys.argv[1:]))
"""


def kill_when(out: Path, overrides: list[str], ready: str, timeout: float = 300,
              recipe: str = "acl_fmnist_cpu") -> dict[str, Any]:
    """Run `pretrain` and SIGKILL it right after the first checkpoint `ck` for which the
    expression `ready` holds (e.g. "ck['epoch'] == 1 and ck['batch'] >= 2"); return that checkpoint.
    Fails if the run ended without such a checkpoint."""
    proc = subprocess.run([sys.executable, "-c", _KILL_CHILD, ready, "pretrain", "--config", recipe, "--out", str(out),
                           *overrides], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed at `{ready}` (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return load_checkpoint(out / CHECKPOINT)


def resume(out: Path) -> None:
    subprocess.run(cli("pretrain", "--out", str(out), "--resume"), check=True, env=ENV, capture_output=True)
