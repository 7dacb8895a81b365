"""CF-AMC-SSL (Ghofrani & Jamshidi): free adversarial training (Shafahi et al. 2019) in
multi-crop EMP-SSL.

  delta = 0 (the shape of one batch of crops), kept across batches and in the checkpoint
  for each pass (train.epochs = E / m passes) and each batch X of n * B crops:
      repeat m times (method.cfamc.replays):
          L = EMP loss of model(clamp(X + delta, 0, 1))          (train mode)
          one backward: parameter gradients and delta's gradient
          optimizer step (descent); the lr schedule steps once per update (m per batch)
          delta <- proj_eps(delta + alpha * sign(grad_delta))      (ascent: attack.alpha, = eps)
Attack settings: attack.eps and attack.alpha are the free step's radius and step. attack.steps is
not used by training; it sets the PGD steps of candidate losses in coreset selection, which
scores a batch like robust EMP-SSL does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..attacks import FreePerturbation, PGDConfig
from ..data.augment import ContrastiveAugment
from ..data.batch import Batch
from ..errors import ConfigError
from ..settings import positive
from ..timer import PhaseTimer
from .emp import RobustEMPSettings, RobustEMPSSL

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class CFAMCSettings(RobustEMPSettings):
    replays: int = positive(3)  # m: optimizer updates (and ascent steps) per batch


class CFAMC(RobustEMPSSL):
    name = "cfamc"
    Settings = CFAMCSettings

    def __init__(self, settings: CFAMCSettings, augment: ContrastiveAugment, attack: PGDConfig, *,
                 epochs: int | None = None) -> None:
        super().__init__(settings, augment, attack, epochs=epochs)
        self.updates_per_batch = settings.replays
        self.free = FreePerturbation(self.attack_cfg)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.attack.alpha == 0:
            raise ConfigError("method cfamc needs attack.alpha > 0 (the free ascent step; published: attack.alpha = attack.eps)")

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: Batch,
             timer: PhaseTimer) -> dict[str, float]:
        """One batch: its crops, then `replays` free updates; no separate attack passes."""
        with timer.phase("augment"):
            x = torch.cat(self.make_views(batch).natural)
        with timer.phase("update"):
            model.train()
            for _ in range(self.updates_per_batch):
                x_adv, delta = self.free.perturb(x)
                with self.autocast(x.device):
                    loss, parts = self.emp_loss(model, x_adv, batch.weights)
                self.update(optimizer, scheduler, loss)  # its backward also leaves delta.grad
                self.free.ascend(x, delta)
        return {"loss": float(loss.detach()), **parts}

    def state_dict(self) -> dict[str, Any]:
        return {"free": self.free.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"free"}:
            raise ValueError(f"a cfamc checkpoint holds the free perturbation ('free'), got {sorted(state)}")
        self.free.load_state_dict(state["free"])
