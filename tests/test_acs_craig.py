"""Adversarial CRAIG's facility location (coreset/craig.py) and the per-class budgets (class_budget.py)."""
from __future__ import annotations

import itertools

import pytest
import torch

from robustssl.coreset.class_budget import class_budgets, split_by_class
from robustssl.coreset.craig import craig_per_class, facility_location, max_distance


def _points(n: int, dim: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(3, dim, generator=g, dtype=torch.float64)
    return centres[torch.arange(n) % 3] + torch.randn(n, dim, generator=g, dtype=torch.float64)


def _dense(x: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    d2 = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)  # by differences, not the expansion
    return d2 if distance == "squared" else d2.sqrt()


def _coverage(sim: torch.Tensor, subset: list[int]) -> float:
    return float(sim[:, subset].max(1).values.sum()) if subset else 0.0


def _brute_force_greedy(x: torch.Tensor, k: int, distance: str = "euclidean") -> list[int]:
    """Greedy facility location evaluating F(S + e) from the dense similarity matrix max(D) - D.

    Gains within 1e-9 of the first pick's gain are ties, broken to the lower index (facility
    location has exact ties: two mutually nearest points gain the same)."""
    dist = _dense(x, distance)
    sim = dist.max() - dist
    chosen: list[int] = []
    tol = 0.0
    for _ in range(k):
        base = _coverage(sim, chosen)
        gains = [(float("-inf") if e in chosen else _coverage(sim, [*chosen, e]) - base) for e in range(len(x))]
        tol = tol or 1e-9 * max(gains)
        chosen.append(next(e for e in range(len(x)) if gains[e] >= max(gains) - tol))
    return chosen


@pytest.mark.parametrize("distance", ["squared", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 4, 7, 15])
def test_greedy_equals_brute_force_facility_location(seed, k, distance):
    x = _points(15, seed=seed)
    expected = _brute_force_greedy(x, k, distance)
    for lazy in (True, False):
        result = facility_location(x, k, chunk=4, lazy=lazy, distance=distance)
        assert result.picks.tolist() == expected
    # the gains are the marginal gains of F along the picks
    dist = _dense(x, distance)
    sim = dist.max() - dist
    gains = [_coverage(sim, expected[: i + 1]) - _coverage(sim, expected[:i]) for i in range(k)]
    torch.testing.assert_close(result.gains, torch.tensor(gains, dtype=torch.float64))


def test_default_similarity_is_max_minus_squared_distance_as_acs():
    """ACS/CORDS build s = max(D) - D from the SQUARED Euclidean distance; that is the default, and
    the plain distance (a different similarity, here different picks) is the setting `euclidean`."""
    x = _points(40, dim=3, seed=11)
    squared, plain = _brute_force_greedy(x, 8, "squared"), _brute_force_greedy(x, 8, "euclidean")
    assert squared != plain  # the two similarities pick differently on these points
    assert facility_location(x, 8).picks.tolist() == squared
    assert facility_location(x, 8, distance="euclidean").picks.tolist() == plain
    per_class, _ = craig_per_class(x, torch.zeros(40, dtype=torch.int64), 8)
    assert per_class.tolist() == squared


def test_greedy_reaches_the_submodular_guarantee_against_the_optimum():
    x = _points(12, seed=5)
    dist = _dense(x)
    sim = dist.max() - dist
    k = 3
    best = max(_coverage(sim, list(s)) for s in itertools.combinations(range(12), k))
    got = _coverage(sim, facility_location(x, k).picks.tolist())
    assert got >= (1 - 1 / torch.e) * best - 1e-9 and got <= best + 1e-9


def test_lazy_greedy_picks_the_same_set_with_fewer_evaluations():
    x = _points(200, dim=6, seed=3)
    plain = facility_location(x, 20, chunk=37, lazy=False)
    lazy = facility_location(x, 20, chunk=37, lazy=True)
    assert lazy.picks.tolist() == plain.picks.tolist()
    torch.testing.assert_close(lazy.weights, plain.weights)
    assert lazy.evaluations < plain.evaluations


@pytest.mark.parametrize("chunk", [1, 3, 7, 20, 1000])
def test_chunked_equals_unchunked(chunk):
    x = _points(20, seed=4)
    whole = facility_location(x, 6, chunk=20)
    part = facility_location(x, 6, chunk=chunk)
    assert part.picks.tolist() == whole.picks.tolist()
    torch.testing.assert_close(part.gains, whole.gains)
    torch.testing.assert_close(part.weights, whole.weights)
    torch.testing.assert_close(max_distance(x, chunk), _dense(x).max())


def test_weights_count_the_points_whose_nearest_pick_it_is():
    x = _points(18, seed=6)
    result = facility_location(x, 5, chunk=5)
    dist = _dense(x)[:, result.picks]
    nearest = dist.argmin(1)  # first minimum: ties to the earlier pick, as documented
    assert result.nearest.tolist() == nearest.tolist()
    assert result.weights.tolist() == torch.bincount(nearest, minlength=5).double().tolist()
    assert float(result.weights.sum()) == 18
    assert (result.weights >= 1).all()  # each pick is at least its own nearest


def test_equidistant_point_counts_for_the_earlier_pick():
    # integer points on a line: distances are exact, so equidistant points are exact ties
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [10.0]], dtype=torch.float64)
    result = facility_location(x, 3, distance="euclidean")  # these picks leave equidistant points
    dist = _dense(x)[:, result.picks]
    n_ties = 0
    for i in range(len(x)):
        ties = torch.nonzero(dist[i] == dist[i].min()).flatten()
        n_ties += len(ties) > 1
        assert int(result.nearest[i]) == int(ties[0])  # the earliest pick among the nearest
    assert n_ties  # the case is exercised


def test_duplicates_and_full_budget():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
    result = facility_location(x, 4)
    assert sorted(result.picks.tolist()) == [0, 1, 2, 3]
    assert float(result.weights.sum()) == 4
    assert facility_location(x, 0).picks.numel() == 0
    with pytest.raises(ValueError, match="k must be"):
        facility_location(x, 5)


@pytest.mark.parametrize("counts,total", [([5, 3, 2], 4), ([7, 7, 7], 10), ([1, 1, 98], 3), ([4, 0, 6], 5), ([10, 20, 30], 60)])
def test_class_budgets_sum_to_total_and_fit_the_classes(counts, total):
    budgets = class_budgets(torch.tensor(counts), total)
    assert int(budgets.sum()) == total
    assert (budgets <= torch.tensor(counts)).all() and (budgets >= 0).all()
    n = sum(counts)
    assert ((budgets - torch.tensor(counts) * total / n).abs() < 1).all()  # within one unit of proportional


def test_class_budgets_largest_remainder_ties_to_lower_class():
    # 10 * 7/21 = 3.33 each: one unit left, equal remainders -> class 0
    assert class_budgets(torch.tensor([7, 7, 7]), 10).tolist() == [4, 3, 3]
    # 5 * [2, 3, 5]/10 = 1.0, 1.5, 2.5: two units left go to the fractional classes 1 and 2
    assert class_budgets(torch.tensor([2, 3, 5]), 5).tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="total budget"):
        class_budgets(torch.tensor([2, 3]), 6)


def test_craig_per_class_budget_and_weights():
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([0] * 9 + [1] * 6 + [2] * 5)[torch.randperm(20, generator=g)]
    x = _points(20, seed=7)
    positions, weights = craig_per_class(x, labels, 7, chunk=4)
    budgets = dict(zip(*(t.tolist() for t in torch.unique(labels, return_counts=True))))
    expected = class_budgets(torch.tensor(list(budgets.values())), 7).tolist()
    picked = labels[positions]
    assert [int((picked == c).sum()) for c in budgets] == expected and len(positions) == 7
    for c, n_c in budgets.items():  # weights per class count the class's points
        assert float(weights[picked == c].sum()) == n_c
    for rows, k in split_by_class(labels, 7):  # each class's picks are its own facility location
        mask = labels[positions] == labels[rows[0]]
        assert positions[mask].tolist() == rows[facility_location(x[rows], k).picks].tolist()


@pytest.mark.parametrize("lazy", [True, False])
def test_distances_are_computed_chunk_rows_at_a_time(monkeypatch, lazy):
    from robustssl.coreset import craig

    shapes = []
    real = craig._distances

    def spy(grads, sq, rows, squared=False):
        out = real(grads, sq, rows, squared)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(craig, "_distances", spy)
    x = _points(60, seed=8)
    facility_location(x, 10, chunk=8, lazy=lazy)
    assert shapes and max(rows for rows, _ in shapes) <= 8  # never a dense 60 x 60
