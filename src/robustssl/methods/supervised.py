"""Supervised adversarial training through the same trainer: PGD-AT (Madry et al.), TRADES
(Zhang et al.) and fast AT (FGSM with a random start, Wong et al.), with per-example weights
for weighted coresets (ACS: CRAIG, GradMatch).

The model is encoder + one Linear classifier: the `projector` is a single Linear from the
features to the classes (model.proj_layers=1, model.proj_bn=false, model.proj_out = the number
of classes), so `model(x)` gives logits and the projector's Linear is the "last layer" that
ACS selectors differentiate. Every perturbation is made on the fly for the very view that is
trained on (one random crop + flip per image, then the attack on it).

  PGD-AT:  x_adv = PGD maximizing CE, in train mode (`method.pgd_at.attack_mode`, as the ACS code: BN on
           batch statistics, its running statistics updated by the attack's forwards; `eval` for eval mode);
           loss = mean_i w_i CE(f(x_adv_i), y_i) (train mode)
  TRADES:  x_adv = PGD maximizing KL(f(x) || f(x_adv)) (eval mode, TRADES's start);
           loss = mean_i w_i (CE(f(x_i), y_i) + beta KL_i), BN back in TRAIN mode for the update
           (the ACS code left it in eval mode)
  fast AT: one FGSM step of attack.alpha (1.25 eps) from a uniform random start, then as PGD-AT
           (train-mode attack by default, as Wong et al.'s code: `method.fast_at.attack_mode`)
Coreset selection (`head_gradients`) attacks in eval mode for every method (no running statistics
change while scoring candidates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..attacks import PGDConfig, pgd, trades_adversarial
from ..data.batch import Batch
from ..data.crop_flip import random_crop_flip
from ..data.dataset import ImageSource
from ..errors import ConfigError
from ..losses import summed_ce, trades_loss
from ..losses.last_layer import ce_gradients, trades_gradients
from ..models.dual_bn import model_mode
from ..settings import non_negative, one_of
from .base import Method, Views

if TYPE_CHECKING:
    from ..config import RunConfig


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The classifier's Linear (the projector's only layer for supervised methods)."""
    layer = model.head()  # type: ignore[operator]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the model's head is {type(layer).__name__}, not a Linear classifier layer")
    return layer


@dataclass
class SupervisedSettings:
    augment: bool = True  # random crop (zero padding 4) + horizontal flip of every training image
    padding: int = non_negative(4)


@dataclass
class AdversarialTrainingSettings(SupervisedSettings):
    """PGD-AT's and fast AT's settings."""

    # BN mode of the training attack: train (the ACS code, Wong et al.'s fast AT: batch statistics, and the
    # attack's forwards update the running statistics) or eval (running statistics, left unchanged)
    attack_mode: str = one_of("train", ("train", "eval"))


@dataclass
class TRADESSettings(SupervisedSettings):
    beta: float = non_negative(6.0)  # weight of the KL term (not beta^2)


class SupervisedMethod(Method):
    """The shared part: labelled views, the classifier checks, weighted CE, closed-form head gradients."""

    Settings = SupervisedSettings
    supervised = True
    n_views = 1

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        m = cfg.model
        if m.proj_layers != 1 or m.proj_bn or m.pre_feature:
            raise ConfigError(f"method {cls.name} trains encoder + one Linear classifier: set model.proj_layers=1 "
                              "model.proj_bn=false model.pre_feature=0 and model.proj_out=<number of classes>")
        if m.dual_bn:
            raise ConfigError(f"method {cls.name} trains one BatchNorm stream; set model.dual_bn=false")
        if cfg.attack.steps == 0 or cfg.attack.eps == 0:
            raise ConfigError(f"method {cls.name} is adversarial training: it needs attack.steps >= 1 and attack.eps > 0")

    def check_data(self, data: ImageSource, model: nn.Module) -> None:
        """Labelled data whose class ids the classifier's outputs cover (model.proj_out)."""
        if data.labels is None:
            raise ConfigError(f"method {self.name} is supervised and needs labelled training data")
        outputs = classifier_layer(model).out_features
        if len(data.labels) and int(data.labels.max()) >= outputs:
            raise ConfigError(f"labels go up to {int(data.labels.max())} but the classifier has {outputs} outputs; "
                              "set model.proj_out to the number of classes")

    def make_views(self, batch: Batch) -> Views:
        """The one view trained on: batch.images [B, C, H, W] in [0,1], randomly cropped and flipped."""
        if batch.labels is None:
            raise ConfigError(f"method {self.name} is supervised and needs labelled training data")
        s = self.settings
        x = random_crop_flip(batch.images, s.padding) if s.augment else batch.images
        return Views([x], groups=batch.groups, labels=batch.labels)

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDConfig) -> torch.Tensor:
        """x_adv for images x [B, ...] in [0,1] with labels y: PGD on the summed CE, in the model's
        current mode (`attack` sets the training attack's mode, selection sets eval)."""
        return pgd(model, x, summed_ce(model, y), attack, mode=None)

    def training_attack_mode(self) -> str:
        """BN mode ('train' or 'eval') of the training attack: eval here (TRADES's code); PGD-AT and
        fast AT take it from their `attack_mode` setting."""
        return "eval"

    def attack(self, model: nn.Module, views: Views, attack: PGDConfig) -> Views:
        """The training attack on the view, in `training_attack_mode()` (the model's mode restored after)."""
        assert views.labels is not None
        with model_mode(model, self.training_attack_mode()):
            x_adv = self.adversarial(model, views.natural[0], views.labels, attack)
        return Views(views.natural, [x_adv], views.groups, views.labels)

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted mean CE at the adversarial view (model in train mode)."""
        assert views.labels is not None
        y = views.labels
        ce = F.cross_entropy(model(views.adversarial[0]).float(), y, reduction="none")
        loss = ce.mean() if weights is None else (ce * weights).mean()
        return loss, {"ce": float(ce.detach().mean())}

    def head_gradients(self, model: nn.Module, batch: Batch, attack: PGDConfig | None = None) -> torch.Tensor:
        """Per-example gradients of this method's objective w.r.t. the classifier layer (weight then bias),
        in closed form from logits and features at adversarial examples of the images as stored (no
        augmentation), eval mode -> [B, C*d + C]. What the ACS selectors compare."""
        if batch.labels is None:
            raise ConfigError(f"method {self.name} is supervised and needs labelled data for selection")
        x, y = batch.images, batch.labels
        with model_mode(model, "eval"):
            x_adv = self.adversarial(model, x, y, attack or self.attack_cfg)
            with torch.no_grad():
                return self.objective_gradients(model, classifier_layer(model), x, x_adv, y)

    def objective_gradients(self, model: nn.Module, head: nn.Linear, x: torch.Tensor, x_adv: torch.Tensor,
                            y: torch.Tensor) -> torch.Tensor:
        """The closed form of `head_gradients` given the examples: CE at x_adv."""
        h_adv = model.features(x_adv)  # type: ignore[operator]
        return ce_gradients(head(h_adv), h_adv, y, bias=head.bias is not None)


class PGDAT(SupervisedMethod):
    name = "pgd_at"
    Settings = AdversarialTrainingSettings

    def training_attack_mode(self) -> str:
        return str(self.settings.attack_mode)


class FastAT(PGDAT):
    name = "fast_at"

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.attack.steps != 1 or not cfg.attack.random_start:
            raise ConfigError("method fast_at is one FGSM step from a random start: set attack.steps=1 "
                              "attack.random_start=true (and attack.alpha = 1.25 x attack.eps, Wong et al.)")


class TRADES(SupervisedMethod):
    name = "trades"
    Settings = TRADESSettings

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGDConfig) -> torch.Tensor:
        """TRADES's KL attack (eval mode; labels are not used)."""
        return trades_adversarial(model, x, attack)

    def loss(self, model: nn.Module, views: Views, weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """CE on the natural view + beta KL to the adversarial one, both forwards in train mode."""
        assert views.labels is not None
        y = views.labels
        return trades_loss(model(views.natural[0]), model(views.adversarial[0]), y, self.settings.beta, weights)

    def objective_gradients(self, model: nn.Module, head: nn.Linear, x: torch.Tensor, x_adv: torch.Tensor,
                            y: torch.Tensor) -> torch.Tensor:
        """CE at x + beta KL(f(x) || f(x_adv)): both the natural and the adversarial rows contribute."""
        h_nat, h_adv = model.features(x), model.features(x_adv)  # type: ignore[operator]
        return trades_gradients(head(h_nat), h_nat, head(h_adv), h_adv, y, self.settings.beta, bias=head.bias is not None)
