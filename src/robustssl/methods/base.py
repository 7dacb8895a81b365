"""What a method is: how it makes views, how it attacks, what its loss is.

The trainer calls `step`, which runs the three phases under the phase timer and updates
the model. Selectors (coreset) call `training_loss` for a candidate's loss. A method never
loads data, checkpoints or sets up distributed training. Methods that own their update
loop (free adversarial training) override `step`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attacks import PGDConfig
from ..config import RunConfig
from ..data.augment import AugmentSpec, ContrastiveAugment
from ..train.timer import PhaseTimer


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops at that step."""


@dataclass
class Views:
    """natural: the augmented views, each [B, C, H, W] in [0,1]; adversarial: their attacked copies (or empty)."""

    natural: list[torch.Tensor]
    adversarial: list[torch.Tensor] = field(default_factory=list)


class Method:
    """Base class. Subclasses set `name` and implement `attack` and `loss`."""

    name = "base"
    needs_dual_bn = False

    def __init__(self, cfg: RunConfig, image_size: int, channels: int) -> None:
        self.cfg = cfg
        a = cfg.augment
        self.augment_spec = AugmentSpec(
            crop_scale=(a.crop_scale[0], a.crop_scale[1]), flip=a.flip, jitter=tuple(a.jitter),  # type: ignore[arg-type]
            jitter_p=a.jitter_p, grayscale_p=a.grayscale_p,
        )
        self.augment = ContrastiveAugment(self.augment_spec, image_size, channels)
        self.attack_cfg = PGDConfig(cfg.attack.eps, cfg.attack.alpha, cfg.attack.steps, cfg.attack.norm, cfg.attack.random_start)
        self.n_views = 2

    def start_epoch(self, epoch: int) -> None:
        """Per-epoch hook (DynACL anneals its augmentation here)."""

    def make_views(self, x: torch.Tensor) -> Views:
        """x: [B, C, H, W] in [0,1] -> `n_views` independent augmentations."""
        return Views([self.augment(x) for _ in range(self.n_views)])

    def attack(self, model: nn.Module, views: Views) -> Views:
        """Add adversarial views (clean methods return `views` unchanged)."""
        return views

    def loss(self, model: nn.Module, views: Views) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (model in train mode) and named parts for logging."""
        raise NotImplementedError  # abstract: every method defines its loss

    def training_loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The method's full loss on images x (views, attack, loss): what selectors differentiate."""
        views = self.attack(model, self.make_views(x))
        return self.loss(model, views)[0]

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, timer: PhaseTimer) -> dict[str, float]:
        """One update on images x [B, C, H, W] in [0,1]; returns logged values (loss first)."""
        with timer.phase("augment"):
            views = self.make_views(x)
        with timer.phase("attack"):
            views = self.attack(model, views)
        with timer.phase("update"):
            model.train()
            loss, parts = self.loss(model, views)
            check_finite(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return {"loss": float(loss.detach()), **parts}


def check_finite(loss: torch.Tensor) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(f"loss is {value}")
