import pytest
import torch
from torch.nn import functional as F

from robustssl.attacks import PGDConfig, pgd
from robustssl.models import bn_branch, build_model, current_branch


def _setup(tiny_spec):
    torch.manual_seed(0)
    model = build_model(tiny_spec)
    head = torch.nn.Linear(model.feature_dim, 3)
    x = torch.rand(8, 1, 12, 12)
    y = torch.randint(0, 3, (8,))
    return model, head, x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_box(tiny_spec, norm):
    model, head, x, y = _setup(tiny_spec)
    eps = 0.1 if norm == "linf" else 0.5
    cfg = PGDConfig(eps=eps, alpha=eps / 2, steps=5, norm=norm)
    x_adv = pgd(model, x, lambda xa: F.cross_entropy(head(model.features(xa)), y, reduction="sum"), cfg)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


def test_pgd_increases_loss(tiny_spec):
    model, head, x, y = _setup(tiny_spec)
    model.eval()
    loss = lambda xa: F.cross_entropy(head(model.features(xa)), y, reduction="sum")  # noqa: E731
    cfg = PGDConfig(eps=0.2, alpha=0.05, steps=10, random_start=False)
    x_adv = pgd(model, x, loss, cfg)
    with torch.no_grad():
        assert loss(x_adv) > loss(x) + 1e-3


def test_pgd_touches_no_parameter_gradient_and_restores_mode(tiny_spec):
    model, head, x, y = _setup(tiny_spec)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    seen = []

    def loss(xa):
        seen.append((model.training, current_branch(model)))
        return F.cross_entropy(head(model.features(xa)), y)

    with bn_branch(model, "normal"):
        pgd(model, x, loss, PGDConfig(eps=0.1, alpha=0.03, steps=3), mode="eval", branch="pgd")
        assert current_branch(model) == "normal"
    assert seen and all(s == (False, "pgd") for s in seen)
    assert model.training and all(m.training for m in model.modules())
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before[n]), n
    assert head.weight.grad is None


def test_pgd_zero_eps_is_identity(tiny_spec):
    model, head, x, _y = _setup(tiny_spec)
    x_adv = pgd(model, x, lambda xa: head(model.features(xa)).sum(), PGDConfig(eps=0.0, alpha=0.01, steps=3))
    assert torch.equal(x_adv, x)


def test_pgd_rejects_bad_config():
    with pytest.raises(ValueError, match="norm"):
        PGDConfig(eps=0.1, alpha=0.01, steps=1, norm="l1")
    with pytest.raises(ValueError, match=">= 0"):
        PGDConfig(eps=-0.1, alpha=0.01, steps=1)
