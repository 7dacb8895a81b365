"""Candidate gradient embeddings: the gradient of the method's own training loss w.r.t. the
differentiated projector layers (`HeadView`: the last Linear, or every projector Linear), one
row per candidate (a minibatch, or a sample), full or randomly projected.

Never the mean over output units: for a softmax/CE head that mean is identically zero
(the RCS code's compressed-gradient defect).
"""
from __future__ import annotations

from typing import Any

import torch

from ..attacks import PGDConfig
from ..data.batch import Batch, make_batch
from ..data.dataset import ImageDataset
from ..train.timer import PhaseTimer
from .head import HeadView, only_head_trainable


def _batch_gradient(model: torch.nn.Module, method: Any, batch: Batch, view: HeadView, attack: PGDConfig | None,
                    timer: PhaseTimer | None) -> torch.Tensor:
    grads = torch.autograd.grad(method.training_loss(model, batch, attack, timer), view.params)
    return torch.cat([g.reshape(-1) for g in grads])


def _per_sample_gradients(model: torch.nn.Module, method: Any, batch: Batch, view: HeadView, attack: PGDConfig | None,
                    timer: PhaseTimer | None) -> torch.Tensor:
    """[B, dim]: each image's share of the gradient of the summed loss (the rows sum to it exactly).

    A differentiated Linear's forward row r belongs to image r % B (methods stack views
    view-major, and an MLP keeps rows). That layer's weight gradient is sum_r delta_r h_r^T
    (delta_r: d loss / d output row r), so image i's share is the sum over its rows; the
    layers' shares are laid out as in `view.flat()`.
    """
    b, x = len(batch), batch.images
    with view.capture() as calls:
        loss = method.training_loss(model, batch, attack, timer) * b
    deltas = torch.autograd.grad(loss, [out for _, _, out in calls], allow_unused=True)
    per = [torch.zeros(b, _layer_dim(layer), device=x.device) for layer in view.layers]
    for (i, h, out), delta in zip(calls, deltas):
        if delta is None:  # forwards the loss does not depend on (the attack's)
            continue
        if out.shape[0] % b:
            raise ValueError(f"head forward of {out.shape[0]} rows for {b} images: sample units need view-major batches")
        owner = torch.arange(out.shape[0], device=x.device) % b
        rows = torch.einsum("ro,ri->roi", delta, h).reshape(out.shape[0], -1)
        if view.layers[i].bias is not None:
            rows = torch.cat([rows, delta], dim=1)
        per[i].index_add_(0, owner, rows)
    return torch.cat(per, dim=1)


def _layer_dim(layer: torch.nn.Linear) -> int:
    return layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)


def candidate_gradients(
    model: torch.nn.Module, method: Any, data: ImageDataset, units: list[torch.Tensor], unit: str, view: HeadView, chunk: int,
    attack: PGDConfig | None = None, timer: PhaseTimer | None = None,
) -> torch.Tensor:
    """G [n_units, view.dim]: d(method.training_loss)/d(head) for each candidate unit.

    units: for unit="batch", each entry is one candidate minibatch (positions) and its row is
    the gradient of that batch's mean loss (what one SGD step on it would use). For
    unit="sample", each entry is one position; images are run `chunk` at a time (each
    other's negatives, as in a training batch) and a row is that image's share of the
    chunk's summed-loss gradient. attack: the attack the method's loss uses (None: its training
    attack). Runs in the model's current mode (the selector uses eval) on the branches the
    method's loss picks; only the differentiated layers get gradients.
    """
    with only_head_trainable(model, view):
        if unit == "batch":
            return torch.stack([_batch_gradient(model, method, make_batch(data, p), view, attack, timer) for p in units])
        flat = torch.stack(units)
        return torch.cat([
            _per_sample_gradients(model, method, make_batch(data, flat[s : s + chunk]), view, attack, timer)
            for s in range(0, flat.numel(), chunk)
        ])


def gaussian_sketch(dim: int, sketch_dim: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """A seeded random projection P [dim, sketch_dim] with E[<xP, yP>] = <x, y>."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(dim, sketch_dim, generator=g) / sketch_dim**0.5).to(device)
