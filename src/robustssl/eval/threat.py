"""Threat models and the interface of an evaluation attack (the objects `ATTACKS` holds).

An evaluation attack is an `EvalAttack` subclass, instantiated once in `registry.ATTACKS`:

    class MyAttack(EvalAttack):
        name = "myattack"            # what eval.attacks names, and the record's "attack"
        label = "My attack"          # the column header of report.md and compare
        rank = 30                    # sanity ordering on its threat model (see below)
        Settings = MySettings        # its own keys, eval.myattack.<key> (default: none)

        def run(self, model, x, y, cfg, done) -> AttackResult: ...

`threat_model(cfg)` says what the attack's eps bounds: by default the evaluation's l_p ball
(eval.norm, eval.eps); an attack with another distance (a perceptual bound) returns its own
`ThreatModel`, and report.md and compare then name it instead of the l_p one.

Ranks order attacks of one threat model for the attack-order sanity check: on the same
examples, an attack of higher rank must not leave more examples correct than one of lower
rank. Clean accuracy is rank 0 and the FGSM of the checks rank 10 (both l_p); PGD-20 is 20,
PGD-50x10 50, AutoAttack 100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import EvalConfig, RunConfig
    from .robust import AttackResult

LP_NORMS = {"linf": ("l_inf", "inputs in [0, 1]"), "l2": ("l_2", "l_2 distance, inputs in [0, 1]")}


def fmt_eps(eps: float, norm: str | None = "linf") -> str:
    """0.0313725... -> '0.0314 (8/255)' for l_inf; a plain number otherwise (and for eps not a multiple of 1/255)."""
    k = eps * 255
    if norm in (None, "linf") and eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{eps:.4g} ({round(k)}/255)"
    return f"{eps:.4g}"


@dataclass(frozen=True)
class ThreatModel:
    """What an attack's eps bounds. norm: "linf", "l2", or another distance's name ("lpips");
    label: how reports write it ("l_inf", "l_2", "LPIPS (self-bound)"); units: what eps is measured in."""

    norm: str
    eps: float
    label: str
    units: str

    @classmethod
    def lp(cls, norm: str, eps: float) -> ThreatModel:
        """The l_p ball of radius eps around an image in [0, 1] (norm "linf" or "l2")."""
        if norm not in LP_NORMS:
            raise ValueError(f"unknown l_p norm {norm!r}; valid: {', '.join(LP_NORMS)}")
        label, units = LP_NORMS[norm]
        return cls(norm, float(eps), label, units)

    def describe(self) -> str:
        """'l_inf eps 0.0314 (8/255) (inputs in [0, 1])'."""
        return f"{self.label} eps {fmt_eps(self.eps, self.norm)} ({self.units})"

    def record(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, "label": self.label, "units": self.units, "text": self.describe()}


@dataclass
class NoSettings:
    """An attack or protocol without settings of its own."""


class EvalAttack:
    """One evaluation attack (see the module docstring). Instances are stateless."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    rank: ClassVar[int] = 0
    Settings: ClassVar[type] = NoSettings
    requires: ClassVar[tuple[str, ...]] = ()  # attacks whose results `run` reads from `done` (run first)

    def threat_model(self, cfg: EvalConfig) -> ThreatModel:
        """What this attack's eps bounds; default: the evaluation's l_p ball (eval.norm, eval.eps)."""
        return ThreatModel.lp(cfg.norm, cfg.eps)

    def n_examples(self, cfg: EvalConfig, n: int) -> int:
        """On how many of the n test examples it runs (the first ones); default all."""
        return n

    def check_config(self, cfg: RunConfig) -> None:
        """Rules on the whole config, checked before any work; raise ConfigError."""

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig,
            done: dict[str, AttackResult]) -> AttackResult:
        """Attack `model` (inputs in [0, 1] -> logits, eval mode) on x float [N, C, H, W] in [0, 1],
        y int64 [N] (already cut to `n_examples`); `done`: the results already measured on this
        classifier (every attack of `requires` among them). Returns flags bool [N] and the record."""
        raise NotImplementedError  # abstract: every registered attack defines run
