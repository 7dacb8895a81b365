"""The Python API; the CLI is a thin layer over these functions."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import RunConfig, from_dict, load_config, to_dict
from .coreset.schedule import CoresetSchedule
from .data import load_dataset
from .methods import build_method
from .models import build_model, load_encoder
from .train.checkpoint import load_checkpoint
from .train.trainer import CHECKPOINT, CONFIG, ENCODER, SUMMARY, RunResult, load_train_set, model_spec, resolve_device
from .train.trainer import pretrain as _pretrain


def pretrain(config: str | Path | RunConfig | None, out: str | Path, overrides: list[str] | None = None, resume: bool = False) -> RunResult:
    """Pretrain an encoder. `config`: a YAML path, a bundled recipe name, or a RunConfig
    (None with resume=True: the run's own config). Writes checkpoint.pt, metrics.jsonl,
    encoder.safetensors and run.json into `out`."""
    if resume:
        saved = Path(out) / CONFIG
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} does not exist; start the run without --resume")
        if overrides:
            raise ValueError("--resume continues the same run: key=value overrides are not allowed")
        cfg = from_dict(yaml.safe_load(saved.read_text()))
    elif isinstance(config, RunConfig):
        cfg = from_dict(to_dict(config), overrides)
    else:
        cfg = load_config(config, overrides)
    return _pretrain(cfg, out, resume=resume)


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a robustssl run (no {CONFIG}); pass the --out folder of `robustssl pretrain`")
    return from_dict(yaml.safe_load(path.read_text()), overrides)


def evaluate(run_dir: str | Path, overrides: list[str] | None = None, branch: str | None = None) -> dict[str, Any]:
    """Evaluate a run's encoder with its config's `eval` section (plus overrides); writes
    report.json, report.md and robustness_curve.png into the run folder and returns the report."""
    from .eval import evaluate_encoder, write_report  # only evaluation needs the eval stack (AutoAttack, plots)

    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    device = resolve_device(cfg.train.device)
    model, _ = load_encoder(run_dir / ENCODER, device=str(device))
    train = load_train_set(cfg)
    test = load_dataset(cfg.data.name, "test", root=cfg.data.root, download=cfg.data.download)
    torch.manual_seed(cfg.eval.seed)
    report = evaluate_encoder(model, train, test, cfg.eval, device, branch=branch)
    extra: dict[str, Any] = {"run": str(run_dir), "method": cfg.method.name, "data": cfg.data.name}
    summary = run_dir / SUMMARY
    if summary.is_file():
        extra["training"] = json.loads(summary.read_text())
    write_report(report, run_dir, extra=extra)
    return report


def select(run_dir: str | Path, overrides: list[str] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Run one coreset selection from a run's last checkpoint (its config's `coreset` section,
    plus overrides such as coreset.fraction=0.1); writes and returns indices, gains and time.

    The selection uses the model as checkpointed and does not change the run.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    if cfg.coreset.method == "full":
        raise ValueError("coreset.method is 'full' in this run's config: pass coreset.method=rcs (or random) to select")
    device = resolve_device(cfg.train.device)
    data = load_train_set(cfg).to(device)
    model = build_model(model_spec(cfg, data)).to(device)
    model.load_state_dict(load_checkpoint(run_dir / CHECKPOINT)["model"])
    method = build_method(cfg, data.image_size, data.num_channels)
    schedule = CoresetSchedule(cfg.coreset, cfg.train.epochs, len(data), cfg.optim.batch_size, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    start = time.perf_counter()
    sel = schedule.select(0, model, method, data)
    seconds = time.perf_counter() - start
    result = {
        "run": str(run_dir), "coreset": {k: v for k, v in schedule.summary().items() if k != "selections"},
        "seconds": seconds, "sample_ids": data.indices[sel.positions.to(device)].cpu().tolist(),
        "gains": None if sel.gains is None else sel.gains.tolist(),
    }
    path = Path(out) if out else run_dir / "selection.json"
    path.write_text(json.dumps(result))
    result["path"] = str(path)
    return result
