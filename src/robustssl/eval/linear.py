"""Linear probes on a frozen encoder: SLF (clean features) and ALF (adversarial examples).

Both follow methods.md §7: SGD momentum 0.9, weight decay 2e-4, lr `cfg.linear_lr`, batch
`cfg.linear_batch_size`, `cfg.linear_epochs` epochs, lr x0.1 at 40 % and 80 % of the
epochs (epochs 10 and 20 of 25). Only the head is trained; the encoder stays frozen, in
eval mode, on the model's BN branch.

Deliberate differences from the papers' scripts (listed in the docs):
- No data augmentation while training the head. SLF computes the features of the training
  images once and trains the head on them, which makes it seconds instead of minutes; ALF
  attacks the unaugmented images.
- Runs are seeded (`cfg.seed`: head initialisation, shuffling, PGD random starts) and repeat
  exactly on the CPU.

Added:
- Convergence. Every summary carries `convergence` (`probe_convergence`): whether the
  per-epoch mean training loss had flattened out where the learning rate was cut. A probe
  stopped by the schedule while its loss still fell underestimates the clean (and robust)
  accuracy the encoder supports; the report flags it.
- Feature standardization, off by default (`eval.linear_standardize`): the head trains on features
  standardized with the training features' mean and std (clean features, also for ALF),
  and the standardization is then folded into the head exactly, so the evaluated and
  attacked classifier is one linear layer. It only preconditions the head's optimization
  (weight decay acts on the standardized weights).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from .. import progress
from ..attacks.pgd import PGDConfig, pgd
from ..config import EvalConfig
from ..data.dataset import ImageDataset
from ..losses.ce import summed_ce
from .classifier import LinearEvalModel
from .threat import fmt_eps

MOMENTUM = 0.9
WEIGHT_DECAY = 2e-4
LR_DECAY = 0.1
LR_MILESTONES = (0.4, 0.8)  # fractions of the epochs: 10 and 20 of 25
CONVERGENCE_TOL = 0.01  # share of the first lr phase's loss decrease made in its last epoch


class ProbeNotConvergedWarning(UserWarning):
    """A linear probe's training loss was still falling when its learning rate was first cut (see probe_convergence)."""


def lr_at(epoch: int, base_lr: float, epochs: int, milestones: Sequence[float] = LR_MILESTONES) -> float:
    """Learning rate of 0-based `epoch`: base_lr, x0.1 from each milestone on (fractions of the
    epochs; default 40 % and 80 %: x0.1 from epoch 10 of 25, x0.01 from epoch 20)."""
    drops = sum(epoch >= round(f * epochs) for f in milestones)
    return base_lr * LR_DECAY**drops


def probe_convergence(losses: Sequence[float], lrs: Sequence[float], tol: float = CONVERGENCE_TOL) -> dict[str, Any]:
    """Had a probe's training loss flattened out when its learning rate was first cut?

    losses, lrs: the per-epoch mean training loss and learning rate. Judged at the last
    epoch c of the first lr phase (epoch 10 of 25): the share of the phase's progress made
    in that one epoch, (loss[c-1] - loss[c]) / (loss[0] - loss[c]), must be <= tol (1 %).
    A loss still falling steadily when the lr is cut (a share of several %, e.g. 3.4 % for
    the Fashion-MNIST quickstart probe at lr 0.01, final loss 1.36 where the optimum of
    the same objective is 0.69) was stopped by the schedule: the probe underfits, and more
    epochs, a larger lr or standardized features would lower it. The share is scale-free,
    so a small loss still falling by a little counts as flat, and a tiny lr (a slow,
    steady fall) is caught. Not converged as well: fewer than 2 epochs in the first phase,
    or a loss that did not fall. The decayed-lr phases are not judged (their small steps
    make any loss look flat); a rise at the cut (noise at a large lr) counts as flat.
    Returns {converged, tol, first_phase_epochs, share_at_cut, detail}.
    """
    if len(losses) != len(lrs):
        raise ValueError(f"{len(losses)} epoch losses but {len(lrs)} learning rates")
    phase = next((e for e, lr in enumerate(lrs) if lr != lrs[0]), len(lrs))  # epochs before the first cut
    c = phase - 1
    share = None
    if phase < 2:
        problem = f"only {phase} epoch(s) before the first lr cut; at least 2 are needed to judge convergence"
    elif losses[0] <= losses[c]:
        problem = f"the loss did not fall over the first {phase} epochs ({losses[0]:.4g} -> {losses[c]:.4g})"
    else:
        share = (losses[c - 1] - losses[c]) / (losses[0] - losses[c])
        problem = "" if share <= tol else (
            f"epoch {phase} (the last before the lr cut) still made {100 * share:.2f} % of the loss decrease "
            f"of the first {phase} epochs (tolerance {100 * tol:g} %)"
        )
    if problem or share is None:
        detail = problem + "; raise eval.linear_lr or eval.linear_epochs"
    else:
        detail = (
            f"epoch {phase} (the last before the lr cut) made {100 * share:.2f} % of the loss decrease "
            f"(tolerance {100 * tol:g} %)"
        )
    return {"converged": not problem, "tol": tol, "first_phase_epochs": phase, "share_at_cut": share, "detail": detail}


def train_subset(train: ImageDataset, n: int | None, seed: int) -> ImageDataset:
    """A seeded random subset of `n` training images (the whole split when n is None or >= its size)."""
    if n is None or n >= len(train):
        return train
    g = torch.Generator().manual_seed(seed)
    positions = torch.randperm(len(train), generator=g)[:n]
    return train.subset(positions.to(train.images.device))


def _labels(train: ImageDataset) -> torch.Tensor:
    if train.labels is None:
        raise ValueError(f"{train.name}/{train.split} has no labels; a linear probe needs a labelled training split")
    return train.labels


def to_unit(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float [B, C, H, W] in [0, 1] on `device`."""
    return images.to(device).float().div_(255.0)


@torch.no_grad()
def extract_features(model: LinearEvalModel, images: torch.Tensor, batch_size: int, device: torch.device | str) -> torch.Tensor:
    """Encoder features [N, feature_dim] (on `device`) of uint8 images [N, C, H, W]; eval mode, model's branch."""
    progress.stage("features", images.shape[0])
    out = []
    for s in range(0, images.shape[0], batch_size):
        out.append(model.features(to_unit(images[s : s + batch_size], device)))
        progress.advance(out[-1].shape[0])
    return torch.cat(out)


def _optimizer(model: LinearEvalModel, cfg: EvalConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.head.parameters(), lr=cfg.linear_lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of `opt` to `lr` (the epoch's step schedule)."""
    for group in opt.param_groups:
        group["lr"] = lr


def _head_step(model: LinearEvalModel, opt: torch.optim.Optimizer, logits: torch.Tensor, y: torch.Tensor) -> float:
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item())


def _epoch_lrs(cfg: EvalConfig) -> list[float]:
    return [lr_at(e, cfg.linear_lr, cfg.linear_epochs) for e in range(cfg.linear_epochs)]


def _summary(protocol: str, cfg: EvalConfig, n: int, losses: list[float], seconds: float, **extra: Any) -> dict[str, Any]:
    """The training record of one probe: settings, per-epoch loss and lr, convergence, seconds."""
    return {
        "protocol": protocol,
        "epochs": cfg.linear_epochs,
        "lr": cfg.linear_lr,
        "lr_milestones": [round(f * cfg.linear_epochs) for f in LR_MILESTONES],
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "batch_size": cfg.linear_batch_size,
        "train_examples": n,
        "epoch_loss": losses,
        "epoch_lr": _epoch_lrs(cfg),
        "convergence": probe_convergence(losses, _epoch_lrs(cfg)),
        "standardized_features": cfg.linear_standardize,
        "seconds": round(seconds, 3),
        "augmentation": "none",
        **extra,
    }


def train_slf(model: LinearEvalModel, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """Standard linear finetuning: train `model.head` on clean features of `train` (uint8 images, labels).

    The features of the (unaugmented) training images, or of a seeded subset of
    `cfg.train_examples` of them, are computed once through the frozen encoder (eval mode,
    the model's BN branch, fp32); the head is then trained on them for `cfg.linear_epochs`
    epochs. The head is re-initialised from `cfg.seed` first. Returns a summary of the
    training (settings, per-epoch mean loss, seconds).
    """
    t0 = time.perf_counter()
    train = train_subset(train, cfg.train_examples, cfg.seed)
    labels = _labels(train).to(device)
    model.to(device)
    model.reset_head(cfg.seed)
    feats = extract_features(model, train.images, cfg.batch_size, device)
    if cfg.linear_standardize:
        model.set_standardization(feats)
    opt = _optimizer(model, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    progress.stage("head", cfg.linear_epochs, unit="epoch")
    for epoch in range(cfg.linear_epochs):
        set_lr(opt, lr_at(epoch, cfg.linear_lr, cfg.linear_epochs))
        order = torch.randperm(len(train), generator=g).to(device)
        total = 0.0
        for s in range(0, len(train), cfg.linear_batch_size):
            idx = order[s : s + cfg.linear_batch_size]
            total += _head_step(model, opt, model.logits(feats[idx]), labels[idx]) * idx.numel()
        losses.append(total / len(train))
        progress.advance(1)
    model.fold_standardization()
    model.eval()
    return _summary("slf", cfg, len(train), losses, time.perf_counter() - t0, features="precomputed once (clean)")


def train_alf(model: LinearEvalModel, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """Adversarial linear finetuning: train `model.head` on PGD examples of the whole model.

    Every batch of (unaugmented, uint8) training images is replaced by its PGD examples in the
    evaluation's threat model (`cfg.norm`, eps `cfg.eps`, alpha `cfg.pgd_alpha`, `cfg.alf_steps` steps, random start, cross-entropy)
    against encoder + current head, attacked in eval mode on the model's BN branch; the head
    takes one SGD step on them. Same optimizer, schedule, subset and seeding as `train_slf`.
    Returns a summary of the training.
    """
    t0 = time.perf_counter()
    train = train_subset(train, cfg.train_examples, cfg.seed)
    labels = _labels(train)
    model.to(device)
    model.reset_head(cfg.seed)
    if cfg.linear_standardize:
        model.set_standardization(extract_features(model, train.images, cfg.batch_size, device))
    opt = _optimizer(model, cfg)
    attack = PGDConfig(eps=cfg.eps, alpha=cfg.pgd_alpha, steps=cfg.alf_steps, norm=cfg.norm, random_start=True)
    g = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    losses = []
    model.train()
    progress.stage(f"training (PGD-{cfg.alf_steps})", cfg.linear_epochs * len(train))
    for epoch in range(cfg.linear_epochs):
        set_lr(opt, lr_at(epoch, cfg.linear_lr, cfg.linear_epochs))
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for s in range(0, len(train), cfg.linear_batch_size):
            idx = order[s : s + cfg.linear_batch_size].to(train.images.device)
            x, y = to_unit(train.images[idx], device), labels[idx].to(device)
            # pgd() switches the model to eval mode for the attack and restores train mode after.
            x_adv = pgd(model, x, summed_ce(model, y), attack, mode="eval", generator=attack_gen)
            total += _head_step(model, opt, model(x_adv), y) * idx.numel()
            progress.advance(idx.numel())
        losses.append(total / len(train))
    model.fold_standardization()
    model.eval()
    return _summary(
        "alf", cfg, len(train), losses, time.perf_counter() - t0,
        attack={"norm": cfg.norm, "eps": cfg.eps, "alpha": cfg.pgd_alpha, "steps": cfg.alf_steps, "random_start": True},
    )


def linear_markdown(t: dict[str, Any]) -> list[str]:
    """report.md's training lines of a linear-probe protocol (SLF, ALF, SLF-MC, ALF-MC), with its convergence verdict."""
    out = [
        f"Linear head: {t['epochs']} epochs, lr {t['lr']} (x0.1 at epochs {', '.join(map(str, t['lr_milestones']))}), "
        f"SGD momentum {t['momentum']}, wd {t['weight_decay']}, batch {t['batch_size']}, "
        f"{t['train_examples']} training images, no augmentation"
        + (", standardized features (folded into the head)" if t.get("standardized_features") else "")
        + f", {t['seconds']:.1f} s; final loss {t['epoch_loss'][-1]:.4f}."
    ]
    a = t.get("attack")
    if a:
        out[0] += (f" Trained on PGD examples: {a.get('norm', 'linf')} eps {fmt_eps(a['eps'], a.get('norm', 'linf'))}, "
                   f"{a['steps']} steps of {fmt_eps(a['alpha'], a.get('norm', 'linf'))}, random start.")
    mc = t.get("multicrop")
    if mc:
        out += ["", (
            f"Multi-crop classifier: the head reads the mean of the encoder features over {mc['crops']} fixed crops "
            f"(seed {mc['seed']}, area {mc['scale'][0]:g}-{mc['scale'][1]:g}, aspect ratio {mc['ratio'][0]:.4g}-"
            f"{mc['ratio'][1]:.4g}, flips {'on' if mc['flip'] else 'off'}; geometry only). Threat model: {mc['threat_model']}."
        )]
    conv = t.get("convergence")
    if conv:
        out.append("")
        out.append(("Probe converged: " if conv["converged"] else "> **WARNING: THE PROBE DID NOT CONVERGE**: ") + conv["detail"] + ".")
    return out
