"""EMP-SSL (Tong et al. 2023) and robust EMP-SSL (Ghofrani & Jamshidi): multi-crop SSL with the
total coding rate, one BN stream.

  1. n crops of every image (EMP-SSL's augmentation: crop, flip, jitter, grayscale, blur, solarize)
  2. robust EMP-SSL: PGD (l_inf, 8/255, 5 steps) maximizes the EMP loss of the crops; every crop is
     its own input row, so it gets its own delta; the attack differentiates w.r.t. delta only
     (the public code's attack backward accumulated parameter gradients into the update)
  3. loss = inv_weight * L_inv + tcr_weight * L_TCR (200 and 1) on the crops (robust: the attacked crops)
The published network adds `pre_feature` (Linear 512->4096 + BN + ReLU, model.pre_feature=4096)
to the trunk, whose output is the representation evaluated, and the projector
Linear-BN-ReLU-Linear 4096->4096->1024 (model.proj_layers=2, proj_last_bn=false).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..attacks import PGDConfig, pgd
from ..data.augment import ContrastiveAugment
from ..data.batch import Batch
from ..errors import ConfigError
from ..losses import emp_ssl_loss
from ..settings import non_negative, one_of, positive
from ..timer import PhaseTimer
from .base import Method, Views

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class EMPSettings:
    """Settings of the EMP-SSL family (method.<name>.*)."""

    n_crops: int = positive(16)  # crops per image (EMP-SSL: 20; its robust variants: 16)
    tcr_eps: float = positive(0.2)  # eps of the coding rate R(Z)
    inv_weight: float = non_negative(200.0)  # weight of the invariance term
    tcr_weight: float = non_negative(1.0)  # weight of the coding-rate term


@dataclass
class RobustEMPSettings(EMPSettings):
    # BN mode of the training attack's forwards: "train" (batch statistics: the function the update
    # differentiates, as the public code; its forwards also update BN running statistics) or "eval"
    # (running statistics, as ACL's attack). Coreset selection scores candidates in eval mode either way.
    attack_mode: str = one_of("train", ("train", "eval"))


class EMPSSL(Method):
    name = "emp"
    Settings = EMPSettings
    needs_dual_bn = False
    trained_branches = ("normal",)
    supports_groups = True

    def __init__(self, settings: EMPSettings, augment: ContrastiveAugment, attack: PGDConfig, *,
                 epochs: int | None = None) -> None:
        super().__init__(settings, augment, attack, epochs=epochs)
        self.n_views = settings.n_crops

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.model.dual_bn:
            raise ConfigError(f"method {cls.name} trains one BatchNorm stream; set model.dual_bn=false "
                              f"(the published network: see the recipe {cls.name}_cifar10)")

    def make_views(self, batch: Batch) -> Views:
        """batch.images [N, C, H, W] -> n_crops views, each [N, C, size, size], from one batched augmentation call."""
        crops = self.augment(batch.images.repeat(self.n_views, 1, 1, 1))
        return Views(list(crops.chunk(self.n_views)), groups=batch.groups)

    def emp_loss(self, model: nn.Module, crops: torch.Tensor, weights: torch.Tensor | None,
                 groups: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
        """EMP loss of the crops [n_crops * N, C, H, W] (crop-major) under the model's current mode."""
        s = self.settings
        return emp_ssl_loss(model(crops), self.n_views, eps=s.tcr_eps, inv_weight=s.inv_weight, tcr_weight=s.tcr_weight,
                            weights=weights, groups=groups)

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.emp_loss(model, torch.cat(views.adversarial or views.natural), weights, views.groups)


class RobustEMPSSL(EMPSSL):
    name = "robust_emp"
    Settings = RobustEMPSettings

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.attack.steps == 0 or cfg.attack.eps == 0:
            raise ConfigError(f"method {cls.name} trains on PGD crops: it needs attack.steps >= 1 and attack.eps > 0 "
                              "(published: attack.eps=0.0314 attack.steps=5); use method.name=emp for clean training")

    def attack(self, model: nn.Module, views: Views, attack: PGDConfig) -> Views:
        """All crops [n_crops * N, ...] attacked at once, each crop its own delta, maximizing the EMP loss.

        A model in eval mode (coreset selection) is attacked in eval mode; in training (train mode)
        the attack runs in `attack_mode`. Mode restored after."""
        x, g = torch.cat(views.natural), views.groups
        mode = self.settings.attack_mode if model.training else "eval"
        x_adv = pgd(model, x, lambda xa: self.emp_loss(model, xa, None, g)[0], attack, mode=mode)
        return Views(views.natural, list(x_adv.chunk(self.n_views)), g)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: Batch,
             timer: PhaseTimer) -> dict[str, float]:
        model.train()  # the attack's mode follows the model's: training is train mode from the first batch
        return super().step(model, optimizer, scheduler, batch, timer)
