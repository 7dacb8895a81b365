"""Batched on-device augmentation for contrastive views, in plain torch.

Every op is a handful of whole-batch tensor ops on the training device: the crop and the
flip are one affine grid-sample, the colour jitter is per-image factors broadcast over
the batch. (kornia's per-op pipeline was measured at 29% of an ACL ResNet-18 step and 80%
of a small-CNN step on an H100; see docs/benchmarks.md.) Randomness comes from torch's RNG
of the device, which checkpoints save and restore, so a resumed run draws the same views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# ITU-R 601 luma, as in torchvision/PIL grayscale conversion.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentSpec:
    """SimCLR/ACL view recipe. `ContrastiveAugment`'s strength in [0,1] scales it (1 = this recipe; DynACL anneals it).

    crop_scale: lower/upper area fraction of the random resized crop; crop_ratio: its aspect
    ratio range (EMP-SSL's fixed-scale patches use scale (0.25, 0.25), ratio (1, 1)).
    jitter: (brightness, contrast, saturation, hue), applied with probability jitter_p, in
    that fixed order. Grayscale images get brightness/contrast only and no random grayscale
    (saturation, hue and grayscale are meaningless with one channel). blur_p: Gaussian blur
    with sigma ~ U(blur_sigma) (EMP-SSL: p 0.1, sigma in [0.1, 2]); solarize_p: pixels
    >= 0.5 inverted (EMP-SSL: p 0.1). Both off in the SimCLR/ACL recipe.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


def _uniform(n: int, lo: float, hi: float, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def crop_boxes(n: int, scale: tuple[float, float], ratio: tuple[float, float], flip: bool, device: torch.device,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """n random resized crops (and flips) as affine matrices theta [n, 2, 3] for `resample`.

    Area fraction a ~ U(scale), log aspect ~ U(log ratio) clamped to [log a, -log a] so the
    crop always fits: the area is exact and no rejection loop is needed (torchvision re-draws
    up to 10 times, then falls back to the whole image). generator: a generator on `device`
    (a fixed crop set), or None for torch's RNG of the device (checkpointed with the run).
    """
    area = _uniform(n, *scale, device, generator)
    log_area = torch.log(area)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), device, generator)
    log_ratio = torch.maximum(torch.minimum(log_ratio, -log_area), log_area)
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # crop side / image side
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.ones(n, device=device)
    if flip:
        sign = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    return theta


def resample(x: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """x [B, C, H, W] -> [B, C, size, size]: each image's crop theta [B, 2, 3] (from `crop_boxes`),
    bilinear, one grid-sample (differentiable in x: attacks go through it)."""
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of x [B, C, H, W] with its own sigma [B] (pixels): a separable kernel of
    radius ceil(3 max sigma) (capped by the image), reflect-padded, as grouped convolutions."""
    b, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma.max())), (min(h, w) - 1) // 2))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, 2r+1]: one kernel per image and channel
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] ITU-R 601 luma (as torchvision/PIL grayscale)."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by shift [B] (fraction of a turn) in YIQ space: a per-image 3x3 colour matrix."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    rgb = torch.linalg.inv(yiq)
    c, s = torch.cos(2 * math.pi * shift), torch.sin(2 * math.pi * shift)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = rgb @ rot @ yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", m, x)


class ContrastiveAugment(nn.Module):
    """x: float [B, C, H, W] in [0,1] -> one random view of each image, [B, C, size, size], in [0,1].

    strength s in [0, 1] scales the recipe (DynACL): the crop's lower bound becomes
    1 - (1 - lo) * s (lo = 0.1 gives DynACL's 1 - 0.9 s), every jitter amount and the jitter,
    grayscale, blur and solarize probabilities are multiplied by s. s = 1 is `spec` itself.
    """

    def __init__(self, spec: AugmentSpec, image_size: int, channels: int, strength: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
        self.spec, self.strength = spec, strength
        lo, hi = spec.crop_scale
        # DynACL: the crop's lower bound moves from lo (s=1) towards 1 (s=0).
        lo = 1.0 - (1.0 - lo) * strength
        self.scale = (lo, max(lo, hi))
        self.size, self.channels, self.flip = image_size, channels, spec.flip
        b, c, s, h = (v * strength for v in spec.jitter)
        self.brightness, self.contrast = b, c
        self.saturation, self.hue = (s, h) if channels == 3 else (0.0, 0.0)
        self.jitter_p = spec.jitter_p * strength
        self.grayscale_p = spec.grayscale_p * strength if channels == 3 else 0.0
        self.blur_p, self.solarize_p = spec.blur_p * strength, spec.solarize_p * strength

    def with_strength(self, strength: float) -> ContrastiveAugment:
        """The same recipe (spec, image size, channels) at another strength."""
        return ContrastiveAugment(self.spec, self.size, self.channels, strength)

    def crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Random resized crop and flip (`crop_boxes`), one grid-sample."""
        return resample(x, crop_boxes(x.shape[0], self.scale, self.spec.crop_ratio, self.flip, x.device), self.size)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        on = (torch.rand(n, device=dev) < self.jitter_p).to(x.dtype).view(n, 1, 1, 1)

        def factor(amount: float) -> torch.Tensor:  # 1 where jitter is off for this image
            return 1 + on * (_uniform(n, -amount, amount, dev).view(n, 1, 1, 1))

        if self.brightness > 0:
            x = (x * factor(self.brightness)).clamp(0, 1)
        if self.contrast > 0:
            mean = (to_gray(x) if self.channels == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * factor(self.contrast) + mean).clamp(0, 1)
        if self.saturation > 0:
            g = to_gray(x)
            x = ((x - g) * factor(self.saturation) + g).clamp(0, 1)
        if self.hue > 0:
            shift = on.view(n) * _uniform(n, -self.hue, self.hue, dev)
            x = _hue_rotate(x, shift).clamp(0, 1)
        if self.grayscale_p > 0:
            gray = (torch.rand(n, device=dev) < self.grayscale_p).view(n, 1, 1, 1)
            x = torch.where(gray, to_gray(x).expand_as(x), x)
        return x

    def blur_and_solarize(self, x: torch.Tensor) -> torch.Tensor:
        """EMP-SSL's extra ops: Gaussian blur with probability blur_p, then solarize with solarize_p."""
        n, dev = x.shape[0], x.device
        if self.blur_p > 0:
            on = torch.rand(n, device=dev) < self.blur_p
            sigma = _uniform(n, *self.spec.blur_sigma, dev)
            if bool(on.any()):
                x = torch.where(on.view(n, 1, 1, 1), gaussian_blur(x, sigma), x)
        if self.solarize_p > 0:
            on = (torch.rand(n, device=dev) < self.solarize_p).view(n, 1, 1, 1)
            x = torch.where(on & (x >= 0.5), 1 - x, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur_and_solarize(self.colour(self.crop_and_flip(x))).clamp(0, 1)
