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
