"""The `cw` evaluation attack: PGD on the Carlini-Wagner margin loss (the "CW-inf" of robust-training papers).

PGD, random start, at the evaluation's threat model (eval.norm, eval.eps, step eval.pgd_alpha),
maximizing per example min(max_{j != y} z_j - z_y, kappa) (summed over the batch), z the logits:
it pushes the best wrong class above the true one and stops pushing at a margin of kappa.
Settings: eval.cw.steps (20), eval.cw.kappa (50, the confidence of `cwloss` in the CAT and
Friendly-Adversarial-Training evaluation code).
It complements cross-entropy PGD: a model whose softmax saturates can mask the CE gradient,
not the margin's. Registered as ATTACKS["cw"] (the worked example of docs/design.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import EvalConfig
from ..settings import non_negative, positive
from .robust import AttackResult, pgd_accuracy
from .threat import EvalAttack


@dataclass
class CWSettings:
    steps: int = positive(20)
    kappa: float = non_negative(50.0)  # the margin beyond which an example stops counting


def margin_loss(kappa: float) -> Callable[[nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(model, y) -> (x_adv -> sum over the batch of min(max_{j != y} z_j - z_y, kappa)), z = model(x_adv)."""

    def make(model: nn.Module, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def loss(x_adv: torch.Tensor) -> torch.Tensor:
            z = model(x_adv)
            true = z.gather(1, y[:, None]).squeeze(1)
            other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
            return (other - true).clamp(max=kappa).sum()

        return loss

    return make


class CWAttack(EvalAttack):
    """PGD on the CW margin loss (see the module docstring)."""

    name = "cw"
    label = "CW (margin PGD)"
    rank = 20  # as PGD-20: neither loss dominates the other; AutoAttack must beat both, FGSM neither
    Settings = CWSettings

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
            done: dict[str, AttackResult]) -> AttackResult:
        s = cfg.component(self.name)
        result = pgd_accuracy(model, x, y, cfg.eps, cfg.pgd_alpha, s.steps, norm=cfg.norm, seed=cfg.seed,
                              batch_size=cfg.batch_size, name=self.name, loss=margin_loss(s.kappa))
        result.extra["loss"] = f"CW margin, kappa {s.kappa:g}"
        return result
