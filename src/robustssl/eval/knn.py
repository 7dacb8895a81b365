"""The `knn` protocol: a weighted cosine kNN on the frozen encoder's features, attacked through its soft scores.

The classifier solo-learn and lightly use to monitor self-supervised encoders (the weighted kNN
of Wu et al. 2018, "Unsupervised feature learning via non-parametric instance discrimination";
lightly's `knn_predict` defaults k = 200, T = 0.1):

    f = normalize(encoder features of x)                 [B, D], frozen encoder, eval mode
    s = f @ bank.T                                       [B, N] cosine similarities to the
                                                         (normalized) training features
    the k most similar training images, weights exp(s / T)
    score_c = sum of the weights of those of class c     [B, C]

and predicts argmax_c score_c. As a module it returns log(score_c) (shifted by 1/T, the
largest possible s / T, so no weight overflows), so it is an ordinary classifier from the image
to logits: the evaluation's clean accuracy, PGD-20, FGSM, the eps curve, the sanity checks and
AutoAttack all run on it unchanged, with the gradient flowing through the soft scores of the
selected neighbours (the choice of the k neighbours itself is piecewise constant in x, like
any top-k). The bank is the clean features of the unaugmented training images (or a seeded
subset of eval.train_examples), computed once; nothing is trained.

Settings: eval.knn.k (200), eval.knn.temperature (0.1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ..config import EvalConfig
from ..data.dataset import ImageDataset
from ..errors import ConfigError
from ..models.encoder import SSLModel
from ..settings import positive
from .classifier import LinearEvalModel, _fp32
from .linear import extract_features, train_subset

SCORE_FLOOR = 1e-30  # added to every class score before the log: a class with no neighbour gets about -69, not -inf


@dataclass
class KNNSettings:
    k: int = positive(200)  # neighbours (lightly's and InstDisc's default)
    temperature: float = positive(0.1)  # weights exp(cosine / temperature)


class KNNClassifier(LinearEvalModel):
    """Frozen encoder + weighted cosine kNN over a bank of training features.

    forward(x): x float [B, C, H, W] in [0, 1] -> logits [B, n_classes] fp32 (log of the kNN class
    scores, see the module docstring). features(x) and the frozen encoder are `LinearEvalModel`'s
    (eval mode, one BN branch, autocast off); its linear head is not used. `set_bank` fills the
    bank; before that forward raises. bank: float [N, D] L2-normalized; bank_labels: int64 [N].
    """

    bank: torch.Tensor
    bank_labels: torch.Tensor

    def __init__(self, encoder: SSLModel, n_classes: int, branch: str | None = None, k: int = 200,
                 temperature: float = 0.1) -> None:
        super().__init__(encoder, n_classes, branch)
        self.head.requires_grad_(False)  # not part of the classifier
        self.k, self.temperature = k, temperature
        self.register_buffer("bank", torch.empty(0, encoder.feature_dim), persistent=False)
        self.register_buffer("bank_labels", torch.empty(0, dtype=torch.long), persistent=False)

    def set_bank(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """features [N, D] (any scale; normalized here), labels int64 [N] in [0, n_classes)."""
        if features.shape[0] != labels.shape[0] or features.shape[0] == 0:
            raise ValueError(f"a kNN bank needs N >= 1 features and N labels, got {features.shape[0]} and {labels.shape[0]}")
        self.bank = F.normalize(features.detach().float(), dim=1)
        self.bank_labels = labels.to(self.bank.device).long()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, D] -> log kNN class scores [B, n_classes] fp32."""
        if self.bank.shape[0] == 0:
            raise RuntimeError("the kNN bank is empty; call set_bank (train_knn does) first")
        with _fp32(features):
            f = F.normalize(features.float(), dim=1)
            sims = f @ self.bank.T  # [B, N]
            top, idx = sims.topk(min(self.k, self.bank.shape[0]), dim=1)
            weights = torch.exp((top - 1.0) / self.temperature)  # exp(s / T) / exp(1 / T): at most 1
            scores = torch.zeros(f.shape[0], self.n_classes, device=f.device, dtype=f.dtype)
            scores = scores.scatter_add(1, self.bank_labels[idx], weights)
            return torch.log(scores + SCORE_FLOOR)


def knn_classifier(encoder: SSLModel, n_classes: int, branch: str | None, cfg: EvalConfig) -> KNNClassifier:
    """The knn protocol's classifier, with eval.knn.k and eval.knn.temperature."""
    s = cfg.component("knn")
    return KNNClassifier(encoder, n_classes, branch, s.k, s.temperature)


def train_knn(model: LinearEvalModel, train: ImageDataset, cfg: EvalConfig, device: torch.device | str) -> dict[str, Any]:
    """Fill the bank with the clean features of the (unaugmented) training images, or a seeded subset of
    cfg.train_examples of them; no training. Returns the record (k, temperature, bank size, seconds)."""
    if not isinstance(model, KNNClassifier):
        raise TypeError(f"protocol knn fills a KNNClassifier, got {type(model).__name__}")
    if train.labels is None:
        raise ConfigError(f"{train.name}/{train.split} has no labels; the knn protocol needs labelled training images")
    t0 = time.perf_counter()
    train = train_subset(train, cfg.train_examples, cfg.seed)
    model.to(device)
    feats = extract_features(model, train.images, cfg.batch_size, device)
    model.set_bank(feats, train.labels.to(feats.device))  # type: ignore[union-attr]
    model.eval()
    return {
        "protocol": "knn", "k": model.k, "effective_k": min(model.k, len(train)), "temperature": model.temperature,
        "distance": "cosine", "weighting": "exp(cosine / temperature), summed per class",
        "bank": "clean features of the unaugmented training images", "train_examples": len(train),
        "logits": "log of the class scores (attacks differentiate through the selected neighbours' weights)",
        "seconds": round(time.perf_counter() - t0, 3),
    }


def knn_markdown(t: dict[str, Any]) -> list[str]:
    """report.md's lines for the knn protocol."""
    return [
        f"Weighted cosine kNN on the frozen features: k {t['effective_k']}, weights exp(cosine / {t['temperature']:g}) "
        f"summed per class, over the clean features of {t['train_examples']} training images (no augmentation, nothing "
        f"trained), {t['seconds']:.1f} s. Attacks differentiate through the soft class scores (log of the summed weights)."
    ]
