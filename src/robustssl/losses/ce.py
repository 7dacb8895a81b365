"""The loss PGD maximizes against a classifier (evaluation attacks, PGD-AT, supervised RCS)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def summed_ce(model: nn.Module, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x_adv -> the summed (not averaged) cross-entropy of model(x_adv) on labels y (int64 [B]).
    The sign step is the same as with the mean, and per-example gradients do not shrink with the batch."""
    return lambda xa: F.cross_entropy(model(xa), y, reduction="sum")
