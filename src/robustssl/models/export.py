"""Export an encoder to safetensors and load it back into the same architecture.

An export is one safetensors file: the encoder's tensors (normalize + backbone; for supervised
runs also the trained classifier layer, `projector.*`; fp32 as
trained, on the CPU) and, in the file's string metadata,

    robustssl_model_spec        JSON of the `ModelSpec` (rebuilds the architecture)
    robustssl_trained_branches  JSON list of the dual-BN branches the training updated,
                                e.g. ["normal", "pgd"] for ACL, ["normal"] for SimCLR;
                                absent in exports written before it was recorded
                                (then unknown: None)
    robustssl_encoder           which network of the run the weights are: "model" (the trained
                                model) or a module the method owns ("parts.ema": DynACL's EMA
                                encoder); absent in older exports (then "model")

The file is written atomically (`robustssl.io.atomic_write`): a kill leaves the old export
or none, never half of one. A file that is not a complete robustssl export raises
`RunError` with one line naming the file and the fix.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..errors import RunError
from ..io import atomic_write
from .dual_bn import BRANCHES, default_branch, has_dual_bn, set_bn_branch
from .encoder import ModelSpec, SSLModel, build_model

SPEC_KEY = "robustssl_model_spec"
BRANCHES_KEY = "robustssl_trained_branches"
ENCODER_KEY = "robustssl_encoder"
_HEADER_LEN_BYTES = 8  # safetensors: little-endian u64 header length, JSON header, then the tensor data

__all__ = ["BRANCHES_KEY", "ENCODER_KEY", "SPEC_KEY", "export_encoder", "load_encoder", "read_export_metadata"]


def _fix() -> str:
    """The fix every damaged-export message ends with."""
    return (
        "re-export it by running `robustssl pretrain` (with --resume for an interrupted run), "
        "or use the encoder.safetensors that pretrain wrote in the run folder"
    )


def _check_branches(trained_branches: Sequence[str]) -> list[str]:
    """The branch names as a list, in BRANCHES order without repeats; ValueError on an unknown name."""
    if isinstance(trained_branches, str):
        raise ValueError(f"trained_branches must be a list of branch names, not the string {trained_branches!r}")
    unknown = [b for b in trained_branches if b not in BRANCHES]
    if unknown:
        raise ValueError(f"unknown BN branch(es) {unknown} in trained_branches; valid: {', '.join(BRANCHES)}")
    return [b for b in BRANCHES if b in trained_branches]


def export_encoder(
    model: SSLModel, spec: ModelSpec, path: str | Path, trained_branches: Sequence[str] | None = None,
    with_head: bool = False, encoder: str = "model",
) -> Path:
    """Write the encoder weights (normalize + backbone) and the architecture spec to `path`, atomically.

    trained_branches: the dual-BN branches training updated ("normal", "pgd"); stored in the
    metadata so evaluation can pick a trained branch. None records nothing (unknown).
    with_head: also write the projector, which for supervised methods is the trained
    classifier layer (`load_encoder` then marks the model `head_trained`).
    encoder: which network of the run `model` is ("model", or an owned module such as "parts.ema").
    """
    path = Path(path)
    metadata = {SPEC_KEY: json.dumps(asdict(spec)), ENCODER_KEY: encoder}
    if trained_branches is not None:
        metadata[BRANCHES_KEY] = json.dumps(_check_branches(trained_branches))
    state = model.state_dict() if with_head else model.encoder_state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    blob = save_bytes(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(blob))
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header of `path`, checked against the file size (catches junk and truncation)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_HEADER_LEN_BYTES)
        if len(head) < _HEADER_LEN_BYTES:
            raise RunError(f"{path} is not a safetensors file ({size} bytes); {_fix()}")
        (n,) = struct.unpack("<Q", head)
        if n > size - _HEADER_LEN_BYTES:
            raise RunError(f"{path} is not a safetensors file or is truncated (its header claims {n} bytes, "
                           f"the file has {size}); {_fix()}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RunError(f"{path} is not a safetensors file (unreadable header); {_fix()}") from None
    if not isinstance(header, dict):
        raise RunError(f"{path} is not a safetensors file (unreadable header); {_fix()}")
    ends = [e.get("data_offsets", [0, 0])[1] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)]
    expected = _HEADER_LEN_BYTES + n + max(ends, default=0)
    if size < expected:
        raise RunError(f"{path} is truncated ({size} of {expected} bytes); {_fix()}")
    return header


def json_object_metadata(path: Path, text: str, what: str, fix: str) -> dict[str, Any]:
    """A safetensors metadata entry that must hold a JSON object; RunError naming `what` and `fix` otherwise."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise RunError(f"{path}: its {what} metadata is not valid JSON; {fix}") from None
    if not isinstance(raw, dict):
        raise RunError(f"{path}: its {what} metadata is not a JSON object; {fix}")
    return raw


def _parse_spec(path: Path, text: str) -> dict[str, Any]:
    return json_object_metadata(path, text, "model spec", _fix())


def _parse_branches(path: Path, text: str | None) -> list[str] | None:
    """The recorded trained branches, or None when the export does not record them."""
    if text is None:
        return None
    try:
        branches = json.loads(text)
        if isinstance(branches, list):
            return _check_branches(branches)
    except ValueError:  # bad JSON (JSONDecodeError is a ValueError) or an unknown branch name
        pass
    raise RunError(f"{path}: its {BRANCHES_KEY} metadata is not a list of {', '.join(BRANCHES)}; {_fix()}")


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """What an export says about itself, without loading the weights.

    Returns {"spec": the ModelSpec fields as a dict (JSON types), "trained_branches": list
    of branch names, or None for exports that do not record them, "encoder": the network the
    weights are ("model", or e.g. "parts.ema")}. Raises FileNotFoundError
    for a missing file and RunError for a file that is not a complete robustssl export
    (junk, truncated, or a safetensors file without robustssl metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no encoder export at {path}; run `robustssl pretrain` first (it writes encoder.safetensors)")
    meta = _read_header(path).get("__metadata__") or {}
    if SPEC_KEY not in meta:
        raise RunError(f"{path} is a safetensors file but not a robustssl encoder export (no {SPEC_KEY} in its metadata); "
                       f"{_fix()}")
    return {"spec": _parse_spec(path, meta[SPEC_KEY]), "trained_branches": _parse_branches(path, meta.get(BRANCHES_KEY)),
            "encoder": str(meta.get(ENCODER_KEY, "model"))}


def _spec_from_dict(path: Path, raw: dict[str, Any]) -> ModelSpec:
    names = {f.name for f in fields(ModelSpec)}
    try:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names}
        return ModelSpec(**kwargs)
    except (TypeError, ValueError) as e:
        raise RunError(f"{path}: its model spec is not valid ({e}); {_fix()}") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_bytes(path.read_bytes())
    except SafetensorError as e:
        raise RunError(f"{path} is damaged ({e}); {_fix()}") from None


def load_encoder(path: str | Path, device: str = "cpu", branch: str | None = None) -> tuple[SSLModel, ModelSpec]:
    """Rebuild the model from an export, in eval mode, ready for features:

        model, spec = load_encoder("runs/acl/encoder.safetensors")
        features = model.features(images)   # images [B, C, H, W] in [0, 1] -> [B, feature_dim]

    A dual-BN encoder is set to `branch`, by default the one `robustssl evaluate` uses and its
    report names (`dual_bn.default_branch`: "pgd" when it was trained or the export does not
    say, else the trained one), so the features are the ones the report measured; switch with
    `bn_branch(model, "normal")`. The projector is freshly initialised unless the export holds
    it (a supervised run's classifier layer: the model is then marked `head_trained`).

    The trained BN branches are not part of the return value; read them with
    `read_export_metadata(path)["trained_branches"]`. Raises FileNotFoundError for a missing
    file and RunError for anything that is not a complete robustssl export of a known architecture.
    """
    path = Path(path)
    meta = read_export_metadata(path)
    spec = _spec_from_dict(path, meta["spec"])
    try:
        model = build_model(spec)
    except (TypeError, ValueError) as e:
        raise RunError(f"{path}: its architecture cannot be built ({e}); {_fix()}") from None
    tensors = _read_tensors(path)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # tensor shapes that do not fit the architecture
        raise RunError(f"{path} does not match its architecture ({str(e).splitlines()[0]}); {_fix()}") from None
    head_missing = [k for k in missing if k.startswith("projector.")]
    missing = [k for k in missing if not k.startswith("projector.")]
    if missing or unexpected:
        raise RunError(f"{path} does not match its architecture: missing {missing[:5]}, unexpected {unexpected[:5]}; {_fix()}")
    model.head_trained = not head_missing and any(k.startswith("projector.") for k in tensors)
    chosen = branch if branch is not None else default_branch(model, meta["trained_branches"])
    if chosen is not None and has_dual_bn(model):
        set_bn_branch(model, chosen)
    return model.to(device).eval(), spec
