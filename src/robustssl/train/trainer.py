"""The pretraining loop, top to bottom as in docs/design.md:

config -> dataset (uint8 on device) -> index pool (all data or the current coreset)
-> batched augmentation -> method step (attack -> loss -> update) -> selection schedule
-> atomic checkpoint -> encoder export.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ..config import RunConfig, from_dict, to_dict
from ..coreset.schedule import CoresetSchedule
from ..data import DeviceLoader, dataset_stats, load_dataset
from ..data.dataset import ImageDataset
from ..methods import NonFiniteLoss, build_method
from ..models import ModelSpec, SSLModel, build_model, export_encoder
from .checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from .metrics import MetricsLog
from .optim import build_optimizer, build_scheduler
from .timer import PhaseTimer

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
CONFIG = "config.yaml"
SUMMARY = "run.json"


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


@dataclass
class RunResult:
    out_dir: Path
    steps: int
    seconds: float
    phase_seconds: dict[str, float]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def load_train_set(cfg: RunConfig) -> ImageDataset:
    """The training split, optionally a seeded random subset of `data.train_subset` images."""
    data = load_dataset(cfg.data.name, "train", root=cfg.data.root, download=cfg.data.download)
    n = cfg.data.train_subset
    if n is not None and n < len(data):
        g = torch.Generator().manual_seed(cfg.train.seed)
        data = data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)
    return data


def model_spec(cfg: RunConfig, data: ImageDataset) -> ModelSpec:
    """The architecture: the config's model section plus what the data decides (channels, normalization)."""
    mean, std = dataset_stats(cfg.data.name, data.num_channels)
    return ModelSpec(**dataclasses.asdict(cfg.model), in_channels=data.num_channels, mean=tuple(mean), std=tuple(std))


def prepare_run_dir(cfg: RunConfig, out: Path, resume: bool) -> RunConfig:
    """Write config.yaml for a new run; on resume, use the run's own config (a resumed run is the same run)."""
    saved = out / CONFIG
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise TrainingError(f"--resume: {out / CHECKPOINT} does not exist; start the run without --resume")
        return from_dict(yaml.safe_load(saved.read_text()))
    if (out / CHECKPOINT).exists():
        raise TrainingError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return cfg


def pretrain(cfg: RunConfig, out_dir: str | Path, resume: bool = False) -> RunResult:
    """Train an encoder with `cfg.method`; writes checkpoint, metrics, encoder export and a summary to out_dir."""
    out = Path(out_dir)
    cfg = prepare_run_dir(cfg, out, resume)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)

    data = load_train_set(cfg).to(device)
    spec = model_spec(cfg, data)
    model: SSLModel = build_model(spec).to(device)
    method = build_method(cfg, data.image_size, data.num_channels)
    if method.needs_dual_bn and not cfg.model.dual_bn:
        print(f"note: {method.name} is defined with dual BatchNorm; model.dual_bn=false trains one shared BN")
    schedule = CoresetSchedule(cfg.coreset, cfg.train.epochs, len(data), cfg.optim.batch_size, cfg.train.seed)
    loader = DeviceLoader(data, cfg.optim.batch_size, cfg.train.seed)
    steps_per_epoch = schedule.steps_per_epoch_bound()
    if steps_per_epoch < 1:
        raise TrainingError(f"{len(schedule.pool)} training images make no full batch of {cfg.optim.batch_size}; lower optim.batch_size")
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, schedule.total_steps(), steps_per_epoch)

    start_epoch, start_batch, step, elapsed = 0, 0, 0, 0.0
    phase_totals: dict[str, float] = {}
    metrics = MetricsLog(out / "metrics.jsonl")
    if resume:
        ck = load_checkpoint(out / CHECKPOINT)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        schedule.load_state_dict(ck["coreset"])
        set_rng_state(ck["rng"])
        start_epoch, start_batch, step = ck["epoch"], ck["batch"], ck["step"]
        elapsed, phase_totals = ck["elapsed"], dict(ck["phase_seconds"])
        metrics.truncate_after(step)

    timer = PhaseTimer(device)
    t0 = time.perf_counter()

    def totals() -> dict[str, float]:
        """Seconds per phase over the whole run, earlier (resumed-from) sessions included."""
        merged = dict(phase_totals)
        for k, v in timer.seconds.items():
            merged[k] = merged.get(k, 0.0) + v
        return merged

    def save(epoch: int, batch: int) -> None:
        """Checkpoint; (epoch, batch) is where a resumed run continues."""
        save_atomic(
            {
                "format": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "coreset": schedule.state_dict(), "rng": rng_state(),
                "epoch": epoch, "batch": batch, "step": step, "elapsed": elapsed + (time.perf_counter() - t0),
                "phase_seconds": totals(), "config": to_dict(cfg),
            },
            out / CHECKPOINT,
        )

    # In a log file (no terminal) a redraw every step would flood it: update every 30 s there.
    bar = tqdm(total=schedule.total_steps(), initial=step, disable=not cfg.train.progress, unit="step", dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for epoch in range(start_epoch, cfg.train.epochs):
        method.start_epoch(epoch)
        epoch_start, epoch_phases = time.perf_counter(), dict(timer.seconds)
        with timer.phase("selection"):
            positions = schedule.positions_for_epoch(epoch, model, method, data)
        losses, n_images = [], 0
        first_batch = start_batch if epoch == start_epoch else 0
        for _, x in loader.epoch(positions, epoch, first_batch):
            try:
                logs = method.step(model, optimizer, x, timer)
            except NonFiniteLoss as e:
                metrics.write({"type": "error", "epoch": epoch, "step": step, "error": str(e)})
                bar.close()
                kept = f"the last good checkpoint {out / CHECKPOINT} is intact" if (out / CHECKPOINT).exists() else "no checkpoint was written before it"
                raise TrainingError(
                    f"{e} at epoch {epoch}, step {step}; the run stopped and {kept}. "
                    "Start a new run with a lower optim.lr (or attack.alpha): a resumed run would repeat the same steps."
                ) from None
            scheduler.step()
            step += 1
            losses.append(logs["loss"])
            n_images += x.shape[0]
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{logs['loss']:.3f}", img_s=f"{n_images / max(1e-9, time.perf_counter() - epoch_start):.0f}")
            if step % cfg.train.log_every_steps == 0:
                metrics.write({"type": "step", "epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0], **logs})
            if cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0:
                save(epoch, first_batch + len(losses))
        seconds = time.perf_counter() - epoch_start
        phases = {k: v - epoch_phases.get(k, 0.0) for k, v in timer.seconds.items()}
        metrics.write({
            "type": "epoch", "epoch": epoch, "step": step, "loss": sum(losses) / max(1, len(losses)),
            "images": n_images, "pool_size": int(positions.numel()), "seconds": seconds,
            "images_per_s": n_images / max(1e-9, seconds), "time": phases, "lr": scheduler.get_last_lr()[0],
        })
        if cfg.train.checkpoint_every_epochs and (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 or epoch + 1 == cfg.train.epochs:
            save(epoch + 1, 0)
    bar.close()

    total = elapsed + (time.perf_counter() - t0)
    export_encoder(model, spec, out / ENCODER)
    result = RunResult(out, step, total, totals())
    (out / SUMMARY).write_text(json.dumps({
        "method": cfg.method.name, "steps": step, "seconds": total, "phase_seconds": result.phase_seconds,
        "coreset": schedule.summary(), "device": str(device), "torch": torch.__version__,
    }, indent=2))
    return result

