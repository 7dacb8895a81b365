"""The RCS greedy engine (Xu et al. 2023, Alg. 1; W: the differentiated projector parameters).

    W <- W0; S <- {}; g_val <- grad RD(V; W)
    repeat budget times:
        b* <- argmax_{b not in S} <g_b, g_val>;  S <- S + {b*}
        W  <- W - eta * g_{b*}                  # ONE simulated SGD step of the head
        every `refresh_every` picks: g_val <- grad RD(V; W)
    (W0 itself is never modified: the simulation works on a copy.)

With refresh_every = r, the r picks between refreshes are the top-r scores at once (the
scores do not change until g_val does), which is exactly the sequential loop, vectorized.
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
) -> GreedyResult:
    """grads [n, dim] candidate gradients; w0 [dim] head parameters; val_gradient(w) -> [dim].

    eta: the simulated step per pick (the caller scales it to the candidates' unit: a row that
    is one image's share of a summed batch loss takes eta / batch_size).

    sketch [dim, k] (optional): score with <g_b P, g_val P> instead of the full inner product
    (the simulated step still uses the full gradient). Returns picks and their gains.
    """
    n = grads.shape[0]
    if not 0 < budget <= n:
        raise ValueError(f"budget must be in 1..{n} candidates, got {budget}")
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
        top = torch.topk(scores, k).indices
        done += k
        taken[top] = True
        picks.append(top)
        gains.append(scores[top])
        w = w - eta * grads[top].sum(0)  # one step per pick, eta each
    return GreedyResult(torch.cat(picks), torch.cat(gains), refreshes, w)
