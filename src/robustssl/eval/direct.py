"""The `direct` protocol: evaluate a supervised run's own classifier, as trained.

Supervised methods (PGD-AT, TRADES, fast AT) train encoder + linear classifier together; the
export then holds the classifier layer too (`export_encoder(..., with_head=True)`). Nothing is
trained here: the `LinearEvalModel` of the protocol takes the run's classifier layer as its
head, so the classifier that is attacked is exactly the trained model (eval mode, fp32),
through the same clean / PGD / AutoAttack / sanity-check path as every probe.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import EvalConfig
from ..data.dataset import ImageDataset
from ..errors import ConfigError
from .classifier import LinearEvalModel


def trained_head(encoder: nn.Module) -> nn.Linear:
    """The supervised classifier layer of a loaded export; ConfigError when the export has none."""
    if not getattr(encoder, "head_trained", False):
        raise ConfigError("protocol direct evaluates a supervised run's own classifier, and this encoder export holds "
                          "no trained classifier layer (a self-supervised run); use eval.protocols=[slf] (or alf, aff)")
    linears = [m for m in encoder.projector.modules() if isinstance(m, nn.Linear)]  # type: ignore[union-attr]
    if len(linears) != 1:
        raise ConfigError(f"protocol direct needs a single-Linear classifier head, found {len(linears)} Linear layers")
    return linears[0]


def train_direct(model: LinearEvalModel, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """Install the run's own classifier layer as `model.head` (no training) and return the record."""
    head = trained_head(model.encoder)
    if head.out_features != model.n_classes:
        raise ConfigError(f"the run's classifier has {head.out_features} outputs but the evaluation data has "
                          f"{model.n_classes} classes; evaluate on the data it was trained on")
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        if head.bias is not None:
            model.head.bias.copy_(head.bias)
        else:
            model.head.bias.zero_()
    model.eval()
    return {"protocol": "direct", "direct": True, "finetunes_encoder": False, "seconds": 0.0,
            "detail": "the supervised run's own classifier, evaluated as trained (no probe)"}


def direct_markdown(t: dict[str, Any]) -> list[str]:
    """report.md's training line of the direct protocol."""
    return ["The supervised run's own classifier (encoder + its trained linear layer), evaluated as trained: no probe."]
