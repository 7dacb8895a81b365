"""Closed-form last-layer gradients (losses/last_layer.py) against torch.autograd, per example."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustssl.losses.last_layer import ce_gradients, trades_deltas, trades_gradients
from robustssl.losses.trades import trades_loss

N, D, C = 7, 5, 4


def _head(bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(D, C, bias=bias).double()
    with torch.no_grad():
        head.weight.mul_(3.0)  # confident, unequal predictions: the KL term is far from zero
    return head


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h_nat = torch.randn(N, D, generator=g, dtype=torch.float64)
    h_adv = h_nat + 0.7 * torch.randn(N, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (N,), generator=g)
    weights = torch.rand(N, generator=g, dtype=torch.float64) + 0.1
    return h_nat, h_adv, labels, weights


def _autograd_rows(head: nn.Linear, loss_of_example) -> torch.Tensor:
    """One autograd backward per example: the reference the closed form must equal."""
    rows = []
    params = [p for p in (head.weight, head.bias) if p is not None]
    for i in range(N):
        grads = torch.autograd.grad(loss_of_example(i), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_gradients_equal_autograd_per_example(bias, weighted):
    head = _head(bias)
    _, h_adv, labels, weights = _inputs()
    w = weights if weighted else None

    def loss(i):
        value = F.cross_entropy(head(h_adv[i : i + 1]), labels[i : i + 1])
        return value * weights[i] if weighted else value

    with torch.no_grad():
        closed = ce_gradients(head(h_adv), h_adv, labels, bias=bias, weights=w)
    expected = _autograd_rows(head, loss)
    assert closed.shape == (N, C * D + (C if bias else 0))
    torch.testing.assert_close(closed, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0, 0.37])
@pytest.mark.parametrize("weighted", [False, True])
def test_trades_gradients_equal_autograd_per_example(bias, beta, weighted):
    head = _head(bias)
    h_nat, h_adv, labels, weights = _inputs()

    def loss(i):
        z_nat, z_adv = head(h_nat[i : i + 1]), head(h_adv[i : i + 1])
        # KL(p_nat || p_adv) written independently of the closed form: kl_div(log q, p)
        kl = F.kl_div(F.log_softmax(z_adv, 1), F.softmax(z_nat, 1), reduction="sum")
        value = F.cross_entropy(z_nat, labels[i : i + 1]) + beta * kl
        return value * weights[i] if weighted else value

    with torch.no_grad():
        closed = trades_gradients(head(h_nat), h_nat, head(h_adv), h_adv, labels, beta, bias=bias,
                                  weights=weights if weighted else None)
    torch.testing.assert_close(closed, _autograd_rows(head, loss), rtol=1e-10, atol=1e-12)


def test_trades_kl_term_is_weighted_by_beta_not_beta_squared():
    head = _head(True)
    h_nat, h_adv, labels, _ = _inputs()
    with torch.no_grad():
        z_nat, z_adv = head(h_nat), head(h_adv)
        g0, g1, g6 = (trades_gradients(z_nat, h_nat, z_adv, h_adv, labels, b) for b in (0.0, 1.0, 6.0))
    kl_part = g1 - g0
    assert kl_part.abs().max() > 1e-3  # the KL term contributes at all
    torch.testing.assert_close(g6, g0 + 6.0 * kl_part)  # linear in beta
    assert (g6 - (g0 + 36.0 * kl_part)).abs().max() > 1e-2  # and not beta^2


def test_trades_deltas_match_the_projects_trades_loss():
    """Summed rows equal N * d(trades_loss)/d(head): the same objective, KL direction included."""
    torch.manual_seed(3)
    head = nn.Linear(D, C)
    h_nat, h_adv = torch.randn(N, D), torch.randn(N, D)
    labels = torch.randint(0, C, (N,))
    weights = torch.rand(N) + 0.5
    loss, _ = trades_loss(head(h_nat), head(h_adv), labels, beta=6.0, weights=weights)
    expected = torch.autograd.grad(loss * N, [head.weight, head.bias])
    with torch.no_grad():
        rows = trades_gradients(head(h_nat), h_nat, head(h_adv), h_adv, labels, 6.0, weights=weights)
    torch.testing.assert_close(rows.sum(0), torch.cat([g.reshape(-1) for g in expected]), rtol=1e-4, atol=1e-5)


def test_trades_adversarial_delta_vanishes_at_the_natural_point():
    # x_adv = x: the KL and its gradients are zero, leaving plain CE
    z = torch.randn(N, C, dtype=torch.float64)
    labels = torch.randint(0, C, (N,))
    delta_nat, delta_adv = trades_deltas(z, z.clone(), labels, beta=6.0)
    torch.testing.assert_close(delta_adv, torch.zeros_like(z))
    torch.testing.assert_close(delta_nat, torch.softmax(z, 1) - F.one_hot(labels, C).double())


def test_shape_errors_are_reported():
    z, h, y = torch.randn(N, C), torch.randn(N, D), torch.randint(0, C, (N,))
    with pytest.raises(ValueError, match="weights"):
        ce_gradients(z, h, y, weights=torch.ones(N + 1))
    with pytest.raises(ValueError, match="features"):
        ce_gradients(z, h[:-1], y)
    with pytest.raises(ValueError, match="beta"):
        trades_gradients(z, h, z, h, y, beta=-1.0)
