"""Projection heads of the papers (dual-BN aware)."""
from __future__ import annotations

import torch
from torch import nn

from .dual_bn import make_bn


def mlp_projector(in_dim: int, hidden: int, out_dim: int, layers: int, dual_bn: bool, bn: bool = True,
                  last_bn: bool = True) -> nn.Sequential:
    """`layers` Linear layers; BN+ReLU after all but the last, BN after the last too when `bn` and `last_bn`.

    ACL: mlp_projector(512, 512, 512, 3, dual_bn=True)   (Linear-BN-ReLU x2, Linear-BN)
    SimCLR (no BN on output): bn=False gives Linear-ReLU-...-Linear.
    RoCL: mlp_projector(512, 2048, 128, 2, dual_bn=False, bn=False).
    EMP-SSL: mlp_projector(4096, 4096, 1024, 2, dual_bn=False, last_bn=False)  (Linear-BN-ReLU-Linear).
    The last Linear is the "head" whose gradient coreset selection uses.
    """
    if layers < 1:
        raise ValueError("a projector needs at least one layer")
    mods: list[nn.Module] = []
    dim = in_dim
    for i in range(layers):
        last = i == layers - 1
        out = out_dim if last else hidden
        with_bn = bn and (last_bn or not last)
        mods.append(nn.Linear(dim, out, bias=not with_bn))
        if with_bn:
            mods.append(make_bn(out, dual_bn, dims=1))
        if not last:
            mods.append(nn.ReLU())
        dim = out
    return nn.Sequential(*mods)


class PreFeature(nn.Module):
    """EMP-SSL's `pre_feature`: trunk -> Linear(trunk.feature_dim -> dim) + BN + ReLU, part of the
    encoder (its `dim`-d output is the representation evaluated). x: the trunk's input -> [B, dim]."""

    def __init__(self, trunk: nn.Module, dim: int, dual_bn: bool) -> None:
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(trunk.feature_dim, dim, bias=False)  # type: ignore[arg-type]  # BN follows: a bias would cancel
        self.bn = make_bn(dim, dual_bn, dims=1)
        self.feature_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.fc(self.trunk(x))))
