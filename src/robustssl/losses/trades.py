"""TRADES (Zhang et al. 2019), written once: adversarial full finetuning (AFF), DynACL++'s
LP-AFT and supervised TRADES training all use these functions.

    loss(x, y) = CE(f(x), y) + beta * KL( softmax f(x) || softmax f(x_adv) )

f maps images in [0, 1] to logits [B, K]. x_adv maximizes the KL term in the eps-ball
around x: that inner maximization is the one PGD engine run on `trades_attack_loss`
(see `robustssl.attacks.trades_adversarial`), started from x + 0.001 * N(0, 1) as in
TRADES (`trades_start`): at x_adv = x the KL term is at its minimum, so its gradient is
zero and a zero start would never move.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

TRADES_START_STD = 1e-3  # std of TRADES's Gaussian start around x
REDUCTIONS = ("none", "sum", "mean")

__all__ = ["REDUCTIONS", "TRADES_START_STD", "trades_attack_loss", "trades_kl", "trades_loss", "trades_start"]


def trades_kl(logits_adv: torch.Tensor, logits_nat: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL( softmax(logits_nat) || softmax(logits_adv) ) of each example, summed over classes.

    logits_adv, logits_nat: [B, K]. reduction: "none" -> [B]; "sum" -> scalar (what PGD
    maximizes); "mean" -> scalar, the sum over classes averaged over the batch (TRADES's
    KLDivLoss(sum) / B). Computed in fp32. Gradients flow into both arguments (TRADES does
    not detach the natural prediction in its training loss); detach `logits_nat` for a
    fixed target.
    """
    if logits_adv.shape != logits_nat.shape or logits_adv.dim() != 2:
        raise ValueError(f"logits must both be [B, K], got {tuple(logits_adv.shape)} and {tuple(logits_nat.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    log_p_nat = F.log_softmax(logits_nat.float(), dim=1)
    log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
    per_example = (log_p_nat.exp() * (log_p_nat - log_p_adv)).sum(dim=1)
    if reduction == "none":
        return per_example
    return per_example.sum() if reduction == "sum" else per_example.mean()


def trades_loss(
    logits_nat: torch.Tensor,
    logits_adv: torch.Tensor,
    y: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The TRADES training loss and its parts.

    logits_nat: f(x) [B, K] and logits_adv: f(x_adv) [B, K], both from the model in train
    mode (the caller's choice of BN branch); y: int64 [B] labels. Returns
    (mean_i w_i * (CE_i + beta * KL_i), {"ce": mean CE, "kl": mean KL}); without weights
    w_i = 1, which is TRADES's CE(mean) + beta * KL(sum) / B exactly.
    weights: float [B] per-example weights (a weighted coreset) or None.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    ce = F.cross_entropy(logits_nat.float(), y, reduction="none")
    kl = trades_kl(logits_adv, logits_nat, reduction="none")
    per_example = ce + beta * kl
    if weights is None:
        loss = per_example.mean()
    else:
        if weights.shape != ce.shape:
            raise ValueError(f"weights must be [B]={ce.shape[0]} per-example values, got {tuple(weights.shape)}")
        loss = (per_example * weights.to(per_example.dtype)).mean()
    return loss, {"ce": float(ce.detach().mean()), "kl": float(kl.detach().mean())}


def trades_attack_loss(model: nn.Module, logits_nat: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss TRADES's attack maximizes, for the one PGD engine: x_adv -> summed
    KL( softmax(logits_nat) || softmax(model(x_adv)) ).

    logits_nat: [B, K], the model's prediction on the clean x, computed by the caller in
    the mode and on the branch the attack runs in (eval mode in TRADES); it is detached
    and held fixed while x_adv moves. Summed over the batch, so per-example gradients do
    not shrink with the batch size (the sign step is the same as with the mean).
    """
    target = logits_nat.detach()
    return lambda x_adv: trades_kl(model(x_adv), target, reduction="sum")


def trades_start(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES's starting perturbation: 0.001 * N(0, 1), shaped like x [B, C, H, W] (pass it as pgd's delta_init)."""
    return TRADES_START_STD * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
