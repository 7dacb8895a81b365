"""Adversarial CRAIG's numerical core: facility location on gradient similarities, lazy greedy.

The core of the Adv. CRAIG selector (`CraigSelector` in coreset/acs.py, registered as `craig`)
of supervised adversarial training (Dolatabadi et al., "Adversarial Coreset Selection for
Efficient Robust Training", IJCV 2023, arXiv:2209.05785, the method section's Adversarial
CRAIG, after Mirzasoleiman et al. 2020; summarized in shared/reference/methods.md section 6):
the rows are per-example last-layer gradients at adversarial inputs (losses/last_layer.py),
or the mean gradients of fixed minibatches (coreset.unit=batch, ACS's CRAIGPB).

    D_ij = ||g_i - g_j||^2 (squared="True", the ACS/CORDS code's distance) or ||g_i - g_j||
    s_ij = max(D) - D_ij >= 0
    F(S) = sum_i max_{j in S} s_ij   (F({}) = 0), monotone submodular
    greedy: S += argmax_e F(S + e) - F(S), k times
    weight of s in S = #{i : s is the selected element nearest to g_i}

Memory: O(chunk * N + N * dim). D is never held whole: a pass computes it `chunk` rows at a
time, and the greedy keeps per point only its current cover max_{j in S} s_ij.
Lazy greedy (Minoux): gains only shrink as S grows (submodularity), so a stale gain is an
upper bound; the top of a max-heap of bounds is re-evaluated (one row of D) until a fresh
gain is on top. It picks exactly the plain greedy's set (same order of candidates on ties).

Ties: among gains equal within a tolerance (`tie_rtol`) the lower row index is picked
(plain and lazy alike). A point at
equal distance from two selected elements counts for the one selected first (a later pick
takes a point over only when it is strictly nearer).
"""
from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .class_budget import split_by_class

__all__ = ["DISTANCES", "CraigResult", "craig_per_class", "facility_location", "max_distance"]


@dataclass
class CraigResult:
    """picks int64 [k] (rows, pick order); weights [k] (points whose nearest pick it is; sum N);
    gains [k] (marginal gain of each pick); nearest int64 [N] (position in `picks` of each
    point's nearest pick); evaluations: candidate gains computed (lazy greedy's saving)."""

    picks: torch.Tensor
    weights: torch.Tensor
    gains: torch.Tensor
    nearest: torch.Tensor
    evaluations: int


DISTANCES = ("squared", "euclidean")


def _distances(grads: torch.Tensor, sq: torch.Tensor, rows: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """[len(rows), N] Euclidean (squared: squared Euclidean) distances of grads[rows] to every row;
    exact 0 on each row's own column."""
    sub = grads[rows]
    d2 = sq[rows, None] + sq[None, :] - 2.0 * sub @ grads.T
    dist = d2.clamp_min_(0.0) if squared else d2.clamp_min_(0.0).sqrt_()
    # the expansion leaves round-off on the diagonal; a point is at distance 0 from itself
    dist[torch.arange(len(rows), device=grads.device), rows] = 0.0
    return dist


def max_distance(grads: torch.Tensor, chunk: int, squared: bool = False) -> torch.Tensor:
    """max_ij ||g_i - g_j|| (squared: its square) of grads [N, dim], `chunk` rows at a time (a 0-dim tensor)."""
    sq = grads.pow(2).sum(1)
    n = grads.shape[0]
    best = grads.new_zeros(())
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(s + chunk, n), device=grads.device)
        best = torch.maximum(best, _distances(grads, sq, rows, squared).max())
    return best


def facility_location(
    grads: torch.Tensor, k: int, chunk: int = 1024, lazy: bool = True, tie_rtol: float | None = None,
    distance: str = "squared",
) -> CraigResult:
    """Greedy facility location on s = max(D) - D over the rows of grads [N, dim]; k picks.

    distance: "squared" (D = squared Euclidean distance, as the ACS/CORDS code) or "euclidean".

    chunk: rows of D computed at once (memory chunk * N). lazy: Minoux's lazy greedy (same
    picks as the plain greedy, which re-evaluates every candidate each round).
    tie_rtol: gains within tie_rtol * (the first pick's gain) of the round's best are ties,
    broken to the lower index. Facility location has exact ties (two mutually nearest
    points each gain the same), which round-off would otherwise break arbitrarily.
    Default: 64 machine epsilons of the dtype.
    """
    n = grads.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n} points, got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
    squared = distance == "squared"
    dev = grads.device
    # distances do not change under translation; centring shrinks the cancellation in |a|^2 + |b|^2 - 2ab
    grads = grads - grads.mean(0, keepdim=True)
    sq = grads.pow(2).sum(1)
    top = max_distance(grads, chunk, squared)
    cover = grads.new_zeros(n)  # max_{j in S} s_ij, 0 for the empty set
    nearest_dist = torch.full((n,), float("inf"), dtype=grads.dtype, device=dev)
    nearest = torch.full((n,), -1, dtype=torch.int64, device=dev)
    taken = torch.zeros(n, dtype=torch.bool, device=dev)

    def gains_of(rows: torch.Tensor) -> torch.Tensor:
        sim = top - _distances(grads, sq, rows, squared)
        return (sim - cover[None, :]).clamp_min_(0.0).sum(1)

    def gains_of_list(rows: list[int]) -> list[float]:  # `chunk` rows of D at a time
        return [g for s in range(0, len(rows), chunk) for g in gains_of(torch.tensor(rows[s : s + chunk], device=dev)).tolist()]

    def all_gains() -> torch.Tensor:
        out = torch.cat([gains_of(torch.arange(s, min(s + chunk, n), device=dev)) for s in range(0, n, chunk)])
        return out.masked_fill_(taken, float("-inf"))

    picks: list[int] = []
    gains: list[float] = []
    evaluations = n
    first = all_gains() if k else grads.new_zeros(0)
    rtol = 64 * torch.finfo(grads.dtype).eps if tie_rtol is None else tie_rtol
    tol = rtol * float(first.max()) if k else 0.0
    heap = [(-g, i, 0) for i, g in enumerate(first.tolist())] if lazy else []  # (-bound, row, round evaluated)
    heapq.heapify(heap)
    for step in range(k):
        if lazy:
            pick, gain, used = _lazy_pick(heap, step, tol, gains_of_list)
            evaluations += used
        else:
            scores = first if step == 0 else all_gains()
            evaluations += 0 if step == 0 else n - step
            best = float(scores.max())
            pick = int(torch.nonzero(scores >= best - tol)[0])  # ties (within tol): the lower index
            gain = float(scores[pick])
        dist = _distances(grads, sq, torch.tensor([pick], device=dev), squared)[0]
        closer = dist < nearest_dist  # strict: ties stay with the earlier pick
        nearest = torch.where(closer, torch.full_like(nearest, step), nearest)
        nearest_dist = torch.where(closer, dist, nearest_dist)
        cover = torch.maximum(cover, top - dist)
        taken[pick] = True
        picks.append(pick)
        gains.append(gain)
    weights = torch.bincount(nearest[nearest >= 0], minlength=k).to(grads.dtype) if k else grads.new_zeros(0)
    return CraigResult(
        torch.tensor(picks, dtype=torch.int64, device=dev), weights, torch.tensor(gains, dtype=grads.dtype, device=dev),
        nearest, evaluations,
    )


def _lazy_pick(
    heap: list[tuple[float, int, int]], step: int, tol: float, evaluate: Callable[[list[int]], list[float]]
) -> tuple[int, float, int]:
    """Pop the plain greedy's pick from a heap of (-bound, row, round evaluated): the lowest row
    whose exact gain is within `tol` of the round's best. Returns (row, gain, evaluations).

    Bounds only overestimate, so once a fresh gain g is on top it is the round's best; every
    entry with bound >= g - tol is then made fresh (batched) until they all are, and the lowest
    row among them is the pick; the rest go back on the heap.
    """
    used = 0
    while True:
        if heap[0][2] != step:  # stale top: refresh it and look again
            _, i, _ = heapq.heappop(heap)
            heapq.heappush(heap, (-evaluate([i])[0], i, step))
            used += 1
            continue
        best = -heap[0][0]
        group = []
        while heap and -heap[0][0] >= best - tol:
            group.append(heapq.heappop(heap))
        stale = [i for _, i, seen in group if seen != step]
        if stale:
            fresh = dict(zip(stale, evaluate(stale)))
            used += len(stale)
            for neg, i, seen in group:
                heapq.heappush(heap, (-fresh[i], i, step) if i in fresh else (neg, i, seen))
            continue
        chosen = min(group, key=lambda entry: entry[1])
        for entry in group:
            if entry is not chosen:
                heapq.heappush(heap, entry)
        return chosen[1], -chosen[0], used


def craig_per_class(
    grads: torch.Tensor, labels: torch.Tensor, budget: int, chunk: int = 1024, lazy: bool = True,
    tie_rtol: float | None = None, distance: str = "squared",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Facility location inside each class, budgets proportional to class size (class_budget.py).

    grads [N, dim], labels int64 [N] -> (positions int64 [budget] into the rows, in class
    order then pick order; weights [budget], per class summing to the class size). A class
    whose rounded budget is 0 has no representative, so the weights then sum to less than N.
    """
    if grads.shape[0] != labels.shape[0]:
        raise ValueError(f"{grads.shape[0]} gradient rows but {labels.shape[0]} labels")
    positions, weights = [], []
    for rows, k in split_by_class(labels, budget):
        if k == 0:
            continue
        result = facility_location(grads[rows], k, chunk, lazy, tie_rtol, distance)
        positions.append(rows[result.picks])
        weights.append(result.weights)
    if not positions:
        return torch.zeros(0, dtype=torch.int64, device=grads.device), grads.new_zeros(0)
    return torch.cat(positions), torch.cat(weights)
