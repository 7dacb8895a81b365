"""The unit of work that flows loader -> method -> selectors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dataset import ImageSource


@dataclass
class Batch:
    """One minibatch of training images.

    positions: int64 [b], rows of the training ImageDataset (for per-sample state and selectors).
    images:    float [b, C, H, W] in [0, 1], on the training device.
    labels:    int64 [b] class ids, or None (unlabelled data); only supervised methods read them.
    weights:   float [b] per-image loss weights from a weighted coreset, or None (all 1).
    groups:    the batch is `groups` independent minibatches stacked (contiguous, equal size):
               losses that couple images (negatives) keep them within their group. Coreset
               selection stacks candidate batches so one forward scores several; training uses 1.
    """

    positions: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    groups: int = 1

    def __len__(self) -> int:
        return self.images.shape[0]


def make_batch(data: ImageSource, positions: torch.Tensor, weights: torch.Tensor | None = None, groups: int = 1) -> Batch:
    """Gather `positions` (rows of `data`) into a Batch on data's device; images scaled to [0, 1].

    data: an ImageDataset (an index gather) or a streaming source (the rows read for this batch).
    """
    if groups < 1 or len(positions) % groups:
        raise ValueError(f"{len(positions)} positions do not split into {groups} equal groups")
    device = data.device
    images = data.gather(positions).float().div_(255.0)  # positions as given: a streaming source reads them on the host
    positions = positions.to(device)
    return Batch(
        positions=positions,
        images=images,
        labels=None if data.labels is None else data.labels[positions],
        weights=None if weights is None else weights.to(device=device, dtype=torch.float32),
        groups=groups,
    )
