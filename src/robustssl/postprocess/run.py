"""`robustssl postprocess`: DynACL++ post-processing of a finished run into a new run folder.

    robustssl postprocess --run RUN --out OUT [--clusters K] [postprocess.key=value eval.key=value ...]

OUT is a folder that `robustssl evaluate --run OUT` (and `robustssl compare`) accept:

    encoder.safetensors  the LP-AFT encoder: the source's architecture and recorded trained BN
                         branches; the finetuned branch is the one evaluation uses by default
    config.yaml          the source run's config plus the overrides (its postprocess section
                         holds the settings used; evaluation reads its eval section)
    postprocess.json     where it came from (source run folder, sha256 of the source encoder),
                         the settings, and the k-means / LP / AFT records and seconds
    run.json             the run summary `evaluate` and `compare` read: method "<source>+lp-aft",
                         the source's training seconds plus the post-processing seconds (phase
                         "postprocess"), the source's coreset record

The source run is only read. OUT must not hold run files already, and is locked while the
post-processing runs (io.FolderLock: a second one into OUT is refused); everything is written
at the end (config.yaml last), so an interrupted post-processing leaves no config.yaml behind.
Overrides: postprocess.* and eval.* (plus data.root, data.download, train.device); others
would be recorded as facts of the encoder without being true, and are refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import progress
from ..config import RunConfig
from ..errors import RunError
from ..eval.classifier import choose_branch
from ..io import FolderLock, atomic_write_text, check_output_path
from ..models.dual_bn import has_dual_bn
from ..models.export import export_encoder, load_encoder, read_export_metadata
from ..run_setup import hardware, load_train_set, resolve_device
from ..train.run_dir import (
    CONFIG,
    ENCODER,
    RUN_FILES,
    SUMMARY,
    check_folder,
    check_override_keys,
    read_run_config,
    read_summary,
    write_config,
)
from .lpaft import lp_aft

POSTPROCESS = "postprocess.json"
SCHEMA = "robustssl.postprocess/1"

__all__ = ["POSTPROCESS", "divergence_note", "postprocess_run", "read_divergence_note"]


def _claim(out: Path, run_dir: Path) -> None:
    """OUT must be a new folder: not the source run, holding no run files."""
    check_folder(out)
    if out.resolve() == run_dir.resolve():
        raise RunError(f"--out {out} is the source run folder; post-processing writes a new run, so pass another --out")
    found = [name for name in (*RUN_FILES, POSTPROCESS) if (out / name).exists()]
    if found:
        raise RunError(f"{out} already holds {', '.join(found)}; nothing was overwritten. Choose another --out, "
                       "or delete those files to reuse the folder")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cluster_branch(model: torch.nn.Module, wanted: str, trained: list[str] | None) -> str | None:
    """The branch k-means clusters: postprocess.cluster_branch for dual-BN encoders, if it was trained."""
    if not has_dual_bn(model):
        return None
    if trained is not None and wanted not in trained:
        other = next(iter(trained), "pgd")
        raise RunError(f"postprocess.cluster_branch={wanted}, but this encoder's {wanted} BN branch was never trained "
                       f"(trained: {', '.join(trained) or 'none'}); pass postprocess.cluster_branch={other}")
    return wanted


def divergence_note(record: dict[str, Any]) -> str | None:
    """The warning for a post-processing record (postprocess.json, or the stages of `lp_aft`) whose
    AFT finetune diverged; None when it did not (or the record predates the check)."""
    div = record.get("aft", {}).get("divergence") or {}
    if not div.get("diverged"):
        return None
    return f"the LP-AFT finetune (TRADES) DIVERGED: {div['detail']}; this encoder is not a trained result"


def read_divergence_note(run_dir: str | Path) -> str | None:
    """`divergence_note` of a run folder's postprocess.json (None for a run that is not post-processed)."""
    path = Path(run_dir) / POSTPROCESS
    if not path.is_file():
        return None
    try:
        return divergence_note(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise RunError(f"{path} is damaged (not a postprocess record); run `robustssl postprocess` again") from None


def postprocess_run(run_dir: str | Path, out: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Post-process the encoder of `run_dir` with k-means pseudo-labels + LP-AFT into the new folder `out`.

    overrides: `postprocess.*` (and `eval.*`: eps, pgd_alpha, linear_batch_size, ...) keys,
    validated before any work. Returns the postprocess.json record.
    """
    run_dir, out = Path(run_dir), check_output_path(out, "--out")
    check_override_keys(list(overrides or []), "postprocess", ("postprocess", "eval"))
    cfg = read_run_config(run_dir, overrides)  # every key validated before the encoder or the data are touched
    _claim(out, run_dir)
    source_summary = read_summary(run_dir) or {}  # a damaged run.json is refused before the work
    with FolderLock(out, "robustssl postprocess"):  # a second postprocess into `out` is refused while this one runs
        _claim(out, run_dir)  # again, under the lock: a postprocess that finished meanwhile
        return _postprocess(cfg, run_dir, out, source_summary)


def _postprocess(cfg: RunConfig, run_dir: Path, out: Path, source_summary: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    source = run_dir / ENCODER
    meta = read_export_metadata(source)
    trained = meta["trained_branches"]
    device = resolve_device(cfg.train.device)
    model, spec = load_encoder(source, device=str(device))
    branch, note = choose_branch(model, None, trained)
    cluster_branch = _cluster_branch(model, cfg.postprocess.cluster_branch, trained)
    train = load_train_set(cfg)
    torch.manual_seed(cfg.postprocess.seed)
    with progress.showing("postprocess", enabled=cfg.train.progress):  # which stage runs, images done, ETA
        encoder, stages = lp_aft(model, train, cfg.postprocess, cfg.eval, device, branch, cluster_branch)

    seconds = time.perf_counter() - t0
    record = {
        "schema": SCHEMA,
        "method": "DynACL++ post-processing: k-means pseudo-labels, then LP-AFT (linear probe, then TRADES full finetuning)",
        "source_run": str(run_dir.resolve()),
        "source_encoder_sha256": _sha256(source),
        "source_method": cfg.method.name,
        "data": {"name": cfg.data.name, "split": train.split, "images": len(train)},
        "bn_branch": branch,
        "trained_branches": trained,
        "notes": [n for n in (note, divergence_note(stages)) if n],
        "settings": dataclasses.asdict(cfg.postprocess),
        "threat_model": {"norm": cfg.eval.norm, "eps": cfg.eval.eps, "alpha": cfg.eval.pgd_alpha},
        **stages,
        "seconds": round(seconds, 3),
        "device": str(device),
    }
    phases = dict(source_summary.get("phase_seconds", {}))
    phases["postprocess"] = seconds
    run_summary = {
        "method": f"{cfg.method.name}+lp-aft",
        "source_run": str(run_dir.resolve()),
        "steps": source_summary.get("steps"),
        "seconds": float(source_summary.get("seconds", 0.0)) + seconds,
        "phase_seconds": phases,
        "trained_branches": trained,
        "coreset": source_summary.get("coreset"),
        "classes": source_summary.get("classes"),
        "postprocess": POSTPROCESS,
        "diverged": bool(stages["aft"]["divergence"]["diverged"]),
        "device": str(device),
        "torch": torch.__version__,
        "hardware": hardware(device),
    }
    export_encoder(encoder, spec, out / ENCODER, trained_branches=trained)
    atomic_write_text(out / POSTPROCESS, json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / SUMMARY, json.dumps(run_summary, indent=2) + "\n")
    write_config(out, cfg)  # last: a folder with config.yaml is a finished post-processing
    record["out"] = str(out)
    record["config"] = str(out / CONFIG)
    return record
