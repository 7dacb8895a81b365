"""Per-class budgets for selectors that select inside each class (Adv. CRAIG, Adv. GradMatch).

Used by coreset/craig.py and coreset/gradmatch.py (the ACS selectors for supervised AT with
coreset.unit=sample) and by class-balanced RCS (coreset/rcs.py) (Dolatabadi et al.,
arXiv:2209.05785, the method section: selection per class, budget proportional to class size; summarized in shared/reference/methods.md section 6).

Rounding (largest remainder): class c of n_c examples (N in all) gets floor(total * n_c / N);
the units left over go one each to the classes with the largest fractional parts
total * n_c / N - floor(...), ties to the lower class id. The budgets then sum to `total`
exactly and none exceeds its class size (a class that gets a leftover unit had a non-zero
fractional part, so its floor was below n_c). A small class may get 0.
"""
from __future__ import annotations

import torch

__all__ = ["class_budgets", "split_by_class"]


def class_budgets(counts: torch.Tensor, total: int) -> torch.Tensor:
    """counts int64 [K] (examples per class) -> int64 [K] budgets summing to `total` (see module doc)."""
    counts = counts.to(torch.int64).cpu()
    n = int(counts.sum())
    if (counts < 0).any():
        raise ValueError(f"class counts must be >= 0, got {counts.tolist()}")
    if not 0 <= total <= n:
        raise ValueError(f"total budget must be in 0..{n} examples, got {total}")
    if n == 0:
        return torch.zeros_like(counts)
    scaled = counts * total  # exact integers: floor and remainder without float round-off
    base = scaled // n
    remainder = scaled - base * n
    left = total - int(base.sum())
    # stable sort on -remainder: equal remainders keep class order (lower id first)
    order = torch.sort(-remainder, stable=True).indices
    base[order[:left]] += 1
    return base


def split_by_class(labels: torch.Tensor, total: int) -> list[tuple[torch.Tensor, int]]:
    """labels int64 [N] -> [(positions int64 [n_c] of class c, budget_c)] for the classes present, class order.

    Positions are indices into `labels` (ascending); budgets come from `class_budgets`.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be [N], got {tuple(labels.shape)}")
    classes, counts = torch.unique(labels.cpu(), return_counts=True)
    budgets = class_budgets(counts, total)
    cpu = labels.cpu()
    return [
        (torch.nonzero(cpu == c).flatten().to(labels.device), int(b)) for c, b in zip(classes.tolist(), budgets.tolist())
    ]
