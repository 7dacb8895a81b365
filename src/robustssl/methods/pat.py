"""Perceptual Adversarial Training (Laidlaw et al., ICLR 2021), a supervised method for ACS coresets.

  x_adv = Fast-LPA (attacks/perceptual.py) against the LPIPS distance d (losses/lpips.py) with the
          bound `method.pat.bound` (0.5: PAT's CIFAR-10 setting), `steps` (10), model in eval mode,
          only on the examples the model classifies correctly (PAT's --only_attack_correct; the others
          are trained on as they are)
  loss  = mean_i w_i CE(f(x_adv_i), y_i), BatchNorm in TRAIN mode for the update forward (PAT's code:
          model.eval() for the attack, model.train() before the update's forward); w: coreset weights
  update: gradients clipped to [-clip_grad, clip_grad] element-wise before the step (PAT's code: 1.0)

The LPIPS network is the classifier being trained ("self-bound", the default) or an AlexNet-family
network from the local file `method.pat.lpips_model`. The perturbation is made on the fly for the very
view trained on (crop + flip, then the attack). ACS selectors get the per-example classifier-layer
gradients of CE at Fast-LPA examples of the stored images (inherited `head_gradients`). The `attack.*`
keys (a PGD) are not used by PAT.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..attacks import PGDConfig
from ..attacks.perceptual import PROJECTIONS, fast_lpa
from ..errors import ConfigError
from ..losses.lpips import LPIPS, load_lpips_network
from ..models.dual_bn import model_mode
from ..settings import non_negative, one_of, positive
from .supervised import SupervisedMethod, SupervisedSettings

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class PATSettings(SupervisedSettings):
    bound: float = positive(0.5)  # the LPIPS bound of Fast-LPA (d = sqrt(LPIPS), PAT's units)
    steps: int = positive(10)  # Fast-LPA iterations
    lam: float = non_negative(10.0)  # the penalty weight Fast-LPA ends with (it starts at lam / 10)
    h: float = positive(0.1)  # finite-difference length of the LPIPS step-size estimate
    step: float | None = positive(None)  # the first LPIPS step (decays to step / 10); None: bound
    projection: str = one_of("none", PROJECTIONS)  # "none": PAT's soft bound
    only_attack_correct: bool = True  # attack only the examples the model classifies correctly
    lpips_model: str | None = None  # a local AlexNet-family LPIPS network file; None: self-bound
    clip_grad: float | None = positive(1.0)  # element-wise gradient clipping before each update; None: off


class PAT(SupervisedMethod):
    name = "pat"
    Settings = PATSettings

    def __init__(self, settings: Any, augment: Any, attack: PGDConfig, *, epochs: int | None = None) -> None:
        super().__init__(settings, augment, attack, epochs=epochs)
        self._network: LPIPS | None = None
        self._clipped: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()  # optimizers with the clipping hook

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        rcs = cfg.coreset.settings.get("rcs")
        if rcs is not None and rcs.candidate_attack_steps is not None:
            raise ConfigError("coreset.rcs.candidate_attack_steps sets PGD steps, which method pat does not use; "
                              "unset it (PAT's attack is Fast-LPA, method.pat.steps)")
        path = cfg.method.params.lpips_model
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"method.pat.lpips_model: {path} is not a file; give a local AlexNet state dict "
                              "(.pt/.pth or .safetensors), or leave it unset for self-bound LPIPS")

    def lpips(self, model: nn.Module, device: torch.device) -> LPIPS:
        """The LPIPS distance of the attack: the model's own (self-bound) or the loaded network (loaded once)."""
        path = self.settings.lpips_model
        if path is None:
            return LPIPS.of_model(model)
        if self._network is None:
            self._network = load_lpips_network(path, device)
        return self._network

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDConfig) -> torch.Tensor:
        """Fast-LPA examples for images x [B, C, H, W] in [0, 1] with labels y, eval mode (`attack`, a PGD
        config, is not used). With only_attack_correct, misclassified examples are returned unchanged."""
        s = self.settings
        x = x.detach()
        with model_mode(model, "eval"):
            if s.only_attack_correct:
                with torch.no_grad():
                    todo = model(x).argmax(1) == y
            else:
                todo = torch.ones_like(y, dtype=torch.bool)
            x_adv = x.clone()
            if bool(todo.any()):
                idx = todo.nonzero().squeeze(1)
                x_adv[idx] = fast_lpa(model, x[idx], y[idx], self.lpips(model, x.device), s.bound, s.steps, lam=s.lam,
                                      h=s.h, step=s.step, projection=s.projection, mode=None)
        return x_adv

    def update(self, optimizer: torch.optim.Optimizer, scheduler: Any, loss: torch.Tensor) -> None:
        """The base update, with PAT's element-wise gradient clipping (`clip_grad`) as an optimizer step
        pre-hook registered on the first update, so under torchrun it runs after the replicas' gradient
        averaging (itself a pre-hook registered when training starts): the clip sees the global gradient."""
        if self.settings.clip_grad is not None and optimizer not in self._clipped:
            optimizer.register_step_pre_hook(self._clip)
            self._clipped.add(optimizer)
        super().update(optimizer, scheduler, loss)

    def _clip(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, self.settings.clip_grad)
