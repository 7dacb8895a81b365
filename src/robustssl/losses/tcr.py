"""EMP-SSL's losses (Tong et al. 2023), used by (robust) EMP-SSL and CF-AMC-SSL:

    R(Z)  = 1/2 logdet(I_d + d / (B eps) Z^T Z)          total coding rate of B embeddings Z [B, d]
    L_TCR = -(1/n) sum_i R(Z_i)                          over the n crops
    L_inv = -(1/n) sum_i mean_b cos(z_{i,b}, z_bar_b)    z_bar_b = mean_i z_{i,b}, the plain mean of the
                                                         unit embeddings (cosine normalizes it anyway)
    L     = inv_weight * L_inv + tcr_weight * L_TCR      (200 and 1 in EMP-SSL)

R is computed through the smaller Gram matrix: logdet(I_d + c Z^T Z) = logdet(I_B + c Z Z^T)
(Sylvester), so B = 100 embeddings of d = 1024 cost a 100 x 100 Cholesky, and all n crops
(and stacked candidate batches) go through one batched call.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .. import dist
from .precision import autocast_off


def _at_least_fp32(z: torch.Tensor) -> torch.Tensor:
    """The logdet and cosines in fp32 (or fp64 when given): half precision is too coarse for them."""
    return z if z.dtype == torch.float64 else z.float()


@autocast_off
def total_coding_rate(z: torch.Tensor, eps: float = 0.2, weights: torch.Tensor | None = None) -> torch.Tensor:
    """R(Z) of each batch in z [..., B, d] (rows are embeddings, used as given) -> [...].

    weights: float [..., B] (or [B]) per-row weights, mean 1 for an unweighted-equivalent batch:
    the covariance becomes Z^T diag(w) Z (a weighted coreset); None: all 1.
    """
    if z.dim() < 2:
        raise ValueError(f"z must be [..., B, d], got {tuple(z.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    b, d = z.shape[-2], z.shape[-1]
    z = _at_least_fp32(z)
    if weights is not None:
        z = z * weights.to(z.dtype).clamp_min(0).sqrt().unsqueeze(-1)
    c = d / (b * eps)
    gram = z @ z.transpose(-1, -2) if b <= d else z.transpose(-1, -2) @ z
    eye = torch.eye(gram.shape[-1], device=z.device, dtype=z.dtype)
    # I + c * Gram is symmetric positive definite (eigenvalues >= 1): logdet = 2 sum log diag(chol).
    chol = torch.linalg.cholesky(eye + c * gram)
    return torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


@autocast_off
def emp_ssl_loss(z: torch.Tensor, n_crops: int, *, eps: float = 0.2, inv_weight: float = 200.0, tcr_weight: float = 1.0,
                 weights: torch.Tensor | None = None, groups: int = 1,
                 gather_distributed: bool | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The EMP-SSL loss of n crops of N images, and its parts for logging.

    z: [n_crops * N, d] projector outputs, crop-major (rows i*N .. i*N+N-1 are crop i); L2-normalized here.
    weights: float [N] per-image weights (a weighted coreset; mean 1 leaves the loss unchanged) or None.
        The invariance term weighs image b's cosines by w_b; the coding rate uses Z^T diag(w) Z.
    groups: the N images are `groups` independent batches of N / groups (stacked coreset candidates):
        each has its own coding rate and invariance mean, and the result is the SUM of the groups'
        losses, so each group's rows get exactly the gradient of their own loss.
    gather_distributed: under torchrun, z holds this rank's shard of a global batch: the coding
        rate is that of the global batch (every rank's embeddings gathered with gradients; the
        same value on every rank) and the invariance term the mean over this rank's images, so
        the ranks' mean is the one-process loss. None: gather inside `dist.global_batch()` only.
    Returns (loss scalar, {"loss_inv": L_inv, "loss_tcr": L_TCR}) (parts summed over groups).
    """
    if z.dim() != 2 or z.shape[0] % n_crops:
        raise ValueError(f"z must be [n_crops*N, d] with n_crops={n_crops}, got {tuple(z.shape)}")
    n_images = z.shape[0] // n_crops
    if groups < 1 or n_images % groups:
        raise ValueError(f"{n_images} images do not split into {groups} equal groups")
    gathered = dist.gathers(gather_distributed)
    if gathered and groups != 1:
        raise ValueError("a loss gathered across ranks takes one group (groups=1)")
    b = n_images // groups
    zs = F.normalize(_at_least_fp32(z), dim=1).view(n_crops, groups, b, -1)  # [n, g, b, d]
    w = None if weights is None else weights.to(zs.dtype).view(groups, b)
    z_bar = zs.mean(0, keepdim=True)
    cos = F.cosine_similarity(zs, z_bar, dim=-1)  # [n, g, b]
    per_image = cos.mean(0)  # [g, b]: mean over crops
    inv = -(per_image if w is None else per_image * w).mean(-1).sum()
    if gathered:
        # [world, n, 1, b, d] -> [n, 1, world * b, d]: each crop's global batch in rank order.
        zs = dist.gather_with_grad(zs).permute(1, 2, 0, 3, 4).reshape(n_crops, 1, -1, zs.shape[-1])
        if w is not None:
            w = dist.gather_with_grad(w.detach()).reshape(1, -1)
        b = zs.shape[2]
    tcr = -total_coding_rate(zs, eps, None if w is None else w.expand(n_crops, groups, b)).mean(0).sum()
    loss = inv_weight * inv + tcr_weight * tcr
    return loss, {"loss_inv": float(inv.detach()), "loss_tcr": float(tcr.detach())}
