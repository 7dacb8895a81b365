"""SimCLR (Chen et al. 2020): clean contrastive learning; the non-robust baseline."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import nt_xent
from ..models import bn_branch
from .base import ContrastiveSettings, Method, Views


class SimCLR(Method):
    """Loss: NT-Xent(z(t(x)), z(t'(x))), temperature tau, on the `normal` BN branch."""

    name = "simclr"
    Settings = ContrastiveSettings
    trained_branches = ("normal",)
    supports_groups = True

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        with bn_branch(model, "normal"):
            z = model(torch.cat(views.natural))
        return nt_xent(z, self.n_views, self.settings.tau, weights, groups=views.groups), {}
