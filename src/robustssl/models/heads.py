"""Projection heads of the papers (dual-BN aware)."""
from __future__ import annotations

from torch import nn

from .dual_bn import make_bn


def mlp_projector(in_dim: int, hidden: int, out_dim: int, layers: int, dual_bn: bool, bn: bool = True) -> nn.Sequential:
    """`layers` Linear layers; BN+ReLU after all but the last, BN after the last too when `bn`.

    ACL: mlp_projector(512, 512, 512, 3, dual_bn=True)   (Linear-BN-ReLU x2, Linear-BN)
    SimCLR (no BN on output): bn=False gives Linear-ReLU-...-Linear.
    RoCL: mlp_projector(512, 2048, 128, 2, dual_bn=False, bn=False).
    The last Linear is the "head" whose gradient coreset selection uses.
    """
    if layers < 1:
        raise ValueError("a projector needs at least one layer")
    mods: list[nn.Module] = []
    dim = in_dim
    for i in range(layers):
        last = i == layers - 1
        out = out_dim if last else hidden
        mods.append(nn.Linear(dim, out, bias=not bn))
        if bn:
            mods.append(make_bn(out, dual_bn, dims=1))
        if not last:
            mods.append(nn.ReLU())
        dim = out
    return nn.Sequential(*mods)
