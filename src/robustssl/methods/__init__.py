"""Training methods, one file each. To add one: subclass `Method` and register it here."""
from __future__ import annotations

from ..config import RunConfig
from .acl import ACL
from .base import Method, NonFiniteLoss, Views
from .simclr import SimCLR

METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, ACL)}


def build_method(cfg: RunConfig, image_size: int, channels: int) -> Method:
    if cfg.method.name not in METHODS:
        raise ValueError(f"unknown method {cfg.method.name!r}; valid: {', '.join(METHODS)}")
    return METHODS[cfg.method.name](cfg, image_size, channels)


__all__ = ["ACL", "METHODS", "Method", "NonFiniteLoss", "SimCLR", "Views", "build_method"]
