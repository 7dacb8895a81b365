"""NT-Xent (SimCLR's normalized temperature-scaled cross entropy), for any number of views."""
from __future__ import annotations

import torch
from torch.nn import functional as F

POSITIVES = ("mean", "sum")


def nt_xent(z: torch.Tensor, n_views: int, tau: float, weights: torch.Tensor | None = None,
            positives: str = "mean") -> torch.Tensor:
    """Contrastive loss over `n_views` views of B images.

    z: [n_views * B, d] projector outputs, view-major (rows v*B .. v*B+B-1 are view v);
       normalized here. Each row's positives are the other views of the same image, its
       negatives every other row. Per anchor and positive p the term is
       -log(exp(s_ap / tau) / sum_{k != a} exp(s_ak / tau)) (the other positives count in the
       denominator). An anchor's loss is the mean of its n_views - 1 terms (positives="mean")
       or their sum (positives="sum", RoCL's 3-view loss); with 2 views both are SimCLR's loss
       exactly. Returns the mean over all n_views * B anchors (a scalar).
    weights: float [B] per-image weights (a weighted coreset) or None; every anchor of image i
       is weighted by weights[i] and the result is mean_a(w_a * loss_a), so all-ones weights
       give the unweighted loss.
    """
    if z.dim() != 2 or z.shape[0] % n_views != 0:
        raise ValueError(f"z must be [n_views*B, d] with n_views={n_views}, got {tuple(z.shape)}")
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, got {positives!r}")
    n = z.shape[0]
    b = n // n_views
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.t() / tau
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    image = torch.arange(n, device=z.device) % b
    positive = (image[:, None] == image[None, :]) & ~eye
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1)
    if positives == "mean":
        per_anchor = per_anchor / (n_views - 1)
    if weights is None:
        return per_anchor.mean()
    if weights.shape != (b,):
        raise ValueError(f"weights must be [B]={b} per-image values, got {tuple(weights.shape)}")
    return (per_anchor * weights.to(per_anchor.dtype)[image]).mean()
