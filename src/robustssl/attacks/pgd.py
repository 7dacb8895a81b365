"""The one PGD engine: l_inf or l_2, on any loss of the perturbed input.

It differentiates w.r.t. the perturbation only (torch.autograd.grad), so parameter
gradients are never touched; it sets the model's mode and BN branch for the attack and
restores both after; it returns a detached x_adv in [0, 1].
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.dual_bn import bn_branch, model_mode

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class PGDConfig:
    """eps: radius (pixel units, inputs in [0,1]); alpha: step size; steps: K iterations."""

    eps: float
    alpha: float
    steps: int
    norm: str = "linf"
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self.eps}, {self.alpha}, {self.steps}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    if cfg.norm == "linf":
        return delta.clamp(-cfg.eps, cfg.eps)
    return delta * (cfg.eps / _flat_norm(delta)).clamp(max=1.0)


def random_delta(x: torch.Tensor, cfg: PGDConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random start inside the eps-ball (uniform for l_inf; uniform radius, random direction for l_2)."""
    if cfg.norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * cfg.eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return direction / _flat_norm(direction) * radius * cfg.eps


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    cfg: PGDConfig,
    *,
    mode: str | None = "eval",
    branch: str | None = None,
    delta_init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximize `loss_fn(x_adv)` (a scalar) over the eps-ball around `x`.

    x: [B, ...] in [0, 1]. loss_fn: called with x_adv (same shape), must run `model` itself.
    mode: 'eval' / 'train' for the attack (restored after), None to keep the caller's.
    branch: dual-BN branch for the attack ('pgd' / 'normal', restored after), None to keep.
    delta_init: a starting perturbation (replaces the random start; used by RoCL/free AT).
    Returns x_adv, detached, in [0, 1], within the eps-ball of x.
    """
    x = x.detach()
    if delta_init is not None:
        delta = _project(delta_init.detach().clone(), cfg)
    elif cfg.random_start:
        delta = random_delta(x, cfg, generator)
    else:
        delta = torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    with model_mode(model, mode), bn_branch(model, branch):
        for _ in range(cfg.steps):
            delta.requires_grad_(True)
            loss = loss_fn(x + delta)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = ascend(x, delta, grad, cfg)
    return (x + delta).detach()


@torch.no_grad()
def ascend(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    """One ascent step of the perturbation: delta + alpha * sign(grad) (l_inf) or alpha * grad/||grad||
    (l_2), projected onto the eps-ball and so that x + delta stays in [0, 1]. Returns a new detached
    delta. The step of `pgd` and of free adversarial training (`attacks.free`)."""
    if cfg.norm == "linf":
        step = cfg.alpha * grad.sign()
    else:
        step = cfg.alpha * grad / _flat_norm(grad)
    delta = _project(delta.detach() + step, cfg)
    return (x + delta).clamp(0, 1) - x
