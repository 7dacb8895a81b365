"""Batched on-device augmentation (kornia) for contrastive views.

All ops run on the whole batch on the training device; no per-image Python transforms.
Randomness comes from torch's global RNG of that device, which checkpoints save and
restore, so a resumed run draws the same views.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn


@dataclass(frozen=True)
class AugmentSpec:
    """SimCLR/ACL view recipe. strength in [0,1] scales it (1 = the full recipe; DynACL anneals it).

    crop_scale: lower/upper area fraction of RandomResizedCrop. jitter: (brightness,
    contrast, saturation, hue). Grayscale images get brightness/contrast jitter only and no
    random grayscale (saturation, hue and grayscale are meaningless with one channel).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2


class ContrastiveAugment(nn.Module):
    """x: float [B, C, H, W] in [0,1] -> one random view of each image, same shape, in [0,1]."""

    def __init__(self, spec: AugmentSpec, image_size: int, channels: int, strength: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
        lo, hi = spec.crop_scale
        # DynACL: the crop's lower bound moves from lo (s=1) towards 1 (s=0).
        lo = 1.0 - (1.0 - lo) * strength
        b, c, s, h = (v * strength for v in spec.jitter)
        ops: list[nn.Module] = [K.RandomResizedCrop((image_size, image_size), scale=(lo, max(lo, hi)))]
        if spec.flip:
            ops.append(K.RandomHorizontalFlip())
        jitter_p = spec.jitter_p * strength
        if channels == 3:
            if jitter_p > 0:
                ops.append(K.ColorJitter(b, c, s, h, p=jitter_p))
            if spec.grayscale_p * strength > 0:
                ops.append(K.RandomGrayscale(p=spec.grayscale_p * strength))
        elif jitter_p > 0 and (b > 0 or c > 0):
            ops.append(K.ColorJitter(b, c, 0.0, 0.0, p=jitter_p))
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x).clamp(0, 1)
