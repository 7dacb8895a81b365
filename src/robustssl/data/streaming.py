"""Training data that does not live on the device (`data.stream=true`).

A streaming source is an `ImageSource`: it knows its size, shape and labels (small, kept on
the device) and reads the images of given positions when asked (`gather`), so `make_batch`,
the loaders and coreset selection use it as they use an `ImageDataset`.

- `StreamingImageFolder`: an ImageFolder split of any size; only a batch's files are decoded
  (Pillow, converted and resized exactly as `read_image_folder` does, so the pixels are equal).
- `HostImages`: a split already in host memory (the other readers) that does not fit on the
  device; a batch is an index gather on the host.

Either writes a batch into a staging tensor in pinned host memory when the device is CUDA and
copies it with `non_blocking=True`. `StreamingLoader` is the `DeviceLoader` (same seeded,
resumable order and batches) whose batches are prepared by a background thread a few batches
ahead (`prefetched`), so decoding overlaps training.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from .batch import Batch
from .catalog import canonical_name, image_folder_split, load_dataset
from .dataset import ImageDataset
from .loader import DeviceLoader
from .readers import ImageFolderIndex, index_image_folder

T = TypeVar("T")


class HostSource:
    """Base of the streaming sources: labels and ids on `device`, images read per call into a
    (pinned, on CUDA) host tensor. Subclasses implement `_fill(rows, out)`."""

    def __init__(self, labels: torch.Tensor | None, indices: torch.Tensor, shape: tuple[int, int, int], name: str,
                 split: str, classes: list[str], device: torch.device | str) -> None:
        self._device = torch.device(device)
        self.labels = None if labels is None else labels.to(self._device)
        self.indices = indices.to(self._device)
        self.shape = shape  # (C, H, W) of every image
        self.name, self.split, self.classes = name, split, list(classes)
        self.pin = self._device.type == "cuda"

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def num_channels(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> int:
        return self.shape[2]

    @property
    def device(self) -> torch.device:
        return self._device

    def read(self, positions: torch.Tensor) -> torch.Tensor:
        """uint8 [b, C, H, W] (0..255) of `positions` on the host, in pinned memory when the device is CUDA."""
        rows = positions.cpu().to(torch.int64)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise IndexError(f"positions must be in 0..{len(self) - 1}, got {int(rows.min())}..{int(rows.max())}")
        out = torch.empty((rows.numel(), *self.shape), dtype=torch.uint8, pin_memory=self.pin)
        self._fill(rows, out)
        return out

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """`read`, then an asynchronous copy to the device (a pinned source lets the host run ahead)."""
        return self.read(positions).to(self._device, non_blocking=self.pin)

    def _fill(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """Write the images of `rows` (int64 [b], 0..N-1) into `out` (uint8 [b, C, H, W], host)."""
        raise NotImplementedError  # abstract: each source reads its own storage (files, host tensor)


class StreamingImageFolder(HostSource):
    """An ImageFolder split whose images are decoded only when a batch asks for them.

    rows: the files of `index` this source holds, in order (a subset keeps the split's sample
    ids in `indices`); None: all of them.
    """

    def __init__(self, index: ImageFolderIndex, name: str, split: str, device: torch.device | str,
                 rows: np.ndarray | None = None) -> None:
        self.index = index
        self.rows = np.arange(len(index.files), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        width, height = index.size
        super().__init__(torch.from_numpy(index.labels[self.rows]), torch.from_numpy(self.rows),
                         (index.channels, height, width), name, split, index.classes, device)

    def _fill(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        target = out.numpy()
        for j, r in enumerate(rows.tolist()):
            target[j] = self.index.decode(int(self.rows[r])).transpose(2, 0, 1)

    def subset(self, positions: torch.Tensor) -> StreamingImageFolder:
        """The rows at `positions` (0..N-1 into this source), keeping the split's sample ids."""
        return StreamingImageFolder(self.index, self.name, self.split, self._device,
                                    self.rows[positions.cpu().numpy().astype(np.int64)])


class HostImages(HostSource):
    """An in-memory split kept on the host; `gather` copies only a batch to the device."""

    def __init__(self, data: ImageDataset, device: torch.device | str) -> None:
        self.data = data.to("cpu")
        super().__init__(data.labels, data.indices, tuple(data.images.shape[1:]),  # type: ignore[arg-type]
                         data.name, data.split, data.classes, device)

    def _fill(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        torch.index_select(self.data.images, 0, rows, out=out)

    def subset(self, positions: torch.Tensor) -> HostImages:
        return HostImages(self.data.subset(positions.cpu()), self._device)


def open_stream(name: str, split: str, device: torch.device | str, *, root: str | None = None, download: bool = False,
                image_size: int | None = None, channels: int | None = None) -> StreamingImageFolder | HostImages:
    """A streaming source of one split (arguments as `load_dataset`).

    'imagefolder': a `StreamingImageFolder` (with both image_size and channels given, no file
    is opened until it is read; otherwise every header is read once to decide them). Other
    datasets: read as usual, kept on the host (`HostImages`).
    """
    key = canonical_name(name)
    if key == "imagefolder":
        index = index_image_folder(image_folder_split(split, root), image_size, channels, probe=False)
        return StreamingImageFolder(index, key, split, device)
    return HostImages(load_dataset(key, split, root, download, image_size=image_size, channels=channels), device)


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yield `items` in order while a background thread produces up to `depth` of them ahead.

    depth 0: no thread. An exception in the producer is raised here, at the item it failed on;
    closing the generator early (a consumer that stops) stops the producer.
    """
    if depth < 1:
        yield from items
        return
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            put(("error", err))
            return
        put(("end", None))

    worker = threading.Thread(target=produce, name="robustssl-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join(timeout=10.0)


class StreamingLoader(DeviceLoader):
    """`DeviceLoader` (same order, batches and resume) with each epoch's batches made `prefetch`
    batches ahead by a background thread; meant for a streaming source, works with any."""

    def __init__(self, *args: Any, prefetch: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.prefetch = prefetch

    def epoch(self, *args: Any, **kwargs: Any) -> Iterator[Batch]:
        return prefetched(super().epoch(*args, **kwargs), self.prefetch)
