"""TRADES's inner maximization: the one PGD engine run on the TRADES KL loss."""
from __future__ import annotations

import torch
from torch import nn

from ..losses.trades import trades_attack_loss, trades_start
from ..models.dual_bn import bn_branch, model_mode
from .pgd import PGDConfig, pgd


def trades_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    cfg: PGDConfig,
    *,
    branch: str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_adv maximizing KL( softmax f(x) || softmax f(x_adv) ) in the eps-ball around x.

    model: images in [0, 1] -> logits. x: [B, C, H, W] in [0, 1]. As in TRADES, the model is
    in eval mode for the whole attack (BN running statistics; the caller's mode is restored
    after): f(x) is computed once in eval mode and held fixed, PGD (`cfg`: eps, alpha,
    steps; its random_start is unused) starts from x + 0.001 * N(0, 1) drawn from
    `generator`. branch: the dual-BN branch for the attack (None: the model's current one).
    Returns x_adv, detached, in [0, 1]. Parameter gradients are never touched.
    """
    x = x.detach()
    with torch.no_grad(), model_mode(model, "eval"), bn_branch(model, branch):
        logits_nat = model(x)
    start = trades_start(x, generator)
    return pgd(model, x, trades_attack_loss(model, logits_nat), cfg, mode="eval", branch=branch, delta_init=start)
