"""k-means in plain torch: k-means++ initialisation, Lloyd iterations, seeded and deterministic.

DynACL++ labels the training images by k-means on the frozen encoder's features; this is
that clustering. Everything random (the k-means++ draws) comes from one torch.Generator
seeded with `seed`, and every step is deterministic (cluster means are one-hot matrix
products, not scatter-adds, so they do not depend on thread or GPU scheduling): the same
features and seed give the same labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KMeansResult", "kmeans", "kmeans_plus_plus"]


@dataclass
class KMeansResult:
    """labels: int64 [N] cluster of each row (on x's device); centers: [K, D]; inertia: the sum of
    squared distances of the rows to their centers; iterations: Lloyd iterations of the winning
    initialisation; converged: whether its assignments stopped changing before max_iter;
    best_init: which of the n_init initialisations won (lowest inertia)."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    iterations: int
    converged: bool
    best_init: int

    def sizes(self) -> list[int]:
        """Rows per cluster, in cluster order."""
        return torch.bincount(self.labels.cpu(), minlength=self.centers.shape[0]).tolist()


def _sq_dist(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared euclidean distances [N, K] between rows of x [N, D] and centers [K, D] (clamped at 0)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centers.t() + (centers * centers).sum(1)[None, :]
    return d.clamp_min_(0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first center is a uniformly drawn row of
    x [N, D]; each next one is a row drawn with probability proportional to its squared distance
    to the nearest center chosen so far. Draws come from `generator` (a CPU generator). Returns [K, D]."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = _sq_dist(x, x[first : first + 1]).squeeze(1)
    for _ in range(1, k):
        weights = closest.double().cpu()
        if float(weights.sum()) <= 0:  # every row coincides with a center: pick any row not yet chosen
            free = torch.ones(n, dtype=torch.bool)
            free[chosen] = False
            weights = free.double()
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        closest = torch.minimum(closest, _sq_dist(x, x[nxt : nxt + 1]).squeeze(1))
    return x[chosen].clone()


def _lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, float, int, bool]:
    """Lloyd iterations from `centers` until the assignments stop changing (or max_iter)."""
    k = centers.shape[0]
    labels = _sq_dist(x, centers).argmin(1)
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # [N, K]
        counts = onehot.sum(0)
        sums = onehot.t() @ x  # [K, D]
        centers = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:  # an empty cluster takes the rows farthest from their current centers
            dist = _sq_dist(x, centers).gather(1, labels[:, None]).squeeze(1)
            far = dist.argsort(descending=True, stable=True)[: len(empty)]
            centers[empty] = x[far]
        new = _sq_dist(x, centers).argmin(1)
        if torch.equal(new, labels) and not empty:
            converged = True
            break
        labels = new
    inertia = float(_sq_dist(x, centers).gather(1, labels[:, None]).sum())
    return labels, centers, inertia, it, converged


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 100, n_init: int = 1) -> KMeansResult:
    """Cluster the rows of x [N, D] (any float dtype; computed in float64 on x's device) into k clusters.

    n_init k-means++ initialisations, each followed by Lloyd iterations; the one with the lowest
    inertia wins. Deterministic for a given seed. Raises ValueError when k < 2 or k > N.
    """
    if x.dim() != 2:
        raise ValueError(f"k-means needs a [N, D] matrix of features, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 2 <= k <= n:
        raise ValueError(f"k-means with {k} clusters needs 2 <= clusters <= {n} (the number of rows)")
    if max_iter < 1 or n_init < 1:
        raise ValueError(f"max_iter and n_init must be >= 1, got {max_iter}, {n_init}")
    x = x.detach().double()
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for i in range(n_init):
        labels, centers, inertia, iterations, converged = _lloyd(x, kmeans_plus_plus(x, k, generator), max_iter)
        if best is None or inertia < best.inertia:
            best = KMeansResult(labels, centers, inertia, iterations, converged, i)
    assert best is not None  # n_init >= 1
    return best
