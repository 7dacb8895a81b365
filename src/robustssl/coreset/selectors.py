"""Selectors: given the pool, return the positions (and optional weights) to train on.

A selector sees the method only through the `SelectionMethod` interface (its training loss,
training attack and two flags) and the model's projector, so every method (supervised ones
included) works with every selector that does not ask for more; the ACS selectors also need a
method's closed-form classifier-layer gradients (`ClassifierMethod`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from ..attacks import PGDConfig
from ..data.batch import Batch
from ..data.dataset import ImageSource

if TYPE_CHECKING:
    from ..config import CoresetConfig, RunConfig
    from ..timer import PhaseTimer


@runtime_checkable
class SelectionMethod(Protocol):
    """What a selector may use of a training method (`methods.base.Method` provides all of it)."""

    @property
    def name(self) -> str: ...

    @property
    def supervised(self) -> bool:
        """True: the method trains on labels (a selector may then balance its budget per class)."""

    @property
    def supports_groups(self) -> bool:
        """True: `training_loss` takes grouped batches (several candidate batches in one forward)."""

    @property
    def attack_cfg(self) -> PGDConfig:
        """The method's training attack."""

    def training_loss(self, model: nn.Module, batch: Batch, attack: PGDConfig | None = None,
                      timer: PhaseTimer | None = None) -> torch.Tensor:
        """The method's full loss on a batch (views, attack, loss), in the model's current mode."""


@runtime_checkable
class ClassifierMethod(SelectionMethod, Protocol):
    """A supervised method whose objective has closed-form gradients w.r.t. the classifier layer."""

    def head_gradients(self, model: nn.Module, batch: Batch, attack: PGDConfig | None = None) -> torch.Tensor:
        """Per-example gradients [B, dim] of the objective w.r.t. the classifier layer at adversarial examples."""


@dataclass
class NoSettings:
    """A selector without settings of its own."""


@dataclass
class Selection:
    """positions: int64 [n] row indices into the training set; weights: float [n], the loss weight
    of each position (weighted coresets; the trainer passes them to the method's loss), or None
    (unweighted); gains: the selector's score of each pick in pick order, or None; phases: the
    selection's cost by part in seconds, or None."""

    positions: torch.Tensor
    weights: torch.Tensor | None = None
    gains: torch.Tensor | None = None
    phases: dict[str, float] | None = None  # seconds of the selection's parts, where the selector times them


def units_to_positions(pool: torch.Tensor, picks: torch.Tensor, unit: str, batch_size: int,
                       order: torch.Tensor | None = None) -> torch.Tensor:
    """Map picked units to positions: unit i is the i-th sample, or the i-th batch, of `order`
    (a permutation of pool; the pool itself when None)."""
    order = pool if order is None else order
    if unit == "sample":
        return order[picks]
    rows = picks[:, None] * batch_size + torch.arange(batch_size)[None, :]
    return order[rows.flatten()]


class Selector:
    """Base class. A selector says whether it needs a validation split (held out of training)
    and whether it trains on a subset at all, picks a Selection, and checkpoints its state.

    To add one: subclass this in a file of this package (its `name`, a `Settings` dataclass for
    its own `coreset.<name>.*` keys, `select`) and add it to `registry.SELECTORS`; see
    docs/design.md, "Adding a selector".
    """

    name: ClassVar[str] = "base"
    Settings: ClassVar[type] = NoSettings  # its own keys, `coreset.<name>.<key>`
    needs_validation_split: ClassVar[bool] = False  # True: a val split is held out of the pool
    trains_on_subset: ClassVar[bool] = True  # False: every epoch trains on the whole pool

    def __init__(self, cfg: CoresetConfig, seed: int) -> None:
        self.cfg = cfg
        self.settings: Any = cfg.settings.get(self.name) or self.Settings()  # an instance of type(self).Settings
        if not isinstance(self.settings, self.Settings):
            raise TypeError(f"selector {self.name} takes {self.Settings.__name__} settings, got {type(self.settings).__name__}")
        self.generator = torch.Generator().manual_seed(seed + 104729)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Rules this selector puts on the whole config; raise ConfigError. Run at load time."""

    def unit_size(self, batch_size: int) -> int:
        """Images per picked unit when coreset.unit=batch: the training batch size `batch_size`
        unless the selector has its own (ACS's fixed minibatches)."""
        return batch_size

    def validation_fraction(self) -> float:
        """The share of the training set held out as a validation split (needs_validation_split only)."""
        return 0.0

    def select(self, model: nn.Module, method: SelectionMethod, data: ImageSource, pool: torch.Tensor, val: torch.Tensor,
               budget: int, batch_size: int) -> Selection:
        """Pick `budget` units (samples, or batches of `unit_size(batch_size)` images) from `pool`
        (positions); batch_size: the training batch size."""
        raise NotImplementedError  # abstract: every selector defines its selection

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class RandomSelector(Selector):
    """Uniform random coreset, re-sampled at every selection from its own checkpointed generator."""

    name = "random"

    def select(self, model: nn.Module, method: SelectionMethod, data: ImageSource, pool: torch.Tensor, val: torch.Tensor,
               budget: int, batch_size: int) -> Selection:
        n_units = len(pool) // batch_size if self.cfg.unit == "batch" else len(pool)
        order = pool[torch.randperm(len(pool), generator=self.generator)]
        picks = torch.randperm(n_units, generator=self.generator)[:budget]
        return Selection(units_to_positions(pool, picks, self.cfg.unit, batch_size, order).sort().values)


class FullSelector(Selector):
    """No coreset: every epoch trains on the whole pool. The schedule never calls `select`."""

    name = "full"
    trains_on_subset = False

    def select(self, model: nn.Module, method: SelectionMethod, data: ImageSource, pool: torch.Tensor, val: torch.Tensor,
               budget: int, batch_size: int) -> Selection:
        return Selection(pool.clone())
