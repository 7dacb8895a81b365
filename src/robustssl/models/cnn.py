"""A small 5-layer CNN for CPU runs (Fashion-MNIST quickstart, tests, benchmarks)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .dual_bn import make_bn


class SmallCNN(nn.Module):
    """Five 3x3 conv-BN-ReLU layers (two stride-2) then global average pooling.

    forward: [B, C, H, W] (already normalized) -> [B, 4*width] features.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, dual_bn: bool = False) -> None:
        super().__init__()
        plan = [(width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2), (4 * width, 1)]
        convs, bns, cin = [], [], in_channels
        for cout, stride in plan:
            convs.append(nn.Conv2d(cin, cout, 3, stride, 1, bias=False))
            bns.append(make_bn(cout, dual_bn))
            cin = cout
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
