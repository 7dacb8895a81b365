"""The Python API; the CLI is a thin layer over these functions."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from . import progress
from .config import RunConfig, from_dict, load_config, one_line, to_dict
from .coreset.registry import SELECTORS
from .coreset.schedule import CoresetSchedule
from .data import load_dataset
from .data.readers import check_same_classes
from .errors import ConfigError, RunError
from .io import atomic_write_text
from .methods import build_method
from .models import build_model, load_encoder
from .run_setup import data_options, load_train_set, model_spec, resolve_device
from .train.checkpoint import load_checkpoint
from .train.run_dir import (
    CHECKPOINT,
    ENCODER,
    SUMMARY,
    check_data_root,
    check_output_file,
    check_override_keys,
    read_run_config,
    read_summary,
    resume_config,
)
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
    """Evaluate a run's encoder with its config's `eval` section (plus overrides) and return the report
    of this evaluation (its "report_changes": what it added to or replaced in report.json).

    Without `data`: on the run's own dataset; report.json, report.md and robustness_curve.png
    go into the run folder. report.json accumulates: a protocol, attack or threat model evaluated
    before and not re-run here is kept; a re-run replaces only its own entry (eval/accumulate.py).
    With `data` (a dataset name, files under `data_root` or the usual places): a transfer evaluation on that dataset, its images converted to the encoder's
    input channels and size (eval/transfer.py); the report goes into RUN/transfer/<name>/ and
    records the source, the target and the conversion."""
    from .eval import evaluate_encoder  # only evaluation needs the eval stack (AutoAttack, plots)
    from .eval.report import REPORT_FILE, read_report, save_report
    from .eval.threat import ThreatModel
    from .eval.transfer import load_transfer_splits, transfer_folder_name
    from .models.export import read_export_metadata
    from .models.hub import ClassifierSaver, EvaluationContext, classifier_path
    from .postprocess.run import read_divergence_note

    run_dir = Path(run_dir)
    if data_root is not None and data is None:
        raise ConfigError("--data-root needs --data NAME (the dataset to transfer to); without --data the run's own "
                          "data.root is used")
    check_override_keys(list(overrides or []), "evaluate", ("eval",))
    if data_root is not None:
        check_data_root(data_root, "--data-root")
    cfg = run_config(run_dir, overrides)  # every key validated before the encoder or data are touched
    out = run_dir if data is None else run_dir / "transfer" / transfer_folder_name(data, data_root)  # checks the name
    read_report(out / REPORT_FILE)  # a damaged report.json is refused before any work (it is never overwritten)
    training = read_summary(run_dir)  # a damaged run.json is refused now, not after the evaluation
    device = resolve_device(cfg.train.device)
    model, spec = load_encoder(run_dir / ENCODER, device=str(device))
    trained = read_export_metadata(run_dir / ENCODER).get("trained_branches")
    transfer: dict[str, Any] | None = None
    if data is None:
        train = load_train_set(cfg)
        test = load_dataset(cfg.data.name, "test", **data_options(cfg))
        recorded = (training or {}).get("classes")
        if isinstance(recorded, list) and cfg.data.name == "imagefolder":  # its classes are folders, which can change
            check_same_classes(recorded, train.classes, f"the run's training classes ({run_dir / SUMMARY})",
                               f"the {cfg.data.name} train split it reads now",
                               "The training data changed since pretraining; point data.root at the data the run was trained on.")
        check_same_classes(train.classes, test.classes, f"the {cfg.data.name} train split", "its test split",
                           "Give both splits the same class folders (an empty folder is not a class: remove it).")
    else:
        train, test, transfer = load_transfer_splits(cfg, spec.in_channels, data, data_root, cfg.data.download)
    torch.manual_seed(cfg.eval.seed)
    saver = ClassifierSaver(EvaluationContext(
        out=out, spec=spec, trained_branches=trained, threat_model=ThreatModel.lp(cfg.eval.norm, cfg.eval.eps).record(),
        test={"name": test.name, "split": test.split, "n_total": len(test), "classes": list(test.classes),
              "channels": int(test.images.shape[1]), "size": [int(s) for s in test.images.shape[2:]]},
        train={"name": train.name, "split": train.split}, run=str(run_dir), method=cfg.method.name,
    ))
    with progress.showing("evaluate", enabled=cfg.train.progress):  # which protocol and attack runs, examples done, ETA
        report = evaluate_encoder(model, train, test, cfg.eval, device, branch=branch, trained_branches=trained,
                                  keep_classifier=saver)
    if transfer is not None:
        report["transfer"] = transfer
    diverged = read_divergence_note(run_dir)  # a post-processed run whose finetune diverged says so in its report
    if diverged:
        report["notes"] = [*report.get("notes", []), diverged]
    extra: dict[str, Any] = {"run": str(run_dir), "method": cfg.method.name, "data": cfg.data.name if data is None else test.name}
    if training is not None:
        extra["training"] = training
    extra["classifiers"] = {name: classifier_path(out, name).name for name in saver.pending}
    _, changes = save_report(report, out, extra=extra)  # report.json accumulates (eval/accumulate.py)
    saver.write()  # after the report: a classifier file always has its report entry
    report["out"] = str(out)
    report["classifiers"] = extra["classifiers"]
    report["report_changes"] = changes
    return report


def load(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Load what robustssl wrote, in eval mode, in one line (models/hub.py):

        model = api.load("runs/acl/hf")          # an HF export folder, or RUN/classifier_slf.safetensors
        logits = model(images)                    # images [B, C, H, W] in [0, 1] -> [B, n_classes]

        encoder = api.load("runs/acl")           # a run folder, or its encoder.safetensors
        features = encoder.features(images)      # [B, feature_dim], on the BN branch its report used
    """
    from .models.hub import load as _load

    return _load(path, device)


def export(run_dir: str | Path, out: str | Path | None = None, format: str = "hf", protocol: str | None = None) -> dict[str, Any]:
    """Export an evaluated classifier of `run_dir` (default: the one with the highest accuracy under its
    strongest attack; `protocol` picks one) as a Hugging Face Hub-ready folder `out` (default
    RUN/hf): model.safetensors, config.json, README.md (model card), model_info.json. Nothing is
    uploaded. Returns {out, protocol, why, files}."""
    from .models.hub import export_hf

    if format != "hf":
        raise ConfigError(f"export format {format!r} is not known; valid: hf")
    return export_hf(run_dir, out, protocol)


def postprocess(run_dir: str | Path, out: str | Path, overrides: list[str] | None = None,
                clusters: int | None = None) -> dict[str, Any]:
    """DynACL++ post-processing of a run's encoder: k-means pseudo-labels (k = `clusters`, else
    postprocess.clusters), a linear probe on them, then TRADES full finetuning on them (LP-AFT).
    Writes a new run folder `out` (encoder.safetensors, config.yaml, postprocess.json, run.json)
    that `evaluate(out)` accepts; the source run is only read. Returns the postprocess.json record."""
    from .postprocess import postprocess_run

    extra = [] if clusters is None else [f"postprocess.clusters={clusters}"]
    return postprocess_run(run_dir, out, list(overrides or []) + extra)


def compare(run_dirs: list[str | Path], out: str | Path = "compare", force: bool = False,
            target: float | None = None) -> dict[str, Any]:
    """Compare evaluated run folders: compare.md, compare.json and the robustness, loss and time
    figures in `out` (see eval/compare.py), and for runs trained with the online probe the
    robustness-vs-time and -epoch curves (eval/curves.py). Every folder is checked before anything
    is written; an earlier comparison in `out` is replaced only with force=True. target: the robust
    accuracy in (0, 1] of the "time to reach" column (None: 90% of the best run's final probe value)."""
    from .eval.compare import compare_runs

    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"target must be a robust accuracy in (0, 1], got {target}")
    with progress.showing("compare"):  # once every folder is read: the probe curves per run
        return compare_runs(run_dirs, out, force=force, target=target)


def select(run_dir: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
           force: bool = False) -> dict[str, Any]:
    """Run one coreset selection from a run's last checkpoint (its config's `coreset` section,
    plus overrides such as coreset.fraction=0.1); writes and returns indices, gains and time.

    The selection uses the model as checkpointed and does not change the run. A batch unit whose
    whole batches make a coreset far from coreset.fraction warns (CoresetRoundingWarning). `out`
    (default RUN/selection.json) must not exist unless force=True, and is never a file robustssl
    writes for a run (config.yaml, checkpoint.pt, encoder.safetensors, report.*, ...): both are
    checked before any work.
    """
    run_dir = Path(run_dir)
    path = check_output_file(run_dir / "selection.json" if out is None else out, "--output", force)
    check_override_keys(list(overrides or []), "select", ("coreset",))
    cfg = run_config(run_dir, overrides)
    if not SELECTORS[cfg.coreset.selector].trains_on_subset:
        raise ConfigError(f"coreset.selector is '{cfg.coreset.selector}' in this run's config: pass coreset.selector=rcs "
                          "(or random) to select")
    device = resolve_device(cfg.train.device)
    data = load_train_set(cfg).to(device)
    model = build_model(model_spec(cfg, data)).to(device)
    ck = load_checkpoint(run_dir / CHECKPOINT)
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        raise RunError(f"{run_dir / CHECKPOINT} does not match the run's {run_dir / 'config.yaml'} "
                       f"({one_line(e, 120)}); restore the run's own files") from None
    method = build_method(cfg, data.image_size, data.num_channels)
    method.attach(model)  # the modules it owns (DynACL's EMA encoder), as checkpointed
    method.parts.load_state_dict(ck.get("parts", {}))
    method.start_epoch(min(int(ck["epoch"]), cfg.train.epochs - 1))  # the epoch the run is in (or its last): DynACL's strength
    schedule = CoresetSchedule(cfg.coreset, cfg.train.epochs, len(data), cfg.optim.batch_size, cfg.train.seed)
    schedule.warn_rounding()
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
    atomic_write_text(path, json.dumps(result))
    result["path"] = str(path)
    return result
