"""ResNet-18 with a width multiplier: CIFAR stem (3x3, stride 1, no max-pool) or ImageNet stem (7x7)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .dual_bn import make_bn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_bn(cout, dual_bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_bn(cout, dual_bn)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), make_bn(cout, dual_bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 trunk; forward maps [B, C, H, W] (already normalized) to [B, 8*width] features."""

    def __init__(self, in_channels: int = 3, width: int = 64, dual_bn: bool = False, stem: str = "cifar") -> None:
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), make_bn(width, dual_bn), nn.ReLU())
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), make_bn(width, dual_bn), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
        else:
            raise ValueError(f"unknown stem {stem!r}; valid: cifar, imagenet")
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [BasicBlock(cin, cout, stride, dual_bn), BasicBlock(cout, cout, 1, dual_bn)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
