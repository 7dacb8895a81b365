"""Adversarial GradMatch's numerical core: non-negative orthogonal matching pursuit (OMP).

The core of the Adv. GradMatch selector (`GradMatchSelector` in coreset/acs.py, registered as
`gradmatch`) of supervised adversarial training (Dolatabadi et al., "Adversarial Coreset
Selection for Efficient Robust Training", IJCV 2023, arXiv:2209.05785, the method section's Adversarial GradMatch, after Killamsetty et al. 2021;
summarized in shared/reference/methods.md section 6): the atoms are per-example last-layer gradients at
adversarial inputs (losses/last_layer.py), or mean gradients of fixed minibatches
(coreset.unit=batch, ACS's GradMatchPB; one OMP over all batches, no classes).

    min_{S, |S| <= k, w >= 0}  || sum_{i in S} w_i g_i - target ||^2 + lam * ||w||^2

OMP grows S one atom at a time: the atom most positively correlated with the residual
(only a positive correlation can lower the error with w >= 0), then re-solves w >= 0 on S
exactly (Lawson-Hanson active set on the k x k Gram matrix, warm-started from the last w).

Target: the SUM of the atoms (the class's, per class), as in GradMatch, so a weight reads as
"how many examples this one stands for" (like CRAIG's counts). Weights are then normalized
over the whole selected subset to average 1 (`normalize_weights`); the ACS code divides
them by their sum inside each minibatch, where they cancel (its defect 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .class_budget import split_by_class

__all__ = ["OMPResult", "gradmatch_select", "nnls_gram", "nonnegative_omp", "normalize_weights"]


@dataclass
class OMPResult:
    """support int64 [m <= k] (rows in pick order); weights [m] >= 0, the NNLS solution on
    the support (an atom can end at 0 after later picks); residual: ||A_S^T w - target||."""

    support: torch.Tensor
    weights: torch.Tensor
    residual: float


def _solve_pd(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """gram^-1 rhs for a symmetric PSD gram: Cholesky, or the pseudo-inverse when singular (dependent atoms, lam = 0)."""
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(rhs[:, None], factor)[:, 0]
    return torch.linalg.pinv(gram, hermitian=True) @ rhs


def nnls_gram(gram: torch.Tensor, c: torch.Tensor, start: torch.Tensor | None = None, max_iter: int | None = None) -> torch.Tensor:
    """argmin_{w >= 0} 0.5 w^T gram w - c^T w (Lawson-Hanson), gram [m, m] PSD, c [m] -> w [m].

    With gram = A A^T + lam I and c = A y this is min ||A^T w - y||^2 + lam ||w||^2, w >= 0.
    start: a feasible w whose positive part is optimal on its own support (the previous OMP
    solution padded with 0): the usual warm start. KKT at return: w >= 0, (c - gram w)_i = 0
    where w_i > 0 and <= 0 where w_i = 0 (up to round-off).
    """
    m = c.shape[0]
    w = c.new_zeros(m) if start is None else start.clone().clamp_min_(0.0)
    if m == 0:
        return w
    eps = torch.finfo(c.dtype).eps
    # scale of the dual: round-off of c - gram w is about eps * (|c| + |gram| |w|)
    tol = 64 * eps * (float(c.abs().max()) + float(gram.abs().max()) * max(1.0, float(w.abs().sum())))
    passive = w > 0
    for _ in range(max_iter if max_iter is not None else 3 * m + 10):
        dual = (c - gram @ w).masked_fill(passive, float("-inf"))
        j = int(torch.argmax(dual))
        if float(dual[j]) <= tol:
            break
        passive[j] = True
        while True:  # solve on the passive set; step back to feasibility while a part goes <= 0
            s = torch.zeros_like(w)
            idx = torch.nonzero(passive).flatten()
            s[idx] = _solve_pd(gram[idx][:, idx], c[idx])
            if bool((s[idx] > 0).all()):
                w = s
                break
            bad = passive & (s <= 0)
            alpha = float((w[bad] / (w[bad] - s[bad])).min())
            w = w + alpha * (s - w)
            passive &= w > eps * float(w.abs().max())
            w = torch.where(passive, w, torch.zeros_like(w))
            if not passive.any():
                break
    return w


def nonnegative_omp(atoms: torch.Tensor, target: torch.Tensor, k: int, lam: float = 0.0, rtol: float | None = None) -> OMPResult:
    """Non-negative OMP: up to k rows of atoms [n, dim] and w >= 0 matching target [dim].

    lam: the l2 regularizer on w (GradMatch's; 0 = plain least squares).
    Stops early when the residual is within rtol * ||target|| or no unpicked atom has a
    cosine above rtol with the residual (default rtol: sqrt of the dtype's epsilon).
    """
    n = atoms.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n} atoms, got {k}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    rtol = torch.finfo(atoms.dtype).eps ** 0.5 if rtol is None else rtol
    norms = atoms.norm(dim=1)
    target_norm = float(target.norm())
    gram = atoms.new_zeros(k, k)  # A_S A_S^T + lam I, grown one row/column per pick
    c = atoms.new_zeros(k)  # A_S target
    support: list[int] = []
    w = atoms.new_zeros(0)
    residual = target.clone()
    taken = torch.zeros(n, dtype=torch.bool, device=atoms.device)
    for t in range(k):
        res_norm = float(residual.norm())
        if res_norm <= rtol * target_norm:
            break
        corr = (atoms @ residual).masked_fill_(taken, float("-inf"))
        j = int(torch.argmax(corr))
        if float(corr[j]) <= rtol * float(norms[j]) * res_norm:  # no atom can lower the error with w_j > 0
            break
        taken[j] = True
        support.append(j)
        cross = atoms[support] @ atoms[j]
        gram[t, : t + 1] = cross
        gram[: t + 1, t] = cross
        gram[t, t] += lam
        c[t] = atoms[j] @ target
        w = nnls_gram(gram[: t + 1, : t + 1], c[: t + 1], start=torch.cat([w, w.new_zeros(1)]))
        residual = target - w @ atoms[support]
    return OMPResult(torch.tensor(support, dtype=torch.int64, device=atoms.device), w, float(residual.norm()))


def normalize_weights(weights: torch.Tensor) -> torch.Tensor:
    """Scale weights [m] (>= 0, positive sum) to average 1 over the whole subset; relative sizes are kept."""
    total = weights.sum()
    if weights.numel() == 0:
        return weights
    if not float(total) > 0:
        raise ValueError("cannot normalize coreset weights whose sum is not positive")
    return weights * (weights.numel() / total)


def gradmatch_select(
    grads: torch.Tensor, labels: torch.Tensor | None, budget: int, lam: float = 0.0, rtol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adv. GradMatch: OMP per class (labels given; budgets proportional to class size, see
    class_budget.py) matching each class's summed gradient, or over all rows (labels None)
    matching the summed gradient.

    grads [N, dim] (rows: examples, or fixed batches' mean gradients). Returns (positions
    int64 [m <= budget] into the rows, class order then pick order; weights [m] > 0 averaging
    1 over the whole subset). Atoms whose NNLS weight is 0 are dropped (they do not take part
    in the match), and OMP may stop before its budget (exact match, or no atom left that
    helps): the subset can be smaller than `budget`; the caller decides how to fill it.
    """
    if labels is not None and labels.shape[0] != grads.shape[0]:
        raise ValueError(f"{grads.shape[0]} gradient rows but {labels.shape[0]} labels")
    groups = [(torch.arange(grads.shape[0], device=grads.device), budget)] if labels is None else split_by_class(labels, budget)
    positions, weights = [], []
    for rows, k in groups:
        if k == 0:
            continue
        atoms = grads[rows]
        result = nonnegative_omp(atoms, atoms.sum(0), k, lam, rtol)
        keep = result.weights > 0
        positions.append(rows[result.support[keep]])
        weights.append(result.weights[keep])
    if not positions:
        return torch.zeros(0, dtype=torch.int64, device=grads.device), grads.new_zeros(0)
    return torch.cat(positions), normalize_weights(torch.cat(weights))
