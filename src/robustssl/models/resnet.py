"""ResNet-18 (basic blocks) and ResNet-50 (bottleneck blocks) with a width multiplier: CIFAR stem
(3x3, stride 1, no max-pool) or ImageNet stem (7x7 stride 2 + max-pool). Every BatchNorm is
dual with `dual_bn`."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .dual_bn import make_bn


def shortcut(cin: int, cout: int, stride: int, dual_bn: bool) -> nn.Module:
    """A residual block's shortcut: identity, or 1x1 conv + BN where the stride or the width changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_bn(cout, dual_bn))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_bn(cout, dual_bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_bn(cout, dual_bn)
        self.shortcut = shortcut(cin, cout, stride, dual_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 (width) -> 3x3 (width, the block's stride, as ResNet v1.5) -> 1x1 (4 x width), plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, 1, 0, bias=False)
        self.bn1 = make_bn(width, dual_bn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = make_bn(width, dual_bn)
        self.conv3 = nn.Conv2d(width, cout, 1, 1, 0, bias=False)
        self.bn3 = make_bn(cout, dual_bn)
        self.shortcut = shortcut(cin, cout, stride, dual_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _stem(in_channels: int, width: int, dual_bn: bool, stem: str) -> nn.Sequential:
    if stem == "cifar":
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), make_bn(width, dual_bn), nn.ReLU())
    if stem == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), make_bn(width, dual_bn), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
    raise ValueError(f"unknown stem {stem!r}; valid: cifar, imagenet")


class ResNet(nn.Module):
    """A ResNet trunk of `blocks` per stage (4 stages of width, 2, 4 and 8 x width; strides 1, 2, 2, 2);
    forward maps [B, C, H, W] (already normalized) to [B, 8 * width * block.expansion] features."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, ...], in_channels: int = 3,
                 width: int = 64, dual_bn: bool = False, stem: str = "cifar") -> None:
        super().__init__()
        self.stem = _stem(in_channels, width, dual_bn, stem)
        layers: list[nn.Module] = []
        cin = width
        for i, (n, stride) in enumerate(zip(blocks, (1, 2, 2, 2))):
            w = width * 2**i
            for j in range(n):
                layers.append(block(cin, w, stride if j == 0 else 1, dual_bn))
                cin = w * block.expansion
        self.layers = nn.Sequential(*layers)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class ResNet18(ResNet):
    """ResNet-18: 2 basic blocks per stage, 8 x width features (512 at width 64)."""

    def __init__(self, in_channels: int = 3, width: int = 64, dual_bn: bool = False, stem: str = "cifar") -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), in_channels, width, dual_bn, stem)


class ResNet50(ResNet):
    """ResNet-50: 3, 4, 6, 3 bottleneck blocks, 32 x width features (2048 at width 64)."""

    def __init__(self, in_channels: int = 3, width: int = 64, dual_bn: bool = False, stem: str = "cifar") -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3), in_channels, width, dual_bn, stem)
