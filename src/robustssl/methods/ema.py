"""Momentum (EMA) copies of a network, for methods that own one (DynACL's momentum encoder).

    ema_copy(model)        a frozen deep copy (parameters and buffers equal, requires_grad False)
    ema_update_(ema, m, online)   theta_ema <- m * theta_ema + (1 - m) * theta_online, parameters only

Buffers (BN running statistics) are not averaged: the copy's own forwards in train mode update
them, as in the DynACL code (MoCo-style `_momentum_update_encoder_k`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters take no gradient (the owner updates them)."""
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update_(ema: nn.Module, momentum: float, online: nn.Module) -> None:
    """In place, for every parameter pair (same architecture, same order): ema = momentum * ema +
    (1 - momentum) * online. momentum in [0, 1); buffers are left alone."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    ours, theirs = list(ema.parameters()), list(online.parameters())
    if len(ours) != len(theirs):
        raise ValueError(f"the EMA copy has {len(ours)} parameters, the online network {len(theirs)}")
    for pe, po in zip(ours, theirs, strict=True):
        pe.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)


class SwappedPair(nn.Module):
    """The two views of a batch, x = cat(view 1, view 2) [2B, ...], through two networks: view 1
    through `online`, view 2 through `ema` -> cat of their outputs [2B, d] (DynACL's `swap=True`
    forward). The EMA copy runs in the online network's mode; a BN branch or mode set on the pair
    (`bn_branch`, `model_mode`) reaches both. Gradients flow through `online` only."""

    def __init__(self, online: nn.Module, ema: nn.Module) -> None:
        super().__init__()
        self.online = online
        self.ema = ema

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % 2:
            raise ValueError(f"the swapped forward takes two views of equal size, got {x.shape[0]} rows")
        self.ema.train(self.online.training)
        first, second = x.chunk(2)
        return torch.cat([self.online(first), self.ema(second)])
