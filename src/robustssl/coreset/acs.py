"""ACS selectors for supervised adversarial training (Dolatabadi et al.): Adv. CRAIG and Adv. GradMatch.

At each selection the method's own attack runs over the whole pool, on the fly, batch by batch
(no stored perturbation for the dataset), and each example's gradient of the method's training
objective w.r.t. the classifier layer is computed in closed form from logits and features
(`method.head_gradients`: CE for PGD-AT / fast AT, CE + beta KL for TRADES). Then, per class
with budgets proportional to class size:
  craig:     facility location on max(D) - D (lazy greedy, chunked distances); weight of a pick =
             the number of points whose nearest pick it is
  gradmatch: non-negative OMP matching the class's summed gradient; NNLS weights
Weights are normalized over the whole subset to average 1 (the ACS code normalized them inside
every minibatch, where they cancel). Selection runs in eval mode and leaves parameters and BN
statistics untouched. A subset smaller than the budget (GradMatch may stop early or drop
zero-weight atoms) is filled with seeded random examples of weight 1 before normalization, so
every coreset epoch has the planned number of steps.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..data.batch import make_batch
from ..data.dataset import ImageSource
from ..errors import ConfigError
from ..models import model_mode
from .craig import craig_per_class
from .embeddings import layer_dim, run_sharded
from .gradmatch import gradmatch_select, normalize_weights
from .selectors import Selection, Selector

if TYPE_CHECKING:
    from ..config import RunConfig


def pool_head_gradients(model: torch.nn.Module, method: Any, data: ImageSource, pool: torch.Tensor,
                        batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradients [len(pool), dim], labels [len(pool)]) of every pool example, batch by batch, eval mode.
    Under torchrun each rank computes a contiguous share of the batches and all rows are gathered."""
    if data.labels is None:
        raise ValueError("ACS selection needs labelled training data")

    jobs: list[tuple[int, Callable[[], torch.Tensor]]] = []
    for start in range(0, len(pool), batch_size):

        def rows(positions: torch.Tensor = pool[start:start + batch_size]) -> torch.Tensor:
            return method.head_gradients(model, make_batch(data, positions)).float()

        jobs.append((min(batch_size, len(pool) - start), rows))
    head = model.head()  # type: ignore[operator]
    with model_mode(model, "eval"):
        grads = run_sharded(jobs, torch.zeros(0, layer_dim(head), device=head.weight.device))
    return grads, data.labels[pool.to(data.labels.device)]


class ACSSelector(Selector):
    """The shared part: supervised-method and sample-unit checks, the gradients, filling, normalization."""

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        from ..methods import METHODS

        if not METHODS[cfg.method.name].supervised:
            raise ConfigError(f"coreset.method={cls.name} selects on the gradients of a supervised loss; use it with "
                              "method.name=pgd_at, trades or fast_at (coreset.method=rcs works with every method)")
        if cfg.coreset.unit != "sample":
            raise ConfigError(f"coreset.method={cls.name} picks single examples; set coreset.unit=sample")

    def pick(self, grads: torch.Tensor, labels: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, raw weights) of the picks among the gradient rows."""
        raise NotImplementedError  # abstract: CRAIG and GradMatch define it

    def select(self, model: Any, method: Any, data: ImageSource, pool: torch.Tensor, val: torch.Tensor,
               budget: int, batch_size: int) -> Selection:
        t0 = time.perf_counter()
        grads, labels = pool_head_gradients(model, method, data, pool, batch_size)
        t1 = time.perf_counter()
        rows, weights = self.pick(grads, labels.to(grads.device), budget)
        rows, weights = rows.cpu(), weights.detach().float().cpu()
        if len(rows) < budget:  # fill with seeded random examples that stand for themselves (weight 1)
            rest = torch.ones(len(pool), dtype=torch.bool)
            rest[rows] = False
            candidates = rest.nonzero().flatten()
            extra = candidates[torch.randperm(len(candidates), generator=self.generator)[: budget - len(rows)]]
            rows, weights = torch.cat([rows, extra]), torch.cat([weights, torch.ones(len(extra))])
        positions = pool[rows]
        order = positions.argsort()
        return Selection(positions[order], normalize_weights(weights[order]), None,
                         {"gradients": t1 - t0, "greedy": time.perf_counter() - t1})


class CraigSelector(ACSSelector):
    name = "craig"

    def pick(self, grads: torch.Tensor, labels: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        return craig_per_class(grads, labels, budget)


class GradMatchSelector(ACSSelector):
    name = "gradmatch"

    def pick(self, grads: torch.Tensor, labels: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        return gradmatch_select(grads, labels, budget)
