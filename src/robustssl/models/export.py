"""Export an encoder to safetensors and load it back into the same architecture."""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from .encoder import ModelSpec, SSLModel, build_model


def export_encoder(model: SSLModel, spec: ModelSpec, path: str | Path) -> Path:
    """Write the encoder weights (normalize + backbone) and the architecture spec to `path`."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.encoder_state_dict().items()}
    save_file(tensors, str(path), metadata={"robustssl_model_spec": json.dumps(asdict(spec))})
    return path


def load_encoder(path: str | Path, device: str = "cpu") -> tuple[SSLModel, ModelSpec]:
    """Rebuild the model from an export; the projector is freshly initialised (not exported)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no encoder export at {path}; run `robustssl pretrain` first (it writes encoder.safetensors)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "robustssl_model_spec" not in meta:
        raise ValueError(f"{path} is not a robustssl encoder export (no model spec in its metadata)")
    raw = json.loads(meta["robustssl_model_spec"])
    names = {f.name for f in fields(ModelSpec)}
    spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names})
    model = build_model(spec)
    missing, unexpected = model.load_state_dict(load_file(str(path), device="cpu"), strict=False)
    missing = [k for k in missing if not k.startswith("projector.")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match its architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device), spec
