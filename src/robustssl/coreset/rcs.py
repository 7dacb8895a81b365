"""RCS: robustness-aware coreset selection (Xu et al., NeurIPS 2023), label-free.

One selection, all in eval mode (BatchNorm uses, and never updates, running statistics):
  1. RD on the validation split: virtual-adversarial PGD on RD itself (natural forwards on the
     `normal` BN branch, adversarial ones on `pgd`), tail inputs cached (`coreset.head`: the
     last projector Linear, or the whole projector).
  2. Candidate gradients: d(method.training_loss)/d(head) per candidate (batch or sample).
  3. Greedy: pick argmax <g_b, g_val>, one simulated head step, refresh g_val (re-attacking
     the validation split every `reattack_every` refreshes when > 0).
The simulation never touches the model; training on the coreset is unweighted.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from ..attacks import PGDConfig
from ..data.dataset import ImageSource
from ..models import model_mode
from ..timer import PhaseTimer
from .divergence import ValidationCE, ValidationObjective, ValidationRD
from .embeddings import candidate_gradients, gaussian_sketch
from .greedy import greedy_select
from .head import HeadView
from .selectors import Selection, Selector, units_to_positions

if TYPE_CHECKING:
    from ..config import CoresetConfig


def cost_breakdown(seconds: dict[str, float]) -> dict[str, float]:
    """Seconds of one selection by part: validation RD, the candidates' attack (and view
    augmentation), their loss forward and head backward, and the greedy loop (g_val refreshes)."""
    inner = seconds.get("attack", 0.0) + seconds.get("augment", 0.0)
    return {
        "validation_rd": seconds.get("validation_rd", 0.0), "candidate_attack": seconds.get("attack", 0.0),
        "candidate_augment": seconds.get("augment", 0.0),
        "candidate_forward_backward": max(0.0, seconds.get("candidates", 0.0) - inner), "greedy": seconds.get("greedy", 0.0),
    }


class RCSSelector(Selector):
    name = "rcs"
    needs_validation_split = True

    def __init__(self, cfg: CoresetConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 15485863)
        self.rd_attack = PGDConfig(cfg.rd_eps, cfg.rd_alpha, cfg.rd_steps, "linf", True)

    def candidate_units(self, pool: torch.Tensor, batch_size: int, budget: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Candidates: minibatches of a fresh seeded shuffle of the pool, or single samples;
        with candidate_fraction < 1, the first share of them (never fewer than the budget)."""
        order = pool[torch.randperm(len(pool), generator=self.generator)]
        if self.cfg.unit == "sample":
            units = list(order.unbind())
        else:
            units = [order[i * batch_size : (i + 1) * batch_size] for i in range(len(order) // batch_size)]
        keep = max(budget, math.ceil(self.cfg.candidate_fraction * len(units)))
        return units[:keep], order

    def step_size(self, batch_size: int) -> float:
        """The simulated step per pick: eta for a batch unit; eta / batch_size for a sample, whose
        row is one image's share of a summed batch loss, so B sample picks make one batch step."""
        return self.cfg.eta / batch_size if self.cfg.unit == "sample" else self.cfg.eta

    def select(self, model: torch.nn.Module, method: Any, data: ImageSource, pool: torch.Tensor, val: torch.Tensor,
               budget: int, batch_size: int) -> Selection:
        view = HeadView(model, self.cfg.head)
        units, order = self.candidate_units(pool, batch_size, budget)
        attack = method.attack_cfg
        if self.cfg.candidate_attack_steps is not None:
            attack = dataclasses.replace(attack, steps=self.cfg.candidate_attack_steps)
        # The whole selection runs in eval mode: BN uses (and never updates) running statistics,
        # in the candidate losses and in every g_val refresh of the greedy loop alike.
        timer = PhaseTimer(data.device)
        with model_mode(model, "eval"):
            with timer.phase("validation_rd"):
                x_val = data.gather(val).float().div_(255)
                rd: ValidationObjective
                if getattr(method, "supervised", False):  # SAT-RCS: CE at PGD examples of the labelled split
                    if data.labels is None:
                        raise ValueError("RCS for a supervised method needs labelled validation data")
                    y_val = data.labels[val.to(data.labels.device)]
                    rd = ValidationCE(model, view, x_val, y_val, self.rd_attack)
                else:
                    rd = ValidationRD(model, view, x_val, self.rd_attack, self.cfg.reattack_every)
            with timer.phase("candidates"):
                grads = candidate_gradients(model, method, data, units, self.cfg.unit, view, chunk=batch_size,
                                            attack=attack, timer=timer, per_forward=self.cfg.candidates_per_forward)
            with timer.phase("greedy"):
                sketch = None
                if self.cfg.sketch_dim and self.cfg.sketch_dim < view.dim:
                    sketch = gaussian_sketch(view.dim, self.cfg.sketch_dim, self.seed, grads.device)
                result = greedy_select(grads, view.flat(), rd.refresh, budget, self.step_size(batch_size),
                                       self.cfg.refresh_every, sketch)
        positions = units_to_positions(pool, result.picks.cpu(), self.cfg.unit, batch_size, order)
        return Selection(positions.sort().values, None, result.gains.detach().cpu(), cost_breakdown(timer.seconds))
