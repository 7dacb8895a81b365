"""Device-resident loader: the dataset lives on the training device as uint8 and batches
are index gathers, in a seeded per-epoch order, from any index set (all data or a coreset)."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .batch import Batch, make_batch
from .dataset import ImageSource


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of range(n) that depends only on (seed, epoch): resumable and rank-independent."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def epoch_order(positions: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """`positions` in the epoch's seeded order."""
    return positions.cpu()[epoch_permutation(positions.numel(), seed, epoch)]


class DeviceLoader:
    """Yields `Batch`es (positions, images in [0,1], labels, weights) on the dataset's device.

    positions index rows of `dataset` (not its sample ids). With drop_last, an epoch has
    len(positions) // batch_size batches.
    """

    def __init__(self, dataset: ImageSource, batch_size: int, seed: int, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last

    def num_batches(self, n_positions: int) -> int:
        if self.drop_last:
            return n_positions // self.batch_size
        return -(-n_positions // self.batch_size)

    def epoch(self, positions: torch.Tensor, epoch: int, start_batch: int = 0,
              weights: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches of one epoch over `positions`, skipping the first `start_batch` (resume).

        weights: float [len(positions)], the loss weight of each position (a weighted coreset),
        carried into each Batch; None for unweighted training.
        """
        if weights is not None and weights.shape != positions.shape:
            raise ValueError(f"{weights.shape[0]} weights for {positions.numel()} positions")
        perm = epoch_permutation(positions.numel(), self.seed, epoch)
        order = positions.cpu()[perm]
        ordered_weights = None if weights is None else weights.cpu()[perm]
        for b in range(start_batch, self.num_batches(order.numel())):
            rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield make_batch(self.dataset, order[rows], None if ordered_weights is None else ordered_weights[rows])
