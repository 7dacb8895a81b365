"""The model every method trains: input normalization -> backbone -> projector.

Inputs are images in [0, 1]; normalization lives inside the model so attacks and
evaluation always work in pixel space.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..settings import non_negative, one_of, positive
from .cnn import SmallCNN
from .heads import PreFeature, mlp_projector
from .resnet import ResNet18, ResNet50
from .timm_backbone import TimmBackbone, timm_unavailable
from .wideresnet import WideResNet, wrn_blocks

ARCHS = ("resnet18", "resnet50", "wrn", "cnn", "timm")
STEMS = ("cifar", "imagenet")


class Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SSLModel(nn.Module):
    """Encoder (normalize + backbone) with a projector.

    features(x): [B, C, H, W] in [0,1] -> [B, feature_dim]  (the representation evaluated)
    forward(x):  [B, C, H, W] in [0,1] -> [B, proj_dim]      (projector output, not normalized)
    The BN branch of dual-BN models is chosen with `robustssl.models.bn_branch`.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.projector = projector
        self.feature_dim: int = backbone.feature_dim  # type: ignore[assignment]
        self.head_trained = False  # a loaded export holds a trained classifier layer (supervised runs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(x))

    def head(self) -> nn.Linear:
        """The projector's last Linear layer (what coreset selection differentiates)."""
        linears = [m for m in self.projector.modules() if isinstance(m, nn.Linear)]
        return linears[-1]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights of normalize + backbone only (what is exported and evaluated)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("projector.")}


@dataclass
class ModelConfig:
    """The architecture a user chooses (the config's `model` section); defaults are ACL's CIFAR-10 model."""

    arch: str = one_of("resnet18", ARCHS)
    width: int = positive(64)  # resnet18 / resnet50: the first stage's channels (64); cnn: its first layer's (16)
    stem: str = one_of("cifar", STEMS)  # resnet18 / resnet50: 3x3 conv (cifar) or 7x7 + max-pool (imagenet)
    depth: int = positive(28)  # wrn: 6n + 4 layers (28: WRN-28-10, 34: WRN-34-10)
    widen: int = positive(10)  # wrn: the widening factor k (64k features)
    timm_name: str = ""  # timm: the timm model name (e.g. resnet26d, convnext_nano), built without pretrained weights
    dual_bn: bool = True
    proj_hidden: int = positive(512)
    proj_out: int = positive(512)
    proj_layers: int = positive(3)
    proj_bn: bool = True
    proj_last_bn: bool = True  # with proj_bn: BN after the projector's last Linear too (EMP-SSL: false)
    pre_feature: int = non_negative(0)  # > 0: EMP-SSL's Linear(trunk -> pre_feature)+BN+ReLU ends the encoder


@dataclass
class ModelSpec(ModelConfig):
    """Everything needed to rebuild a model (stored with every export): the chosen architecture
    plus what the data decides (input channels, normalization)."""

    in_channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_config(cls, model: ModelConfig, in_channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> ModelSpec:
        return cls(**asdict(model), in_channels=in_channels, mean=tuple(mean), std=tuple(std))


def check_model_config(model: ModelConfig) -> None:
    """Rules on the model section, checked with the config (before any work): a WRN depth of the form
    6n + 4; for arch timm, a model name and a timm that imports."""
    if model.arch == "wrn":
        try:
            wrn_blocks(model.depth)
        except ValueError as e:
            raise ConfigError(f"model.depth={model.depth}: {e}; e.g. model.depth=28 (WRN-28-10) or 34 (WRN-34-10)") from None
    if model.arch == "timm":
        if not model.timm_name:
            raise ConfigError("model.arch=timm needs model.timm_name=NAME (a timm model, e.g. resnet26d)")
        why = timm_unavailable()
        if why:
            raise ConfigError(f"model.arch=timm needs the timm package, which does not import here ({why}); install timm "
                              "with a torchvision that matches your torch, or choose model.arch from resnet18, resnet50, wrn, cnn")


def build_model(spec: ModelSpec) -> SSLModel:
    """Build the SSL model described by `spec`: ResNet-18 / ResNet-50 (width multiplier, CIFAR or
    ImageNet stem), WideResNet-depth-widen, the small CNN, or a timm model; dual BN when spec.dual_bn."""
    if len(spec.mean) != spec.in_channels or len(spec.std) != spec.in_channels:
        raise ValueError(f"normalization mean/std have {len(spec.mean)}/{len(spec.std)} values for {spec.in_channels} input channels")
    if spec.arch == "resnet18":
        backbone: nn.Module = ResNet18(spec.in_channels, spec.width, spec.dual_bn, spec.stem)
    elif spec.arch == "resnet50":
        backbone = ResNet50(spec.in_channels, spec.width, spec.dual_bn, spec.stem)
    elif spec.arch == "wrn":
        backbone = WideResNet(spec.in_channels, spec.depth, spec.widen, spec.dual_bn)
    elif spec.arch == "cnn":
        backbone = SmallCNN(spec.in_channels, spec.width, spec.dual_bn)
    elif spec.arch == "timm":
        backbone = TimmBackbone(spec.timm_name, spec.in_channels, spec.dual_bn)
    else:
        raise ValueError(f"unknown model.arch {spec.arch!r}; valid: {', '.join(ARCHS)}")
    if spec.pre_feature:
        backbone = PreFeature(backbone, spec.pre_feature, spec.dual_bn)
    projector = mlp_projector(
        backbone.feature_dim, spec.proj_hidden, spec.proj_out, spec.proj_layers, spec.dual_bn, spec.proj_bn,  # type: ignore[arg-type]
        spec.proj_last_bn,
    )
    return SSLModel(backbone, projector, tuple(spec.mean), tuple(spec.std))
