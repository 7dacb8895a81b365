"""LPIPS distance (Zhang et al. 2018) as Perceptual Adversarial Training uses it (Laidlaw et al. 2021).

For a feature network with layers l = 1..L and activations a_l(x) [B, C_l, H_l, W_l]:

    phi_l(x)[c, h, w] = sqrt(w_lc) a_l(x)[c, h, w] / (||a_l(x)[:, h, w]||_2 + 1e-10) / sqrt(H_l W_l)
    phi(x)            = concat_l flatten(phi_l(x))                       [B, D]
    LPIPS(x, x')      = sum_l mean_{h,w} sum_c w_lc (unit activations of x - those of x')^2 = ||phi(x) - phi(x')||^2
    d(x, x')          = ||phi(x) - phi(x')||_2 = sqrt(LPIPS)

(channel-normalized activations, squared differences, spatially averaged, summed over layers).
`d` is the distance PAT's bounds are written in ("LPIPS eps 0.5" means d <= 0.5), as in its
public code. w_lc = 1 unless learned linear weights are loaded with a full LPIPS model.

The feature network is either
- the model being trained or attacked itself ("self-bound", PAT's default): its layers are the
  ReLU outputs of the small CNN's five conv layers, or the outputs of ResNet-18's four stages
  (PAT's layer1..layer4); or
- an AlexNet-family network loaded from a local file (`load_lpips_network`): torchvision's
  AlexNet (11x11 first conv) or PAT's CIFAR AlexNet (3x3 first conv), a state dict with the keys
  `features.{0,3,6,8,10}.{weight,bias}` (torch.load with weights_only=True, or safetensors),
  optionally with the official LPIPS package's learned linear layers `lin{0..4}.model.1.weight`.
  Its layers are the five conv ReLU outputs. Nothing is ever downloaded.

Inputs are images in [0, 1]; the network runs in the caller's mode (attacks use eval mode).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

NORM_EPS = 1e-10


def normalized_flat(activations: Sequence[torch.Tensor], weights: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """phi(x) [B, D] from layer activations, each [B, C_l, H_l, W_l]: unit length over channels at
    every position, scaled by 1/sqrt(H_l W_l) (and sqrt of the per-channel weights [C_l] when given),
    flattened and concatenated, so that ||phi(x) - phi(x')||_2 is the LPIPS distance d."""
    parts = []
    for i, a in enumerate(activations):
        a = a.float()
        unit = a / (a.norm(dim=1, keepdim=True) + NORM_EPS)
        scale = 1.0 / math.sqrt(a.shape[2] * a.shape[3])
        if weights is not None:
            unit = unit * weights[i].to(unit).sqrt().view(1, -1, 1, 1)
        parts.append((unit * scale).flatten(1))
    return torch.cat(parts, dim=1)


class _Taps:
    """Forward hooks on `modules` that keep their outputs (after `post`) during one forward."""

    def __init__(self, modules: Sequence[nn.Module], post: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.modules, self.post = list(modules), post
        self.outputs: list[torch.Tensor] = []

    def __enter__(self) -> _Taps:
        self.outputs = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def _hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.outputs.append(self.post(output))

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def self_layers(model: nn.Module) -> tuple[list[nn.Module], Callable[[torch.Tensor], torch.Tensor]]:
    """The modules whose outputs are the LPIPS layers of a robustssl model (an `SSLModel`, or a classifier
    wrapping one: its first backbone), and the function
    applied to each output: the CNN's five BatchNorms followed by ReLU (the conv layers' activations),
    or ResNet-18's four stages (outputs of blocks 2, 4, 6, 8, already after ReLU)."""
    from ..models.cnn import SmallCNN
    from ..models.heads import PreFeature
    from ..models.resnet import ResNet18

    # the first backbone inside the model: an SSLModel, or an evaluation classifier wrapping one
    backbone: nn.Module | None = next((m for m in model.modules() if isinstance(m, (SmallCNN, ResNet18, PreFeature))), None)
    if isinstance(backbone, PreFeature):
        backbone = backbone.trunk
    if isinstance(backbone, SmallCNN):
        return list(backbone.bns), F.relu
    if isinstance(backbone, ResNet18):
        return [backbone.layers[i] for i in (1, 3, 5, 7)], lambda t: t
    raise ConfigError(f"self-bound LPIPS knows the layers of robustssl's cnn and resnet18 backbones, not "
                      f"{type(backbone).__name__}; give an LPIPS network file instead (lpips_model=PATH)")


class LPIPS:
    """The LPIPS distance of one feature network (not an nn.Module: it holds no parameters of its own
    that training or a checkpoint should see).

    network: maps x [B, C, H, W] in [0, 1] to something (logits for a classifier); `layers` are the
    modules whose outputs (after `post`) are the LPIPS activations, in forward order.
    weights: optional per-layer channel weights (learned LPIPS), each [C_l], non-negative.
    self_bound: the network is the classifier under attack, so one forward gives both phi(x) and
    the logits (`features_logits`).
    """

    def __init__(self, network: nn.Module, layers: Sequence[nn.Module], post: Callable[[torch.Tensor], torch.Tensor],
                 weights: Sequence[torch.Tensor] | None = None, *, self_bound: bool = False, name: str = "self-bound") -> None:
        if not layers:
            raise ValueError("LPIPS needs at least one layer")
        if weights is not None and len(weights) != len(layers):
            raise ValueError(f"{len(weights)} layer weights for {len(layers)} layers")
        self.network, self.weights, self.self_bound, self.name = network, weights, self_bound, name
        self._taps = _Taps(layers, post)
        self.n_layers = len(layers)

    @classmethod
    def of_model(cls, model: nn.Module) -> LPIPS:
        """Self-bound LPIPS: the model's own layers (`self_layers`)."""
        layers, post = self_layers(model)
        return cls(model, layers, post, self_bound=True, name="self-bound")

    def features_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(x) [B, D], network(x)) from one forward of the network. x: [B, C, H, W] in [0, 1]."""
        with self._taps as taps:
            out = self.network(x)
        if len(taps.outputs) != self.n_layers or any(a.shape[0] != x.shape[0] for a in taps.outputs):
            raise ConfigError(f"{self.name} LPIPS: one forward of {x.shape[0]} images should give each of its {self.n_layers} "
                              f"layers once for those images, got {[tuple(a.shape) for a in taps.outputs]} (a multi-crop "
                              "classifier runs its layers on crops); give an LPIPS network file instead (lpips_model=PATH)")
        return normalized_flat(taps.outputs, self.weights), out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x) [B, D] for x [B, C, H, W] in [0, 1]."""
        return self.features_logits(x)[0]

    def distance(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """d(x1, x2) = sqrt(LPIPS) [B] for two batches of images in [0, 1]."""
        return (self.features(x1) - self.features(x2)).norm(dim=1)


# --- a network loaded from a local file (AlexNet family) -------------------------------------

_ALEX_CONVS = (0, 3, 6, 8, 10)  # indices of the conv layers in AlexNet's `features` Sequential
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_LPIPS_SHIFT, _LPIPS_SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)  # the LPIPS package's input scaling


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional part, its sizes read from a state dict: torchvision's ImageNet AlexNet
    (first conv 11x11 stride 4, 3x3/2 max-pools) or PAT's CIFAR AlexNet (3x3 stride 2, 2x2 pools).

    forward: x [B, C, H, W] in [0, 1] -> the last layer's activations. Grayscale inputs are repeated
    to the first conv's channels. Input scaling: the LPIPS package's (2x - 1 - shift) / scale when
    `lpips_scaling`, else ImageNet mean/std (PAT's AlexNet feature model).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, shapes: Sequence[torch.Size], lpips_scaling: bool) -> None:
        super().__init__()
        imagenet = shapes[0][-1] == 11
        pool: nn.Module = nn.MaxPool2d(3, 2) if imagenet else nn.MaxPool2d(2)
        seq: list[nn.Module] = []
        for i, shape in enumerate(shapes):
            cout, cin, k = int(shape[0]), int(shape[1]), int(shape[-1])
            stride, pad = (4, 2) if i == 0 and imagenet else (2 if i == 0 else 1, k // 2)
            seq += [nn.Conv2d(cin, cout, k, stride, pad), nn.ReLU()]
            if i in (0, 1):
                seq.append(pool)
        self.features = nn.Sequential(*seq)
        self.in_channels = int(shapes[0][1])
        if lpips_scaling:
            mean = tuple(0.5 + s / 2 for s in _LPIPS_SHIFT)  # (2x - 1 - shift)/scale = (x - (1 + shift)/2) / (scale/2)
            std = tuple(s / 2 for s in _LPIPS_SCALE)
        else:
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def relus(self) -> list[nn.Module]:
        return [m for m in self.features if isinstance(m, nn.ReLU)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ConfigError(f"the LPIPS network takes {self.in_channels}-channel images, got {x.shape[1]} channels")
            x = x.expand(-1, self.in_channels, -1, -1)
        return self.features((x - self.mean) / self.std)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state dict of tensors; save the LPIPS network's state_dict()")
    return {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}


def load_lpips_network(path: str | Path, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS with an AlexNet-family network from a local file (see the module docstring), in eval mode,
    its parameters frozen (requires_grad False). Learned linear weights `lin{l}.model.1.weight` [1, C_l, 1, 1]
    are used when the file holds them (with the LPIPS package's input scaling)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"LPIPS network file {path} does not exist; give a local state dict (.pt/.pth or .safetensors) "
                          "of an AlexNet (keys features.0.weight ... features.10.weight)")
    try:
        state = _read_state(path)
    except ConfigError:
        raise
    except Exception as e:  # torch.load's and safetensors' many error types: a damaged or foreign file
        raise ConfigError(f"cannot read the LPIPS network file {path}: {e}") from e
    missing = [f"features.{i}.{p}" for i in _ALEX_CONVS for p in ("weight", "bias") if f"features.{i}.{p}" not in state]
    if missing:
        raise ConfigError(f"{path}: not an AlexNet state dict (missing {', '.join(missing[:3])}...); "
                          "LPIPS networks are AlexNet-family (keys features.0.weight ... features.10.weight)")
    shapes = [state[f"features.{i}.weight"].shape for i in _ALEX_CONVS]
    if shapes[0][-1] not in (3, 11):
        raise ConfigError(f"{path}: first conv is {shapes[0][-1]}x{shapes[0][-1]}; known AlexNets have 11x11 (ImageNet) "
                          "or 3x3 (PAT's CIFAR AlexNet)")
    lin_keys = [f"lin{i}.model.1.weight" for i in range(len(_ALEX_CONVS))]
    has_lin = all(k in state for k in lin_keys)
    net = AlexNetFeatures(shapes, lpips_scaling=has_lin)
    net.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                  if k.startswith("features.") and int(k.split(".")[1]) in _ALEX_CONVS})
    weights = None
    if has_lin:
        weights = [state[k].float().flatten() for k in lin_keys]
        if any(bool((w < 0).any()) for w in weights):
            raise ConfigError(f"{path}: LPIPS linear weights must be non-negative")
    net = net.to(device).eval().requires_grad_(False)
    if weights is not None:
        weights = [w.to(device) for w in weights]
    return LPIPS(net, net.relus(), lambda t: t, weights, self_bound=False, name=f"network {path.name}")
