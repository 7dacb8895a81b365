"""DynACL++'s post-processing of a pretrained encoder (Luo et al., ICLR 2023):

    1. pseudo-labels: k-means (k = postprocess.clusters) on the frozen encoder's features of
       the (unaugmented) training images, eval mode, on `cluster_branch` (DynACL++ clusters the
       `normal` branch's features of a dual-BN encoder)
    2. LP: a linear head trained on those pseudo-labels over the frozen encoder (the SLF trainer)
    3. AFT: encoder + that head finetuned with TRADES on the pseudo-labels (the AFF code,
       `eval.finetune.finetune_trades`), in train mode on the evaluation branch, attacked in
       eval mode

The result is a new encoder (the AFT backbone; the head is dropped), evaluated afterwards like
any pretrained one. No true label is used (the clusters' purity against the labels, when the
split has them, is only reported).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import torch

from .. import progress
from ..config import EvalConfig, PostprocessConfig
from ..data.dataset import ImageDataset
from ..errors import ConfigError
from ..eval.classifier import FinetuneClassifier, LinearEvalModel
from ..eval.finetune import FinetuneSettings, finetune_trades, kl_attack
from ..eval.linear import extract_features, to_unit, train_slf
from ..models.dual_bn import bn_branch, model_mode
from ..models.encoder import SSLModel
from .kmeans import kmeans

AFT_WEIGHT_DECAY = 1e-4  # DynACL++'s LP-AFT script
AFT_LR_MILESTONES = (0.4, 0.8)  # epochs 10 and 20 of 25, as in that script

__all__ = [
    "AFT_LR_MILESTONES", "AFT_WEIGHT_DECAY", "DIVERGENCE_GROWTH", "aft_settings", "cluster_features", "finetune_divergence",
    "lp_aft", "purity",
]


DIVERGENCE_GROWTH = 2.0  # an epoch whose mean loss is more than this times the lowest before it has diverged


def finetune_divergence(epoch_loss: list[float], growth: float = DIVERGENCE_GROWTH) -> dict[str, Any]:
    """Did a finetune's training loss diverge? (flagged as an unconverged probe is)

    epoch_loss: the per-epoch mean training loss. Diverged when the last epoch's loss is above
    the first epoch's (the finetune made its own objective worse), or when an epoch's loss is
    more than `growth` times the lowest loss of the epochs before it (a blow-up, even if later
    epochs come back down). One epoch cannot be judged (diverged False, said in the detail).
    Returns {diverged, growth, detail}.
    """
    losses = [float(v) for v in epoch_loss]
    trace = " -> ".join(f"{v:.4g}" for v in losses)
    if len(losses) < 2:
        return {"diverged": False, "growth": growth, "detail": f"not judged: {len(losses)} epoch ({trace})"}
    problems = []
    if losses[-1] > losses[0]:
        problems.append(f"the last epoch's loss is above the first's ({trace})")
    for e in range(1, len(losses)):
        low = min(losses[:e])
        if losses[e] > growth * low:
            problems.append(f"epoch {e + 1}'s loss {losses[e]:.4g} is {losses[e] / low:.3g}x the lowest before it ({low:.4g})")
            break
    if problems:
        detail = "; ".join(problems) + "; lower postprocess.aft_lr"
    else:
        detail = f"the loss fell ({trace})"
    return {"diverged": bool(problems), "growth": growth, "detail": detail}


def aft_settings(pp: PostprocessConfig, ev: EvalConfig) -> FinetuneSettings:
    """AFT's TRADES settings: postprocess.aft_* and the evaluation threat model (eval.eps; the
    attack's step is postprocess.aft_alpha, or eval.pgd_alpha when that is unset)."""
    return FinetuneSettings(
        epochs=pp.aft_epochs, lr=pp.aft_lr, batch_size=pp.aft_batch_size, beta=pp.aft_beta,
        attack=kl_attack("postprocess.aft", pp.aft_steps, pp.aft_alpha, ev),
        weight_decay=AFT_WEIGHT_DECAY, lr_milestones=AFT_LR_MILESTONES, augment=pp.aft_augment, seed=pp.seed,
    )


@torch.no_grad()
def cluster_features(model: SSLModel, images: torch.Tensor, branch: str | None, batch_size: int,
                     device: torch.device | str) -> torch.Tensor:
    """Encoder features [N, feature_dim] of uint8 images [N, C, H, W], eval mode, on BN `branch`
    (None: the model's current one), fp32, on `device`. The model's mode and branch are restored."""
    out = []
    progress.stage("features for k-means", images.shape[0])
    with model_mode(model, "eval"), bn_branch(model, branch):
        for s in range(0, images.shape[0], batch_size):
            out.append(model.features(to_unit(images[s : s + batch_size], device)).float())
            progress.advance(out[-1].shape[0])
    return torch.cat(out)


def purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose label is their cluster's most common label (1.0: every cluster is one class)."""
    clusters, labels = clusters.cpu(), labels.cpu()
    table = torch.zeros(int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    table.index_put_((clusters, labels), torch.ones_like(clusters), accumulate=True)
    return float(table.max(1).values.sum()) / clusters.numel()


def lp_aft(
    model: SSLModel,
    train: ImageDataset,
    pp: PostprocessConfig,
    ev: EvalConfig,
    device: torch.device | str,
    branch: str | None,
    cluster_branch: str | None,
) -> tuple[SSLModel, dict[str, Any]]:
    """Run k-means pseudo-labelling, LP and AFT on copies of `model` (never modified).

    train: the pretraining split (uint8 images; its labels, if any, are not used for training).
    branch: the BN branch LP and AFT train and evaluation uses (None for single-BN encoders);
    cluster_branch: the branch whose features k-means clusters. LP uses the SLF trainer with
    postprocess.lp_epochs / lp_lr and eval.linear_batch_size / linear_standardize; AFT uses
    `aft_settings`. Returns (the finetuned encoder, on `device`, in eval mode; the record of
    all three stages).
    """
    t0 = time.perf_counter()
    if pp.clusters > len(train):
        raise ConfigError(f"postprocess.clusters={pp.clusters} is more than the {len(train)} training images; lower it")
    device = torch.device(device)
    feats = cluster_features(model, train.images, cluster_branch, ev.batch_size, device)
    progress.stage(f"k-means ({pp.kmeans_inits} init(s), up to {pp.kmeans_iters} iterations each)", pp.kmeans_inits,
                   unit="init")
    km = kmeans(feats, pp.clusters, seed=pp.seed, max_iter=pp.kmeans_iters, n_init=pp.kmeans_inits)
    pseudo = dataclasses.replace(
        train, labels=km.labels.to(train.images.device), name=f"{train.name} (k-means pseudo-labels)",
        classes=[f"cluster {k}" for k in range(pp.clusters)],
    )
    kmeans_record: dict[str, Any] = {
        "clusters": pp.clusters, "features": f"{feats.shape[1]}-d encoder features, eval mode",
        "bn_branch": cluster_branch, "images": int(feats.shape[0]), "init": "k-means++", "n_init": pp.kmeans_inits,
        "best_init": km.best_init, "iterations": km.iterations, "converged": km.converged, "inertia": km.inertia,
        "cluster_sizes": km.sizes(), "seed": pp.seed,
        "purity_vs_true_labels": None if train.labels is None else purity(km.labels, train.labels),
        "seconds": round(time.perf_counter() - t0, 3),
    }

    lp_model = LinearEvalModel(copy.deepcopy(model).to(device), pp.clusters, branch)
    lp_cfg = dataclasses.replace(ev, linear_epochs=pp.lp_epochs, linear_lr=pp.lp_lr, train_examples=None, seed=pp.seed)
    with progress.section("LP"):
        lp_record = train_slf(lp_model, pseudo, lp_cfg, device)
    with torch.no_grad():
        predicted = lp_model.logits(extract_features(lp_model, pseudo.images, ev.batch_size, device)).argmax(1)
    lp_record["pseudo_label_accuracy"] = float((predicted.cpu() == km.labels.cpu()).float().mean())
    lp_record["protocol"] = "lp"

    clf = FinetuneClassifier(copy.deepcopy(model).to(device), pp.clusters, branch)
    clf.head.load_state_dict(lp_model.head.state_dict())
    aft_record = finetune_trades(clf, pseudo, aft_settings(pp, ev), device, head_init="the LP head", what="LP-AFT")
    aft_record["protocol"] = "aft"
    aft_record["divergence"] = finetune_divergence(aft_record["epoch_loss"])
    encoder = clf.encoder.eval()
    return encoder, {"kmeans": kmeans_record, "lp": lp_record, "aft": aft_record,
                     "seconds": round(time.perf_counter() - t0, 3)}
