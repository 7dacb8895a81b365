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

    Distributed (rank, world_size > 1): batch_size is the GLOBAL batch. The epoch's order is the
    one-process order, each global batch is cut into world_size contiguous shards of
    batch_size // world_size, and this loader yields shard `rank` of each: the ranks together
    train on exactly the one-process batches, rank 0 holding the first images of each.
    """

    def __init__(self, dataset: ImageSource, batch_size: int, seed: int, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if world_size > 1 and (batch_size % world_size or not drop_last):
            raise ValueError(f"a global batch of {batch_size} does not split into {world_size} equal shards "
                             "(batch_size must be a multiple of the number of processes, with drop_last)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.shard_size = batch_size // world_size

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
            if self.world_size == 1:
                rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
            else:
                first = b * self.batch_size + self.rank * self.shard_size
                rows = slice(first, first + self.shard_size)
            yield make_batch(self.dataset, order[rows], None if ordered_weights is None else ordered_weights[rows])
