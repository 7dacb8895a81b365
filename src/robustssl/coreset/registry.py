"""SELECTORS: the one list of coreset selectors (the config's `coreset.method` vocabulary, the
CLI's choices and the schedule all read it). To add a selector: a `Selector` subclass in its
own file, and one entry here."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .acs import CraigSelector, GradMatchSelector
from .rcs import RCSSelector
from .selectors import FullSelector, RandomSelector, Selector

if TYPE_CHECKING:
    from ..config import CoresetConfig

SELECTORS: dict[str, type[Selector]] = {s.name: s for s in (FullSelector, RandomSelector, RCSSelector, CraigSelector, GradMatchSelector)}


def build_selector(cfg: CoresetConfig, seed: int) -> Selector:
    if cfg.method not in SELECTORS:
        raise ValueError(f"unknown coreset.method {cfg.method!r}; valid: {', '.join(SELECTORS)}")
    return SELECTORS[cfg.method](cfg, seed)
