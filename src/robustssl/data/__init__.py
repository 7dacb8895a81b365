"""Datasets: on-disk readers, download/verification, the `load_dataset` catalog, the
device-resident loader and batched on-device augmentation."""
from robustssl.data.augment import AugmentSpec, ContrastiveAugment
from robustssl.data.batch import Batch, make_batch
from robustssl.data.catalog import (
    DATASET_NAMES,
    DATASETS,
    DatasetSpec,
    dataset_names,
    dataset_stats,
    load_dataset,
    register_dataset,
)
from robustssl.data.dataset import ImageDataset
from robustssl.data.loader import DeviceLoader, epoch_order
from robustssl.data.readers import DatasetError
from robustssl.data.streaming import StreamingLoader, open_stream

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "AugmentSpec",
    "Batch",
    "ContrastiveAugment",
    "DatasetError",
    "DatasetSpec",
    "DeviceLoader",
    "ImageDataset",
    "StreamingLoader",
    "dataset_names",
    "dataset_stats",
    "epoch_order",
    "load_dataset",
    "make_batch",
    "open_stream",
    "register_dataset",
]
