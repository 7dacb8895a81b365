"""Representational divergence (RD), RCS's label-free robustness signal on the validation split.

RD(x) = KL( softmax(z(x)) || softmax(z(x_adv)) ), z the projector output, x_adv the
"virtual adversarial" input found by PGD maximizing RD itself (no labels needed).
The RCS code min-max normalizes each row of z and feeds that to KL, which is not a
distribution; robustssl uses the softmax (documented in docs/methods.md).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..attacks import PGDConfig, pgd
from ..models import bn_branch
from .head import HeadView


def rd_from_projections(z_nat: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(z_nat) || softmax(z_adv)); z_*: [B, d]."""
    return F.kl_div(F.log_softmax(z_adv, dim=1), F.log_softmax(z_nat, dim=1), log_target=True, reduction="batchmean")


def virtual_adversarial(model: torch.nn.Module, x: torch.Tensor, cfg: PGDConfig, branch: str | None) -> torch.Tensor:
    """x_adv maximizing RD(x, x_adv) within the eps-ball (model in eval mode, given BN branch)."""
    with torch.no_grad():
        z_nat = model(x)
    return pgd(model, x, lambda xa: rd_from_projections(z_nat, model(xa)) * x.shape[0], cfg, mode="eval", branch=branch)


class ValidationRD:
    """RD on the validation split as a function of the head's parameters only.

    The head inputs of the natural and virtual-adversarial validation images are computed
    once (at W0); `gradient(w)` then costs one head forward/backward (the refresh in the
    greedy loop).
    """

    def __init__(self, model: torch.nn.Module, view: HeadView, x_val: torch.Tensor, cfg: PGDConfig, branch: str | None) -> None:
        self.view = view
        x_adv = virtual_adversarial(model, x_val, cfg, branch)
        with torch.no_grad(), bn_branch(model, branch), view.capture() as seen:
            model(x_val)
            model(x_adv)
        (self.h_nat, _), (self.h_adv, _) = seen

    def value(self, w: torch.Tensor) -> torch.Tensor:
        return rd_from_projections(self.view.project(self.h_nat, w), self.view.project(self.h_adv, w))

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        """d RD(V; w) / d w, [dim]."""
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.value(w), w)
        return g.detach()
