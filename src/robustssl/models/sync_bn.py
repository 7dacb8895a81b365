"""Synchronized BatchNorm for distributed training (`train.sync_bn`): batch statistics over the
global batch, on every device.

torch's SyncBatchNorm runs on GPUs only; `GlobalBatchNorm` is used on CPU (gloo), with the same
parameters and buffers (state-dict compatible with nn.BatchNorm*d), so checkpoints and exports
do not change. `convert_sync_bn` replaces every BatchNorm of a model, the two branches of a
`DualBatchNorm` included, keeping its Parameter objects (an optimizer built before stays valid).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import dist


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the concatenation of every rank's batch.

    Per channel, each rank sums x - s and (x - s)^2 over its rows (s: the running mean, the same
    on every rank, a shift that keeps the variance from cancelling), one differentiable all-reduce
    adds them up, and mean / biased variance follow; the running variance gets the unbiased one,
    as nn.BatchNorm. Eval mode, or one process, is nn.BatchNorm exactly.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        x = input.float()
        shift = self.running_mean.detach().float() if self.running_mean is not None else torch.zeros(c, device=x.device)
        xs = x - shift.view(shape)
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        totals = dist.all_reduce_with_grad(torch.cat([xs.sum(dims), (xs * xs).sum(dims), count]))
        n = totals[-1]
        mean_s = totals[:c] / n
        var = (totals[c : 2 * c] / n - mean_s * mean_s).clamp_min(0)
        mean = mean_s + shift
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(input.dtype)


def _global_copy(bn: _BatchNorm) -> GlobalBatchNorm:
    new = GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                          device=bn.running_mean.device if bn.running_mean is not None else None)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias  # the same Parameters
    new.running_mean, new.running_var, new.num_batches_tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
    new.train(bn.training)
    return new


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every nn.BatchNorm1d/2d of `model` (dual-BN branches included) by a synchronized one,
    in place: torch's SyncBatchNorm on CUDA, `GlobalBatchNorm` elsewhere. Returns `model`."""
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(child, nn.SyncBatchNorm):
            replacement: nn.Module = (nn.SyncBatchNorm.convert_sync_batchnorm(child) if device.type == "cuda"
                                      else _global_copy(child))
            setattr(model, name, replacement)
        else:
            convert_sync_bn(child, device)
    return model


def sync_bn_layers(model: nn.Module) -> int:
    """How many synchronized BatchNorms `model` holds."""
    return sum(isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm)) for m in model.modules())
