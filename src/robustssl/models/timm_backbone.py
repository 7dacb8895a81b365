"""Any timm model as a backbone (`model.arch=timm model.timm_name=NAME`), when timm imports.

timm is optional: it is not a dependency of robustssl (it pulls torchvision, which must match
the installed torch). The model is built without pretrained weights, with its classifier
removed (`num_classes=0`: its forward gives the pooled features) and `in_chans` set to the
data's channels; with `model.dual_bn` every BatchNorm it has becomes a `DualBatchNorm`.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from .dual_bn import convert_dual_bn


def timm_unavailable() -> str | None:
    """None when timm imports here, else why not (one line)."""
    try:
        importlib.import_module("timm")
    except Exception as e:  # ImportError, or torchvision failing inside timm's import (RuntimeError, ...)
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


class TimmBackbone(nn.Module):
    """timm model `name` (no pretrained weights, no classifier); forward maps [B, C, H, W] (already
    normalized) to [B, num_features]."""

    def __init__(self, name: str, in_channels: int = 3, dual_bn: bool = False) -> None:
        super().__init__()
        timm: Any = importlib.import_module("timm")
        self.net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        if dual_bn:
            convert_dual_bn(self.net)
        self.feature_dim = int(self.net.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out.flatten(1)
