"""Data-parallel training over the processes torchrun starts (one replica of the model per rank).

The replicas start identical (rank 0's parameters and buffers are broadcast) and stay identical:
before every optimizer step the parameter gradients are averaged over ranks (an optimizer
step pre-hook, so every update of every method is covered, however many forwards it ran), and
after it, without `train.sync_bn`, the BatchNorm running statistics are averaged (with it they
are computed on the global batch and equal already). Methods therefore run the plain module:
attacks, dual-BN branch switches and several forwards per backward need no wrapper, and
nothing is ever left unused by a wrapper's bookkeeping.

Not torch's DistributedDataParallel wrapper: it ties one backward to one forward through the
wrapper and overlaps the gradient all-reduce with the backward; here the all-reduce follows the
backward (one flattened call per bucket), which costs one all-reduce of the gradients per update.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import dist
from ..models.sync_bn import GlobalBatchNorm, convert_sync_bn

BUCKET_BYTES = 64 * 2**20  # gradients are all-reduced in flat buckets of about this size


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """`tensors` in consecutive runs of at most BUCKET_BYTES (a larger tensor is a run of its own)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > BUCKET_BYTES:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


def _flat_all_reduce(tensors: list[torch.Tensor], scale: float) -> None:
    """Sum `tensors` over ranks in place (flat buckets of one dtype and device), then multiply by `scale`."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        for bucket in _buckets(group):
            flat = torch.cat([b.reshape(-1) for b in bucket])
            tdist.all_reduce(flat)
            flat.mul_(scale)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Replace each parameter's .grad by its mean over ranks (parameters without a gradient are left alone)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grads:
        _flat_all_reduce(grads, 1.0 / dist.world_size())


def average_bn_statistics(model: nn.Module) -> None:
    """Average the BatchNorm running mean and variance over ranks (each rank updated them with its own
    shard's statistics), so that the replicas, and the eval-mode forwards of the next attack, agree."""
    stats = [t for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm))
             for t in (m.running_mean, m.running_var) if t is not None]
    if stats:
        _flat_all_reduce(stats, 1.0 / dist.world_size())


def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            tdist.broadcast(t.data, src=0)


def prepare_model(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """Before the optimizer is built: synchronized BatchNorm when asked for and training is
    distributed (a single process keeps plain BatchNorm). Returns the model (changed in place)."""
    if sync_bn and dist.is_distributed():
        convert_sync_bn(model, device)
    return model


def replicate(model: nn.Module, optimizer: torch.optim.Optimizer, sync_bn: bool) -> list[Any]:
    """Make every rank's replica rank 0's, and keep them equal: gradients averaged before each
    optimizer step, BN running statistics averaged after it (not needed with sync_bn).
    Returns the hook handles (remove them to stop); nothing happens in a single process."""
    if not dist.is_distributed():
        return []
    broadcast_module(model)
    handles = [optimizer.register_step_pre_hook(lambda opt, args, kwargs: average_gradients(opt))]
    if not sync_bn:
        handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: average_bn_statistics(model)))
    return handles


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank `rank` > 0 (rank 0 keeps the run's own stream, as one process)."""
    return int(seed) * 1_000_003 + 7_919 * int(rank)
