"""NT-Xent (SimCLR's normalized temperature-scaled cross entropy), for any number of views."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import dist
from .precision import autocast_off

POSITIVES = ("mean", "sum")


@autocast_off
def nt_xent(z: torch.Tensor, n_views: int, tau: float, weights: torch.Tensor | None = None,
            positives: str = "mean", groups: int = 1, gather_distributed: bool | None = None) -> torch.Tensor:
    """Contrastive loss over `n_views` views of N images.

    z: [n_views * N, d] projector outputs, view-major (rows v*N .. v*N+N-1 are view v);
       normalized here. Each row's positives are the other views of the same image, its
       negatives every other row. Per anchor and positive p the term is
       -log(exp(s_ap / tau) / sum_{k != a} exp(s_ak / tau)) (the other positives count in the
       denominator). An anchor's loss is the mean of its n_views - 1 terms (positives="mean")
       or their sum (positives="sum", RoCL's 3-view loss); with 2 views both are SimCLR's loss
       exactly. Returns the mean over all n_views * N anchors (a scalar).
    weights: float [N] per-image weights (a weighted coreset) or None; every anchor of image i
       is weighted by weights[i] and the result is mean_a(w_a * loss_a), so all-ones weights
       give the unweighted loss.
    groups: the N images are `groups` independent batches of B = N / groups images
       (contiguous blocks, as coreset selection stacks candidate batches into one forward).
       Each group is its own loss (its images are each other's only negatives) and the result
       is the SUM of the group losses, so the gradient w.r.t. a group's rows is exactly that
       of its own loss. groups=1: the plain loss.
    gather_distributed: under torchrun, z holds this rank's shard of a global batch (rank-major,
       as the loader shards it): its anchors are contrasted with every rank's rows (gathered with
       gradients) and the result is the mean over this rank's anchors, so the ranks' mean is the
       one-process loss of the global batch and the averaged gradient its gradient. None: gather
       inside `dist.global_batch()` (the trainer's steps), not outside (coreset selection).
       No effect in one process.
    """
    if z.dim() != 2 or z.shape[0] % n_views != 0:
        raise ValueError(f"z must be [n_views*N, d] with n_views={n_views}, got {tuple(z.shape)}")
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, got {positives!r}")
    n_images = z.shape[0] // n_views
    if dist.gathers(gather_distributed):
        if groups != 1:
            raise ValueError("a loss gathered across ranks takes one group (groups=1)")
        return _nt_xent_gathered(z, n_views, tau, weights, positives)
    if groups < 1 or n_images % groups:
        raise ValueError(f"{n_images} images do not split into {groups} equal groups")
    b, n = n_images // groups, n_views * (n_images // groups)
    # [n_views*N, d] -> [groups, n_views*B, d], each group view-major like the input.
    zg = F.normalize(z.float(), dim=1).view(n_views, groups, b, -1).transpose(0, 1).reshape(groups, n, -1)
    logits = zg @ zg.transpose(1, 2) / tau
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=2, keepdim=True)
    image = torch.arange(n, device=z.device) % b
    positive = (image[:, None] == image[None, :]) & ~eye
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(2)  # [groups, n]
    if positives == "mean":
        per_anchor = per_anchor / (n_views - 1)
    if weights is not None:
        if weights.shape != (n_images,):
            raise ValueError(f"weights must be [N]={n_images} per-image values, got {tuple(weights.shape)}")
        per_anchor = per_anchor * weights.to(per_anchor.dtype).view(groups, b)[:, image]
    return per_anchor.mean(1).sum()


def _nt_xent_gathered(z: torch.Tensor, n_views: int, tau: float, weights: torch.Tensor | None, positives: str) -> torch.Tensor:
    """nt_xent of this rank's anchors against the global batch (every rank's rows; see `nt_xent`)."""
    n = z.shape[0] // n_views
    world, r = dist.world_size(), dist.rank()
    big_n = world * n
    zn = F.normalize(z.float(), dim=1)
    # [world, n_views, n, d] -> global view-major [n_views * world * n, d]: view v's rows are the
    # global images in rank order, as one process would stack the whole batch.
    everyone = dist.gather_with_grad(zn.view(n_views, n, -1)).transpose(0, 1).reshape(n_views * big_n, -1)
    local = torch.arange(n, device=z.device)
    own_rows = (torch.arange(n_views, device=z.device)[:, None] * big_n + r * n + local[None, :]).reshape(-1)
    logits = zn @ everyone.T / tau  # this rank's anchors (their own rows) x every row
    columns = torch.arange(n_views * big_n, device=z.device)
    is_self = columns[None, :] == own_rows[:, None]
    logits = logits.masked_fill(is_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = ((columns[None, :] % big_n) == (own_rows[:, None] % big_n)) & ~is_self
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1)
    if positives == "mean":
        per_anchor = per_anchor / (n_views - 1)
    if weights is not None:
        if weights.shape != (n,):
            raise ValueError(f"weights must be [N]={n} per-image values, got {tuple(weights.shape)}")
        per_anchor = per_anchor * weights.to(per_anchor.dtype).repeat(n_views)
    return per_anchor.mean()
