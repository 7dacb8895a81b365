import math

import pytest
import torch

from robustssl.losses import nt_xent


def nt_xent_loop(z: torch.Tensor, n_views: int, tau: float, positives: str = "mean") -> float:
    """Direct transcription of the definition, one anchor and one positive at a time; an anchor's
    terms are averaged (positives="mean") or summed ("sum")."""
    n = z.shape[0]
    b = n // n_views
    z = torch.nn.functional.normalize(z.double(), dim=1)
    total = 0.0
    for a in range(n):
        denom = sum(math.exp(float(z[a] @ z[k]) / tau) for k in range(n) if k != a)
        terms = [-math.log(math.exp(float(z[a] @ z[p]) / tau) / denom) for p in range(n) if p != a and p % b == a % b]
        total += sum(terms) / (len(terms) if positives == "mean" else 1)
    return total / n


@pytest.mark.parametrize("n_views,b,d,tau,positives", [
    (2, 5, 7, 0.5, "mean"), (2, 8, 3, 0.1, "mean"), (3, 4, 6, 0.2, "mean"), (3, 4, 6, 0.2, "sum"), (2, 5, 7, 0.5, "sum"),
])
def test_nt_xent_matches_loop_reference(n_views, b, d, tau, positives):
    torch.manual_seed(n_views * 100 + b)
    z = torch.randn(n_views * b, d)
    expected = nt_xent_loop(z, n_views, tau, positives)
    assert float(nt_xent(z, n_views, tau, positives=positives)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_nt_xent_is_low_for_aligned_views_and_rejects_bad_shapes():
    torch.manual_seed(0)
    base = torch.randn(6, 16)
    aligned = nt_xent(torch.cat([base, base]), 2, 0.1)
    shuffled = nt_xent(torch.cat([base, base[torch.randperm(6)]]), 2, 0.1)
    assert aligned < shuffled
    with pytest.raises(ValueError):
        nt_xent(torch.randn(7, 4), 2, 0.5)


@pytest.mark.parametrize("n_views,groups,b", [(2, 3, 4), (3, 2, 5)])
def test_grouped_nt_xent_is_the_sum_of_each_groups_own_loss(n_views, groups, b):
    """Stacked candidate batches (coreset selection): each group's images are each other's only
    negatives, and the result is the sum of the groups' own losses (weights per group too)."""
    torch.manual_seed(groups * 10 + b)
    z = torch.randn(n_views * groups * b, 5)
    w = torch.rand(groups * b)
    per_view = z.view(n_views, groups, b, 5)
    own = [per_view[:, g].reshape(n_views * b, 5) for g in range(groups)]
    expected = sum(nt_xent_loop(o, n_views, 0.3) for o in own)
    assert float(nt_xent(z, n_views, 0.3, groups=groups)) == pytest.approx(expected, rel=1e-5)
    weighted = sum(float(nt_xent(o, n_views, 0.3, w.view(groups, b)[g])) for g, o in enumerate(own))
    assert float(nt_xent(z, n_views, 0.3, w, groups=groups)) == pytest.approx(weighted, rel=1e-5)
    assert float(nt_xent(z, n_views, 0.3)) != pytest.approx(expected / groups, rel=1e-3), "one big batch is a different loss"
    with pytest.raises(ValueError, match="equal groups"):
        nt_xent(z, n_views, 0.3, groups=groups * b + 1)
