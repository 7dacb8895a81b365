"""The standard supervised CIFAR augmentation, batched: random crop from a zero-padded image,
then a random horizontal flip (torchvision's RandomCrop(size, padding) + RandomHorizontalFlip).

Used by full finetuning (AFF, LP-AFT), as in the finetuning scripts of ACL and DynACL.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["random_crop_flip"]


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: zero-pad by `padding` pixels on every side, take a random crop of the original
    size, and flip it horizontally with probability 0.5.

    x: [B, C, H, W] (any float range; pixels in [0, 1] stay in [0, 1]). Returns a new tensor
    of the same shape, device and dtype. The offsets and flips are drawn on the CPU from
    `generator` (a CPU generator, or torch's default one), so a seeded call repeats on any
    device. padding=0 gives flips only.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
