"""Selectors: given the pool, return the positions (and optional weights) to train on.

A selector sees the method only through `method.training_loss` and the model's projector,
so every method (supervised ones included) works with every selector.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import CoresetConfig
from ..data.dataset import ImageDataset


@dataclass
class Selection:
    """positions: int64 row indices into the training set; weights: per position or None (unweighted);
    gains: the selector's score of each pick in pick order, or None."""

    positions: torch.Tensor
    weights: torch.Tensor | None = None
    gains: torch.Tensor | None = None


def units_to_positions(pool: torch.Tensor, picks: torch.Tensor, unit: str, batch_size: int, order: torch.Tensor | None = None) -> torch.Tensor:
    """Map picked units to positions: unit i is the i-th sample, or the i-th batch, of `order`
    (a permutation of pool; the pool itself when None)."""
    order = pool if order is None else order
    if unit == "sample":
        return order[picks]
    rows = picks[:, None] * batch_size + torch.arange(batch_size)[None, :]
    return order[rows.flatten()]


class RandomSelector:
    """Uniform random coreset, re-sampled at every selection from its own checkpointed generator."""

    def __init__(self, cfg: CoresetConfig, seed: int) -> None:
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed + 104729)

    def select(self, model: Any, method: Any, data: ImageDataset, pool: torch.Tensor, val: torch.Tensor, budget: int, batch_size: int) -> Selection:
        n_units = len(pool) // batch_size if self.cfg.unit == "batch" else len(pool)
        order = pool[torch.randperm(len(pool), generator=self.generator)]
        picks = torch.randperm(n_units, generator=self.generator)[:budget]
        return Selection(units_to_positions(pool, picks, self.cfg.unit, batch_size, order).sort().values)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class FullSelector(RandomSelector):
    """The whole pool. The schedule never calls it (a `full` run has no coreset epochs); it gives `full`
    the same selector interface and checkpoint state as the others."""

    def select(self, model: Any, method: Any, data: ImageDataset, pool: torch.Tensor, val: torch.Tensor, budget: int, batch_size: int) -> Selection:
        return Selection(pool.clone())


def build_selector(cfg: CoresetConfig, seed: int) -> Any:
    if cfg.method == "random":
        return RandomSelector(cfg, seed)
    if cfg.method == "full":
        return FullSelector(cfg, seed)
    if cfg.method == "rcs":
        from .rcs import RCSSelector  # here, not at the top: rcs imports this module

        return RCSSelector(cfg, seed)
    raise ValueError(f"unknown coreset.method {cfg.method!r}; valid: full, random, rcs")
