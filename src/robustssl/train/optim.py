"""Optimizers and the learning-rate schedule (warm-up then cosine, over optimizer steps)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017).

    For each adapted parameter: g <- g + wd * w;  r = trust_coef * ||w|| / ||g||, or with `clip`
    (LARC's clip mode, EMP-SSL's optimizer) r = min(r / lr, 1), so the effective step is never
    above lr; g <- r * g;  buf <- momentum * buf + g;  w <- w - lr * buf (with `nesterov`:
    w <- w - lr * (g + momentum * buf)). Parameter groups with `lars=False` skip
    weight decay and the trust ratio: with `optim.lars_exclude_1d` (SimCLR's convention) the
    biases and normalization parameters form that group; the ACL/RCS code adapts every
    parameter (`lars_exclude_1d: false` in their recipes).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust_coef: float = 1e-3,
                 clip: bool = False, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef, lars=True,
                                      clip=clip, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["trust_coef"] * w_norm / g_norm, torch.ones_like(w_norm))
                    if group["clip"]:
                        trust = torch.clamp(trust / group["lr"], max=1.0)
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                p.add_(g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf, alpha=-group["lr"])
        return None


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases-and-norm-parameters): the second group gets no weight decay / adaptation."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = param_groups(model)
    if cfg.name == "lars":
        if not cfg.lars_exclude_1d:  # the ACL/RCS code: adaptation and weight decay on every parameter
            decay, no_decay = decay + no_decay, []
        groups: list[dict[str, Any]] = [{"params": decay}] + ([{"params": no_decay, "lars": False, "weight_decay": 0.0}] if no_decay else [])
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, trust_coef=cfg.trust_coef,
                    clip=cfg.lars_clip, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "sgd":
        sgd_groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(
            sgd_groups,
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid: lars, sgd")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warm-up, then cosine to 0 or constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """One scheduler step per optimizer update: `total_steps` and `steps_per_epoch` count updates
    (batches x the method's updates_per_batch), and `Method.update` steps it after each update."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.schedule))
