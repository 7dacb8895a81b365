"""Adversarial full finetuning with TRADES: the AFF evaluation protocol, and the AFT stage of
DynACL++'s LP-AFT (`robustssl.postprocess`).

The whole classifier (encoder backbone + linear head, a `FinetuneClassifier`) is trained
with the TRADES loss (`losses/trades.py`):

    for every batch (optionally augmented: random crop with padding 4 + horizontal flip):
        x_adv = TRADES's KL attack: the one PGD engine, model in EVAL mode, eps/alpha/steps
                from the settings, start x + 0.001 N(0, 1)        (attacks.trades_adversarial)
        model in TRAIN mode:  loss = CE(f(x), y) + beta * KL(f(x) || f(x_adv))
        one SGD step (momentum 0.9) on backbone + head

Both forwards of the update and every attack forward run on the classifier's one BN branch
(for dual-BN encoders the branch evaluation uses: `pgd` when it was trained), so the
branch that is finetuned is the branch that is then evaluated, and the other branch keeps
its pretrained weights and statistics. The learning rate drops x0.1 at the milestone
epochs. Seeded: shuffling, augmentation and the attack start repeat for a given seed.

AFF's defaults are DynACL's AFF script: 25 epochs, lr 0.1 (x0.1 at epochs 15 and 20),
batch 128, weight decay 2e-4, beta 6, a 10-step KL attack, a zero-initialised head. The
deliberate differences are listed in docs/methods.md.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .. import progress
from ..attacks.pgd import PGDConfig
from ..attacks.trades import trades_adversarial
from ..config import EvalConfig
from ..data.crop_flip import random_crop_flip
from ..data.dataset import ImageDataset
from ..errors import RunError
from ..losses.trades import TRADES_START_STD, trades_loss
from .classifier import FinetuneClassifier
from .linear import lr_at, set_lr, to_unit, train_subset
from .threat import fmt_eps

MOMENTUM = 0.9
AFF_WEIGHT_DECAY = 2e-4
AFF_LR_MILESTONES = (0.6, 0.8)  # fractions of the epochs: 15 and 20 of 25, as in DynACL's AFF script
CROP_PADDING = 4

__all__ = ["AFF_LR_MILESTONES", "AFF_WEIGHT_DECAY", "FinetuneSettings", "aff_settings", "finetune_trades", "train_aff"]


@dataclass(frozen=True)
class FinetuneSettings:
    """One TRADES finetuning: optimizer, schedule, TRADES beta, the KL attack and augmentation.

    attack: eps, alpha (step) and steps of the KL attack (its random_start is not used:
    TRADES starts from x + 0.001 N(0, 1)). lr_milestones: fractions of `epochs` at which the
    lr is multiplied by 0.1. seed: shuffling, augmentation and attack starts.
    """

    epochs: int
    lr: float
    batch_size: int
    beta: float
    attack: PGDConfig
    weight_decay: float
    lr_milestones: tuple[float, ...]
    augment: bool
    seed: int
    momentum: float = MOMENTUM

    def epoch_lrs(self) -> list[float]:
        return [lr_at(e, self.lr, self.epochs, self.lr_milestones) for e in range(self.epochs)]


def kl_attack(prefix: str, steps: int, alpha: float | None, eval_cfg: EvalConfig) -> PGDConfig:
    """The TRADES KL attack of a finetuning stage (`prefix`: "eval.aff" or "postprocess.aft"), in the
    evaluation's threat model: eval_cfg.norm, eval_cfg.eps, `steps` steps of `alpha` (None: eval_cfg.pgd_alpha). Warns when steps x alpha
    falls short of eps: finetuning would train against a weaker threat than the one evaluated."""
    step = eval_cfg.pgd_alpha if alpha is None else alpha
    eps = eval_cfg.eps
    if steps * step < eps * (1 - 1e-6):
        warnings.warn(f"{prefix}_steps x alpha = {steps} x {step:g} = {steps * step:g} cannot reach eps {eps:g}: finetuning "
                      f"trains against a weaker attack than the evaluation's; set {prefix}_alpha >= {eps / steps:g}",
                      stacklevel=3)
    return PGDConfig(eps=eps, alpha=step, steps=steps, norm=eval_cfg.norm, random_start=False)


def aff_settings(cfg: EvalConfig) -> FinetuneSettings:
    """The AFF protocol's settings from the eval config (eval.aff_*, eval.eps, eval.seed; the
    attack's step is eval.aff_alpha, or eval.pgd_alpha when that is unset)."""
    return FinetuneSettings(
        epochs=cfg.aff_epochs, lr=cfg.aff_lr, batch_size=cfg.aff_batch_size, beta=cfg.aff_beta,
        attack=kl_attack("eval.aff", cfg.aff_steps, cfg.aff_alpha, cfg),
        weight_decay=AFF_WEIGHT_DECAY, lr_milestones=AFF_LR_MILESTONES, augment=cfg.aff_augment, seed=cfg.seed,
    )


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in params])


def finetune_trades(
    model: FinetuneClassifier,
    train: ImageDataset,
    s: FinetuneSettings,
    device: torch.device | str,
    head_init: str = "as given",
    what: str = "AFF",
) -> dict[str, Any]:
    """Train the whole `model` (backbone + head) with TRADES on `train` (uint8 images, labels).

    The head starts as the caller left it (`head_init` only labels the record: "zeros" for
    AFF, "linear probe" for LP-AFT). Attacks run in eval mode, updates in train mode, all on
    `model.branch`; the model is left in eval mode. Returns the training record (settings,
    per-epoch loss / CE / KL / lr, the relative change of the backbone weights, seconds).
    A non-finite loss stops with a RunError naming `what`, the epoch and the fix.
    """
    if train.labels is None:
        raise ValueError(f"{train.name}/{train.split} has no labels; {what} needs labelled training images")
    t0 = time.perf_counter()
    labels = train.labels
    model.to(device)
    params = model.trainable_parameters()
    before = _flat(list(model.encoder.backbone.parameters()))
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    order_gen = torch.Generator().manual_seed(s.seed)  # shuffling and augmentation
    attack_gen = torch.Generator(device=device).manual_seed(s.seed)
    n = len(train)
    history: dict[str, list[float]] = {"loss": [], "ce": [], "kl": []}
    progress.stage(f"{what} training (TRADES)", s.epochs * n)
    for epoch, lr in enumerate(s.epoch_lrs()):
        set_lr(opt, lr)
        order = torch.randperm(n, generator=order_gen)
        sums = dict.fromkeys(history, 0.0)
        for start in range(0, n, s.batch_size):
            idx = order[start : start + s.batch_size].to(train.images.device)
            x = to_unit(train.images[idx], device)
            y = labels[idx].to(device)
            if s.augment:
                x = random_crop_flip(x, CROP_PADDING, order_gen)
            x_adv = trades_adversarial(model, x, s.attack, generator=attack_gen)  # eval mode, restored after
            model.train()
            loss, parts = trades_loss(model(x), model(x_adv), y, s.beta)
            if not math.isfinite(float(loss.detach())):
                raise RunError(f"{what}: the TRADES loss became {float(loss.detach())} in epoch {epoch}; "
                               f"lower the learning rate (eval.aff_lr, or postprocess.aft_lr for LP-AFT)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k = idx.numel()
            sums["loss"] += float(loss.detach()) * k
            sums["ce"] += parts["ce"] * k
            sums["kl"] += parts["kl"] * k
            progress.advance(k)
        for key in history:
            history[key].append(sums[key] / n)
    model.eval()
    after = _flat(list(model.encoder.backbone.parameters()))
    change = float((after - before).norm() / before.norm().clamp_min(1e-12))
    return {
        "finetunes_encoder": True,
        "objective": "TRADES",
        "epochs": s.epochs,
        "lr": s.lr,
        "lr_milestones": [round(f * s.epochs) for f in s.lr_milestones],
        "momentum": s.momentum,
        "weight_decay": s.weight_decay,
        "batch_size": s.batch_size,
        "beta": s.beta,
        "attack": {
            "loss": "KL(f(x) || f(x_adv)), summed", "norm": s.attack.norm, "eps": s.attack.eps, "alpha": s.attack.alpha,
            "steps": s.attack.steps, "start": f"x + {TRADES_START_STD:g} * N(0, 1)", "mode": "eval",
        },
        "bn_branch": model.branch,
        "update_mode": "train",
        "head_init": head_init,
        "augmentation": f"random crop (padding {CROP_PADDING}) + horizontal flip" if s.augment else "none",
        "train_examples": n,
        "epoch_loss": history["loss"],
        "epoch_ce": history["ce"],
        "epoch_kl": history["kl"],
        "epoch_lr": s.epoch_lrs(),
        "encoder_change": change,
        "seed": s.seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def train_aff(model: FinetuneClassifier, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """The AFF protocol: TRADES full finetuning of encoder + head on `train` (uint8 images, labels),
    or a seeded subset of `cfg.train_examples` of it, from a zero head, with `aff_settings(cfg)`.

    `model` owns its encoder (a copy; the caller's encoder is never touched). Returns the
    training record; the model is left in eval mode for evaluation.
    """
    train = train_subset(train, cfg.train_examples, cfg.seed)
    model.zero_head()
    return {"protocol": "aff", **finetune_trades(model, train, aff_settings(cfg), device, head_init="zeros", what="AFF")}


def finetune_markdown(t: dict[str, Any]) -> list[str]:
    """report.md's training line of a full-finetuning protocol (AFF)."""
    a = t["attack"]
    branch = f"on the `{t['bn_branch']}` BN branch" if t.get("bn_branch") else "single BN"
    return [
        f"Full finetuning of encoder + head with TRADES (beta {t['beta']:g}): {t['epochs']} epochs, lr {t['lr']} "
        f"(x0.1 at epochs {', '.join(map(str, t['lr_milestones']))}), SGD momentum {t['momentum']}, "
        f"wd {t['weight_decay']}, batch {t['batch_size']}, {t['train_examples']} training images, "
        f"augmentation: {t['augmentation']}; head initialised as {t['head_init']}. Updates in train mode, {branch}; "
        f"KL attack in eval mode ({a['norm']}): {a['steps']} steps of {fmt_eps(a['alpha'], a['norm'])}, eps {fmt_eps(a['eps'], a['norm'])}, "
        f"start {a['start']}. "
        f"{t['seconds']:.1f} s; final loss {t['epoch_loss'][-1]:.4f}; backbone weights moved by "
        f"{100 * t['encoder_change']:.2f} % (relative l2)."
    ]
