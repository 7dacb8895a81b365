"""The in-memory dataset every reader returns and every loader consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
