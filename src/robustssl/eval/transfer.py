"""Transfer evaluation: probe an encoder pretrained on one dataset on another one.

    robustssl evaluate --run RUN --data cifar100 [--data-root PATH]

The target's train and test splits are brought to the input format the encoder was
pretrained on (its channels and image size):
- fixed-format targets (MNIST, Fashion-MNIST, CIFAR-10/100, STL-10) are read as stored and
  converted in torch (`data.convert`): channels first (1 -> 3 replicated, 3 -> 1 ITU-R 601
  luma), then a bilinear resize (antialiased when shrinking), rounded back to uint8 once;
- an image folder has no format of its own, so its images are decoded directly at the
  encoder's size and channel count by the image-folder reader (Pillow bilinear resize,
  RGB -> L as ITU-R 601 luma), as a pretraining run with data.image_size does.
The encoder keeps its own input normalization (the source dataset's statistics). The
report records both datasets, their shapes and the conversion (`report["transfer"]`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..data.catalog import canonical_name, image_shape, load_dataset
from ..data.convert import convert_dataset, describe_conversion
from ..data.dataset import ImageDataset
from ..data.readers import check_same_classes
from ..errors import ConfigError

__all__ = ["load_transfer_splits", "source_image_shape", "transfer_folder_name"]


def source_image_shape(cfg: RunConfig, in_channels: int) -> tuple[int, int, int]:
    """[C, H, W] of the images the encoder was pretrained on: the source dataset's fixed shape, or for
    an image folder data.image_size, else the size its test images share (read from data.root)."""
    fixed = image_shape(cfg.data.name)
    if fixed is not None:
        return in_channels, fixed[1], fixed[2]
    if cfg.data.image_size is not None:
        return in_channels, cfg.data.image_size, cfg.data.image_size
    from ..run_setup import data_options  # reading the source folder: the run's own data options

    test = load_dataset(cfg.data.name, "test", **data_options(cfg))
    return in_channels, int(test.images.shape[-2]), int(test.images.shape[-1])


def transfer_folder_name(target: str, root: str | None) -> str:
    """The report folder under RUN/transfer/: the dataset name; for an image folder, imagefolder-<folder name>."""
    name = canonical_name(target)
    if name == "imagefolder" and root:
        return f"imagefolder-{Path(root).expanduser().resolve().name}"
    return name


def _shape(d: ImageDataset) -> list[int]:
    return [int(v) for v in d.images.shape[1:]]


def load_transfer_splits(
    cfg: RunConfig, in_channels: int, target: str, root: str | None = None, download: bool = False
) -> tuple[ImageDataset, ImageDataset, dict[str, Any]]:
    """(train, test, record): the target's labelled splits in the encoder's input format, and the
    record the report keeps (source and target dataset, shapes, conversion, normalization).

    cfg: the source run's config (its data section names the source); in_channels: the
    encoder's input channels. root: where the target's files are (None: the usual places,
    as for pretraining). Raises ConfigError for an image folder without a root, DatasetError
    when the target cannot be found or read.
    """
    name = canonical_name(target)
    source = source_image_shape(cfg, in_channels)
    c, h, w = source
    if name == "imagefolder":
        if not root:
            raise ConfigError("--data imagefolder needs --data-root <folder holding train/<class>/<images> and test/<class>/<images>>")
        if h != w:
            raise ConfigError(f"the encoder was pretrained on {h}x{w} images; an image folder can only be decoded at a square size")
        train = load_dataset(name, "train", root=root, image_size=h, channels=c)
        test = load_dataset(name, "test", root=root, image_size=h, channels=c)
        target_shape: list[int] | None = None
        conversion: dict[str, str] = {
            "channels": f"decoded with {c} channel(s) by the image-folder reader (RGB -> L: ITU-R 601 luma)",
            "resize": f"decoded at {h}x{w} by the image-folder reader (Pillow bilinear, aspect ratio not kept)",
        }
    else:
        train = load_dataset(name, "train", root=root, download=download)
        test = load_dataset(name, "test", root=root, download=download)
        target_shape = _shape(train)
        conversion = describe_conversion(source, (target_shape[0], target_shape[1], target_shape[2]))
        train, test = convert_dataset(train, c, (h, w)), convert_dataset(test, c, (h, w))
    check_same_classes(train.classes, test.classes, f"the {name} train split", "its test split",
                       "Give both splits the same class folders (an empty folder is not a class: remove it).")
    record = {
        "source": {"dataset": cfg.data.name, "image_shape": list(source)},
        "target": {"dataset": name, "root": root, "image_shape": target_shape, "evaluated_shape": _shape(test),
                   "classes": len(test.classes) or None},
        "conversion": conversion,
        "normalization": "the encoder's own (the source dataset's statistics)",
    }
    return train, test, record
