"""The RCS greedy engine (Xu et al. 2023, Alg. 1; W: the differentiated projector parameters).

    W <- W0; S <- {}; g_val <- grad RD(V; W)
    repeat budget times:
        b* <- argmax_{b not in S} <g_b, g_val>;  S <- S + {b*}
        W  <- W - eta * g_{b*}                  # ONE simulated SGD step of the head
        every `refresh_every` picks: g_val <- grad RD(V; W)
    (W0 itself is never modified: the simulation works on a copy.)

With refresh_every = r, the r picks between refreshes are the top-r scores at once (the
scores do not change until g_val does), which is exactly the sequential loop, vectorized.

Class caps (optional): candidate b belongs to class groups[b], and class c may take at most
caps[c] picks; the argmax then runs over the candidates of classes not yet full (with r > 1:
the best r scores that respect the caps, taken in score order, again the sequential loop).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class GreedyResult:
    picks: torch.Tensor  # int64 [budget], candidate rows in pick order
    gains: torch.Tensor  # float [budget], <g_b, g_val> at the time of each pick
    refreshes: int
    w: torch.Tensor  # float [dim], the simulated parameters after the last pick's step


def greedy_select(
    grads: torch.Tensor,
    w0: torch.Tensor,
    val_gradient: Callable[[torch.Tensor], torch.Tensor],
    budget: int,
    eta: float,
    refresh_every: int = 1,
    sketch: torch.Tensor | None = None,
    caps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> GreedyResult:
    """grads [n, dim] candidate gradients; w0 [dim] head parameters; val_gradient(w) -> [dim].

    eta: the simulated step per pick (the caller scales it to the candidates' unit: a row that
    is one image's share of a summed batch loss takes eta / batch_size).

    sketch [dim, k] (optional): score with <g_b P, g_val P> instead of the full inner product
    (the simulated step still uses the full gradient). Returns picks and their gains.

    caps (optional): (groups int64 [n] in 0..K-1, caps int64 [K]) with sum(caps) == budget and
    caps[c] <= the candidates of class c: at most caps[c] picks from class c.
    """
    n = grads.shape[0]
    if not 0 < budget <= n:
        raise ValueError(f"budget must be in 1..{n} candidates, got {budget}")
    left = None
    if caps is not None:
        groups, left = caps[0].to(grads.device), caps[1].to(grads.device).clone()
        if int(left.sum()) != budget or groups.shape != (n,) or (left > torch.bincount(groups, minlength=len(left))).any():
            raise ValueError("class caps must sum to the budget and not exceed each class's candidates")
    if refresh_every < 1:
        raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
    scored = grads if sketch is None else grads @ sketch
    w = w0.detach().clone()
    taken = torch.zeros(n, dtype=torch.bool, device=grads.device)
    picks, gains, refreshes, done = [], [], 0, 0
    while done < budget:
        g_val = val_gradient(w)
        refreshes += 1
        scores = scored @ (g_val if sketch is None else g_val @ sketch)
        scores = scores.masked_fill(taken, float("-inf"))
        k = min(refresh_every, budget - done)
        top = torch.topk(scores, k).indices if left is None else _capped_top(scores, groups, left, k)
        done += k
        taken[top] = True
        picks.append(top)
        gains.append(scores[top])
        w = w - eta * grads[top].sum(0)  # one step per pick, eta each
    return GreedyResult(torch.cat(picks), torch.cat(gains), refreshes, w)


def _capped_top(scores: torch.Tensor, groups: torch.Tensor, left: torch.Tensor, k: int) -> torch.Tensor:
    """The k best candidates, in score order, taking at most left[c] from class c (updates `left`).

    scores [n] (-inf: taken); every class with left > 0 has enough untaken candidates."""
    chosen: list[torch.Tensor] = []
    scores = scores.clone()
    while k > 0:
        masked = scores.masked_fill(left[groups] <= 0, float("-inf"))
        top = torch.topk(masked, k).indices  # descending scores
        cls = groups[top]
        rank = torch.nn.functional.one_hot(cls, len(left)).cumsum(0)[torch.arange(len(top), device=top.device), cls] - 1
        keep = top[rank < left[cls]]  # the first left[c] of each class, in score order (at least the best one)
        left -= torch.bincount(groups[keep], minlength=len(left))
        scores[keep] = float("-inf")
        chosen.append(keep)
        k -= len(keep)
    return torch.cat(chosen)
