"""Training methods, one file each. To add one: subclass `Method` in a new file and add it to METHODS.

METHODS is the one list of methods: the config's `method.name` vocabulary, the CLI's choices
and `build_method` all read it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..attacks import PGDConfig
from ..data.augment import AugmentSpec, ContrastiveAugment
from .acl import ACL
from .base import Method, NonFiniteLoss, Views
from .cfamc import CFAMC
from .dynacl import DynACL
from .emp import EMPSSL, RobustEMPSSL
from .pat import PAT
from .rocl import RoCL
from .simclr import SimCLR
from .supervised import PGDAT, TRADES, FastAT

if TYPE_CHECKING:
    from ..config import RunConfig

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, ACL, DynACL, RoCL, EMPSSL, RobustEMPSSL, CFAMC, PGDAT, TRADES, FastAT, PAT)}


def build_method(cfg: RunConfig, image_size: int, channels: int) -> Method:
    """The configured method, assembled from explicit parts: its settings, the view augmentation
    for images with `channels` channels (views of augment.crop_size, or `image_size`, pixels), the training attack and
    the run's number of epochs (`train.epochs`)."""
    if cfg.method.name not in METHODS:
        raise ValueError(f"unknown method {cfg.method.name!r}; valid: {', '.join(METHODS)}")
    a = cfg.augment
    spec = AugmentSpec(crop_scale=(a.crop_scale[0], a.crop_scale[1]), flip=a.flip, jitter=tuple(a.jitter),  # type: ignore[arg-type]
                       jitter_p=a.jitter_p, grayscale_p=a.grayscale_p, crop_ratio=(a.crop_ratio[0], a.crop_ratio[1]),
                       blur_p=a.blur_p, blur_sigma=(a.blur_sigma[0], a.blur_sigma[1]), solarize_p=a.solarize_p)
    attack = PGDConfig(cfg.attack.eps, cfg.attack.alpha, cfg.attack.steps, cfg.attack.norm, cfg.attack.random_start)
    augment = ContrastiveAugment(spec, a.crop_size or image_size, channels)
    return METHODS[cfg.method.name](cfg.method.params, augment, attack,
                                    epochs=cfg.train.epochs)


__all__ = ["ACL", "CFAMC", "EMPSSL", "METHODS", "PAT", "PGDAT", "TRADES", "DynACL", "FastAT", "Method", "NonFiniteLoss", "RoCL", "RobustEMPSSL", "SimCLR", "Views", "build_method"]
