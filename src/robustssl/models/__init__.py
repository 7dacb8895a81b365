"""Backbones, dual BatchNorm, projection heads, and encoder export."""
from .dual_bn import (
    BRANCHES,
    DualBatchNorm,
    bn_branch,
    current_branch,
    default_branch,
    has_dual_bn,
    model_mode,
    set_bn_branch,
)
from .encoder import ARCHS, ModelConfig, ModelSpec, SSLModel, build_model
from .export import export_encoder, load_encoder

__all__ = [
    "ARCHS", "BRANCHES", "DualBatchNorm", "ModelConfig", "ModelSpec", "SSLModel", "bn_branch", "build_model", "current_branch",
    "default_branch", "export_encoder", "has_dual_bn", "load_encoder", "model_mode", "set_bn_branch",
]
