"""Clean and robust accuracy: PGD (through the one PGD engine) and the official AutoAttack.

Every function takes a classifier that maps x in [0, 1] to logits (a `LinearEvalModel`),
runs it in eval mode and fp32, batches the examples by `batch_size`, and returns an
`AttackResult`: the per-example flags (True = still classified correctly) and the
record every reported number carries (attack, norm, eps, steps, accuracy, n_examples, seed).
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import progress
from ..attacks.pgd import PGDConfig, pgd
from ..losses.ce import summed_ce
from ..models.dual_bn import model_mode
from .classifier import model_device
from .threat import EvalAttack

if TYPE_CHECKING:
    from ..config import EvalConfig


@dataclass
class AttackResult:
    """One measured accuracy.

    flags: bool [N] on the CPU, True where the example is classified correctly (clean) or
    survives the attack (robust). steps: an int for PGD, "standard" for AutoAttack.
    extra: attack-specific fields that go into the record (alpha, sub-attacks, warnings).
    """

    attack: str
    norm: str | None
    eps: float
    steps: int | str
    seed: int | None
    flags: torch.Tensor
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.flags.numel())

    @property
    def accuracy(self) -> float:
        # count / n in double precision, so equal counts give equal accuracies across attacks
        return int(self.flags.sum().item()) / self.n_examples if self.n_examples else float("nan")

    def first(self, n: int) -> AttackResult:
        """The same result restricted to the first n examples (to compare with an attack run on them)."""
        return AttackResult(self.attack, self.norm, self.eps, self.steps, self.seed, self.flags[:n], self.seconds, dict(self.extra))

    def record(self) -> dict[str, Any]:
        """The JSON-ready record (no per-example flags)."""
        rec: dict[str, Any] = {
            "attack": self.attack,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "accuracy": self.accuracy,
            "n_examples": self.n_examples,
            "seed": self.seed,
        }
        rec.update(self.extra)
        rec["seconds"] = round(self.seconds, 3)
        return rec


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"x must be float images in [0, 1], got {x.dtype} (divide uint8 images by 255)")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes int64 [N] (CPU) for x float [N, C, H, W] in [0, 1]; model in eval mode."""
    device = model_device(model)
    out = []
    with model_mode(model, "eval"):
        for s in _batches(x.shape[0], batch_size):
            out.append(model(x[s].to(device).float()).argmax(1).cpu())
            progress.advance(s.stop - s.start)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> AttackResult:
    """Accuracy on unperturbed inputs. x: float [N, C, H, W] in [0, 1]; y: int64 [N]; eval mode, fp32."""
    _check_inputs(x, y)
    t0 = time.perf_counter()
    progress.stage("clean", x.shape[0])
    flags = predict(model, x, batch_size) == y.cpu()
    return AttackResult("clean", None, 0.0, 0, None, flags, time.perf_counter() - t0)


def pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    *,
    norm: str = "linf",
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 500,
    name: str | None = None,
    restarts: int = 1,
    loss: Callable[[nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] = summed_ce,
) -> AttackResult:
    """Accuracy under PGD maximizing the cross-entropy (the shared engine, eval mode, fp32).

    x: float [N, C, H, W] in [0, 1]; y: int64 [N]. The random start is drawn from a generator
    seeded with `seed`, so a call repeats exactly. With eps=0 the inputs are not moved and the
    flags equal clean_accuracy's. `name` labels the record (default "pgd{steps}").
    restarts: independent random starts per example; an example survives only if it survives
    every one (the per-example worst case, ACS's PGD-50 with 10 restarts).
    loss(model, y) -> (x_adv -> scalar): what PGD maximizes (default the summed cross-entropy).
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    _check_inputs(x, y)
    device = model_device(model)
    cfg = PGDConfig(eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start)
    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    flags = []
    progress.stage(f"{name or f'pgd{steps}'} eps={eps:g}", x.shape[0])
    with model_mode(model, "eval"):
        for s in _batches(x.shape[0], batch_size):
            xb, yb = x[s].to(device).float(), y[s].to(device)
            survived = torch.ones_like(yb, dtype=torch.bool)
            for _ in range(restarts):
                x_adv = pgd(model, xb, loss(model, yb), cfg, mode="eval", generator=gen)
                with torch.no_grad():
                    survived &= model(x_adv).argmax(1) == yb
            flags.append(survived.cpu())
            progress.advance(s.stop - s.start)
    result = torch.cat(flags) if flags else torch.empty(0, dtype=torch.bool)
    extra: dict[str, Any] = {"alpha": alpha, "random_start": random_start}
    if restarts > 1:
        extra["restarts"] = restarts
    return AttackResult(name or f"pgd{steps}", norm, eps, steps, seed, result, time.perf_counter() - t0, extra)


class _CollectWarnings(logging.Handler):
    """Keeps the warnings AutoAttack logs about itself (randomized / dynamic model, Square beating APGD)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _FollowAutoAttack(logging.Filter):
    """Shows AutoAttack's progress on the active display (`robustssl.progress`), from its own debug
    lines ('initial accuracy: 81.00%', 'running apgd-ce', 'apgd-ce - 2/5 - 13 out of 100 successfully
    perturbed'), and drops those lines; records at or above `level` (the logger's level before
    it was lowered to DEBUG to see them) pass on to the handlers as before."""

    PERTURBED = re.compile(r"\S+ - \d+/\d+ - (\d+) out of (\d+) successfully perturbed")

    def __init__(self, n: int, attacks: list[str], level: int) -> None:
        super().__init__()
        self.remaining, self.attacks, self.level = n, attacks, level
        self.n = n

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        message = record.getMessage()
        if message.startswith("initial accuracy:"):  # the examples the first sub-attack runs on
            self.remaining = round(float(message.split(":")[1].strip().rstrip("%")) / 100 * self.n)
        elif message.startswith("running "):
            name = message[len("running "):]
            k = self.attacks.index(name) + 1 if name in self.attacks else 0
            if self.remaining > 0:  # AutoAttack announces a sub-attack before it finds nothing left to attack
                progress.stage(f"autoattack {name} ({k}/{len(self.attacks)})", self.remaining)
        elif m := self.PERTURBED.match(message):
            progress.advance(int(m.group(2)))
            self.remaining -= int(m.group(1))
        return False


def autoattack_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: int = 0,
    *,
    norm: str = "Linf",
    batch_size: int = 500,
) -> AttackResult:
    """Accuracy under the official AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square).

    x: float [N, C, H, W] in [0, 1]; y: int64 [N]; the model runs in eval mode. An example
    counts as robust only if it is classified correctly and survives all four attacks
    (AutoAttack's per-example worst case: it returns the adversarial prediction of the
    first attack that succeeded, so robust = y_adv == y). AutoAttack reseeds torch's global
    RNG; the caller's RNG state is restored afterwards. Warnings AutoAttack logs about the
    model are kept in the record under "autoattack_warnings".
    """
    from pyautoattack import AutoAttack

    _check_inputs(x, y)
    device = model_device(model)
    aa_logger = logging.getLogger("auto-attack")
    collector = _CollectWarnings()
    aa_logger.addHandler(collector)
    follow: _FollowAutoAttack | None = None
    old_level = aa_logger.level
    t0 = time.perf_counter()
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with model_mode(model, "eval"), torch.random.fork_rng(devices=fork_devices):
            aa = AutoAttack(model, norm=norm, eps=eps, version="standard", device=device, seed=seed)
            x_dev, y_dev = x.to(device).float(), y.to(device)
            if progress.active():  # follow its sub-attacks on the display
                follow = _FollowAutoAttack(x.shape[0], list(aa.attacks_to_run), aa_logger.getEffectiveLevel())
                aa_logger.addFilter(follow)
                aa_logger.setLevel(logging.DEBUG)
                progress.stage("autoattack", x.shape[0])
            _, y_adv = aa.run_standard_evaluation(x_dev, y_dev, batch_size=batch_size)
            sub_attacks = list(aa.attacks_to_run)
    finally:
        aa_logger.removeHandler(collector)
        if follow is not None:
            aa_logger.removeFilter(follow)
            aa_logger.setLevel(old_level)
    flags = (y_adv == y_dev).cpu()
    extra = {"version": "standard", "sub_attacks": sub_attacks, "autoattack_warnings": collector.messages}
    return AttackResult("autoattack", norm.lower(), eps, "standard", seed, flags, time.perf_counter() - t0, extra)


# --- the built-in evaluation attacks (registered in registry.ATTACKS) -------------------------
class PGDAttack(EvalAttack):
    """PGD-20 with random start on the cross-entropy, at eval.eps in eval.norm, step eval.pgd_alpha."""

    name = "pgd20"
    label = "PGD-20"
    rank = 20
    steps = 20
    restarts = 1

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
            done: dict[str, AttackResult]) -> AttackResult:
        return pgd_accuracy(model, x, y, cfg.eps, cfg.pgd_alpha, self.steps, norm=cfg.norm, seed=cfg.seed,
                            batch_size=cfg.batch_size, name=self.name, restarts=self.restarts)


class PGD50x10Attack(PGDAttack):
    """ACS's protocol: PGD-50 with 10 random restarts, the per-example worst case."""

    name = "pgd50x10"
    label = "PGD-50x10"
    rank = 50
    steps = 50
    restarts = 10


class AutoAttackStandard(EvalAttack):
    """The official AutoAttack, standard version, in eval.norm at eval.eps, on the first
    eval.autoattack_examples test images (all when unset)."""

    name = "autoattack"
    label = "AutoAttack"
    rank = 100

    def n_examples(self, cfg: EvalConfig, n: int) -> int:
        return n if cfg.autoattack_examples is None else min(cfg.autoattack_examples, n)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
            done: dict[str, AttackResult]) -> AttackResult:
        return autoattack_accuracy(model, x, y, cfg.eps, cfg.seed, norm="L2" if cfg.norm == "l2" else "Linf",
                                   batch_size=cfg.batch_size)
