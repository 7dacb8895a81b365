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
