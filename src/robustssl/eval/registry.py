"""The names evaluation accepts: evaluation protocols and evaluation attacks.

Cheap to import (no AutoAttack, no matplotlib), so the config and the CLI can build their
choices from these tables:

    PROTOCOLS  name -> Protocol: how the classifier is built from the encoder and trained
               ("slf": linear head on clean features; "alf": linear head on PGD examples of
               the whole model; "aff": encoder + head finetuned with TRADES; "slf-mc" /
               "alf-mc": SLF / ALF on the mean of the features of a fixed set of crops of
               the image, EMP-SSL's multi-patch aggregation, see multicrop.py)
    ATTACKS    the attacks `eval.attacks` may name ("pgd20": PGD-20 l_inf with random
               start; "autoattack": the official AutoAttack, standard version; "pgd50x10":
               PGD-50 with 10 random restarts, ACS's protocol)

A protocol declares whether it finetunes the encoder. `evaluate_encoder` gives a protocol
that does its own deep copy of the encoder (so the caller's encoder, and every other
protocol, sees the pretrained weights), and builds a `FinetuneClassifier` on it; the other
protocols share one frozen copy inside a `LinearEvalModel` (a `MultiCropEvalModel` for the
multi-crop protocols, whose crop set comes from the evaluation config). The protocol's trainer is called
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

from ..config import EvalConfig
from ..models.encoder import SSLModel
from .classifier import FinetuneClassifier, LinearEvalModel
from .direct import train_direct
from .finetune import train_aff
from .linear import train_alf, train_slf
from .multicrop import CropSet, MultiCropEvalModel, train_alf_mc, train_slf_mc


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: its name, a one-line description, whether it trains the encoder,
    its trainer train(classifier, train, cfg, device) -> training record, and whether its
    (frozen-encoder) classifier averages the features of a fixed crop set (`MultiCropEvalModel`)."""

    name: str
    title: str
    finetunes_encoder: bool
    train: Callable[..., dict[str, Any]]
    multicrop: bool = False

    def classifier(self, encoder: SSLModel, n_classes: int, branch: str | None, cfg: EvalConfig | None = None) -> nn.Module:
        """The classifier this protocol trains: encoder + a linear head with `n_classes` outputs, on BN
        `branch`. A finetuning protocol's classifier owns `encoder` (pass a copy); a linear one freezes it in place.
        cfg: the evaluation settings (a multi-crop protocol's crop set; None: the defaults)."""
        if self.finetunes_encoder:
            return FinetuneClassifier(encoder, n_classes, branch)
        if self.multicrop:
            return MultiCropEvalModel(encoder, n_classes, CropSet.from_config(cfg or EvalConfig()), branch)
        return LinearEvalModel(encoder, n_classes, branch)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("slf", "standard linear finetuning (frozen encoder, clean features)", False, train_slf),
        Protocol("alf", "adversarial linear finetuning (frozen encoder, PGD examples)", False, train_alf),
        Protocol("aff", "adversarial full finetuning (encoder + head, TRADES)", True, train_aff),
        Protocol("slf-mc", "SLF on the mean features of a fixed crop set (EMP-SSL multi-patch)", False, train_slf_mc, True),
        Protocol("alf-mc", "ALF on the mean features of a fixed crop set (EMP-SSL multi-patch)", False, train_alf_mc, True),
        Protocol("direct", "a supervised run's own classifier, as trained (no probe)", False, train_direct),
    )
}
ATTACKS: tuple[str, ...] = ("pgd20", "autoattack", "pgd50x10")

__all__ = ["ATTACKS", "PROTOCOLS", "Protocol"]
