"""Optimizers and the learning-rate schedule (warm-up then cosine, over fractional epochs)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017).

    For each adapted parameter: g <- g + wd * w;  r = trust_coef * ||w|| / ||g||, or with `clip`
    (LARC's clip mode, EMP-SSL's optimizer) r = min(r / lr, 1), so the effective step is never
    above lr; g <- r * g;  buf <- momentum * buf + g;  w <- w - lr * buf (with `nesterov`:
    w <- w - lr * (g + momentum * buf)). Parameter groups with `lars=False` skip
    weight decay and the trust ratio: with `optim.lars_exclude_1d` (SimCLR's convention) the
    biases and normalization parameters form that group; the ACL/RCS code adapts every
    parameter (`lars_exclude_1d: false` in their recipes).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust_coef: float = 1e-3,
                 clip: bool = False, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coef=trust_coef, lars=True,
                                      clip=clip, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["trust_coef"] * w_norm / g_norm, torch.ones_like(w_norm))
                    if group["clip"]:
                        trust = torch.clamp(trust / group["lr"], max=1.0)
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                p.add_(g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf, alpha=-group["lr"])
        return None


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases-and-norm-parameters): the second group gets no weight decay / adaptation."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = param_groups(model)
    if cfg.name == "lars":
        if not cfg.lars_exclude_1d:  # the ACL/RCS code: adaptation and weight decay on every parameter
            decay, no_decay = decay + no_decay, []
        groups: list[dict[str, Any]] = [{"params": decay}] + ([{"params": no_decay, "lars": False, "weight_decay": 0.0}] if no_decay else [])
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, trust_coef=cfg.trust_coef,
                    clip=cfg.lars_clip, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "sgd":
        sgd_groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(
            sgd_groups,
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid: lars, sgd")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warm-up, then cosine to 0 or constant.
    The legacy clock (`optim.lr_clock=updates`): steps are counted over the whole run."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_lr_factor(t: float, epochs: int, warmup_epochs: float, schedule: str, first: float) -> float:
    """Multiplier of the base lr for the update that starts at epoch progress `t` (0 <= t <= epochs:
    t = e + (batch + replay / m) / batches, fractional epochs done before the update).

    Linear warm-up over the first `warmup_epochs`, (t + first) / warmup_epochs, where `first` is one
    full-data update's share of an epoch (so the first update's lr is not 0, and a full run's
    factors equal the update-count clock's); then cosine from 1 at t = warmup_epochs to 0 at
    t = epochs, or constant 1. A pure function of t: a coreset run (fewer batches per epoch) and a
    full run of the same config have the same factor at every epoch boundary."""
    if warmup_epochs > 0 and t < warmup_epochs:
        return min(1.0, (t + first) / warmup_epochs)
    if schedule == "constant":
        return 1.0
    progress = (t - warmup_epochs) / max(1e-12, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


class LRSchedule:
    """Sets the optimizer's lr before every update (one `step()` per update, as `Method.update` does).

    clock "epochs" (`optim.lr_clock`, the default): the lr is `epoch_lr_factor` of the run's
    fractional epoch progress. The trainer calls `start_epoch(epoch, batches, batch)` when an
    epoch's batches are known (after its coreset selection, also on resume); each update then
    advances the progress by 1 / (batches x updates_per_batch), so a method making m updates per
    batch (CF-AMC's replays) sweeps the same single schedule.
    clock "updates" (legacy, the runs made before the epoch clock): warm-up + cosine over the
    run's real number of updates (`total_updates`), counted by `updates`.

    full_batches: batches of a full-data epoch (the warm-up's first-update share; the legacy
    clock's warm-up length). The lr is the same for every parameter group.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, full_batches: int,
                 updates_per_batch: int = 1, total_updates: int = 0) -> None:
        self.optimizer = optimizer
        self.clock, self.schedule, self.warmup_epochs = cfg.lr_clock, cfg.schedule, cfg.warmup_epochs
        self.epochs, self.per_batch = epochs, updates_per_batch
        self.full_updates = max(1, full_batches * updates_per_batch)
        self.total_updates = total_updates
        self.legacy_warmup = round(cfg.warmup_epochs * full_batches * updates_per_batch)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.updates = 0  # updates made in the whole run
        self.epoch, self.done, self.in_epoch = 0, 0, self.full_updates  # position: updates done of the epoch's
        self._apply()

    def progress(self) -> float:
        """Fractional epochs before the next update. An epoch is a full-data one until `start_epoch`
        says otherwise (the trainer says it for every epoch)."""
        return self.epoch + self.done / self.in_epoch

    def factor(self) -> float:
        """The multiplier of the base lr for the next update."""
        if self.clock == "updates":
            return lr_factor(self.updates, self.total_updates, self.legacy_warmup, self.schedule)
        return epoch_lr_factor(self.progress(), self.epochs, self.warmup_epochs, self.schedule, 1.0 / self.full_updates)

    def _apply(self) -> None:
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f

    def start_epoch(self, epoch: int, batches: int, batch: int = 0) -> None:
        """Position the schedule at batch `batch` of `epoch`, an epoch of `batches` batches."""
        self.epoch, self.in_epoch, self.done = epoch, max(1, batches * self.per_batch), batch * self.per_batch
        self._apply()

    def step(self) -> None:
        """After an update: advance by one update and set the next update's lr."""
        self.updates += 1
        self.done += 1
        if self.done >= self.in_epoch:  # the epoch's last update: the next one starts the next epoch
            self.epoch, self.done, self.in_epoch = self.epoch + 1, 0, self.full_updates
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of each parameter group for the next update."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"clock": self.clock, "updates": self.updates, "epoch": self.epoch, "done": self.done,
                "in_epoch": self.in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; also reads the LambdaLR state of checkpoints made before this class
        (their `last_epoch` is the number of updates made)."""
        if "clock" not in state:  # torch's LambdaLR state (legacy checkpoints)
            self.updates = int(state["last_epoch"])
        else:
            if state["clock"] != self.clock:
                raise ValueError(f"the checkpoint's lr clock is {state['clock']!r}, this run's optim.lr_clock is {self.clock!r}")
            self.updates, self.epoch = int(state["updates"]), int(state["epoch"])
            self.done, self.in_epoch = int(state["done"]), int(state["in_epoch"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, full_batches: int,
                    updates_per_batch: int = 1, total_updates: int = 0) -> LRSchedule:
    """The run's lr schedule: `epochs` (train.epochs), `full_batches` (batches of a full-data epoch),
    the method's updates per batch, and the run's total updates (for the legacy update clock)."""
    return LRSchedule(optimizer, cfg, epochs, full_batches, updates_per_batch, total_updates)
