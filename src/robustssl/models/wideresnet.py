"""WideResNet (Zagoruyko & Komodakis, 2016), the CIFAR backbone of RobustBench and most adversarial
training papers: WRN-28-10 (PGD-AT, AWP, RCS on ImageNet-32) and WRN-34-10 (TRADES, MART).

WRN-d-k: a 3x3 conv to 16 channels, then three groups of n = (d - 4) / 6 pre-activation
basic blocks of 16k, 32k and 64k channels (strides 1, 2, 2), a final BN + ReLU and global
average pooling: 64k features (640 for k = 10). Every BatchNorm is dual with `dual_bn`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .dual_bn import make_bn


def wrn_blocks(depth: int) -> int:
    """Blocks per group of a WRN of `depth` (6n + 4); ValueError for a depth of another form."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a WideResNet's depth is 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}")
    return (depth - 4) // 6


class WideBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the shortcut.

    When the channels or the stride change, the shortcut is a 1x1 conv of the block's activated
    input (BN-ReLU of x), as in the reference WRN; otherwise it is x itself.
    """

    def __init__(self, cin: int, cout: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        self.bn1 = make_bn(cin, dual_bn)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = make_bn(cout, dual_bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-`depth`-`widen` trunk; forward maps [B, C, H, W] (already normalized) to [B, 64 * widen] features."""

    def __init__(self, in_channels: int = 3, depth: int = 28, widen: int = 10, dual_bn: bool = False) -> None:
        super().__init__()
        n = wrn_blocks(depth)
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = 16
        for width, stride in zip(widths, (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(cin, width, stride if i == 0 else 1, dual_bn))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = make_bn(cin, dual_bn)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
