"""NT-Xent (SimCLR's normalized temperature-scaled cross entropy), for any number of views."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def nt_xent(z: torch.Tensor, n_views: int, tau: float) -> torch.Tensor:
    """Contrastive loss over `n_views` views of B images.

    z: [n_views * B, d] projector outputs, view-major (rows v*B .. v*B+B-1 are view v);
       normalized here. Each row's positives are the other views of the same image, its
       negatives every other row. Per anchor the loss is the mean over its positives p of
       -log(exp(s_ap / tau) / sum_{k != a} exp(s_ak / tau)); with 2 views this is SimCLR's
       loss exactly. Returns the mean over all anchors (a scalar).
    """
    if z.dim() != 2 or z.shape[0] % n_views != 0:
        raise ValueError(f"z must be [n_views*B, d] with n_views={n_views}, got {tuple(z.shape)}")
    n = z.shape[0]
    b = n // n_views
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.t() / tau
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    image = torch.arange(n, device=z.device) % b
    positive = (image[:, None] == image[None, :]) & ~eye
    return -(log_prob.masked_fill(~positive, 0.0).sum(1) / (n_views - 1)).mean()
