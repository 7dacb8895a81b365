"""Losses that are computed in fp32 even when the caller runs under autocast (train.bf16).

Casting the embeddings with `.float()` is not enough under autocast: the matmuls after it
(NT-Xent's similarities, the coding rate's Gram matrix) would be cast back to bf16. These
losses run with autocast switched off on their input's device, so only the network before
them runs in bf16.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


def autocast_off(fn: Callable[Concatenate[torch.Tensor, P], R]) -> Callable[Concatenate[torch.Tensor, P], R]:
    """Run `fn(z, ...)` with autocast disabled on z's device (z: the loss's first argument, a tensor)."""

    @functools.wraps(fn)
    def wrapper(z: torch.Tensor, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with torch.autocast(z.device.type, enabled=False):
            return fn(z, *args, **kwargs)

    return wrapper
