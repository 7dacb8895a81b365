"""The names evaluation accepts: evaluation protocols and evaluation attacks.

Cheap to import (no AutoAttack, no matplotlib), so the config and the CLI can build their
choices from these tables:

    PROTOCOLS  name -> Protocol: how the classifier is built from the encoder and trained
               ("slf": linear head on clean features; "alf": linear head on PGD examples of
               the whole model; "aff": encoder + head finetuned with TRADES)
    ATTACKS    the attacks `eval.attacks` may name ("pgd20": PGD-20 l_inf with random
               start; "autoattack": the official AutoAttack, standard version)

A protocol declares whether it finetunes the encoder. `evaluate_encoder` gives a protocol
that does its own deep copy of the encoder (so the caller's encoder, and every other
protocol, sees the pretrained weights), and builds a `FinetuneClassifier` on it; the other
protocols share one frozen copy inside a `LinearEvalModel`. The protocol's trainer is called
as train(classifier, train: ImageDataset, cfg: EvalConfig, device) -> training record dict,
and leaves the classifier ready to be evaluated (eval mode).

A new protocol is a trainer plus one Protocol line here; a new attack is a function in
robust.py returning an AttackResult, named here and run in `evaluate.evaluate_classifier`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..models.encoder import SSLModel
from .classifier import FinetuneClassifier, LinearEvalModel
from .finetune import train_aff
from .linear import train_alf, train_slf


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: its name, a one-line description, whether it trains the encoder,
    and its trainer train(classifier, train, cfg, device) -> training record."""

    name: str
    title: str
    finetunes_encoder: bool
    train: Callable[..., dict[str, Any]]

    def classifier(self, encoder: SSLModel, n_classes: int, branch: str | None) -> nn.Module:
        """The classifier this protocol trains: encoder + a linear head with `n_classes` outputs, on BN
        `branch`. A finetuning protocol's classifier owns `encoder` (pass a copy); a linear one freezes it in place."""
        if self.finetunes_encoder:
            return FinetuneClassifier(encoder, n_classes, branch)
        return LinearEvalModel(encoder, n_classes, branch)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("slf", "standard linear finetuning (frozen encoder, clean features)", False, train_slf),
        Protocol("alf", "adversarial linear finetuning (frozen encoder, PGD examples)", False, train_alf),
        Protocol("aff", "adversarial full finetuning (encoder + head, TRADES)", True, train_aff),
    )
}
ATTACKS: tuple[str, ...] = ("pgd20", "autoattack")

__all__ = ["ATTACKS", "PROTOCOLS", "Protocol"]
