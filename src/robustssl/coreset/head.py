"""The last-layer approximation: everything RCS differentiates is the projector's last Linear.

`HeadView` splits the projector at that layer so the head can be re-run as a pure function
of its parameters on cached inputs (cheap g_val refreshes), and `only_head_trainable`
makes a full forward build a backward graph for the head alone (cheap candidate gradients).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F


class HeadView:
    """model.projector = Sequential(..., head: Linear, *post). Parameters are flattened as [weight, bias]."""

    def __init__(self, model: nn.Module) -> None:
        projector = model.projector
        if not isinstance(projector, nn.Sequential):
            raise TypeError("coreset selection needs model.projector to be an nn.Sequential ending in a Linear (+ optional BN)")
        linears = [i for i, m in enumerate(projector) if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError("coreset selection needs a Linear layer in model.projector")
        self.index = linears[-1]
        self.head: nn.Linear = projector[self.index]
        self.post = nn.Sequential(*list(projector)[self.index + 1 :])
        self.params = [p for p in (self.head.weight, self.head.bias) if p is not None]
        self.dim = sum(p.numel() for p in self.params)

    def flat(self) -> torch.Tensor:
        """The head's current parameters as one vector [dim]."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def unflatten(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.head.weight.numel()
        weight = w[:n].view_as(self.head.weight)
        bias = w[n:].view_as(self.head.bias) if self.head.bias is not None else None
        return weight, bias

    def project(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Projector output for head inputs h [B, in] with head parameters w [dim] (post layers as they are)."""
        weight, bias = self.unflatten(w)
        return self.post(F.linear(h, weight, bias))

    @contextmanager
    def capture(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Collect (input detached, output) of every head forward inside the block."""
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = self.head.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out)))
        try:
            yield seen
        finally:
            handle.remove()


@contextmanager
def only_head_trainable(model: nn.Module, view: HeadView) -> Iterator[None]:
    """Inside the block only the head's parameters require grad, so a backward stops at the head."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    head_ids = {id(p) for p in view.params}
    for p, _ in flags:
        p.requires_grad_(id(p) in head_ids)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
