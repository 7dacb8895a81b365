"""GPU speed switches applied to a freshly built model and its method (`train.*` keys).

- `train.bf16`: the method runs its attack and loss forwards under bf16 autocast
  (`Method.autocast`); parameters, gradients, optimizer state, checkpoints and exports stay
  fp32, and evaluation is fp32 (it never sees the method, and `eval/classifier.py` switches
  autocast off around its forwards).
- `train.channels_last`: parameters and buffers in channels_last memory format, and a forward
  pre-hook that converts every 4-D input of the model (batches, views, attacked views) to it,
  so convolutions see one layout. Values are unchanged; only the layout (and so the kernels) differ.
- `train.compile`: `nn.Module.compile` compiles the model's forward in place. The model stays
  the same object and class, so its state_dict keys (checkpoint, export) are unchanged (no
  `_orig_mod.` prefix, as `torch.compile(model)` would add), and submodules (the projector
  head used by coreset selection, `features`) still run eagerly.

All three are off by default, and then the model and the method are untouched.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..methods import Method


def to_channels_last(x: Any) -> Any:
    """A 4-D tensor [B, C, H, W] in channels_last layout (same values); anything else as it is."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _channels_last_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(to_channels_last(a) for a in args)


def use_channels_last(model: nn.Module) -> nn.Module:
    """Convert `model` in place to channels_last and convert its 4-D inputs on every call."""
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.register_forward_pre_hook(_channels_last_inputs)
    return model


def accelerate(model: nn.Module, method: Method, *, bf16: bool = False, channels_last: bool = False,
               compile: bool = False) -> nn.Module:
    """Apply the switches to `model` (in place; returned for chaining) and `method` (its `amp_dtype`)."""
    if bf16:
        method.amp_dtype = torch.bfloat16
    if channels_last:
        use_channels_last(model)
    if compile:
        model.compile()
    return model
