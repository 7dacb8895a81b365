"""The online robust probe (`train.probe_every=K`): how robust the encoder is as training goes.

After every K-th epoch and after the last one, `OnlineProbe.after_epoch`:

1. copies the training model's weights into the probe's own copy of the model (built once,
   plain: not compiled, not channels_last, ordinary BatchNorm), so the training model, its
   mode, BN statistics and gradients are never touched; everything runs inside
   `torch.random.fork_rng`, so the training RNG stream is unchanged (a run with probes ends
   with bit-identical weights to one without);
2. builds the classifier evaluation would build (`eval.classifier.LinearEvalModel`, eval mode,
   fp32, on the BN branch the report uses: `default_branch` of the method's trained branches)
   on the full image (multi-crop methods too: their full-image representation). Self-supervised
   methods fit its linear head with the SLF trainer (`eval.linear.train_slf`) on standardized
   features of `train.probe_train_examples` images, PROBE_EPOCHS epochs of batch PROBE_BATCH
   at lr PROBE_LR, or with `train.probe_head=knn` fill a weighted cosine kNN (`eval.knn`, its
   `eval.knn.k` and `eval.knn.temperature`) with their clean features: the online monitor of
   solo-learn and lightly, attacked through its soft scores like the knn protocol; a supervised
   method uses its own classifier (`eval.direct.train_direct`);
3. measures clean and PGD-k accuracy (`eval.robust`, the one PGD: k = train.probe_attack_steps,
   eps = eval.eps, step eval.pgd_alpha, eval.norm, seeded random start) on
   `train.probe_test_examples` images;
4. writes {"type": "probe", "epoch", "step", "train_seconds", "clean", "robust", "eps", "n",
   "probe_seconds", ...} to metrics.jsonl. `epoch` is the 0-based epoch just finished (as in
   the epoch records); `train_seconds` is the run's time so far, earlier sessions included,
   minus the time of every probe (so a curve does not depend on how often it probes; a coreset
   run's selection time is in it).

The probe's images are fixed, seeded slices of the training split the run never trains on:
the images `data.train_subset` leaves out. When there are not enough of them (no
train_subset), a self-supervised run draws them from its training pool instead (training never
uses their labels; the coreset's validation split is left out). A supervised run is never probed
on images it trains on: without images left out (no data.train_subset, or a dataset smaller than
it) it goes on without probes and says so, as does a run whose data have no labels.

Resuming: the probe runs before the epoch's checkpoint, so a resumed run keeps the probe
records up to its checkpoint (metrics.truncate_after) and redoes the others with the same
weights, seeds and images: the same records. The kept records also give the probe time
already spent. Under torchrun rank 0 alone probes (on its replica, identical on every rank)
and writes; the other ranks wait at a barrier until it is done.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import dist
from ..data.dataset import ImageDataset, ImageSource
from ..errors import ConfigError
from ..models import build_model, has_dual_bn
from .metrics import MetricsLog, read_metrics

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..eval.classifier import LinearEvalModel
    from .trainer import TrainState

PROBE_EPOCHS = 30  # SLF epochs of the probe's head (standardized features: a few hundred fast steps)
PROBE_BATCH = 64
PROBE_LR = 0.1
SEED_OFFSET = 104729  # the probe's slices are drawn from train.seed + this (apart from the run's other draws)

__all__ = ["OnlineProbe", "ProbeError", "check_probe_config", "probe_due"]


class ProbeError(ConfigError):
    """The probe cannot be set up for this run's data; the message says what to change."""


def probe_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether a probe runs after the 0-based `epoch`: every `every`-th epoch and the last (every=0: never)."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def check_probe_config(cfg: RunConfig) -> None:
    """Config rules of train.probe_* and train.tensorboard (run with the other cross-key rules, before any work)."""
    t, ev = cfg.train, cfg.eval
    if t.tensorboard:
        from .tensorboard import require_tensorboard

        require_tensorboard()
    if not t.probe_every:
        return
    if t.probe_attack_steps * ev.pgd_alpha < ev.eps - 1e-12:
        raise ConfigError(f"train.probe_attack_steps={t.probe_attack_steps} steps of eval.pgd_alpha={ev.pgd_alpha:g} "
                          f"cannot reach eval.eps={ev.eps:g}; raise train.probe_attack_steps or eval.pgd_alpha")


@dataclass
class ProbeSlices:
    """The probe's fixed images. head: the head's training images (None: a supervised run's own
    classifier); x: float [n, C, H, W] in [0, 1], y: int64 [n] and ids: int64 [n] (sample ids in
    the split, CPU), the measured images."""

    head: ImageDataset | None
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    n_classes: int
    source: str


def _held_out(cfg: RunConfig, data: ImageSource, device: torch.device) -> tuple[ImageSource, torch.Tensor] | None:
    """(the whole training split, positions in it of the images the run never trains on), or None
    when the run trains on the whole split."""
    from ..data import load_dataset, open_stream
    from ..run_setup import data_options

    if cfg.data.train_subset is None:
        return None
    full: ImageSource = (open_stream(cfg.data.name, "train", device, **data_options(cfg)) if cfg.data.stream
                         else load_dataset(cfg.data.name, "train", **data_options(cfg)))
    if len(full) <= len(data):
        return None
    free = ~torch.isin(full.indices.cpu(), data.indices.cpu())
    return full, free.nonzero().flatten()


def draw_slices(cfg: RunConfig, data: ImageSource, pool: torch.Tensor, supervised: bool,
                device: torch.device) -> ProbeSlices:
    """The probe's images: held-out images when there are enough (a supervised run: always), else the
    training pool. When even those are fewer than asked for, both slices shrink in proportion (a note says so)."""
    t = cfg.train
    n_head, n_test = (0 if supervised else t.probe_train_examples), t.probe_test_examples
    held = _held_out(cfg, data, device)
    if held is not None and (len(held[1]) >= n_head + n_test or supervised):
        source, candidates = held
        where = f"{len(held[1])} training-split images left out by data.train_subset"
    elif supervised:
        raise ProbeError(f"the probe of a supervised run needs images it never trains on, and data.train_subset="
                         f"{cfg.data.train_subset} leaves none of the {len(data)} training images; lower data.train_subset")
    else:
        source, candidates = data, pool.cpu()
        where = "the training pool (labels unused by training; the coreset's validation split left out)"
    if len(candidates) < n_head + n_test:
        if len(candidates) < (1 if supervised else 2):
            raise ProbeError(f"the probe has {len(candidates)} images to use ({where}); set train.probe_every=0")
        asked = n_head + n_test
        n_test = max(1, round(len(candidates) * n_test / asked))
        n_head = 0 if supervised else len(candidates) - n_test
        print(f"note: the probe asked for {asked} images (train.probe_train_examples + train.probe_test_examples) and "
              f"has {len(candidates)} ({where}): it fits on {n_head} and measures {n_test}")
    need = n_head + n_test
    if source.labels is None:
        raise ProbeError(f"the probe needs labelled images and {source.name}/{source.split} has no labels; "
                         "set train.probe_every=0")
    g = torch.Generator().manual_seed(t.seed + SEED_OFFSET)
    chosen = candidates[torch.randperm(len(candidates), generator=g)[:need]]
    head_pos, test_pos = chosen[:n_head].sort().values, chosen[n_head:].sort().values
    labels = source.labels
    n_classes = len(source.classes) or int(labels.max().item()) + 1
    head = None
    if n_head:
        head = ImageDataset(source.gather(head_pos).to(device), labels[head_pos.to(labels.device)].to(device),
                            source.indices[head_pos.to(source.indices.device)].cpu(), source.name, source.split,
                            list(source.classes))
    x = source.gather(test_pos).to(device).float().div_(255.0)
    y = labels[test_pos.to(labels.device)].to(device)
    ids = source.indices[test_pos.to(source.indices.device)].cpu()
    return ProbeSlices(head, x, y, ids, n_classes, where)


class OnlineProbe:
    """The probe of one training session (see the module's docstring). `start` builds it (None when
    train.probe_every=0); the trainer calls `after_epoch` once per epoch, before the epoch's checkpoint."""

    def __init__(self, cfg: RunConfig, state: TrainState, data: ImageSource, device: torch.device, metrics_path: Path) -> None:
        from ..eval.classifier import LinearEvalModel, default_branch
        from ..run_setup import model_spec

        self.cfg, self.device = cfg, device
        self.main = dist.is_main()
        self.spent = 0.0  # seconds of the probes so far, earlier sessions included
        self.done: set[int] = set()  # epochs already probed (records kept by a resume)
        self.pending = 0.0  # set-up seconds, counted with this session's first probe
        self.clf: LinearEvalModel | None = None
        if not self.main:
            return
        t0 = time.perf_counter()
        if metrics_path.exists():
            previous = [r for r in read_metrics(metrics_path) if r.get("type") == "probe"]
            self.spent = sum(float(r["probe_seconds"]) for r in previous)
            self.done = {int(r["epoch"]) for r in previous}
        method = state.method
        self.supervised = bool(method.supervised)
        self.head_kind = "direct" if self.supervised else ("knn" if cfg.train.probe_head == "knn" else "slf")
        with _rng_kept(device):
            try:
                self.slices = draw_slices(cfg, data, state.schedule.pool, self.supervised, device)
            except ProbeError as e:  # this run's data cannot feed it: the run goes on without it
                print(f"note: the online probe (train.probe_every) is off for this run: {e}")
                return
            encoder = build_model(model_spec(cfg, data)).to(device)
            trained = list(method.trained_branches) if has_dual_bn(encoder) else None
            if self.supervised:
                encoder.head_trained = True  # the projector is the run's classifier (eval.direct reads it)
            branch = default_branch(encoder, trained)
            if self.head_kind == "knn":  # solo-learn's and lightly's online monitor, on the same slices
                from ..eval.knn import knn_classifier

                self.clf = knn_classifier(encoder, self.slices.n_classes, branch, cfg.eval).to(device)
            else:
                self.clf = LinearEvalModel(encoder, self.slices.n_classes, branch).to(device)
        self.pending = time.perf_counter() - t0

    @classmethod
    def start(cls, cfg: RunConfig, state: TrainState, data: ImageSource, device: torch.device,
              metrics_path: Path) -> OnlineProbe | None:
        """The probe of this session, or None when train.probe_every=0."""
        return cls(cfg, state, data, device, metrics_path) if cfg.train.probe_every else None

    def after_epoch(self, epoch: int, state: TrainState, metrics: MetricsLog) -> dict[str, Any] | None:
        """Probe after the 0-based `epoch` when one is due and not already recorded; returns its record (rank 0)."""
        t = self.cfg.train
        if not probe_due(epoch, t.probe_every, t.epochs):
            return None
        record = None
        if self.main and self.clf is not None and epoch not in self.done:
            train_seconds = state.seconds() - self.spent - self.pending  # the set-up ran inside this session's clock
            t0 = time.perf_counter()
            with _rng_kept(self.device):
                clean, robust = self.measure(state.method.export_network(state.model)[0])  # the released network (DynACL: EMA)
            seconds = time.perf_counter() - t0 + self.pending
            self.pending = 0.0
            self.spent += seconds
            self.done.add(epoch)
            ev = self.cfg.eval
            record = {
                "type": "probe", "epoch": epoch, "step": state.step, "train_seconds": train_seconds, "clean": clean,
                "robust": robust, "eps": ev.eps, "n": int(self.slices.y.numel()), "probe_seconds": seconds,
                "attack": f"pgd{t.probe_attack_steps}", "norm": ev.norm, "head": self.head_kind,
                "bn_branch": self.clf.branch,
            }
            metrics.write(record)
        dist.barrier()  # under torchrun the other ranks wait for rank 0's probe
        return record

    def measure(self, model: torch.nn.Module) -> tuple[float, float]:
        """(clean, PGD-k accuracy) of the probe classifier built on `model`'s current weights."""
        from ..eval.direct import train_direct
        from ..eval.knn import train_knn
        from ..eval.linear import train_slf
        from ..eval.robust import clean_accuracy, pgd_accuracy

        clf, s, cfg = self.clf, self.slices, self.cfg
        assert clf is not None
        clf.encoder.load_state_dict(model.state_dict())
        ev = cfg.eval
        if s.head is None:
            train_direct(clf, s.head, ev, self.device)  # type: ignore[arg-type]  # the run's own classifier: no data used
        elif self.head_kind == "knn":
            train_knn(clf, s.head, dataclasses.replace(ev, train_examples=None), self.device)  # the bank: every head image
        else:
            head_cfg = dataclasses.replace(ev, linear_epochs=PROBE_EPOCHS, linear_lr=PROBE_LR, linear_batch_size=PROBE_BATCH,
                                           linear_standardize=True, train_examples=None, seed=cfg.train.seed)
            train_slf(clf, s.head, head_cfg, self.device)
        clean = clean_accuracy(clf, s.x, s.y, ev.batch_size)
        robust = pgd_accuracy(clf, s.x, s.y, ev.eps, ev.pgd_alpha, cfg.train.probe_attack_steps, norm=ev.norm,
                              seed=cfg.train.seed, batch_size=ev.batch_size)
        return clean.accuracy, robust.accuracy


def _rng_kept(device: torch.device) -> Any:
    """torch.random.fork_rng on the CPU and, for a CUDA device, that device: the RNG state is restored after."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
