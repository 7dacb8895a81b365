"""Free adversarial training's perturbation (Shafahi et al. 2019), beside the PGD engine.

PGD runs its own forward-backward passes to build x_adv, then training runs another. Free
training has none of its own: each replay of a batch makes ONE forward on x + delta and ONE
backward, which yields the parameter gradients (the descent step) and delta's gradient (the
ascent step) together. `FreePerturbation` holds delta between those replays and across
batches (it is not reset: it warm-starts the next batch), takes the ascent step with the same
`ascend` as `pgd`, and is saved in the run's checkpoint so a resumed run continues it exactly.

    free = FreePerturbation(cfg)
    for replay in range(m):
        x_adv, delta = free.perturb(x)       # delta: a leaf that requires grad
        loss = loss_fn(model(x_adv))
        optimizer.zero_grad(); loss.backward()   # ONE backward: params' .grad and delta.grad
        optimizer.step(); scheduler.step()
        free.ascend(x, delta)                # delta <- proj(delta + alpha * sign(delta.grad))
"""
from __future__ import annotations

from typing import Any

import torch

from .pgd import PGDConfig, ascend


class FreePerturbation:
    """delta [B, ...] shared by every replay and batch; zeros at the start (as free AT), and zeros
    again when the batch shape changes (a batch of another size or image shape)."""

    def __init__(self, cfg: PGDConfig) -> None:
        self.cfg = cfg
        self.delta: torch.Tensor | None = None

    def perturb(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, ...] in [0, 1] -> (x_adv = clamp(x + delta, 0, 1), delta as a leaf that requires grad).

        The clamp keeps x_adv an image when delta was projected for the previous batch's images
        (the public code adds it unclamped)."""
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)
        delta = self.delta.to(device=x.device, dtype=x.dtype).detach().requires_grad_(True)
        return (x.detach() + delta).clamp(0, 1), delta

    def ascend(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        """The ascent step from the gradient the replay's backward left in delta.grad."""
        if delta.grad is None:
            raise RuntimeError("delta has no gradient: call loss.backward() on a loss of perturb()'s x_adv first")
        self.delta = ascend(x.detach(), delta.detach(), delta.grad, self.cfg)

    def state_dict(self) -> dict[str, Any]:
        return {"delta": None if self.delta is None else self.delta.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        delta = state["delta"]
        self.delta = None if delta is None else delta.to(device) if device is not None else delta
