"""EMP-SSL's losses against direct float64 transcriptions of their definitions."""
import pytest
import torch
from torch.nn import functional as F

from robustssl.losses import emp_ssl_loss, total_coding_rate


def tcr_reference(z: torch.Tensor, eps: float, w: torch.Tensor | None = None) -> float:
    """0.5 logdet(I_d + d/(B eps) Z^T diag(w) Z) in float64, through the d x d matrix as defined."""
    z = z.double()
    b, d = z.shape
    w = torch.ones(b, dtype=torch.float64) if w is None else w.double()
    cov = z.T @ (w[:, None] * z)
    return 0.5 * float(torch.logdet(torch.eye(d, dtype=torch.float64) + d / (b * eps) * cov))


def emp_reference(z: torch.Tensor, n: int, eps: float, inv_w: float, tcr_w: float, w: torch.Tensor | None = None) -> float:
    """The EMP-SSL loss crop by crop and image by image, as the paper writes it."""
    b = z.shape[0] // n
    zs = [F.normalize(z[i * b:(i + 1) * b].double(), dim=1) for i in range(n)]
    z_bar = sum(zs) / n
    w = torch.ones(b, dtype=torch.float64) if w is None else w.double()
    inv = -sum(float(sum(w[j] * F.cosine_similarity(zs[i][j], z_bar[j], dim=0) for j in range(b)) / b) for i in range(n)) / n
    tcr = -sum(tcr_reference(zs[i], eps, w) for i in range(n)) / n
    return inv_w * inv + tcr_w * tcr


@pytest.mark.parametrize("b,d", [(6, 20), (20, 6), (8, 8)])
def test_total_coding_rate_matches_the_d_by_d_definition(b, d):
    torch.manual_seed(b * 31 + d)
    z = F.normalize(torch.randn(b, d), dim=1)
    assert float(total_coding_rate(z, 0.2)) == pytest.approx(tcr_reference(z, 0.2), rel=1e-5)


def test_gram_identity_small_batch_equals_the_feature_space_logdet():
    # B < d: the B x B Gram gives the d x d logdet exactly (Sylvester), in float64 too.
    torch.manual_seed(0)
    z = torch.randn(5, 64, dtype=torch.float64)
    c = 64 / (5 * 0.2)
    small = torch.logdet(torch.eye(5, dtype=torch.float64) + c * z @ z.T)
    big = torch.logdet(torch.eye(64, dtype=torch.float64) + c * z.T @ z)
    assert float(small) == pytest.approx(float(big), rel=1e-10)
    assert float(total_coding_rate(z, 0.2)) == pytest.approx(0.5 * float(big), rel=1e-5)


def test_total_coding_rate_is_batched_over_leading_dims():
    torch.manual_seed(1)
    z = torch.randn(3, 2, 7, 11)
    out = total_coding_rate(z, 0.5)
    assert out.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert float(out[i, j]) == pytest.approx(tcr_reference(z[i, j], 0.5), rel=1e-5)


@pytest.mark.parametrize("n,b,d", [(4, 6, 16), (3, 12, 5)])
def test_emp_ssl_loss_matches_reference(n, b, d):
    torch.manual_seed(n + b + d)
    z = torch.randn(n * b, d)
    loss, parts = emp_ssl_loss(z, n, eps=0.2, inv_weight=200.0, tcr_weight=1.0)
    assert float(loss) == pytest.approx(emp_reference(z, n, 0.2, 200.0, 1.0), rel=1e-5)
    assert 200 * parts["loss_inv"] + parts["loss_tcr"] == pytest.approx(float(loss), rel=1e-5)


def test_weighted_emp_loss_matches_reference_and_unit_weights_change_nothing():
    torch.manual_seed(5)
    n, b, d = 3, 8, 10
    z = torch.randn(n * b, d)
    w = torch.rand(b) * 2
    loss, _ = emp_ssl_loss(z, n, weights=w)
    assert float(loss) == pytest.approx(emp_reference(z, n, 0.2, 200.0, 1.0, w), rel=1e-5)
    assert float(emp_ssl_loss(z, n, weights=torch.ones(b))[0]) == pytest.approx(float(emp_ssl_loss(z, n)[0]), rel=1e-6)


def test_grouped_emp_loss_is_the_sum_of_each_groups_own_loss_with_its_own_gradient():
    torch.manual_seed(7)
    n, g, b, d = 3, 4, 5, 9
    per_group = [torch.randn(n * b, d, dtype=torch.float64) for _ in range(g)]
    # stack crop-major over the whole stacked batch: crop i holds the groups' blocks one after another
    stacked = torch.cat([torch.cat([p[i * b:(i + 1) * b] for p in per_group]) for i in range(n)]).requires_grad_(True)
    loss, _ = emp_ssl_loss(stacked, n, groups=g)
    expected = sum(emp_reference(p, n, 0.2, 200.0, 1.0) for p in per_group)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, stacked)
    own = per_group[1].clone().requires_grad_(True)
    (own_grad,) = torch.autograd.grad(emp_ssl_loss(own, n)[0], own)
    rows = torch.cat([torch.arange(i * g * b + b, i * g * b + 2 * b) for i in range(n)])
    assert torch.allclose(grad[rows].double(), own_grad.double(), atol=1e-5)


def test_aligned_crops_minimize_the_invariance_term_and_spread_raises_the_coding_rate():
    torch.manual_seed(2)
    base = F.normalize(torch.randn(8, 16), dim=1)
    same = base.repeat(4, 1)
    _, parts = emp_ssl_loss(same, 4)
    assert parts["loss_inv"] == pytest.approx(-1.0, abs=1e-6)
    collapsed = F.normalize(torch.ones(8, 16), dim=1)
    assert float(total_coding_rate(base, 0.2)) > float(total_coding_rate(collapsed, 0.2))


def test_emp_loss_rejects_shapes_that_do_not_split():
    with pytest.raises(ValueError, match="n_crops"):
        emp_ssl_loss(torch.randn(10, 4), 3)
    with pytest.raises(ValueError, match="groups"):
        emp_ssl_loss(torch.randn(12, 4), 2, groups=4)
