"""Candidate gradient embeddings: the gradient of the method's own training loss w.r.t. the
differentiated projector layers (`HeadView`: the last Linear, or every projector Linear), one
row per candidate (a minibatch, or a sample), full or randomly projected.

Never the mean over output units: for a softmax/CE head that mean is identically zero
(the RCS code's compressed-gradient defect).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import dist
from ..attacks import PGDConfig
from ..data.batch import Batch, make_batch
from ..data.dataset import ImageSource
from ..timer import PhaseTimer
from .head import HeadView, only_head_trainable
from .selectors import SelectionMethod


def _shares(model: torch.nn.Module, method: SelectionMethod, batch: Batch, view: HeadView, attack: PGDConfig | None,
            timer: PhaseTimer | None, owner: torch.Tensor, n_owners: int, scale: float = 1.0) -> torch.Tensor:
    """[n_owners, dim]: each owner's share of d(scale * method.training_loss)/d(head) (the rows sum to it).

    owner: int64 [N], the owner (a candidate) of each of the batch's N images.

    A differentiated Linear's forward row r belongs to image r % N (methods stack views
    view-major, and an MLP keeps rows). That layer's weight gradient is sum_r delta_r h_r^T
    (delta_r: d loss / d output row r), so an owner's share is the sum over its images' rows;
    the layers' shares are laid out as in `view.flat()`. One backward serves every owner.
    """
    n, dev = len(batch), batch.images.device
    with view.capture() as calls:
        loss = method.training_loss(model, batch, attack, timer) * scale
    calls = [c for c in calls if c[2].requires_grad]  # forwards under no_grad (TRADES's fixed f(x)) carry no gradient
    deltas = torch.autograd.grad(loss, [out for _, _, out in calls], allow_unused=True)
    per = [torch.zeros(n_owners, layer_dim(layer), device=dev) for layer in view.layers]
    owner = owner.to(dev)
    for (i, h, out), delta in zip(calls, deltas):
        if delta is None:  # forwards the loss does not depend on (the attack's)
            continue
        if out.shape[0] % n:
            raise ValueError(f"head forward of {out.shape[0]} rows for {n} images: candidate gradients need view-major batches")
        delta, h = delta.float(), h.float()  # a bf16 forward (train.bf16) gives bf16 rows; fp32 is unchanged
        rows = torch.einsum("ro,ri->roi", delta, h).reshape(out.shape[0], -1)
        if view.layers[i].bias is not None:
            rows = torch.cat([rows, delta], dim=1)
        per[i].index_add_(0, owner[torch.arange(out.shape[0], device=dev) % n], rows)
    return torch.cat(per, dim=1)


def layer_dim(layer: torch.nn.Linear) -> int:
    """Values in a Linear's flattened gradient row: weight, plus bias when it has one."""
    return layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)


def candidate_gradients(
    model: torch.nn.Module, method: SelectionMethod, data: ImageSource, units: list[torch.Tensor], unit: str, view: HeadView, chunk: int,
    attack: PGDConfig | None = None, timer: PhaseTimer | None = None, per_forward: int = 1, distributed: bool | None = None,
) -> torch.Tensor:
    """G [n_units, view.dim]: d(method.training_loss)/d(head) for each candidate unit.

    units: for unit="batch", each entry is one candidate minibatch (positions, all of one size)
    and its row is the gradient of that batch's mean loss (what one SGD step on it would use);
    `per_forward` of them are stacked into one grouped batch (`Batch.groups`, methods with
    `supports_groups` only; others run one per forward): in eval mode every image's forward is
    independent and each group is its own loss, so a row is the same as from its own forward.
    For unit="sample", each entry is one position; images are run `chunk` at a time (each
    other's negatives, as in a training batch) and a row is that image's share of the
    chunk's summed-loss gradient. attack: the attack the method's loss uses (None: its training
    attack). Runs in the model's current mode (the selector uses eval) on the branches the
    method's loss picks; only the differentiated layers get gradients.

    distributed (None: when several processes train together): every rank must call this with
    the same units; the forwards (stacked batches, or sample chunks) are split into contiguous
    shares, each rank computes its share, and the rows are all-gathered, so every rank returns
    the whole G in the same order, each row computed exactly as in one process (randomness in
    the candidates' views and attack starts comes from the computing rank's RNG).
    """
    with only_head_trainable(model, view):
        jobs: list[tuple[int, Callable[[], torch.Tensor]]] = []  # (rows, compute) per forward
        if unit == "batch":
            step = per_forward if method.supports_groups else 1
            for s in range(0, len(units), step):
                group = units[s : s + step]
                b = len(group[0])
                if any(len(u) != b for u in group):
                    raise ValueError("candidate batches stacked into one forward must have equal sizes")

                def stacked(group: list[torch.Tensor] = group, b: int = b) -> torch.Tensor:
                    batch = make_batch(data, torch.cat(group), groups=len(group))
                    return _shares(model, method, batch, view, attack, timer, torch.arange(len(group) * b) // b, len(group))

                jobs.append((len(group), stacked))
        else:
            flat = torch.stack(units)
            for s in range(0, flat.numel(), chunk):

                def chunked(positions: torch.Tensor = flat[s : s + chunk]) -> torch.Tensor:
                    # The mean loss times b is the summed loss: a row is one image's share of it.
                    n = len(positions)
                    return _shares(model, method, make_batch(data, positions), view, attack, timer, torch.arange(n), n, scale=n)

                jobs.append((min(chunk, flat.numel() - s), chunked))
        p = view.params[0]
        return run_sharded(jobs, torch.zeros(0, view.dim, dtype=p.dtype, device=p.device), distributed)


def run_sharded(jobs: list[tuple[int, Callable[[], torch.Tensor]]], empty: torch.Tensor,
                distributed: bool | None = None) -> torch.Tensor:
    """The jobs' rows (job: (its number of rows, compute -> [rows, dim])), concatenated in job
    order: all computed here, or (distributed; None: when several processes train together)
    each rank computing a contiguous share of the jobs and every rank receiving all rows.
    empty: a [0, dim] tensor, what a rank without jobs contributes."""
    world = dist.world_size() if distributed is not False else 1
    if world == 1:
        return torch.cat([compute() for _, compute in jobs])
    shares = [dist.shard_bounds(len(jobs), world, r) for r in range(world)]
    lo, hi = shares[dist.rank()]
    mine = [compute() for _, compute in jobs[lo:hi]]
    local = torch.cat(mine) if mine else empty
    return dist.gather_rows(local, [sum(rows for rows, _ in jobs[a:b]) for a, b in shares])


def gaussian_sketch(dim: int, sketch_dim: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """A seeded random projection P [dim, sketch_dim] with E[<xP, yP>] = <x, y>."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(dim, sketch_dim, generator=g) / sketch_dim**0.5).to(device)
