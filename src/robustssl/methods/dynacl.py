"""DynACL (Luo, Wang, Wang, ICLR 2023): ACL with an augmentation that weakens during training.

For epoch e = 1..E of the run (K: `method.dynacl.k`, the length of one strength stage):
  1. strength s(e) = 1 - floor((e - 1) / K) * K / E       (1 for the first K epochs, then lower every K)
  2. two views at strength s: crop lower bound 1 - (1 - lo) * s (lo = 0.1: DynACL's 1 - 0.9 s),
     jitter amounts and the jitter / grayscale probabilities times s
  3. PGD as in ACL (eval mode, `pgd` BN branch) maximizes NT-Xent of the perturbed pair
  4. loss = ((1 - w) * NT-Xent(natural pair, `normal`) + (1 + w) * NT-Xent(adversarial pair, `pgd`)) / 2,
     with w = (2/3) * (1 - s)

s is a pure function of the epoch, set in `start_epoch`, so a resumed run trains each epoch at
the strength of an uninterrupted one.

Momentum encoder (`method.dynacl.momentum` = m > 0, the DynACL code's `resnet18_momentum`, m = 0.99):
the method owns an EMA copy of the model (encoder + projector, `parts["ema"]`). Every forward of
the pair of views (the attack's and the loss's) is swapped: view 1 through the online model, view
2 through the EMA copy (same BN branch and mode); gradients reach the online model only. In every
update, after the backward and before the optimizer step, theta_ema <- m theta_ema + (1 - m)
theta_online (parameters; the copy's BN statistics come from its own train-mode forwards). The
export releases the EMA encoder, which is what the DynACL code saves and evaluates. m = 0: no copy,
the RCS code's DynACL.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..attacks import PGDConfig
from ..data.augment import ContrastiveAugment
from ..errors import ConfigError
from ..settings import positive, unit_interval
from .acl import ACL
from .base import ContrastiveSettings, Views
from .ema import SwappedPair, ema_copy, ema_update_

if TYPE_CHECKING:
    from ..config import RunConfig

WEIGHT_SCALE = 2.0 / 3.0  # w = WEIGHT_SCALE * (1 - s)


def strength(epoch: int, epochs: int, k: int) -> float:
    """s for the 0-based `epoch` of a run of `epochs` epochs: 1 - floor(epoch / k) * k / epochs,
    i.e. 1 - floor((e - 1) / K) * K / E for the 1-based epoch e = epoch + 1. In (0, 1]."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside the run's epochs 0..{epochs - 1}")
    return 1.0 - (epoch // k) * k / epochs


def adversarial_weight(s: float) -> float:
    """w = (2/3)(1 - s): the share moved from the natural to the adversarial loss."""
    return WEIGHT_SCALE * (1.0 - s)


@dataclass
class DynACLSettings(ContrastiveSettings):
    k: int = positive(50)  # epochs per strength stage (K); 50 of 1000 on CIFAR-10
    # EMA momentum of the momentum encoder (0: none, the RCS code's DynACL; 0.99: the DynACL code's)
    momentum: float = unit_interval(0.0)


class DynACL(ACL):
    name = "dynacl"
    Settings = DynACLSettings
    epochs: int  # the run's length E: required here (checked in __init__)

    def __init__(self, settings: DynACLSettings, augment: ContrastiveAugment, attack: PGDConfig, *,
                 epochs: int | None = None) -> None:
        super().__init__(settings, augment, attack, epochs=epochs)
        if epochs is None:
            raise ValueError("dynacl anneals its augmentation over the run: pass epochs= (build_method passes train.epochs)")
        self.start_epoch(0)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.method.params.momentum >= 1:
            raise ConfigError(f"method.dynacl.momentum must be < 1 (1 would freeze the EMA encoder), got "
                              f"{cfg.method.params.momentum}; use 0.99 (the DynACL code) or 0 (no momentum encoder)")

    # --- the momentum encoder (momentum > 0) ------------------------------------------------
    def build_parts(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"ema": ema_copy(model)} if self.settings.momentum > 0 else {}

    def network(self, model: nn.Module) -> nn.Module:
        """The model, or with a momentum encoder the swapped pair (view 1 online, view 2 EMA)."""
        if self.settings.momentum == 0:
            return model
        if "ema" not in self.parts:
            raise RuntimeError("dynacl with method.dynacl.momentum > 0 owns an EMA encoder: call attach(model) first")
        return SwappedPair(model, self.parts["ema"])

    def before_step(self) -> None:
        """theta_ema <- m theta_ema + (1 - m) theta_online, with the parameters the loss was computed with."""
        if self.settings.momentum > 0:
            assert self.online is not None
            ema_update_(self.parts["ema"], self.settings.momentum, self.online)

    def export_network(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The EMA encoder when there is one (what the DynACL code releases and evaluates)."""
        if self.settings.momentum > 0:
            return self.parts["ema"], "parts.ema"
        return model, "model"

    def start_epoch(self, epoch: int) -> None:
        """Set s and w for the 0-based `epoch`; the augmentation is rebuilt at strength s."""
        self.strength = strength(epoch, self.epochs, self.settings.k)
        self.w = adversarial_weight(self.strength)
        self.augment = self.augment.with_strength(self.strength)

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = super().loss(model, views, weights)
        return loss, {**parts, "strength": self.strength, "w": self.w}

    def weighted(self, l_nat: torch.Tensor, l_adv: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((1.0 - self.w) * l_nat + (1.0 + self.w) * l_adv)
