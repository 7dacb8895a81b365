"""RoCL (Kim, Tack, Hwang, NeurIPS 2020): adversarial self-supervised contrastive learning, one BN.

  1. two views t(x), t'(x)
  2. instance-wise attack, eval mode: t(x)_adv = PGD from t(x) + U(-eps, eps) maximizing
     NT-Xent(t(x)_adv, t'(x)), the batch as negatives; only t(x) is perturbed
  3. loss = NT-Xent over [t(x); t'(x); t(x)_adv], each anchor's two other views its positives
            + (1 / lambda) * NT-Xent(t(x)_adv, t'(x))
Projector: Linear-ReLU-Linear without BN (512-2048-128 on ResNet-18: model.proj_hidden=2048,
model.proj_out=128, model.proj_layers=2, model.proj_bn=false). tau = 0.5, lambda = 256.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..attacks import PGDConfig, pgd
from ..errors import ConfigError
from ..losses import nt_xent
from ..models import bn_branch
from ..settings import positive
from .base import ContrastiveSettings, Method, Views

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class RoCLSettings(ContrastiveSettings):
    lam: float = positive(256.0)  # the regularizer NT-Xent(t(x)_adv, t'(x)) is weighted 1 / lam


class RoCL(Method):
    name = "rocl"
    Settings = RoCLSettings
    needs_dual_bn = False
    trained_branches = ("normal",)
    supports_groups = True

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.attack.steps == 0:
            raise ConfigError("method rocl needs attack.steps >= 1 (it trains on instance-wise PGD views; "
                              "the published attack is attack.steps=7 attack.alpha=0.007 attack.eps=0.0314)")
        if cfg.model.proj_bn:
            raise ConfigError("method rocl uses a projector without BatchNorm (Linear-ReLU-Linear); set model.proj_bn=false "
                              "(the published one: model.proj_hidden=2048 model.proj_out=128 model.proj_layers=2)")

    def attack(self, model: nn.Module, views: Views, attack: PGDConfig) -> Views:
        """t(x) [B, C, H, W] -> t(x)_adv, maximizing NT-Xent([t(x)_adv; t'(x)]) in eval mode on the
        `normal` branch (dual-BN models); t'(x) is the fixed positive. Mode and branch are restored."""
        x, positive_view = views.natural
        tau, g = self.settings.tau, views.groups
        x_adv = pgd(model, x, lambda xa: nt_xent(model(torch.cat([xa, positive_view])), 2, tau, groups=g), attack,
                    mode="eval", branch="normal")
        return Views(views.natural, [x_adv], g)

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """One forward of the 3B rows [t(x); t'(x); t(x)_adv] on the `normal` branch, in the model's mode."""
        tau, b = self.settings.tau, views.natural[0].shape[0]
        with bn_branch(model, "normal"):
            z = model(torch.cat([*views.natural, *views.adversarial]))
        l_con = nt_xent(z, 3, tau, weights, positives="sum", groups=views.groups)
        l_reg = nt_xent(torch.cat([z[2 * b :], z[b : 2 * b]]), 2, tau, weights, groups=views.groups)
        loss = l_con + l_reg / self.settings.lam
        return loss, {"loss_con": float(l_con.detach()), "loss_reg": float(l_reg.detach())}
