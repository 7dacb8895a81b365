"""ACL (Jiang et al. 2020), dual stream: adversarial contrastive learning with dual BatchNorm.

  1. two views t(x), t'(x)
  2. PGD (eval mode, `pgd` BN branch) maximizes NT-Xent of the perturbed pair
  3. loss = 0.5 * NT-Xent(natural pair, `normal` branch) + 0.5 * NT-Xent(adversarial pair, `pgd` branch)
"""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import pgd
from ..losses import nt_xent
from ..models import bn_branch
from .base import Method, Views


class ACL(Method):
    name = "acl"
    needs_dual_bn = True

    def attack(self, model: nn.Module, views: Views) -> Views:
        x = torch.cat(views.natural)
        tau = self.cfg.method.tau
        x_adv = pgd(model, x, lambda xa: nt_xent(model(xa), self.n_views, tau), self.attack_cfg, mode="eval", branch="pgd")
        return Views(views.natural, list(x_adv.chunk(self.n_views)))

    def loss(self, model: nn.Module, views: Views) -> tuple[torch.Tensor, dict[str, float]]:
        tau = self.cfg.method.tau
        with bn_branch(model, "normal"):
            l_nat = nt_xent(model(torch.cat(views.natural)), self.n_views, tau)
        with bn_branch(model, "pgd"):
            l_adv = nt_xent(model(torch.cat(views.adversarial)), self.n_views, tau)
        return self.weighted(l_nat, l_adv), {"loss_nat": float(l_nat.detach()), "loss_adv": float(l_adv.detach())}

    def weighted(self, l_nat: torch.Tensor, l_adv: torch.Tensor) -> torch.Tensor:
        """ACL weighs both streams equally (DynACL overrides this)."""
        return 0.5 * (l_nat + l_adv)
