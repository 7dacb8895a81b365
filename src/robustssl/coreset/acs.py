"""ACS selectors for supervised adversarial training (Dolatabadi et al.): Adv. CRAIG and Adv. GradMatch.

At each selection the method's own attack runs over the whole pool, on the fly, batch by batch
(no stored perturbation for the dataset), and each example's gradient of the method's training
objective w.r.t. the classifier layer is computed in closed form from logits and features
(`method.head_gradients`: CE for PGD-AT / fast AT, CE + beta KL for TRADES). Then:

coreset.unit=batch (ACS's GradMatchPB / CRAIGPB, what its shipped configs run): the pool, in
  order, is cut into fixed minibatches of `coreset.<name>.batch_size` images (None: the training
  batch size, as ACS's selection loader uses its training batch size); an atom is the mean
  gradient of one minibatch; one selection over all minibatches (no classes); every image of a
  picked minibatch trains with that minibatch's weight.
coreset.unit=sample (ACS's per-class variants): per class, budgets proportional to class size.
  craig:     facility location on max(D) - D (lazy greedy, chunked distances), D the squared
             Euclidean distance (ACS/CORDS; `coreset.craig.distance=euclidean`: the plain one);
             weight of a pick = the number of atoms whose nearest pick it is
  gradmatch: non-negative OMP matching the summed gradient (the class's, per class); NNLS weights
Weights are normalized over the whole subset to average 1 (the ACS code normalized them inside
every minibatch, where they cancel); `coreset.<name>.weighted=false` trains the same picks
unweighted. Selection runs in eval mode and leaves parameters and BN statistics untouched. A
subset smaller than the budget (GradMatch may stop early or drop zero-weight atoms) is filled
with seeded random units of weight 1 before normalization, so every coreset epoch has the
planned number of steps.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..data.batch import make_batch
from ..data.dataset import ImageSource
from ..errors import ConfigError
from ..models import model_mode
from ..settings import non_negative, one_of, positive
from .craig import DISTANCES, craig_per_class, facility_location
from .embeddings import layer_dim, run_sharded
from .gradmatch import gradmatch_select, normalize_weights
from .selectors import ClassifierMethod, Selection, SelectionMethod, Selector, units_to_positions

if TYPE_CHECKING:
    from ..config import RunConfig


def pool_head_gradients(model: torch.nn.Module, method: ClassifierMethod, data: ImageSource, pool: torch.Tensor,
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


def batch_means(grads: torch.Tensor, size: int) -> torch.Tensor:
    """[n // size, dim]: the mean of each run of `size` consecutive rows of grads [n, dim] (a last
    partial run is dropped, as the schedule's batch units)."""
    n = grads.shape[0] // size
    return grads[: n * size].reshape(n, size, grads.shape[1]).mean(1)


@dataclass
class ACSSettings:
    """Shared by `coreset.craig.*` and `coreset.gradmatch.*`."""

    # coreset.unit=batch: images per fixed minibatch (an atom). None: optim.batch_size, as ACS's selection
    # loader uses its training batch size (128 in its scripts; its configs' dataloader.batch_size = 20 is
    # replaced by 128 before the first selection)
    batch_size: int | None = positive(None)
    # train each picked image with its selection weight (GradMatch's / CRAIG's objective) or every one with
    # weight 1: the same coreset, unweighted, as the ACS code trains batch units (its per-minibatch
    # normalization cancels the shared weight of a picked minibatch)
    weighted: bool = True


@dataclass
class CraigSettings(ACSSettings):
    distance: str = one_of("squared", DISTANCES)  # D in max(D) - D: squared Euclidean (ACS/CORDS) or plain


@dataclass
class GradMatchSettings(ACSSettings):
    lam: float = non_negative(0.0)  # l2 regularizer on the OMP weights (ACS's configs: 0)


class ACSSelector(Selector):
    """The shared part: supervised-method check, the gradients, batch atoms, filling, normalization."""

    settings: ACSSettings

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        from ..methods import METHODS

        if not METHODS[cfg.method.name].supervised:
            raise ConfigError(f"coreset.selector={cls.name} selects on the gradients of a supervised loss; use it with "
                              "method.name=pgd_at, trades or fast_at (coreset.selector=rcs works with every method)")

    def unit_size(self, batch_size: int) -> int:
        return self.settings.batch_size or batch_size

    def pick(self, grads: torch.Tensor, labels: torch.Tensor | None, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, raw weights) of the picks among the gradient rows (labels None: batch atoms, no classes)."""
        raise NotImplementedError  # abstract: CRAIG and GradMatch define it

    def select(self, model: torch.nn.Module, method: SelectionMethod, data: ImageSource, pool: torch.Tensor,
               val: torch.Tensor, budget: int, batch_size: int) -> Selection:
        if not isinstance(method, ClassifierMethod):
            raise ConfigError(f"coreset.selector={self.name} needs a method with classifier-layer gradients "
                              f"(pgd_at, trades, fast_at); {method.name} has none")
        t0 = time.perf_counter()
        grads, labels = pool_head_gradients(model, method, data, pool, batch_size)
        size = self.unit_size(batch_size) if self.cfg.unit == "batch" else 1
        classes: torch.Tensor | None = labels.to(grads.device)
        if self.cfg.unit == "batch":  # atoms: fixed minibatches of the pool in order, no classes
            grads, classes = batch_means(grads, size), None
        t1 = time.perf_counter()
        rows, weights = self.pick(grads, classes, budget)
        rows, weights = rows.cpu(), weights.detach().float().cpu()
        if len(rows) < budget:  # fill with seeded random units that stand for themselves (weight 1)
            rest = torch.ones(grads.shape[0], dtype=torch.bool)
            rest[rows] = False
            candidates = rest.nonzero().flatten()
            extra = candidates[torch.randperm(len(candidates), generator=self.generator)[: budget - len(rows)]]
            rows, weights = torch.cat([rows, extra]), torch.cat([weights, torch.ones(len(extra))])
        if self.cfg.unit == "batch":  # every image of a picked minibatch, with its weight
            weights = weights.repeat_interleave(size)
        positions = units_to_positions(pool, rows, self.cfg.unit, size)
        order = positions.argsort()
        trained = normalize_weights(weights[order]) if self.settings.weighted else None
        return Selection(positions[order], trained, None,
                         {"gradients": t1 - t0, "greedy": time.perf_counter() - t1})


class CraigSelector(ACSSelector):
    """Adv. CRAIG: facility location on the gradients (per class, or over fixed minibatches)."""

    name = "craig"
    Settings = CraigSettings
    settings: CraigSettings

    def pick(self, grads: torch.Tensor, labels: torch.Tensor | None, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            result = facility_location(grads, budget, distance=self.settings.distance)
            return result.picks, result.weights
        return craig_per_class(grads, labels, budget, distance=self.settings.distance)


class GradMatchSelector(ACSSelector):
    """Adv. GradMatch: non-negative OMP on the gradients (per class, or over fixed minibatches)."""

    name = "gradmatch"
    Settings = GradMatchSettings
    settings: GradMatchSettings

    def pick(self, grads: torch.Tensor, labels: torch.Tensor | None, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        return gradmatch_select(grads, labels, budget, lam=self.settings.lam)
