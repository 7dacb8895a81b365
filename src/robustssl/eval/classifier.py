"""The model every evaluation attacks: a frozen SSL encoder followed by a linear head."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.dual_bn import BRANCHES, DualBatchNorm, has_dual_bn
from ..models.encoder import SSLModel


def default_branch(encoder: nn.Module) -> str | None:
    """The BN branch evaluation uses by default: 'pgd' for dual-BN encoders, None (no choice) otherwise."""
    return "pgd" if has_dual_bn(encoder) else None


class LinearEvalModel(nn.Module):
    """Frozen encoder + linear head: logits for images in [0, 1].

    forward(x): x float [B, C, H, W] in [0, 1] -> logits [B, n_classes], fp32.
    features(x): the same input -> encoder features [B, feature_dim], fp32.

    The encoder always runs in eval mode (BatchNorm running statistics), whatever mode
    this module or the encoder was left in, and on one fixed BN branch: `branch`, which
    defaults to "pgd" for dual-BN encoders (methods.md §7) and is None for single-BN ones.
    Autocast is disabled inside, so attacks and accuracies are computed in fp32.

    The encoder's parameters are frozen *in place* (requires_grad=False) and the encoder
    is cast to fp32 in place; pass a copy if the caller keeps training it. Gradients still
    flow to the input, which is what attacks need. Only `head` is trainable.
    """

    def __init__(self, encoder: SSLModel, n_classes: int, branch: str | None = None) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a linear probe needs at least 2 classes, got {n_classes}")
        if branch is None:
            branch = default_branch(encoder)
        elif branch not in BRANCHES:
            raise ValueError(f"unknown BN branch {branch!r}; valid: {', '.join(BRANCHES)}")
        elif not has_dual_bn(encoder):
            raise ValueError(f"branch={branch!r} was asked for, but the encoder has no dual BatchNorm")
        self.encoder = encoder.float()
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.branch = branch
        self.n_classes = n_classes
        self.head = nn.Linear(encoder.feature_dim, n_classes)
        # plain lists (not registered as submodules), used by features() to check mode and branch
        self._encoder_modules: list[nn.Module] = list(encoder.modules())
        self._dual_bns: list[DualBatchNorm] = [m for m in self._encoder_modules if isinstance(m, DualBatchNorm)]

    def train(self, mode: bool = True) -> "LinearEvalModel":
        """Only the head follows `mode`; the encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def reset_head(self, seed: int) -> None:
        """Re-initialise the head from `seed` (PyTorch's default Linear distribution, seeded, so runs repeat)."""
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(self.head.in_features)
        with torch.no_grad():
            w = torch.empty(self.head.weight.shape).uniform_(-bound, bound, generator=g)
            b = torch.empty(self.head.bias.shape).uniform_(-bound, bound, generator=g)
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> [B, feature_dim] fp32, encoder in eval mode on `self.branch`."""
        # Attacks call this thousands of times (AutoAttack's Square: 5000 queries), so the
        # module lists are cached and flags are only switched (and restored) when they are off.
        in_train = [m for m in self._encoder_modules if m.training]
        off_branch = [b for b in self._dual_bns if b.branch != self.branch] if self.branch else []
        previous = [b.branch for b in off_branch]
        try:
            for m in in_train:
                m.training = False
            for b in off_branch:
                b.branch = self.branch
            with _fp32(x):
                return self.encoder.features(x.float())
        finally:
            for m in in_train:
                m.training = True
            for b, branch in zip(off_branch, previous):
                b.branch = branch

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Head only: features [B, feature_dim] -> logits [B, n_classes], fp32."""
        with _fp32(features):
            return self.head(features.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> logits [B, n_classes] fp32."""
        return self.logits(self.features(x))


def _fp32(t: torch.Tensor) -> torch.autocast:
    """Autocast switched off on t's device: evaluation numbers are fp32 even inside a caller's autocast."""
    return torch.autocast(t.device.type, enabled=False)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
