"""SELECTORS: the one list of coreset selectors (the config's `coreset.selector` vocabulary and
its `coreset.<name>.*` sections, the CLI's choices and the schedule all read it). To add a
selector: a `Selector` subclass in its own file, and one entry here (docs/design.md, "Adding a
selector")."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .acs import CraigSelector, GradMatchSelector
from .rcs import RCSSelector
from .selectors import FullSelector, RandomSelector, Selector

if TYPE_CHECKING:
    from ..config import CoresetConfig

SELECTORS: dict[str, type[Selector]] = {s.name: s for s in (FullSelector, RandomSelector, RCSSelector, CraigSelector, GradMatchSelector)}


def build_selector(cfg: CoresetConfig, seed: int) -> Selector:
    """The configured selector (`cfg.selector`) with its own settings and a generator seeded from `seed`."""
    if cfg.selector not in SELECTORS:
        raise ValueError(f"unknown coreset.selector {cfg.selector!r}; valid: {', '.join(SELECTORS)}")
    return SELECTORS[cfg.selector](cfg, seed)
