import math

import torch

from robustssl.config import OptimConfig
from robustssl.train.optim import LARS, build_optimizer, lr_factor


def test_cosine_with_warmup_over_steps():
    assert lr_factor(0, 100, 10, "cosine") == 0.1
    assert lr_factor(9, 100, 10, "cosine") == 1.0
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert math.isclose(lr_factor(55, 100, 10, "cosine"), 0.5)
    assert lr_factor(100, 100, 10, "cosine") == 0.0
    assert lr_factor(50, 100, 0, "constant") == 1.0


def test_lars_step_matches_its_formula_and_skips_biases():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = build_optimizer(lin, OptimConfig(name="lars", lr=2.0, momentum=0.9, weight_decay=0.1, trust_coef=0.01))
    assert isinstance(opt, LARS)
    lin(torch.randn(5, 4)).pow(2).sum().backward()
    gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
    opt.step()
    g = gw + 0.1 * w0
    expected_w = w0 - 2.0 * (0.01 * w0.norm() / g.norm()) * g
    assert torch.allclose(lin.weight, expected_w, atol=1e-6)
    assert torch.allclose(lin.bias, b0 - 2.0 * gb, atol=1e-6)


def test_lars_clip_and_nesterov_two_steps_match_their_formula():
    # EMP-SSL's optimizer: SGD(nesterov) inside LARS with clip: r = min(eta ||w|| / ||g|| / lr, 1).
    torch.manual_seed(1)
    lin = torch.nn.Linear(4, 3)
    cfg = OptimConfig(name="lars", lr=0.3, momentum=0.9, weight_decay=1e-4, trust_coef=0.005, lars_clip=True, nesterov=True)
    opt = build_optimizer(lin, cfg)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
    scales = []
    for big in (1.0, 1e-4):  # a large gradient (r < 1: adapted) and a tiny one (r clipped to 1)
        x = torch.randn(5, 4)
        opt.zero_grad()
        (big * lin(x).pow(2).sum()).backward()
        gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
        opt.step()
        g = gw + 1e-4 * w
        r = min(float(0.005 * w.norm() / g.norm()) / 0.3, 1.0)
        scales.append(r)
        g = r * g
        buf_w = 0.9 * buf_w + g
        w = w - 0.3 * (g + 0.9 * buf_w)
        buf_b = 0.9 * buf_b + gb  # biases: plain nesterov SGD, no decay, no adaptation
        b = b - 0.3 * (gb + 0.9 * buf_b)
        assert torch.allclose(lin.weight, w, atol=1e-6) and torch.allclose(lin.bias, b, atol=1e-6)
    assert scales[0] < 1.0 and scales[1] == 1.0
