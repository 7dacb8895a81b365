"""What a method is: how it makes views, how it attacks, what its loss is.

The trainer calls `step`, which runs the three phases under the phase timer and updates
the model. Selectors (coreset) call `training_loss` for a candidate's loss. A method never
loads data, checkpoints or sets up distributed training. Methods that own their update
loop (free adversarial training) override `step`, call `update` once per optimizer update
and declare `updates_per_batch`, so the learning-rate schedule spans every update.

To add a method: a file in this package with a `Method` subclass (its `name`, a `Settings`
dataclass for its own `method.<name>.*` keys, `check_config` for rules on the whole config,
`attack` and `loss`), and one line in `methods/__init__.py`'s METHODS.

Modules a method owns (a momentum encoder, a predictor) are built from the model in
`build_parts` and live in `self.parts`: the trainer optimizes their parameters that require a
gradient, checkpoints and restores them, averages their BN statistics under torchrun; the
method updates the others itself (an EMA, in `before_step`). `export_network` names the
network released as the encoder.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .. import dist
from ..attacks import PGDConfig
from ..data.augment import ContrastiveAugment
from ..data.batch import Batch
from ..data.dataset import ImageSource
from ..settings import positive
from ..timer import PhaseTimer

if TYPE_CHECKING:
    from ..config import RunConfig


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops at that step."""


@dataclass
class Views:
    """natural: the augmented views, each [B, C, H, W] in [0,1]; adversarial: their attacked copies (or empty).

    groups: the batch's independent groups (`Batch.groups`); losses keep negatives within a group.
    labels: the batch's class ids (supervised methods), or None.
    """

    natural: list[torch.Tensor]
    adversarial: list[torch.Tensor] = field(default_factory=list)
    groups: int = 1
    labels: torch.Tensor | None = None  # int64 [B]: the batch's labels, for supervised methods


@dataclass
class NoSettings:
    """A method without settings of its own."""


@dataclass
class ContrastiveSettings:
    """Settings of an NT-Xent method (SimCLR, ACL; DynACL and RoCL extend them)."""

    tau: float = positive(0.5)  # NT-Xent temperature


class Method:
    """Base class. Subclasses set `name` (and `Settings`) and implement `loss` (and `attack`).

    Constructed by `build_method` from explicit parts: the method's own settings, the view
    augmentation, the training attack and the run's length in epochs (`train.epochs`, for
    methods with a schedule over the run such as DynACL; None where no run is known). No
    method reads the whole run config.
    """

    name: ClassVar[str] = "base"
    Settings: ClassVar[type] = NoSettings
    needs_dual_bn: ClassVar[bool] = False  # defined with dual BatchNorm (a note is printed without it)
    trained_branches: ClassVar[tuple[str, ...]] = ("normal",)  # BN branches the loss trains (dual-BN models)
    updates_per_batch: int = 1  # optimizer (and lr-schedule) steps per batch (CF-AMC: its replays m)
    # attack and loss honour Batch.groups (stacked independent batches, each its own loss):
    # coreset selection then scores several candidate batches per forward.
    supports_groups: ClassVar[bool] = False
    supervised: ClassVar[bool] = False  # trains on labels; its export holds the classifier layer
    n_views: int = 2
    # bf16 training (train.bf16, set by train.accelerate): the attack and the loss forwards run
    # under autocast in this dtype; None (the default) runs them in fp32 without any context.
    amp_dtype: torch.dtype | None = None

    def __init__(self, settings: Any, augment: ContrastiveAugment, attack: PGDConfig, *, epochs: int | None = None) -> None:
        if not isinstance(settings, self.Settings):
            raise TypeError(f"{self.name} takes {self.Settings.__name__} settings, got {type(settings).__name__}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.settings: Any = settings  # an instance of type(self).Settings
        self.augment = augment
        self.attack_cfg = attack
        self.epochs = epochs
        self.parts = nn.ModuleDict()  # modules the method owns (`attach` builds them)
        self.online: nn.Module | None = None  # the model `attach` built them for

    # --- modules the method owns -------------------------------------------------------------
    def build_parts(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules this method owns besides the model, built once from the freshly built model (on its
        device). Parameters that require a gradient are optimized with the model's; the others are
        the method's to update (in `before_step`, e.g. an EMA copy with `requires_grad=False`)."""
        return {}

    def attach(self, model: nn.Module) -> None:
        """Build the owned modules for `model` (once, before the optimizer is built); moved to its device."""
        device = next(model.parameters()).device
        self.parts = nn.ModuleDict(self.build_parts(model)).to(device)
        self.online = model

    def before_step(self) -> None:
        """Called in every update after the backward and before the optimizer step (the parameters
        are still those the loss was computed with): EMA updates of owned modules go here."""

    def export_network(self, model: nn.Module) -> tuple[nn.Module, str]:
        """(the network released as the encoder, its name in the export's metadata): the trained
        model, "model", unless the method releases an owned one (DynACL's EMA encoder, "parts.ema")."""
        return model, "model"

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Rules this method puts on the whole config; raise ConfigError. Run at load time, before any work."""

    def check_data(self, data: ImageSource, model: nn.Module) -> None:
        """Rules this method puts on the training data and the built model, checked once when the run
        is set up (before any step); raise ConfigError. Self-supervised methods accept any data."""

    # --- the three phases ------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Per-epoch hook, called with the 0-based epoch before its selection and first batch, also
        when a run resumes inside it (DynACL sets its augmentation strength here)."""

    def make_views(self, batch: Batch) -> Views:
        """batch.images [B, C, H, W] in [0,1] -> `n_views` independent augmentations."""
        return Views([self.augment(batch.images) for _ in range(self.n_views)], groups=batch.groups, labels=batch.labels)

    def attack(self, model: nn.Module, views: Views, attack: PGDConfig) -> Views:
        """Add adversarial views made with `attack` (clean methods return `views` unchanged)."""
        return views

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (model in train mode) and named parts for logging.

        weights: float [B] per-image loss weights (a weighted coreset) or None.
        """
        raise NotImplementedError  # abstract: every method defines its loss

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Autocast on `device` in `amp_dtype` around forwards (attack, loss); a no-op context when it is None."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    # --- what the trainer and the selectors call --------------------------------------------
    def training_loss(self, model: nn.Module, batch: Batch, attack: PGDConfig | None = None,
                      timer: PhaseTimer | None = None) -> torch.Tensor:
        """The method's full loss on a batch (views, attack, loss): what selectors differentiate.

        attack: the attack to use (a selector may ask for a cheaper one); None: the training attack.
        timer: where the augment and attack phases are timed (a selector's cost breakdown).
        Runs in the model's current mode. A batch with groups > 1 returns the sum of its groups'
        losses (methods with `supports_groups` only).
        """
        if batch.groups > 1 and not self.supports_groups:
            raise ValueError(f"method {self.name} does not support grouped batches (supports_groups is False)")
        timer = timer or PhaseTimer()
        with timer.phase("augment"):
            views = self.make_views(batch)
        with timer.phase("attack"), self.autocast(batch.images.device):
            views = self.attack(model, views, attack or self.attack_cfg)
        with self.autocast(batch.images.device):
            return self.loss(model, views, batch.weights)[0]

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: Batch,
             timer: PhaseTimer) -> dict[str, float]:
        """One batch: views, attack, then `updates_per_batch` updates. Returns logged values (loss first)."""
        with timer.phase("augment"):
            views = self.make_views(batch)
        with timer.phase("attack"), self.autocast(batch.images.device):
            views = self.attack(model, views, self.attack_cfg)
        with timer.phase("update"):
            model.train()
            with self.autocast(batch.images.device):
                loss, parts = self.loss(model, views, batch.weights)
            self.update(optimizer, scheduler, loss)
        return {"loss": float(loss.detach()), **parts}

    def update(self, optimizer: torch.optim.Optimizer, scheduler: Any, loss: torch.Tensor) -> None:
        """One optimizer update on `loss` (`before_step` between its backward and the step) and the
        matching lr-schedule step; stops on a non-finite loss."""
        check_finite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_step()
        optimizer.step()
        scheduler.step()

    # --- state carried between batches (checkpointed with the run) ---------------------------
    def state_dict(self) -> dict[str, Any]:
        """State a method carries between batches or epochs (a free-AT perturbation, a schedule)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)}")


def check_finite(loss: torch.Tensor) -> None:
    """Raise NonFiniteLoss on a NaN/inf loss; under torchrun on the ranks' mean, so every rank stops together."""
    value = dist.mean_scalar(float(loss.detach()))
    if not math.isfinite(value):
        raise NonFiniteLoss(f"loss is {value}")
