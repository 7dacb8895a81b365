"""ACL (Jiang et al. 2020), dual stream: adversarial contrastive learning with dual BatchNorm.

  1. two views t(x), t'(x)
  2. PGD (eval mode, `pgd` BN branch) maximizes NT-Xent of the perturbed pair
  3. loss = 0.5 * NT-Xent(natural pair, `normal` branch) + 0.5 * NT-Xent(adversarial pair, `pgd` branch)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..attacks import PGDConfig, pgd
from ..errors import ConfigError
from ..losses import nt_xent
from ..models import bn_branch
from .base import ContrastiveSettings, Method, Views

if TYPE_CHECKING:
    from ..config import RunConfig


class ACL(Method):
    name = "acl"
    Settings = ContrastiveSettings
    needs_dual_bn = True
    trained_branches = ("normal", "pgd")
    supports_groups = True

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.attack.steps == 0:
            raise ConfigError(f"method {cls.name} needs attack.steps >= 1 (it trains on PGD views); "
                              "use method.name=simclr for clean training")

    def network(self, model: nn.Module) -> nn.Module:
        """The network the views go through, cat(views) [nB, ...] -> [nB, d]: the model (DynACL with
        a momentum encoder: its swapped pair)."""
        return model

    def attack(self, model: nn.Module, views: Views, attack: PGDConfig) -> Views:
        x = torch.cat(views.natural)
        tau = self.settings.tau
        g = views.groups
        net = self.network(model)
        x_adv = pgd(net, x, lambda xa: nt_xent(net(xa), self.n_views, tau, groups=g), attack, mode="eval", branch="pgd")
        return Views(views.natural, list(x_adv.chunk(self.n_views)), g)

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        tau = self.settings.tau
        net = self.network(model)
        with bn_branch(net, "normal"):
            l_nat = nt_xent(net(torch.cat(views.natural)), self.n_views, tau, weights, groups=views.groups)
        with bn_branch(net, "pgd"):
            l_adv = nt_xent(net(torch.cat(views.adversarial)), self.n_views, tau, weights, groups=views.groups)
        return self.weighted(l_nat, l_adv), {"loss_nat": float(l_nat.detach()), "loss_adv": float(l_adv.detach())}

    def weighted(self, l_nat: torch.Tensor, l_adv: torch.Tensor) -> torch.Tensor:
        """ACL weighs both streams equally (DynACL overrides this)."""
        return 0.5 * (l_nat + l_adv)
