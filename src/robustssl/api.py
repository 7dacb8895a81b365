"""The Python API; the CLI is a thin layer over these functions."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, from_dict, load_config, to_dict
from .coreset.registry import SELECTORS
from .coreset.schedule import CoresetSchedule
from .data import load_dataset
from .errors import ConfigError
from .io import atomic_write_text
from .methods import build_method
from .models import build_model, load_encoder
from .run_setup import data_options, load_train_set, model_spec, resolve_device
from .train.checkpoint import load_checkpoint
from .train.run_dir import CHECKPOINT, ENCODER, SUMMARY, read_run_config, resume_config
from .train.trainer import RunResult
from .train.trainer import pretrain as _pretrain


def pretrain(config: str | Path | RunConfig | None, out: str | Path, overrides: list[str] | None = None, resume: bool = False) -> RunResult:
    """Pretrain an encoder. `config`: a YAML path, a bundled recipe name, or a RunConfig.
    With resume=True the run in `out` continues with its own config (a `config` given too
    must match it; overrides are refused). Writes checkpoint.pt, metrics.jsonl,
    encoder.safetensors and run.json into `out`."""
    if resume:
        cfg = resume_config(out, config, overrides)
    elif isinstance(config, RunConfig):
        cfg = from_dict(to_dict(config), overrides)
    else:
        cfg = load_config(config, overrides)
    return _pretrain(cfg, out, resume=resume)


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A run's own config (config.yaml) plus validated overrides."""
    return read_run_config(run_dir, overrides)


def evaluate(run_dir: str | Path, overrides: list[str] | None = None, branch: str | None = None,
             data: str | None = None, data_root: str | None = None) -> dict[str, Any]:
    """Evaluate a run's encoder with its config's `eval` section (plus overrides) and return the report.

    Without `data`: on the run's own dataset; report.json, report.md and robustness_curve.png
    go into the run folder. With `data` (a dataset name, files under `data_root` or the usual
    places): a transfer evaluation on that dataset, its images converted to the encoder's
    input channels and size (eval/transfer.py); the report goes into RUN/transfer/<name>/ and
    records the source, the target and the conversion."""
    from .eval import evaluate_encoder, write_report  # only evaluation needs the eval stack (AutoAttack, plots)
    from .eval.transfer import load_transfer_splits, transfer_folder_name
    from .models.export import read_export_metadata

    run_dir = Path(run_dir)
    if data_root is not None and data is None:
        raise ConfigError("--data-root needs --data NAME (the dataset to transfer to); without --data the run's own "
                          "data.root is used")
    cfg = run_config(run_dir, overrides)  # every key validated before the encoder or data are touched
    out = run_dir if data is None else run_dir / "transfer" / transfer_folder_name(data, data_root)  # checks the name
    device = resolve_device(cfg.train.device)
    model, spec = load_encoder(run_dir / ENCODER, device=str(device))
    trained = read_export_metadata(run_dir / ENCODER).get("trained_branches")
    transfer: dict[str, Any] | None = None
    if data is None:
        train = load_train_set(cfg)
        test = load_dataset(cfg.data.name, "test", **data_options(cfg))
    else:
        train, test, transfer = load_transfer_splits(cfg, spec.in_channels, data, data_root, cfg.data.download)
    torch.manual_seed(cfg.eval.seed)
    report = evaluate_encoder(model, train, test, cfg.eval, device, branch=branch, trained_branches=trained)
    if transfer is not None:
        report["transfer"] = transfer
    extra: dict[str, Any] = {"run": str(run_dir), "method": cfg.method.name, "data": cfg.data.name if data is None else test.name}
    summary = run_dir / SUMMARY
    if summary.is_file():
        extra["training"] = json.loads(summary.read_text())
    write_report(report, out, extra=extra)
    report["out"] = str(out)
    return report


def postprocess(run_dir: str | Path, out: str | Path, overrides: list[str] | None = None,
                clusters: int | None = None) -> dict[str, Any]:
    """DynACL++ post-processing of a run's encoder: k-means pseudo-labels (k = `clusters`, else
    postprocess.clusters), a linear probe on them, then TRADES full finetuning on them (LP-AFT).
    Writes a new run folder `out` (encoder.safetensors, config.yaml, postprocess.json, run.json)
    that `evaluate(out)` accepts; the source run is only read. Returns the postprocess.json record."""
    from .postprocess import postprocess_run

    extra = [] if clusters is None else [f"postprocess.clusters={clusters}"]
    return postprocess_run(run_dir, out, list(overrides or []) + extra)


def compare(run_dirs: list[str | Path], out: str | Path = "compare") -> dict[str, Any]:
    """Compare evaluated run folders: compare.md, compare.json and the robustness, loss and time
    figures in `out` (see eval/compare.py). Every folder is checked before anything is written."""
    from .eval.compare import compare_runs

    return compare_runs(run_dirs, out)


def select(run_dir: str | Path, overrides: list[str] | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Run one coreset selection from a run's last checkpoint (its config's `coreset` section,
    plus overrides such as coreset.fraction=0.1); writes and returns indices, gains and time.

    The selection uses the model as checkpointed and does not change the run.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    if not SELECTORS[cfg.coreset.method].trains_on_subset:
        raise ConfigError(f"coreset.method is '{cfg.coreset.method}' in this run's config: pass coreset.method=rcs (or random) to select")
    device = resolve_device(cfg.train.device)
    data = load_train_set(cfg).to(device)
    model = build_model(model_spec(cfg, data)).to(device)
    ck = load_checkpoint(run_dir / CHECKPOINT)
    model.load_state_dict(ck["model"])
    method = build_method(cfg, data.image_size, data.num_channels)
    method.attach(model)  # the modules it owns (DynACL's EMA encoder), as checkpointed
    method.parts.load_state_dict(ck.get("parts", {}))
    method.start_epoch(min(int(ck["epoch"]), cfg.train.epochs - 1))  # the epoch the run is in (or its last): DynACL's strength
    schedule = CoresetSchedule(cfg.coreset, cfg.train.epochs, len(data), cfg.optim.batch_size, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    start = time.perf_counter()
    sel = schedule.select(0, model, method, data)
    seconds = time.perf_counter() - start
    result = {
        "run": str(run_dir), "coreset": {k: v for k, v in schedule.summary().items() if k != "selections"},
        "seconds": seconds, "sample_ids": data.indices[sel.positions.to(device)].cpu().tolist(),
        "gains": None if sel.gains is None else sel.gains.tolist(),
        "weights": None if sel.weights is None else sel.weights.tolist(),
    }
    path = Path(out) if out else run_dir / "selection.json"
    atomic_write_text(path, json.dumps(result))
    result["path"] = str(path)
    return result
