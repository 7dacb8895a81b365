"""Convert an image split to another channel count and size (transfer evaluation).

An encoder pretrained on one dataset sees another one at the input format it was trained on:
channels are converted first (1 -> 3: the gray channel replicated; 3 -> 1: ITU-R 601 luma,
as torchvision/PIL grayscale), then the images are resized with bilinear interpolation
(antialiased when shrinking, like PIL), and rounded back to uint8 once.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from .augment import to_gray
from .dataset import ImageDataset

__all__ = ["convert_dataset", "convert_images", "describe_conversion"]


def convert_images(images: torch.Tensor, channels: int, size: tuple[int, int], batch_size: int = 1024) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, channels, size[0], size[1]] (C and channels in {1, 3}).

    Returns the input itself when nothing changes. Computed in float32 per batch, rounded once.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    if c not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"only 1 <-> 3 channel conversions exist; asked {c} -> {channels}")
    if (c, h, w) == (channels, *size):
        return images
    out = torch.empty((n, channels, *size), dtype=torch.uint8, device=images.device)
    for s in range(0, n, batch_size):
        x = images[s : s + batch_size].float().div_(255.0)
        if c == 3 and channels == 1:
            x = to_gray(x)
        elif c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if (h, w) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[s : s + batch_size] = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_dataset(data: ImageDataset, channels: int, size: tuple[int, int]) -> ImageDataset:
    """The same split (labels, ids, classes, name) with images converted by `convert_images`."""
    return dataclasses.replace(data, images=convert_images(data.images, channels, size))


def describe_conversion(source: tuple[int, int, int], target: tuple[int, int, int]) -> dict[str, str]:
    """What `convert_images` does to target-shaped images [C, H, W] to give source-shaped ones."""
    (sc, sh, sw), (tc, th, tw) = source, target
    if tc == sc:
        channels = "none"
    elif tc == 3:
        channels = "3 -> 1 (ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B)"
    else:
        channels = "1 -> 3 (the gray channel replicated)"
    if (th, tw) == (sh, sw):
        resize = "none"
    else:
        how = "antialiased bilinear" if th > sh or tw > sw else "bilinear"
        resize = f"{th}x{tw} -> {sh}x{sw} ({how}, aspect ratio not kept)" if th * sw != tw * sh else f"{th}x{tw} -> {sh}x{sw} ({how})"
    return {"channels": channels, "resize": resize}
