"""Multi-crop evaluation: EMP-SSL's "multi-patch embedding aggregation" as a classifier.

The classifier of the `slf-mc` and `alf-mc` protocols maps one image to logits through a
FIXED set of n crops:

    x [B, C, H, W] in [0, 1]
      -> n crops of every image (`crop_views`: one grid-sample, crop geometry + flip only)
      -> the frozen encoder on all n*B crops at once (eval mode, fp32, the evaluation branch)
      -> the mean over the n crops of each image's features   [B, feature_dim]
      -> the linear head                                      [B, n_classes]

It is one `nn.Module` from the image to the logits, so every attack of the evaluation
(PGD-20, FGSM, the eps curve, the large-eps check, AutoAttack) perturbs the IMAGE with one
delta and the gradient flows back through all n crops to it: the threat model is the
classifier's input, the image, as for SLF. No attack ever sees, or perturbs, a crop.

The crop set (`CropSet`) is drawn once from a seeded generator (`eval.mc_seed`) with
`data.augment.crop_boxes` (area in `eval.mc_crop_scale`, aspect ratio in
`eval.mc_crop_ratio`, a flip with p 0.5 when `eval.mc_flip`) and is the same for every image
and every call. It holds geometry only, no colour op: the classifier is then a fixed,
deterministic function of the image, which is what PGD and AutoAttack must attack (a
randomized classifier would need EOT and confuse the sanity checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import EvalConfig
from ..data.augment import crop_boxes, resample
from ..data.dataset import ImageDataset
from ..models.encoder import SSLModel
from .classifier import LinearEvalModel, _fp32
from .linear import train_alf, train_slf
from .threat import LP_NORMS

THREAT_MODEL = "one {norm} delta on the image, then the fixed crops (never a delta per crop)"


@dataclass(frozen=True, eq=False)
class CropSet:
    """A fixed set of n crops: theta float32 [n, 2, 3] (CPU), affine crop + flip matrices for `resample`.

    Drawn once by `draw` from a torch.Generator seeded with `seed`; the other fields record how.
    """

    theta: torch.Tensor
    seed: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    size: int | None = None  # side of the crops in pixels (None: the image's)

    @classmethod
    def draw(cls, n: int, scale: tuple[float, float], ratio: tuple[float, float], flip: bool, seed: int,
             size: int | None = None) -> CropSet:
        """n crop geometries (area fraction in `scale`, aspect ratio in `ratio`, flipped with p 0.5
        when `flip`) drawn with `crop_boxes` from a CPU generator seeded with `seed`: the same
        arguments give the same crops on every machine and device."""
        if n < 1:
            raise ValueError(f"a crop set needs at least 1 crop, got {n}")
        g = torch.Generator().manual_seed(seed)
        theta = crop_boxes(n, scale, ratio, flip, torch.device("cpu"), generator=g)
        return cls(theta, seed, (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1])), flip, size)

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> CropSet:
        """The crop set of `eval.mc_crops`, `eval.mc_crop_scale`, `eval.mc_crop_ratio`, `eval.mc_flip`, `eval.mc_seed`."""
        scale = (cfg.mc_crop_scale[0], cfg.mc_crop_scale[1])
        ratio = (cfg.mc_crop_ratio[0], cfg.mc_crop_ratio[1])
        return cls.draw(cfg.mc_crops, scale, ratio, cfg.mc_flip, cfg.mc_seed, cfg.mc_crop_size)

    @property
    def n(self) -> int:
        return int(self.theta.shape[0])

    def record(self, norm: str = "linf") -> dict[str, Any]:
        """The report's description of the crop set (its settings, not the matrices); `norm`: the
        evaluation's l_p norm, named in the threat model."""
        return {
            "crops": self.n,
            "seed": self.seed,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip": self.flip,
            "size": self.size,
            "ops": "crop geometry and flip only (no colour ops), drawn once: the same crops for every image and call",
            "aggregation": "mean of the encoder features over the crops",
            "threat_model": THREAT_MODEL.format(norm=LP_NORMS[norm][0]),
        }


def crop_views(x: torch.Tensor, theta: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Every crop of every image: x [B, C, S, S] in [0, 1], theta [n, 2, 3] -> [n*B, C, s, s] in [0, 1].

    Crop-major: row k*B + b is crop k of image b. One bilinear grid-sample (`resample`),
    differentiable in x, each crop resized to `size` pixels (None: the image's S, as EMP-SSL's
    crops; a model trained on smaller crops, augment.crop_size, is evaluated on that size). Square images only.
    """
    b = x.shape[0]
    if x.shape[-2] != x.shape[-1]:
        raise ValueError(f"multi-crop evaluation needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    n = theta.shape[0]
    thetas = theta.to(device=x.device, dtype=x.dtype).repeat_interleave(b, dim=0)  # [n*B, 2, 3], crop-major
    return resample(x.repeat(n, 1, 1, 1), thetas, size or x.shape[-1])


class MultiCropEvalModel(LinearEvalModel):
    """Frozen encoder + linear head on the mean of the encoder's features over a fixed crop set.

    forward(x): x float [B, C, H, W] in [0, 1] (H = W) -> logits [B, n_classes], fp32.
    features(x): the same input -> the mean over the n crops of the encoder's features,
    [B, feature_dim], fp32.

    Everything else is `LinearEvalModel`'s: the encoder frozen in place, always in eval mode
    and on one BN branch, autocast off, an optional standardization folded into the head.
    The n*B crops of a batch go through the encoder in one call, so memory and time grow n
    times over SLF's; lower `eval.batch_size` when the encoder's activations do not fit.
    The crops are a non-persistent buffer (they follow `.to(device)`).
    """

    crop_theta: torch.Tensor

    def __init__(self, encoder: SSLModel, n_classes: int, crops: CropSet, branch: str | None = None) -> None:
        super().__init__(encoder, n_classes, branch)
        self.crops = crops
        self.register_buffer("crop_theta", crops.theta.clone(), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> [B, feature_dim] fp32: the crops' encoder features, averaged per image."""
        with _fp32(x):
            views = crop_views(x.float(), self.crop_theta, self.crops.size)
        f = super().features(views)  # [n*B, feature_dim], crop-major
        return f.view(self.crops.n, x.shape[0], -1).mean(0)


def multicrop_classifier(encoder: SSLModel, n_classes: int, branch: str | None, cfg: EvalConfig) -> MultiCropEvalModel:
    """The classifier of slf-mc / alf-mc: a `MultiCropEvalModel` on cfg's crop set (eval.mc_*)."""
    return MultiCropEvalModel(encoder, n_classes, CropSet.from_config(cfg), branch)


def _crops_of(protocol: str, model: LinearEvalModel, cfg: EvalConfig) -> dict[str, Any]:
    """The crop set's record of a multi-crop protocol's classifier (TypeError for any other classifier)."""
    if not isinstance(model, MultiCropEvalModel):
        raise TypeError(f"protocol {protocol} trains a MultiCropEvalModel, got {type(model).__name__}")
    return model.crops.record(cfg.norm)


def train_slf_mc(model: LinearEvalModel, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """SLF on multi-crop features: `train_slf` on a `MultiCropEvalModel`, so the head is trained on the
    precomputed crop-mean features of the training images. The record adds the crop set ("multicrop")."""
    crops = _crops_of("slf-mc", model, cfg)
    return {**train_slf(model, train, cfg, device), "protocol": "slf-mc", "multicrop": crops}


def train_alf_mc(model: LinearEvalModel, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """ALF on multi-crop features: `train_alf` on a `MultiCropEvalModel`, whose PGD training examples
    perturb the image (one delta) through the crops. The record adds the crop set ("multicrop")."""
    crops = _crops_of("alf-mc", model, cfg)
    return {**train_alf(model, train, cfg, device), "protocol": "alf-mc", "multicrop": crops}
