"""When to select and what to train on: warm-up on the full pool, then a coreset re-selected
every `every` epochs. The schedule is run state: it is checkpointed and restored, so a run
resumed after a selection trains on the same subset.
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from .. import dist
from ..config import CoresetConfig
from ..data.dataset import ImageSource
from .registry import build_selector
from .selectors import Selection, SelectionMethod


class CoresetRoundingWarning(UserWarning):
    """A batch-unit coreset whose whole batches make a share of the pool far from coreset.fraction."""


class CoresetSchedule:
    """Owns the training pool (all positions minus the validation split), the budget and the current coreset.

    Positions are row indices into the training ImageDataset.
    """

    def __init__(self, cfg: CoresetConfig, epochs: int, n: int, batch_size: int, seed: int) -> None:
        self.cfg, self.epochs, self.batch_size = cfg, epochs, batch_size
        self.selector = build_selector(cfg, seed)
        self.unit_size = self.selector.unit_size(batch_size) if cfg.unit == "batch" else 1  # images per picked unit
        g = torch.Generator().manual_seed(seed + 7919)
        perm = torch.randperm(n, generator=g)
        n_val = max(1, round(self.selector.validation_fraction() * n)) if self.selector.needs_validation_split else 0
        # The validation split is removed from the pool: it is never trained on.
        self.val = perm[:n_val].sort().values
        self.pool = perm[n_val:].sort().values
        self.current: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.selected_at = -1
        self.selections: list[dict[str, Any]] = []

    # --- budget -------------------------------------------------------------------------
    def budget(self) -> int:
        """Number of selected units: samples, or whole batches (of `unit_size` images) when coreset.unit=batch."""
        return max(1, round(self.cfg.fraction * (len(self.pool) // self.unit_size)))

    def coreset_size(self) -> int:
        """Images in a coreset (the real fraction is this over len(pool))."""
        return self.budget() * self.unit_size

    def rounding_note(self) -> str | None:
        """A note when whole batches make a coreset far (over 10% relative) from coreset.fraction; None otherwise."""
        if not self.selector.trains_on_subset or self.cfg.unit != "batch":
            return None
        real = self.coreset_size() / max(1, len(self.pool))
        if abs(real - self.cfg.fraction) <= 0.1 * self.cfg.fraction:
            return None
        return (f"coreset.fraction={self.cfg.fraction:g} becomes {self.budget()} whole batch(es) of {self.unit_size} images out "
                f"of {len(self.pool) // self.unit_size}: the coreset is {100 * real:.1f}% of the pool; use coreset.unit=sample "
                "or a smaller batch for a closer fraction")

    def warn_rounding(self) -> None:
        """Warn (CoresetRoundingWarning) when `rounding_note` has something to say."""
        note = self.rounding_note()
        if note is not None:
            warnings.warn(note, CoresetRoundingWarning, stacklevel=2)

    def uses_coreset(self, epoch: int) -> bool:
        return self.selector.trains_on_subset and epoch >= self.cfg.warmup_epochs

    def is_selection_epoch(self, epoch: int) -> bool:
        return self.uses_coreset(epoch) and (epoch - self.cfg.warmup_epochs) % self.cfg.every == 0

    def steps_per_epoch_bound(self) -> int:
        return len(self.pool) // self.batch_size

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the legacy lr clock, optim.lr_clock=updates, spans exactly these)."""
        full = len(self.pool) // self.batch_size
        core = self.coreset_size() // self.batch_size
        return sum(core if self.uses_coreset(e) else full for e in range(self.epochs))

    # --- the hook the trainer calls -------------------------------------------------------
    def positions_for_epoch(self, epoch: int, model: torch.nn.Module, method: SelectionMethod,
                            data: ImageSource) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(positions, weights) to train on in `epoch`, selecting a new coreset first when one is due.

        weights: float [len(positions)] loss weights of a weighted coreset, or None.
        """
        if not self.uses_coreset(epoch):
            return self.pool, None
        if self.current is None or (self.is_selection_epoch(epoch) and self.selected_at != epoch):
            self.select(epoch, model, method, data)
        assert self.current is not None
        return self.current, self.weights

    def select(self, epoch: int, model: torch.nn.Module, method: SelectionMethod, data: ImageSource) -> Selection:
        start = time.perf_counter()
        sel = self.selector.select(model, method, data, self.pool, self.val, self.budget(), self.batch_size)
        seconds = time.perf_counter() - start
        if sel.weights is not None and sel.weights.shape != sel.positions.shape:
            raise ValueError(f"{type(self.selector).__name__} returned {sel.weights.numel()} weights for {sel.positions.numel()} positions")
        weights = None if sel.weights is None else sel.weights.detach().float().cpu()
        # Under torchrun every rank selects (sharing the candidates' work, see coreset/embeddings.py)
        # and trains on rank 0's coreset: identical on every rank by construction.
        positions, weights = dist.broadcast_object((sel.positions.cpu(), weights))
        record: dict[str, Any] = {"epoch": epoch, "seconds": seconds, "size": int(sel.positions.numel())}
        if self.current is not None:  # a re-selection: the share of its images the previous coreset already held
            record["kept"] = round(float(torch.isin(positions, self.current).float().mean()), 4)
        self.current, self.weights, self.selected_at = positions, weights, epoch
        if sel.phases is not None:
            record["phases"] = sel.phases
        self.selections.append(record)
        return sel

    # --- state ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What run.json records: the settings and the selections; a full run has no coreset to describe."""
        if not self.selector.trains_on_subset:
            return {"selector": self.cfg.selector, "pool_size": len(self.pool)}
        return {
            "selector": self.cfg.selector, "fraction_requested": self.cfg.fraction, "unit": self.cfg.unit,
            "unit_size": self.unit_size,
            "pool_size": len(self.pool), "validation_size": len(self.val), "coreset_size": self.coreset_size(),
            "fraction_real": self.coreset_size() / max(1, len(self.pool)), "warmup_epochs": self.cfg.warmup_epochs,
            "every": self.cfg.every, "n_selections": len(self.selections),
            "selection_seconds": sum(s["seconds"] for s in self.selections), "selections": self.selections,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "val": self.val, "pool": self.pool, "current": self.current, "weights": self.weights,
            "selected_at": self.selected_at, "selections": self.selections, "selector": self.selector.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not torch.equal(state["val"], self.val) or not torch.equal(state["pool"], self.pool):
            raise RuntimeError("the checkpoint's validation split differs from this configuration's; resume with the run's own config")
        self.current, self.weights = state["current"], state["weights"]
        self.selected_at, self.selections = state["selected_at"], list(state["selections"])
        self.selector.load_state_dict(state["selector"])
