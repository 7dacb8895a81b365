"""Device-resident loader: the dataset lives on the training device as uint8 and batches
are index gathers, in a seeded per-epoch order, from any index set (all data or a coreset)."""
from __future__ import annotations

from typing import Iterator

import torch

from .dataset import ImageDataset


def epoch_order(positions: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of `positions` that depends only on (seed, epoch): resumable and rank-independent."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return positions.cpu()[torch.randperm(positions.numel(), generator=g)]


class DeviceLoader:
    """Yields (positions [b] int64, images [b, C, H, W] float in [0,1]) on the dataset's device.

    positions index rows of `dataset` (not its sample ids). With drop_last, an epoch has
    len(positions) // batch_size batches.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int, drop_last: bool = True) -> None:
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

    def epoch(self, positions: torch.Tensor, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch over `positions`, skipping the first `start_batch` (resume)."""
        order = epoch_order(positions, self.seed, epoch)
        device = self.dataset.images.device
        for b in range(start_batch, self.num_batches(order.numel())):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size].to(device)
            yield batch, self.dataset.images[batch].float().div_(255.0)
