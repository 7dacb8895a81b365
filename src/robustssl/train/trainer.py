"""The pretraining loop, top to bottom as in docs/design.md:

config -> dataset (uint8 on device) -> index pool (all data or the current coreset)
-> batched augmentation -> method step (attack -> loss -> update) -> selection schedule
-> atomic checkpoint -> encoder export.

`pretrain` sets a run up (`build_state`; the device, data and architecture from `run_setup`),
runs `train_epoch` per epoch and finishes it;
`TrainState` is everything a resumed run needs, saved and restored as one dict.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from .. import dist
from ..config import RunConfig, to_dict
from ..coreset.schedule import CoresetSchedule
from ..data import DeviceLoader, StreamingLoader
from ..data.dataset import ImageSource
from ..errors import RunError
from ..io import FolderLock, atomic_write_text, check_output_path
from ..methods import Method, NonFiniteLoss, build_method
from ..models import BRANCHES, SSLModel, build_model, export_encoder, has_dual_bn
from ..progress import progress_bar
from ..run_setup import hardware, load_train_source, model_spec, resolve_device
from ..timer import PhaseTimer
from .accelerate import accelerate
from .checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from .distributed import prepare_model, rank_seed, replicate
from .metrics import MetricsLog
from .optim import LRSchedule, build_optimizer, build_scheduler
from .probe import OnlineProbe
from .run_dir import (
    CHECKPOINT,
    CONFIG,
    ENCODER,
    METRICS,
    SUMMARY,
    check_new_run,
    claim_new_run,
    clear_orphans,
    config_differences,
    with_defaults,
)
from .tensorboard import tensorboard_metrics

CHECKPOINT_FORMAT = 2


class TrainingError(RunError):
    """A run that cannot go on; the message says why and what to do."""


@dataclass
class RunResult:
    out_dir: Path
    steps: int
    seconds: float
    phase_seconds: dict[str, float]
    nothing_left: bool = False  # a --resume of a run that had finished: nothing was trained or written


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or inf (e.g. BN running_var after a blow-up)."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]


def trained_networks(model: torch.nn.Module, method: Method) -> torch.nn.Module:
    """The model and the modules the method owns, as one module (model first: a method without
    owned modules gives the optimizer the model's parameters in the model's order)."""
    if not len(method.parts):
        return model
    return torch.nn.ModuleDict({"model": model, "parts": method.parts})


# --- the state of a run ----------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything a resumed run needs. (epoch, batch) is where it continues; `step` counts
    batches trained; `elapsed`/`phase_seconds` are the seconds of earlier sessions."""

    model: SSLModel
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    method: Method
    schedule: CoresetSchedule
    timer: PhaseTimer
    epoch: int = 0
    batch: int = 0
    step: int = 0
    elapsed: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """Wall-clock seconds of the whole run, earlier sessions included."""
        return self.elapsed + (time.perf_counter() - self.started)

    def phase_totals(self) -> dict[str, float]:
        """Seconds per phase over the whole run, earlier sessions included."""
        merged = dict(self.phase_seconds)
        for k, v in self.timer.seconds.items():
            merged[k] = merged.get(k, 0.0) + v
        return merged

    def state_dict(self, cfg: RunConfig) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
            "parts": self.method.parts.state_dict(),
            "coreset": self.schedule.state_dict(), "rng": rng_state(), "epoch": self.epoch, "batch": self.batch,
            "step": self.step, "elapsed": self.seconds(), "phase_seconds": self.phase_totals(), "config": to_dict(cfg),
        }

    def rank_states(self) -> list[dict[str, Any]] | None:
        """Every rank's own state (its RNG, and the method's state, e.g. a free-AT perturbation of
        its shard), gathered on rank 0 (None on other ranks). A collective: every rank calls it."""
        return dist.gather_objects({"rng": rng_state(), "method": self.method.state_dict()})

    def load_state_dict(self, ck: dict[str, Any], path: Path) -> None:
        missing = [k for k in self.state_dict_keys() if k not in ck]
        if missing or ck.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(
                f"{path} is not a checkpoint this version can resume (format {ck.get('format')!r}, expected "
                f"{CHECKPOINT_FORMAT}; missing {', '.join(missing) or 'nothing'}); start a new run in another --out"
            )
        saved_world, world = int(ck.get("world_size", 1)), dist.world_size()
        if saved_world != world:
            raise TrainingError(f"{path} was saved by {saved_world} process(es), this is {world}; resume with as many "
                                f"(torchrun --nproc-per-node/--nnodes giving {saved_world} processes), which the "
                                "per-rank RNG and data shards need")
        own = ck["ranks"][dist.rank()] if world > 1 else {"rng": ck["rng"], "method": ck["method"]}
        try:
            self.model.load_state_dict(ck["model"])
            self.method.parts.load_state_dict(ck.get("parts", {}))  # absent before methods owned modules
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            self.method.load_state_dict(own["method"])
            self.schedule.load_state_dict(ck["coreset"])
            set_rng_state(own["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise TrainingError(f"{path} does not match this run's model or settings ({e}); "
                                "resume with the run's own config.yaml, or start a new run") from None
        self.epoch, self.batch, self.step = ck["epoch"], ck["batch"], ck["step"]
        self.elapsed, self.phase_seconds = ck["elapsed"], dict(ck["phase_seconds"])

    @staticmethod
    def state_dict_keys() -> tuple[str, ...]:
        return ("model", "optimizer", "scheduler", "method", "coreset", "rng", "epoch", "batch", "step", "elapsed",
                "phase_seconds", "config")


def build_state(cfg: RunConfig, data: ImageSource, device: torch.device) -> TrainState:
    """Model, method, coreset schedule, optimizer and lr schedule of a fresh run."""
    model: SSLModel = build_model(model_spec(cfg, data)).to(device)
    prepare_model(model, device, cfg.train.sync_bn)  # torchrun + train.sync_bn: synchronized BatchNorm
    method = build_method(cfg, data.image_size, data.num_channels)
    method.check_data(data, model)  # e.g. a supervised method's labels against its classifier's outputs
    method.attach(model)  # the modules the method owns (an EMA encoder, a predictor), on the model's device
    prepare_model(method.parts, device, cfg.train.sync_bn)
    accelerate(model, method, bf16=cfg.train.bf16, channels_last=cfg.train.channels_last, compile=cfg.train.compile)
    if method.needs_dual_bn and not cfg.model.dual_bn and dist.is_main():
        print(f"note: {method.name} is defined with dual BatchNorm; model.dual_bn=false trains one shared BN")
    untrained = [b for b in BRANCHES if b not in method.trained_branches]
    if has_dual_bn(model) and untrained and dist.is_main():
        print(f"note: {method.name} never trains the {', '.join(untrained)} BN branch of this dual-BN model; the export "
              f"records the trained branch and evaluation uses it (model.dual_bn=false avoids the unused branch)")
    schedule = CoresetSchedule(cfg.coreset, cfg.train.epochs, len(data), cfg.optim.batch_size, cfg.train.seed)
    batches_per_epoch = schedule.steps_per_epoch_bound()
    if batches_per_epoch < 1:
        raise TrainingError(f"{len(schedule.pool)} training images make no full batch of {cfg.optim.batch_size}; lower optim.batch_size")
    check_coreset_batches(cfg, schedule)
    networks = trained_networks(model, method)
    optimizer = build_optimizer(networks, cfg.optim)  # the model's parameters, then the owned ones that take gradients
    # The lr follows fractional epochs (each of the method's updates per batch advances it), or, on
    # the legacy clock, the run's update count.
    k = method.updates_per_batch
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs, batches_per_epoch, k, schedule.total_steps() * k)
    replicate(networks, optimizer, cfg.train.sync_bn)  # torchrun: rank 0's weights everywhere, gradients averaged
    return TrainState(model, optimizer, scheduler, method, schedule, PhaseTimer(device, cfg.train.timing))


def check_coreset_batches(cfg: RunConfig, schedule: CoresetSchedule) -> None:
    """Refuse a coreset smaller than one batch (every selector): its epochs would train nothing."""
    bs, pool, unit = cfg.optim.batch_size, len(schedule.pool), schedule.unit_size
    if not any(schedule.uses_coreset(e) for e in range(cfg.train.epochs)) or schedule.coreset_size() >= bs:
        return
    units = -(-bs // unit)  # picked units (images, or batches of `unit` images) that make one batch
    smallest = math.ceil(1000 * (units - 0.5) / max(1, pool // unit)) / 1000  # the budget is round(fraction * units in pool)
    other = ", or coreset.unit=batch" if cfg.coreset.unit == "sample" else ""
    raise TrainingError(
        f"coreset.fraction={cfg.coreset.fraction:g} of the {pool}-image training pool is {schedule.coreset_size()} "
        f"images, less than one batch of optim.batch_size={bs}: the coreset epochs would train nothing. Pass "
        f"coreset.fraction={smallest:g} or more, a smaller optim.batch_size{other}")


# --- one epoch -----------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What an epoch needs besides the state: the config, data, loader, output folder and logs."""

    cfg: RunConfig
    out: Path
    data: ImageSource
    loader: DeviceLoader
    metrics: MetricsLog
    bar: Any
    probe: OnlineProbe | None = None  # train.probe_every: the online robust probe (train/probe.py)


def train_epoch(state: TrainState, run: RunContext) -> None:
    """Train epoch `state.epoch` from batch `state.batch`; checkpoint as configured; leave the
    state at the start of the next epoch."""
    cfg, epoch = run.cfg.train, state.epoch
    state.method.start_epoch(epoch)
    epoch_start, phases_before = time.perf_counter(), dict(state.timer.seconds)
    with state.timer.phase("selection"):
        positions, weights = state.schedule.positions_for_epoch(epoch, state.model, state.method, run.data)
    state.scheduler.start_epoch(epoch, run.loader.num_batches(int(positions.numel())), state.batch)
    losses: list[float] = []
    n_images = 0
    for batch in run.loader.epoch(positions, epoch, state.batch, weights):
        try:
            with dist.global_batch():  # under torchrun the ranks' batches are one global batch
                logs = state.method.step(state.model, state.optimizer, state.scheduler, batch, state.timer)
        except NonFiniteLoss as e:
            stop_non_finite(state, run, str(e))
        logs = dist.mean_values(logs)  # the global batch's loss (each rank's is its shard's share)
        state.step += 1
        state.batch += 1
        losses.append(logs["loss"])
        n_images += len(batch) * dist.world_size()
        rate = n_images / max(1e-9, time.perf_counter() - epoch_start)
        run.bar.update(1)
        # refresh=False: the bar redraws on its own interval, not on every step (a log file stays small)
        run.bar.set_postfix(epoch=epoch, loss=f"{logs['loss']:.3f}", img_s=f"{rate:.0f}", refresh=False)
        if state.step % cfg.log_every_steps == 0:
            run.metrics.write({"type": "step", "epoch": epoch, "step": state.step, "lr": state.scheduler.get_last_lr()[0], **logs})
        if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
            save_checkpoint(state, run)
    seconds = time.perf_counter() - epoch_start
    run.metrics.write({
        # an epoch (or the rest of one, after a resume) with no step has no loss: null, never 0
        "type": "epoch", "epoch": epoch, "step": state.step, "loss": sum(losses) / len(losses) if losses else None,
        "images": n_images, "pool_size": int(positions.numel()), "seconds": seconds,
        "images_per_s": n_images / max(1e-9, seconds), "lr": state.scheduler.get_last_lr()[0],
        "time": {k: v - phases_before.get(k, 0.0) for k, v in state.timer.seconds.items()},
    })
    if run.probe is not None:  # before the checkpoint: a resumed run keeps exactly the probes it checkpointed
        run.probe.after_epoch(epoch, state, run.metrics)
    state.epoch, state.batch = epoch + 1, 0
    if (cfg.checkpoint_every_epochs and state.epoch % cfg.checkpoint_every_epochs == 0) or state.epoch == cfg.epochs:
        save_checkpoint(state, run)


def save_checkpoint(state: TrainState, run: RunContext) -> None:
    """Atomic checkpoint of a finite model; a NaN or inf weight or buffer stops the run instead.

    Under torchrun every rank calls it: the replicas are equal, so rank 0 writes the model,
    optimizer and coreset, plus each rank's RNG and method state (`ranks`) and the world size."""
    require_finite(state, run)
    ck = state.state_dict(run.cfg)
    if dist.is_distributed():
        ranks = state.rank_states()  # a collective: before rank 0's write
        ck.update(world_size=dist.world_size(), ranks=ranks)
    if dist.is_main():
        save_atomic(ck, run.out / CHECKPOINT)


def require_finite(state: TrainState, run: RunContext) -> None:
    """Stop the run if any parameter or buffer holds NaN or inf (checked before every checkpoint and export)."""
    bad = non_finite_tensors(state.model) + [f"parts.{k}" for k in non_finite_tensors(state.method.parts)]
    if dist.any_rank(bool(bad)) and not bad:
        bad = ["a tensor on another rank"]
    if bad:
        stop_non_finite(state, run, f"non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")


def stop_non_finite(state: TrainState, run: RunContext, what: str) -> NoReturn:
    """Stop the run at a NaN/inf: log it, keep the last good checkpoint, say what to do."""
    run.metrics.write({"type": "error", "epoch": state.epoch, "step": state.step, "error": what})
    run.bar.close()
    path = run.out / CHECKPOINT
    kept = f"the last good checkpoint {path} is intact" if path.exists() else "no checkpoint was written before it"
    raise TrainingError(
        f"{what} at epoch {state.epoch}, step {state.step}; the run stopped and {kept}. "
        "Start a new run with a lower optim.lr (or attack.alpha): a resumed run would repeat the same steps."
    ) from None


# --- the run ------------------------------------------------------------------------------------
class _RankMetrics(MetricsLog):
    """The metrics log of a rank other than 0: rank 0 alone writes metrics.jsonl."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass


def pretrain(cfg: RunConfig, out_dir: str | Path, resume: bool = False, stop_epoch: int | None = None) -> RunResult:
    """Train an encoder with `cfg.method`; writes checkpoint, metrics, encoder export and a summary to out_dir.

    resume=True continues the run in out_dir, whose own config `cfg` must be (read it with
    `run_dir.resume_config`); otherwise out_dir must hold no run files yet.

    Under torchrun (WORLD_SIZE > 1) every process calls this: it joins the process group (NCCL
    on CUDA with the GPU LOCAL_RANK, gloo on CPU), trains its shard of each global batch of
    optim.batch_size images, and rank 0 alone writes the run folder.

    stop_epoch: end this session once the run has finished `stop_epoch` epochs (< train.epochs),
    with a checkpoint there and no export, as an interrupted run; `resume=True` continues it.
    """
    check_output_path(out_dir, "--out")
    device, created = dist.init_from_env(resolve_device(cfg.train.device))
    lock = FolderLock(out_dir, "robustssl pretrain")  # rank 0 holds it; a second pretrain (--resume) is refused
    try:
        dist.on_main(lock.acquire)
        result = _pretrain(cfg, Path(out_dir), resume, device, stop_epoch)
    except BaseException:
        lock.release()
        dist.shutdown(created, clean=False)
        raise
    lock.release()
    dist.shutdown(created)
    return result


def _pretrain(cfg: RunConfig, out: Path, resume: bool, device: torch.device, stop_epoch: int | None = None) -> RunResult:
    world = dist.world_size()
    if cfg.optim.batch_size % world:
        raise TrainingError(f"optim.batch_size={cfg.optim.batch_size} is the global batch and must split evenly over "
                            f"{world} processes; use a multiple of {world}")
    if not resume:
        dist.on_main(lambda: check_new_run(out, cfg))  # a taken folder is refused before any work
    torch.manual_seed(cfg.train.seed)
    data = load_train_source(cfg, device)
    state = build_state(cfg, data, device)
    if not resume:  # claimed only now: a missing dataset or a model that cannot be built leaves no config.yaml
        dist.on_main(lambda: claim_new_run(out, cfg))
    dist.on_main(lambda: clear_orphans(out))
    if dist.rank() > 0:  # each rank its own augmentations and attack starts; rank 0 keeps the run's stream
        torch.manual_seed(rank_seed(cfg.train.seed, dist.rank()))
    metrics = MetricsLog(out / METRICS) if dist.is_main() else _RankMetrics(out / METRICS)
    if resume:
        ck = load_checkpoint(out / CHECKPOINT)
        differ = config_differences(with_defaults(ck.get("config", {})), to_dict(cfg))
        if differ:
            raise TrainingError(f"{out / CONFIG} differs from the config {out / CHECKPOINT} was saved with, in "
                                f"{', '.join(differ[:5])}; restore config.yaml (the checkpoint's 'config' entry holds it)")
        state.load_state_dict(ck, out / CHECKPOINT)
        metrics.truncate_after(state.step)
    metrics = tensorboard_metrics(metrics, cfg.train.tensorboard, out, state.step if resume else None)
    if resume and state.epoch >= cfg.train.epochs and dist.on_main(lambda: (out / ENCODER).is_file() and (out / SUMMARY).is_file()):
        return RunResult(out, state.step, state.elapsed, dict(state.phase_seconds), nothing_left=True)  # export, summary kept
    probe = OnlineProbe.start(cfg, state, data, device, out / METRICS)

    # In a log file (no terminal) the bar redraws once a minute at most: a 3-day run writes about 4,000 lines, not 100,000.
    bar = progress_bar(state.schedule.total_steps(), initial=state.step, enabled=cfg.train.progress and dist.is_main())
    bs, seed, rank = cfg.optim.batch_size, cfg.train.seed, dist.rank()
    loader = (StreamingLoader(data, bs, seed, prefetch=cfg.data.prefetch_batches, rank=rank, world_size=world)
              if cfg.data.stream else DeviceLoader(data, bs, seed, rank=rank, world_size=world))
    run = RunContext(cfg, out, data, loader, metrics, bar, probe)
    end = cfg.train.epochs if stop_epoch is None else min(stop_epoch, cfg.train.epochs)
    while state.epoch < end:
        train_epoch(state, run)
    bar.close()
    if state.epoch < cfg.train.epochs:  # stopped early: checkpointed, to be resumed
        save_checkpoint(state, run)
        return RunResult(out, state.step, state.seconds(), state.phase_totals())
    return finish(state, run, device)


def finish(state: TrainState, run: RunContext, device: torch.device) -> RunResult:
    """Export the encoder (with the BN branches the method trained) and write run.json (rank 0 only)."""
    require_finite(state, run)
    trained = list(state.method.trained_branches) if has_dual_bn(state.model) else None
    result = RunResult(run.out, state.step, state.seconds(), state.phase_totals())
    if not dist.is_main():
        return result
    network, name = state.method.export_network(state.model)  # the model, or a network the method owns (an EMA encoder)
    if not isinstance(network, SSLModel):
        raise TrainingError(f"method {state.method.name} exports {type(network).__name__} as its encoder, not an SSLModel")
    export_encoder(network, model_spec(run.cfg, run.data), run.out / ENCODER, trained_branches=trained,
                   with_head=state.method.supervised, encoder=name)
    summary: dict[str, Any] = {
        "method": run.cfg.method.name, "encoder": name, "steps": state.step, "seconds": result.seconds, "phase_seconds": result.phase_seconds,
        "trained_branches": trained, "classes": list(run.data.classes), "coreset": state.schedule.summary(), "device": str(device), "torch": torch.__version__,
        "hardware": hardware(device),  # why the same seed can give other numbers on another machine
    }
    if dist.is_distributed():
        summary.update(world_size=dist.world_size(), sync_bn=run.cfg.train.sync_bn,
                       batch_per_process=run.cfg.optim.batch_size // dist.world_size())
    atomic_write_text(run.out / SUMMARY, json.dumps(summary, indent=2))
    return result
