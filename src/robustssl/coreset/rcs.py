"""RCS: robustness-aware coreset selection (Xu et al., NeurIPS 2023), label-free.

One selection, all in eval mode (BatchNorm uses, and never updates, running statistics):
  1. RD on the validation split: virtual-adversarial PGD on RD itself (natural forwards on the
     `normal` BN branch, adversarial ones on `pgd`), tail inputs cached (`coreset.rcs.head`: the
     last projector Linear, or the whole projector).
  2. Candidate gradients: d(method.training_loss)/d(head) per candidate (batch or sample).
  3. Greedy: pick argmax <g_b, g_val>, one simulated head step, refresh g_val (re-attacking
     the validation split every `reattack_every` refreshes when > 0). With a class-balanced
     budget (`coreset.rcs.class_balanced`; on by default for supervised methods picking single
     images), each class c may take only its share budget_c (proportional to its candidates,
     coreset/class_budget.py): the argmax runs over the classes not yet full.
The simulation never touches the model; training on the coreset is unweighted.
Settings: `coreset.rcs.*` (RCSSettings).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..attacks import PGDConfig
from ..data.dataset import ImageSource
from ..errors import ConfigError
from ..models import model_mode
from ..settings import non_negative, one_of, positive, unit_interval
from ..timer import PhaseTimer
from .class_budget import class_budgets
from .divergence import ValidationCE, ValidationObjective, ValidationRD
from .embeddings import candidate_gradients, gaussian_sketch
from .greedy import greedy_select
from .head import SCOPES, HeadView
from .selectors import Selection, SelectionMethod, Selector, units_to_positions

if TYPE_CHECKING:
    from ..config import CoresetConfig, RunConfig


@dataclass
class RCSSettings:
    """RCS's own keys, `coreset.rcs.<key>` (until the next release also read from the flat `coreset.<key>`)."""

    val_fraction: float = unit_interval(0.01)  # share of the training set held out as RCS's validation split
    rd_eps: float = non_negative(8 / 255)  # the validation attack (PGD on RD, or CE for supervised methods)
    rd_alpha: float = non_negative(8 / 255 / 3)
    rd_steps: int = non_negative(3)
    eta: float = non_negative(0.01)  # the simulated head step of the greedy loop
    refresh_every: int = positive(1)  # re-evaluate g_val every r picks (1: after every pick, as in the paper)
    sketch_dim: int = non_negative(0)  # 0: score with the full flattened head gradient; k: a seeded random projection
    candidate_attack_steps: int | None = non_negative(None)  # attack steps for candidate losses (None: the method's own)
    candidate_fraction: float = unit_interval(1.0)  # score a seeded random share of the candidates (1.0: all)
    head: str = one_of("last", SCOPES)  # RCS differentiates the projector's last Linear, or all its Linears
    reattack_every: int = non_negative(0)  # re-attack the validation split every k g_val refreshes (0: once, at W0)
    candidates_per_forward: int = positive(1)  # candidate batches stacked into one (grouped, eval-mode) forward
    # per-class budgets proportional to class size (needs labels and coreset.unit=sample); None: on for
    # supervised methods (their single-image RCS otherwise collapses onto a few classes), off for label-free ones
    class_balanced: bool | None = None


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
    Settings = RCSSettings
    needs_validation_split = True
    settings: RCSSettings

    def __init__(self, cfg: CoresetConfig, seed: int) -> None:
        super().__init__(cfg, seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 15485863)
        s = self.settings
        self.rd_attack = PGDConfig(s.rd_eps, s.rd_alpha, s.rd_steps, "linf", True)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        s = cfg.coreset.settings.get(cls.name) or RCSSettings()
        if s.val_fraction >= 1:
            raise ConfigError(f"coreset.rcs.val_fraction must be < 1, got {s.val_fraction}")
        if s.class_balanced and cfg.coreset.unit != "sample":
            raise ConfigError("coreset.rcs.class_balanced=true splits the budget per class, which needs single images: "
                              "set coreset.unit=sample (a batch unit mixes classes)")

    def validation_fraction(self) -> float:
        return self.settings.val_fraction

    def balanced(self, method: SelectionMethod) -> bool:
        """Whether this selection splits its budget per class (see RCSSettings.class_balanced)."""
        flag = self.settings.class_balanced
        return bool(method.supervised and self.cfg.unit == "sample") if flag is None else flag

    def candidate_units(self, pool: torch.Tensor, batch_size: int, budget: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Candidates: minibatches of a fresh seeded shuffle of the pool, or single samples;
        with candidate_fraction < 1, the first share of them (never fewer than the budget)."""
        order = pool[torch.randperm(len(pool), generator=self.generator)]
        if self.cfg.unit == "sample":
            units = list(order.unbind())
        else:
            units = [order[i * batch_size : (i + 1) * batch_size] for i in range(len(order) // batch_size)]
        keep = max(budget, math.ceil(self.settings.candidate_fraction * len(units)))
        return units[:keep], order

    def step_size(self, batch_size: int) -> float:
        """The simulated step per pick: eta for a batch unit; eta / batch_size for a sample, whose
        row is one image's share of a summed batch loss, so B sample picks make one batch step."""
        return self.settings.eta / batch_size if self.cfg.unit == "sample" else self.settings.eta

    def class_caps(self, data: ImageSource, units: list[torch.Tensor], budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(class id of each candidate int64 [n], budget of each class int64 [K] summing to `budget`)."""
        if data.labels is None:
            raise ConfigError("coreset.rcs.class_balanced needs labelled training data; set coreset.rcs.class_balanced=false")
        if self.cfg.unit != "sample":
            raise ConfigError("coreset.rcs.class_balanced needs coreset.unit=sample (a batch unit mixes classes)")
        labels = data.labels[torch.stack(units).to(data.labels.device)].cpu()
        groups = torch.unique(labels, return_inverse=True)[1]
        return groups, class_budgets(torch.bincount(groups), budget)

    def select(self, model: torch.nn.Module, method: SelectionMethod, data: ImageSource, pool: torch.Tensor,
               val: torch.Tensor, budget: int, batch_size: int) -> Selection:
        s = self.settings
        view = HeadView(model, s.head)
        units, order = self.candidate_units(pool, batch_size, budget)
        caps = self.class_caps(data, units, budget) if self.balanced(method) else None
        attack = method.attack_cfg
        if s.candidate_attack_steps is not None:
            attack = dataclasses.replace(attack, steps=s.candidate_attack_steps)
        # The whole selection runs in eval mode: BN uses (and never updates) running statistics,
        # in the candidate losses and in every g_val refresh of the greedy loop alike.
        timer = PhaseTimer(data.device)
        with model_mode(model, "eval"):
            with timer.phase("validation_rd"):
                x_val = data.gather(val).float().div_(255)
                rd: ValidationObjective
                if method.supervised:  # SAT-RCS: CE at PGD examples of the labelled split
                    if data.labels is None:
                        raise ValueError("RCS for a supervised method needs labelled validation data")
                    y_val = data.labels[val.to(data.labels.device)]
                    rd = ValidationCE(model, view, x_val, y_val, self.rd_attack)
                else:
                    rd = ValidationRD(model, view, x_val, self.rd_attack, s.reattack_every)
            with timer.phase("candidates"):
                grads = candidate_gradients(model, method, data, units, self.cfg.unit, view, chunk=batch_size,
                                            attack=attack, timer=timer, per_forward=s.candidates_per_forward)
            with timer.phase("greedy"):
                sketch = None
                if s.sketch_dim and s.sketch_dim < view.dim:
                    sketch = gaussian_sketch(view.dim, s.sketch_dim, self.seed, grads.device)
                result = greedy_select(grads, view.flat(), rd.refresh, budget, self.step_size(batch_size),
                                       s.refresh_every, sketch, caps)
        positions = units_to_positions(pool, result.picks.cpu(), self.cfg.unit, batch_size, order)
        return Selection(positions.sort().values, None, result.gains.detach().cpu(), cost_breakdown(timer.seconds))
