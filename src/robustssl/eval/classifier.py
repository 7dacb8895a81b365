"""The models every evaluation attacks: an SSL encoder followed by a linear head, either frozen
(`LinearEvalModel`, SLF/ALF) or trained with the head (`FinetuneClassifier`, AFF and LP-AFT)."""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models.dual_bn import BRANCHES, DualBatchNorm, default_branch, has_dual_bn
from ..models.encoder import SSLModel

log = logging.getLogger(__name__)


class UntrainedBranchWarning(UserWarning):
    """Evaluation runs on a dual-BN branch that training never updated (its BN statistics are the init's)."""


def untrained_branch_note(branch: str, trained_branches: Sequence[str]) -> str:
    """The report's note (and warning) for evaluating `branch`, which training never updated."""
    fix = f"evaluate the trained branch (--branch {trained_branches[0]})" if trained_branches else "retrain the encoder"
    return (
        f"the '{branch}' BN branch was never trained (trained: {', '.join(trained_branches) or 'none'}); its BatchNorm "
        f"statistics and affine parameters are the initial ones, so these numbers do not describe the trained encoder; {fix}"
    )


def choose_branch(
    encoder: nn.Module, branch: str | None = None, trained_branches: Sequence[str] | None = None
) -> tuple[str | None, str | None]:
    """(the branch to evaluate, a note or None): `branch` when given, else `default_branch`.

    The note says that the chosen branch of a dual-BN encoder was never trained (known only
    when `trained_branches` is given); it is also warned (`UntrainedBranchWarning`) and logged.
    """
    unknown = [b for b in ([branch] if branch else []) + list(trained_branches or []) if b not in BRANCHES]
    if unknown:
        raise ValueError(f"unknown BN branch(es) {unknown}; valid: {', '.join(BRANCHES)}")
    used = branch if branch is not None else default_branch(encoder, trained_branches)
    if used is None or trained_branches is None or used in trained_branches:
        return used, None
    note = untrained_branch_note(used, trained_branches)
    log.warning(note)
    warnings.warn(note, UntrainedBranchWarning, stacklevel=2)
    return used, note


def resolve_branch(encoder: SSLModel, branch: str | None) -> str | None:
    """The BN branch a classifier runs `encoder` on: `branch`, validated, or the encoder's default."""
    if branch is None:
        return default_branch(encoder)
    if branch not in BRANCHES:
        raise ValueError(f"unknown BN branch {branch!r}; valid: {', '.join(BRANCHES)}")
    if not has_dual_bn(encoder):
        raise ValueError(f"branch={branch!r} was asked for, but the encoder has no dual BatchNorm")
    return branch


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

    Optional feature standardization (`set_standardization`): while training, the head sees
    (features - mean) / std; `fold_standardization` then folds mean and std into the head's
    weight and bias, exactly, so the classifier that is evaluated and attacked is again one
    linear layer on the raw features.
    """

    def __init__(self, encoder: SSLModel, n_classes: int, branch: str | None = None) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a linear probe needs at least 2 classes, got {n_classes}")
        branch = resolve_branch(encoder, branch)
        self.encoder = encoder.float()
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.branch = branch
        self.n_classes = n_classes
        self.head = nn.Linear(encoder.feature_dim, n_classes)
        self.feature_mean: torch.Tensor | None = None  # [feature_dim], set only while a standardized head trains
        self.feature_std: torch.Tensor | None = None
        # plain lists (not registered as submodules), used by features() to check mode and branch
        self._encoder_modules: list[nn.Module] = list(encoder.modules())
        self._dual_bns: list[DualBatchNorm] = [m for m in self._encoder_modules if isinstance(m, DualBatchNorm)]

    def train(self, mode: bool = True) -> LinearEvalModel:
        """Only the head follows `mode`; the encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def reset_head(self, seed: int) -> None:
        """Re-initialise the head from `seed` (PyTorch's default Linear distribution, seeded, so runs
        repeat) and drop any feature standardization."""
        self.feature_mean = self.feature_std = None
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
                b.branch = self.branch  # type: ignore[assignment]  # off_branch is empty when self.branch is None
            with _fp32(x):
                return self.encoder.features(x.float())
        finally:
            for m in in_train:
                m.training = True
            for b, branch in zip(off_branch, previous):
                b.branch = branch

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Head only: features [B, feature_dim] -> logits [B, n_classes], fp32 (standardized first when set)."""
        with _fp32(features):
            f = features.float()
            if self.feature_mean is not None and self.feature_std is not None:
                f = (f - self.feature_mean) / self.feature_std
            return self.head(f)

    def set_standardization(self, features: torch.Tensor) -> None:
        """Standardize the head's input with the mean and std of `features` [N, feature_dim] (the
        training features). Dimensions with std below 1e-8 (constant features) keep std 1."""
        mean = features.float().mean(0)
        std = features.float().std(0)
        self.feature_mean = mean.detach()
        self.feature_std = torch.where(std > 1e-8, std, torch.ones_like(std)).detach()

    @torch.no_grad()
    def fold_standardization(self) -> None:
        """Fold the standardization into the head, exactly: W' = W / std (per input column),
        b' = b - W' mean; afterwards logits(f) = W' f + b' and no standardization is applied."""
        if self.feature_mean is None or self.feature_std is None:
            return
        w = self.head.weight / self.feature_std.view(1, -1)
        self.head.bias.sub_(w @ self.feature_mean)
        self.head.weight.copy_(w)
        self.feature_mean = self.feature_std = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> logits [B, n_classes] fp32."""
        return self.logits(self.features(x))


class FinetuneClassifier(nn.Module):
    """Encoder + linear head, trained together (adversarial full finetuning, LP-AFT).

    forward(x): x float [B, C, H, W] in [0, 1] -> logits [B, n_classes], fp32.
    features(x): the same input -> encoder features [B, feature_dim], fp32.

    Unlike `LinearEvalModel`, the encoder follows this module's mode: in train mode its
    BatchNorms use batch statistics and update their running statistics, in eval mode they
    use the running statistics. Every forward runs on one fixed BN branch, `branch`
    (default: "pgd" for dual-BN encoders, None for single-BN ones); the other branch is never
    used, so it keeps its pretrained statistics and weights.

    The encoder is owned by this module: it is cast to fp32 and made trainable in place, and
    its dual BNs are switched to `branch` on every forward without being switched back. Pass
    a copy (`copy.deepcopy`) of an encoder that anything else still uses. The projector is
    not used; `trainable_parameters` leaves it out.
    """

    def __init__(self, encoder: SSLModel, n_classes: int, branch: str | None = None) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        branch = resolve_branch(encoder, branch)
        self.encoder = encoder.float()
        self.encoder.requires_grad_(True)
        self.encoder.projector.requires_grad_(False)  # not part of the classifier
        self.branch = branch
        self.n_classes = n_classes
        self.head = nn.Linear(encoder.feature_dim, n_classes)
        self._dual_bns: list[DualBatchNorm] = [m for m in encoder.modules() if isinstance(m, DualBatchNorm)]

    def zero_head(self) -> None:
        """Zero the head's weight and bias (DynACL's AFF starts from a zero head)."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What finetuning updates: the encoder's backbone and the head (not the unused projector)."""
        return [*self.encoder.backbone.parameters(), *self.head.parameters()]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> [B, feature_dim] fp32, on `self.branch`, in this module's mode."""
        if self.branch is not None:
            for b in self._dual_bns:
                b.branch = self.branch  # type: ignore[assignment]
        with _fp32(x):
            return self.encoder.features(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> logits [B, n_classes] fp32."""
        f = self.features(x)
        with _fp32(f):
            return self.head(f)


def linear_classifier(encoder: SSLModel, n_classes: int, branch: str | None, cfg: Any = None) -> LinearEvalModel:
    """The classifier of a frozen-encoder protocol (SLF, ALF, direct): `LinearEvalModel` (cfg unused)."""
    return LinearEvalModel(encoder, n_classes, branch)


def finetune_classifier(encoder: SSLModel, n_classes: int, branch: str | None, cfg: Any = None) -> FinetuneClassifier:
    """The classifier of a finetuning protocol (AFF): `FinetuneClassifier`, which owns `encoder` (cfg unused)."""
    return FinetuneClassifier(encoder, n_classes, branch)


def _fp32(t: torch.Tensor) -> torch.autocast:
    """Autocast switched off on t's device: evaluation numbers are fp32 even inside a caller's autocast."""
    return torch.autocast(t.device.type, enabled=False)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
