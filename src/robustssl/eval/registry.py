"""The names evaluation accepts: linear-probe protocols and evaluation attacks.

Cheap to import (no AutoAttack, no matplotlib), so the config and the CLI can build their
choices from these tables:

    PROTOCOLS  name -> probe trainer, called as trainer(model: LinearEvalModel, train:
               ImageDataset, cfg: EvalConfig, device) -> training summary dict
               ("slf": clean features, "alf": PGD examples of the whole model)
    ATTACKS    the attacks `eval.attacks` may name ("pgd20": PGD-20 l_inf with random
               start; "autoattack": the official AutoAttack, standard version)

A new protocol is a trainer with that signature added to PROTOCOLS; a new attack is a
function in robust.py returning an AttackResult, named here and run in
`evaluate.evaluate_classifier`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .linear import train_alf, train_slf

PROTOCOLS: dict[str, Callable[..., dict[str, Any]]] = {"slf": train_slf, "alf": train_alf}
ATTACKS: tuple[str, ...] = ("pgd20", "autoattack")

__all__ = ["ATTACKS", "PROTOCOLS"]
