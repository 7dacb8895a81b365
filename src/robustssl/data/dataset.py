"""The in-memory dataset every reader returns and every loader consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class ImageSource(Protocol):
    """What training and coreset selection need from a training split: its size, shape, labels
    and the images at given positions. `ImageDataset` (all images in one tensor, on the device)
    and `data.streaming`'s sources (images read per batch from disk or the host) are ones."""

    labels: torch.Tensor | None  # int64 [N] on `device`, or None
    indices: torch.Tensor  # int64 [N] sample ids inside the split
    name: str
    split: str
    classes: list[str]

    def __len__(self) -> int: ...

    @property
    def num_channels(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where `gather` puts images (the training device)."""
        ...

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """uint8 [b, C, H, W] (0..255) of the rows at `positions` (int64 [b], 0..N-1), on `device`."""
        ...


@dataclass
class ImageDataset:
    """A split of an image dataset held as one uint8 tensor.

    images:  uint8 [N, C, H, W], values 0..255 (C = 1 for grayscale, 3 for colour).
    labels:  int64 [N] class ids, or None for unlabeled splits (STL-10 'unlabeled').
    indices: int64 [N] sample ids inside the split (0..N-1 for a whole split; a subset
             keeps the ids of the original split so coresets and reports can name images).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    indices: torch.Tensor
    name: str
    split: str
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"{self.name}/{self.split}: images must be uint8 [N, C, H, W], "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"{self.name}/{self.split}: {n} images but labels of shape {tuple(self.labels.shape)}")
        if self.indices.shape != (n,):
            raise ValueError(f"{self.name}/{self.split}: {n} images but indices of shape {tuple(self.indices.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """uint8 [b, C, H, W] of the rows at `positions` (an index gather on the images' device)."""
        return self.images[positions.to(self.images.device)]

    @property
    def num_classes(self) -> int | None:
        if self.classes:
            return len(self.classes)
        if self.labels is None:
            return None
        return int(self.labels.max().item()) + 1

    def subset(self, positions: torch.Tensor) -> ImageDataset:
        """Rows at `positions` (0..N-1 into this object), keeping original sample ids."""
        positions = positions.to(torch.long)
        return ImageDataset(
            images=self.images[positions],
            labels=None if self.labels is None else self.labels[positions],
            indices=self.indices[positions],
            name=self.name,
            split=self.split,
            classes=list(self.classes),
        )

    def to(self, device: torch.device | str) -> ImageDataset:
        return ImageDataset(
            images=self.images.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            indices=self.indices.to(device),
            name=self.name,
            split=self.split,
            classes=list(self.classes),
        )
