"""Atomic checkpoints (temp file + rename) loaded with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import RunError
from ..io import atomic_write


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`: a kill never leaves half a file."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the run has not saved one yet (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say which and what to do
        raise RunError(f"cannot read checkpoint {path} ({e}); it is damaged or not a robustssl checkpoint") from e
    if not isinstance(state, dict):
        raise RunError(f"{path} is not a robustssl checkpoint (it holds a {type(state).__name__}, not a mapping)")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
