"""What RCS differentiates: the projector's last Linear (`scope="last"`, the paper's last-layer
approximation) or every Linear of the projector (`scope="projector"`, as the RCS code does).

`HeadView` splits the projector into the part before the differentiated layers (never
simulated) and the `tail` that starts at the first differentiated Linear. The tail's input is
cached once, and the tail is re-run as a pure function of the flat parameter vector w, in eval
mode on an explicit BN branch (cheap g_val refreshes). `only_head_trainable` makes a full
forward build a backward graph for the differentiated layers alone (cheap candidate gradients).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from ..models import bn_branch, model_mode

SCOPES = ("last", "projector")


class HeadView:
    """model.projector = Sequential(*pre, *tail); tail starts at the first differentiated Linear.

    scope="last": tail = (last Linear, *post layers); only that Linear is differentiated.
    scope="projector": tail = the whole projector; every Linear in it is differentiated.
    The flat parameter vector w [dim] is [weight, bias] of each differentiated Linear, in order.
    """

    def __init__(self, model: nn.Module, scope: str = "last") -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown head scope {scope!r}; valid: {', '.join(SCOPES)}")
        projector = model.projector
        if not isinstance(projector, nn.Sequential):
            raise TypeError("coreset selection needs model.projector to be an nn.Sequential ending in a Linear (+ optional BN)")
        linears = [i for i, m in enumerate(projector) if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError("coreset selection needs a Linear layer in model.projector")
        self.model, self.scope = model, scope
        start = linears[-1] if scope == "last" else 0
        self.tail = nn.Sequential(*list(projector)[start:])
        self.layers = [m for m in self.tail.modules() if isinstance(m, nn.Linear)]
        if scope == "last":
            self.layers = self.layers[:1]
        self.head = self.layers[-1]  # the projector's last Linear
        self.params = [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        self.dim = sum(p.numel() for p in self.params)
        self._tail_names = _names_of(self.tail, self.params)
        self._model_names = _names_of(model, self.params)

    def flat(self) -> torch.Tensor:
        """The differentiated parameters as they are now, one vector [dim]."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def split(self, w: torch.Tensor) -> list[torch.Tensor]:
        """w [dim] -> one tensor per parameter of `self.params` (views of w, shaped like them)."""
        return [c.view_as(p) for c, p in zip(w.split([p.numel() for p in self.params]), self.params)]

    def project(self, h: torch.Tensor, w: torch.Tensor, branch: str | None) -> torch.Tensor:
        """Projector output [B, d] of tail inputs h [B, in] with parameters w [dim].

        Eval mode on BN branch `branch` ('normal' / 'pgd'; ignored without dual BN), whatever
        state the model is in: the branch must be the one h was computed on.
        """
        with bn_branch(self.tail, branch), model_mode(self.tail, "eval"):
            return functional_call(self.tail, dict(zip(self._tail_names, self.split(w))), (h,))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The full model on images x with the differentiated parameters replaced by w [dim].

        Runs in the model's current mode and branch (the caller sets both)."""
        return functional_call(self.model, dict(zip(self._model_names, self.split(w))), (x,))

    @contextmanager
    def capture_inputs(self) -> Iterator[list[torch.Tensor]]:
        """Collect the tail's input (detached) of every model forward inside the block."""
        seen: list[torch.Tensor] = []
        handle = self.tail[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
        try:
            yield seen
        finally:
            handle.remove()

    @contextmanager
    def capture(self) -> Iterator[list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """Collect (layer index, input detached, output) of every differentiated-Linear forward inside the block."""
        seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        handles = [
            layer.register_forward_hook(lambda m, args, out, i=i: seen.append((i, args[0].detach(), out)))
            for i, layer in enumerate(self.layers)
        ]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()


def _names_of(module: nn.Module, params: list[torch.Tensor]) -> list[str]:
    """The names of `params` inside `module` (for functional_call)."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names[id(p)] for p in params]


@contextmanager
def only_head_trainable(model: nn.Module, view: HeadView) -> Iterator[None]:
    """Inside the block only the differentiated parameters require grad, so a backward stops there."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    head_ids = {id(p) for p in view.params}
    for p, _ in flags:
        p.requires_grad_(id(p) in head_ids)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
