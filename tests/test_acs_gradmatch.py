"""Adversarial GradMatch's non-negative OMP (coreset/gradmatch.py)."""
from __future__ import annotations

import itertools

import pytest
import torch

from robustssl.coreset.class_budget import class_budgets
from robustssl.coreset.gradmatch import gradmatch_select, nnls_gram, nonnegative_omp, normalize_weights


def _gaussian(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gradient_like(n: int, dim: int, seed: int) -> torch.Tensor:
    """Rows sharing a mean direction plus noise, as one class's gradients do."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g, dtype=torch.float64) + 0.8 * torch.randn(n, dim, generator=g, dtype=torch.float64)


def _assert_kkt(gram: torch.Tensor, c: torch.Tensor, w: torch.Tensor, atol: float = 1e-9) -> None:
    """w solves min 0.5 w^T G w - c^T w, w >= 0: feasible, stationary on its support, no descent off it."""
    dual = c - gram @ w
    scale = float(c.abs().max())
    assert (w >= 0).all()
    assert (dual[w > 0].abs() <= atol * scale).all()
    assert (dual[w == 0] <= atol * scale).all()


@pytest.mark.parametrize("seed", range(6))
def test_omp_recovers_an_exact_nonnegative_combination(seed):
    atoms = _gaussian(20, 30, seed)
    true = {3: 2.0, 7: 0.5, 11: 1.3}
    target = sum(v * atoms[i] for i, v in true.items())
    result = nonnegative_omp(atoms, target, k=6)
    assert sorted(result.support.tolist()) == sorted(true)  # stops once the match is exact
    got = dict(zip(result.support.tolist(), result.weights.tolist()))
    for i, v in true.items():
        assert got[i] == pytest.approx(v, rel=1e-8)
    assert result.residual <= 1e-8 * float(target.norm())


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("seed", range(4))
def test_omp_weights_solve_the_nonnegative_problem_on_their_support(lam, seed):
    atoms = _gaussian(25, 12, seed)
    target = atoms[:10].sum(0) - 0.5 * atoms[10:].sum(0)  # no 8 atoms match it exactly
    result = nonnegative_omp(atoms, target, k=8, lam=lam)
    a = atoms[result.support]
    gram = a @ a.T + lam * torch.eye(len(a), dtype=a.dtype)
    _assert_kkt(gram, a @ target, result.weights)
    torch.testing.assert_close(torch.tensor(result.residual, dtype=torch.float64), (result.weights @ a - target).norm())


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_omp_weights_equal_least_squares_when_that_is_nonnegative(lam):
    atoms = _gradient_like(30, 40, seed=1)
    target = atoms.sum(0)
    result = nonnegative_omp(atoms, target, k=6, lam=lam)
    assert len(result.support) == 6 and (result.weights > 0).all()
    a = atoms[result.support]
    # [A^T; sqrt(lam) I] w ~ [y; 0]: the regularized least squares as one lstsq
    lhs = torch.cat([a.T, lam**0.5 * torch.eye(6, dtype=a.dtype)])
    rhs = torch.cat([target, torch.zeros(6, dtype=a.dtype)])
    expected = torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0]
    torch.testing.assert_close(result.weights, expected, rtol=1e-9, atol=1e-10)


def _nnls_by_enumeration(gram: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The unique KKT point of a strictly convex NNLS, found by trying every support."""
    m = len(c)
    for size in range(m + 1):
        for support in itertools.combinations(range(m), size):
            w = torch.zeros(m, dtype=c.dtype)
            if support:
                idx = list(support)
                w[idx] = torch.linalg.solve(gram[idx][:, idx], c[idx])
            dual = c - gram @ w
            if (w >= -1e-12).all() and (dual[[i for i in range(m) if i not in support]] <= 1e-10).all():
                return w
    raise AssertionError("no KKT point")


@pytest.mark.parametrize("seed", range(8))
def test_nnls_gram_equals_enumerated_active_sets(seed):
    a = _gaussian(6, 9, seed)
    y = _gaussian(1, 9, seed + 100)[0]
    gram, c = a @ a.T + 0.01 * torch.eye(6, dtype=a.dtype), a @ y
    w = nnls_gram(gram, c)
    torch.testing.assert_close(w, _nnls_by_enumeration(gram, c), rtol=1e-9, atol=1e-11)
    assert (w == 0).any() and (w > 0).any()  # both kinds of constraint are exercised (seeds checked)
    _assert_kkt(gram, c, w)


def test_nnls_gram_warm_start_gives_the_same_solution():
    a = _gaussian(7, 10, seed=3)
    y = a[:4].sum(0) - a[4:].sum(0)
    gram, c = a @ a.T, a @ y
    cold = nnls_gram(gram, c)
    warm_start = torch.cat([nnls_gram(gram[:6, :6], c[:6]), torch.zeros(1, dtype=a.dtype)])
    torch.testing.assert_close(nnls_gram(gram, c, start=warm_start), cold)


def test_gradmatch_per_class_budgets_and_subset_normalization():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 10)[torch.randperm(60, generator=g)]
    grads = torch.empty(60, 40, dtype=torch.float64)
    for c in range(3):
        rows = torch.nonzero(labels == c).flatten()
        grads[rows] = _gradient_like(len(rows), 40, seed=10 + c)
    positions, weights = gradmatch_select(grads, labels, budget=13)
    picked = labels[positions]
    expected = class_budgets(torch.tensor([30, 20, 10]), 13).tolist()
    assert [int((picked == c).sum()) for c in range(3)] == expected and len(positions) == 13
    assert len(set(positions.tolist())) == 13
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0, dtype=torch.float64))
    # one factor over the whole subset, not per class: the raw per-class OMP weights keep their ratios
    raw = []
    for c, k in enumerate(expected):
        rows = torch.nonzero(labels == c).flatten()
        result = nonnegative_omp(grads[rows], grads[rows].sum(0), k)
        assert rows[result.support].tolist() == positions[picked == c].tolist()
        raw.append(result.weights)
    raw_all = torch.cat(raw)
    torch.testing.assert_close(weights, raw_all * (13 / raw_all.sum()))
    assert not torch.allclose(weights[picked == 2].mean(), torch.tensor(1.0, dtype=torch.float64))


def test_gradmatch_over_all_rows_matches_the_total_gradient():
    grads = _gradient_like(40, 30, seed=4)
    positions, weights = gradmatch_select(grads, None, budget=10)
    result = nonnegative_omp(grads, grads.sum(0), 10)
    assert positions.tolist() == result.support[result.weights > 0].tolist()
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0, dtype=torch.float64))


def test_zero_weight_atoms_are_dropped_and_subset_may_be_smaller():
    atoms = _gaussian(10, 20, seed=2)
    target = atoms[0] + atoms[1]
    labels = torch.zeros(10, dtype=torch.int64)
    # gradmatch targets the sum of the rows; give it rows whose sum is the two-atom combination
    rows = torch.cat([atoms[:2], torch.zeros(8, 20, dtype=torch.float64)])
    positions, weights = gradmatch_select(rows, labels, budget=5)
    assert sorted(positions.tolist()) == [0, 1] and (weights > 0).all()
    assert nonnegative_omp(atoms, target, 5).support.numel() == 2


def test_normalize_weights_and_errors():
    torch.testing.assert_close(normalize_weights(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="not positive"):
        normalize_weights(torch.zeros(3))
    with pytest.raises(ValueError, match="k must be"):
        nonnegative_omp(torch.ones(3, 2), torch.ones(2), 4)
    with pytest.raises(ValueError, match="lam"):
        nonnegative_omp(torch.ones(3, 2), torch.ones(2), 2, lam=-1.0)
