"""Dual BatchNorm (ACL's "dual stream"): one BN for natural inputs, one for adversarial.

The branch is model state switched by a context manager, not an argument threaded through
every forward call:

    with bn_branch(model, "pgd"):
        z_adv = model(x_adv)
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BRANCHES = ("normal", "pgd")


class DualBatchNorm(nn.Module):
    """Two BatchNorms of the same shape; `self.branch` picks which one a forward uses."""

    normal: _BatchNorm
    pgd: _BatchNorm

    def __init__(self, num_features: int, dims: int = 2) -> None:
        super().__init__()
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.normal = bn(num_features)
        self.pgd = bn(num_features)
        self.branch = "normal"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pgd(x) if self.branch == "pgd" else self.normal(x)

    @classmethod
    def of(cls, bn: _BatchNorm) -> DualBatchNorm:
        """A dual BN whose `normal` branch is `bn` itself and whose `pgd` branch is a copy of it (any
        BatchNorm class, e.g. a library's BatchNorm fused with its activation)."""
        dual = cls.__new__(cls)
        nn.Module.__init__(dual)
        dual.normal = bn
        dual.pgd = copy.deepcopy(bn)
        dual.branch = "normal"
        return dual


def convert_dual_bn(model: nn.Module) -> nn.Module:
    """Make every BatchNorm of `model` (any subclass of torch's _BatchNorm) a `DualBatchNorm`, in place;
    for backbones built elsewhere (timm). Returns `model`."""
    for name, child in model.named_children():
        if isinstance(child, DualBatchNorm):
            continue
        if isinstance(child, _BatchNorm):
            setattr(model, name, DualBatchNorm.of(child))
        else:
            convert_dual_bn(child)
    return model


def make_bn(num_features: int, dual: bool, dims: int = 2) -> nn.Module:
    """A BatchNorm layer: dual (two branches) or plain."""
    if dual:
        return DualBatchNorm(num_features, dims)
    return nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)


def has_dual_bn(model: nn.Module) -> bool:
    return any(isinstance(m, DualBatchNorm) for m in model.modules())


def default_branch(model: nn.Module, trained_branches: Sequence[str] | None = None) -> str | None:
    """The BN branch a dual-BN model is evaluated and used on by default (methods.md §7).

    Single-BN models: None (no choice). Dual-BN models: "pgd" when it was trained or when
    the trained branches are unknown (None: exports from before they were recorded); else
    the first trained branch ("normal" for SimCLR with dual BN, which trains only that one).
    `evaluate` and `load_encoder` both follow this rule, so a loaded encoder computes the
    features its report measured.
    """
    if not has_dual_bn(model):
        return None
    if not trained_branches or "pgd" in trained_branches:  # None (unknown), none trained, or pgd trained
        return "pgd"
    return next(iter(trained_branches))


def current_branch(model: nn.Module) -> str | None:
    """The branch the model's dual BNs use now (None when it has no dual BN)."""
    for m in model.modules():
        if isinstance(m, DualBatchNorm):
            return m.branch
    return None


def set_bn_branch(model: nn.Module, branch: str) -> None:
    """Route every DualBatchNorm of `model` to `branch` ('normal' or 'pgd'); no-op without dual BN."""
    if branch not in BRANCHES:
        raise ValueError(f"unknown BN branch {branch!r}; valid: {', '.join(BRANCHES)}")
    for m in model.modules():
        if isinstance(m, DualBatchNorm):
            m.branch = branch


@contextmanager
def bn_branch(model: nn.Module, branch: str | None) -> Iterator[None]:
    """Use `branch` inside the block and restore the previous branch after (None: leave as is)."""
    previous = current_branch(model)
    if branch is None or previous is None:
        yield
        return
    set_bn_branch(model, branch)
    try:
        yield
    finally:
        set_bn_branch(model, previous)


@contextmanager
def model_mode(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Put the model in 'train' or 'eval' mode inside the block and restore each module's flag after."""
    if mode is None:
        yield
        return
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train', 'eval' or None, got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag
