"""Representational divergence (RD), RCS's label-free robustness signal on the validation split.

RD(x) = KL( softmax(z_nat(x)) || softmax(z_adv(x_adv)) ), z the projector output, x_adv the
"virtual adversarial" input found by PGD maximizing RD itself (no labels needed).

Convention (the RCS code's, and ACL's training routing): every RD forward runs in eval mode;
natural inputs go through the `normal` BN branch, adversarial inputs through `pgd`. The RCS
code min-max normalizes each row of z and feeds that to KL, which is not a distribution;
robustssl uses the softmax (both documented in docs/methods.md).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from ..attacks import PGDConfig, pgd
from ..losses.ce import summed_ce
from ..models import bn_branch, model_mode
from .head import HeadView

NATURAL_BRANCH = "normal"  # BN branch of natural inputs (a no-op without dual BN)
ADVERSARIAL_BRANCH = "pgd"  # BN branch of adversarial inputs

Forward = Callable[[torch.Tensor], torch.Tensor]


def rd_from_projections(z_nat: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(z_nat) || softmax(z_adv)); z_*: [B, d]."""
    return F.kl_div(F.log_softmax(z_adv, dim=1), F.log_softmax(z_nat, dim=1), log_target=True, reduction="batchmean")


def virtual_adversarial(model: torch.nn.Module, x: torch.Tensor, cfg: PGDConfig, forward: Forward | None = None) -> torch.Tensor:
    """x_adv [B, ...] maximizing RD(x, x_adv) within the eps-ball.

    The target z_nat = forward(x) runs in eval mode on `normal`; the attack's forwards in eval
    mode on `pgd`, whatever state the caller left (restored after). forward: the model's
    forward to use (default: the model itself; a functional forward with simulated parameters
    for re-attacks).
    """
    forward = model if forward is None else forward
    with torch.no_grad(), model_mode(model, "eval"), bn_branch(model, NATURAL_BRANCH):
        z_nat = forward(x)

    def summed_rd(xa: torch.Tensor) -> torch.Tensor:
        # Summed over images, so each image's gradient is that of its own KL (not 1/B of it).
        return rd_from_projections(z_nat, forward(xa)) * x.shape[0]

    return pgd(model, x, summed_rd, cfg, mode="eval", branch=ADVERSARIAL_BRANCH)


def representational_divergence(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """RD of natural x and adversarial x_adv [B, ...] from full forwards under the convention
    (eval mode; x on `normal`, x_adv on `pgd`); the model's state is restored after. A scalar."""
    with model_mode(model, "eval"):
        with bn_branch(model, NATURAL_BRANCH):
            z_nat = model(x)
        with bn_branch(model, ADVERSARIAL_BRANCH):
            z_adv = model(x_adv)
    return rd_from_projections(z_nat, z_adv)


class ValidationObjective:
    """The validation objective of RCS's greedy loop as a function of the differentiated head
    parameters w [dim]: `value(w)` (a scalar), its `gradient(w)`, and `refresh(w)`, the greedy
    loop's g_val callback (the gradient; subclasses may re-attack first)."""

    def value(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # abstract: RD (self-supervised) or CE (supervised)

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        """d value(w) / d w, [dim]."""
        w = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.value(w), w)
        return g.detach()

    def refresh(self, w: torch.Tensor) -> torch.Tensor:
        return self.gradient(w)


class ValidationRD(ValidationObjective):
    """RD on the validation split as a function of the differentiated parameters w only.

    The tail inputs (`HeadView`) of the natural images (eval, `normal`) and of their virtual
    adversarials (eval, `pgd`) are cached at W0, so `gradient(w)` costs one tail
    forward/backward (the refresh in the greedy loop). With reattack_every = k > 0, every k-th
    `refresh` first re-runs the virtual-adversarial attack with the simulated parameters (as
    the RCS code does after each simulated step); with 0, x_adv stays the one found at W0.
    """

    def __init__(self, model: torch.nn.Module, view: HeadView, x_val: torch.Tensor, cfg: PGDConfig,
                 reattack_every: int = 0) -> None:
        if reattack_every < 0:
            raise ValueError(f"reattack_every must be >= 0, got {reattack_every}")
        self.model, self.view, self.x_val, self.cfg = model, view, x_val, cfg
        self.reattack_every, self.refreshes = reattack_every, 0
        self.h_nat = self._tail_inputs(x_val, NATURAL_BRANCH)
        self.attack(None)

    def _tail_inputs(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """The tail's input [B, in] for images x, eval mode on `branch` (it does not depend on w)."""
        with torch.no_grad(), model_mode(self.model, "eval"), bn_branch(self.model, branch), self.view.capture_inputs() as seen:
            self.model(x)
        return seen[0]

    def attack(self, w: torch.Tensor | None) -> None:
        """(Re-)find x_adv [B, ...] with parameters w (None: the model's own) and cache its tail inputs."""
        forward = None if w is None else (lambda x: self.view.forward(x, w))
        self.x_adv = virtual_adversarial(self.model, self.x_val, self.cfg, forward)
        self.h_adv = self._tail_inputs(self.x_adv, ADVERSARIAL_BRANCH)

    def value(self, w: torch.Tensor) -> torch.Tensor:
        """RD(V; w), a scalar: cached natural rows through the `normal` tail, adversarial through `pgd`."""
        z_nat = self.view.project(self.h_nat, w, NATURAL_BRANCH)
        z_adv = self.view.project(self.h_adv, w, ADVERSARIAL_BRANCH)
        return rd_from_projections(z_nat, z_adv)

    def refresh(self, w: torch.Tensor) -> torch.Tensor:
        """The greedy loop's g_val callback [dim]: gradient(w), re-attacking first on every
        reattack_every-th call after the first (the first call is at W0, already attacked)."""
        if self.reattack_every and self.refreshes and self.refreshes % self.reattack_every == 0:
            self.attack(w.detach())
        self.refreshes += 1
        return self.gradient(w)


class ValidationCE(ValidationObjective):
    """RCS for supervised adversarial training: the validation objective is the cross-entropy at
    PGD examples (RCS's SAT variant: one step, `coreset.rcs.rd_*`) of the labelled validation split,
    as a function of the differentiated classifier parameters w; the gradient is the full flattened one (the RCS code's
    mean over the outputs is identically zero for a softmax head). Eval mode throughout.
    """

    def __init__(self, model: torch.nn.Module, view: HeadView, x_val: torch.Tensor, y_val: torch.Tensor,
                 cfg: PGDConfig) -> None:
        self.model, self.view, self.y_val = model, view, y_val
        with model_mode(model, "eval"):
            x_adv = pgd(model, x_val, summed_ce(model, y_val), cfg, mode="eval")
            with torch.no_grad(), view.capture_inputs() as seen:
                model(x_adv)
        self.h_adv = seen[0]

    def value(self, w: torch.Tensor) -> torch.Tensor:
        """Mean CE(V_adv; w), a scalar."""
        return F.cross_entropy(self.view.project(self.h_adv, w, None), self.y_val)
