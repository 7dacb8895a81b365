"""Small synthetic datasets written in the official on-disk formats, so a check reads them through
the real readers: CIFAR-10/100 as the Python 2 pickles the archives hold, (Fashion-)MNIST as
gzipped idx files, SVHN as MATLAB v5 .mat files, an image folder as PNGs. Used by `robustssl doctor` and the tests.

    root = write_synthetic("cifar10", Path("data"), n_train=2048, n_test=256)
    load_dataset("cifar10", "train", root=str(root))       # root/cifar-10-batches-py/, read as usual

The images are uint8 noise with a bright square whose place (and colour channel) depends on the
class, so a model can learn something; they are not meant to measure accuracy.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import canonical_name, image_shape

__all__ = [
    "CIFAR10_NAMES", "SYNTHETIC_DATASETS", "class_images", "idx_bytes", "py2_pickle", "synthetic_classes",
    "write_cifar_batch", "write_synthetic",
]

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SYNTHETIC_DATASETS = ("cifar10", "cifar100", "fashion-mnist", "mnist", "svhn", "imagefolder")


# ---------------------------------------------------------------- formats
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file's bytes (MNIST's format): big-endian magic, the dimensions, then uint8 data."""
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()


def _py2_str(data: bytes) -> bytes:
    # Python 2 str: SHORT_BINSTRING / BINSTRING; read back as bytes with encoding="bytes"
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def _py2_tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _py2_array(array: np.ndarray) -> bytes:
    """numpy 1.x's own pickling of a uint8 ndarray: _reconstruct, then __setstate__ with the raw bytes."""
    dtype = b"cnumpy\ndtype\n" + _py2_tuple([_py2_str(b"u1"), _py2_int(0), _py2_int(1)]) + b"R"
    dtype += _py2_tuple([_py2_int(3), _py2_str(b"|"), b"N", b"N", b"N", _py2_int(-1), _py2_int(-1), _py2_int(0)]) + b"b"
    new = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_tuple([_py2_int(0)]) + _py2_str(b"b")
    shape = _py2_tuple([_py2_int(d) for d in array.shape])
    state = _py2_tuple([_py2_int(1), shape, dtype, b"\x89", _py2_str(np.ascontiguousarray(array, np.uint8).tobytes())])
    return new + b"\x87R" + state + b"b"


def _py2(obj: Any) -> bytes:
    if isinstance(obj, np.ndarray):
        return _py2_array(obj)
    if isinstance(obj, (bytes, str)):
        return _py2_str(obj.encode() if isinstance(obj, str) else obj)
    if isinstance(obj, int):
        return _py2_int(obj)
    if isinstance(obj, list):
        return b"]" + (b"(" + b"".join(_py2(x) for x in obj) + b"e" if obj else b"")
    if isinstance(obj, dict):
        return b"}" + (b"(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u" if obj else b"")
    raise TypeError(f"py2_pickle cannot write {type(obj).__name__}")


def py2_pickle(obj: Any) -> bytes:
    """`obj` as Python 2's cPickle (protocol 2) wrote the official CIFAR files: str as byte strings and
    numpy arrays via numpy.core.multiarray._reconstruct. Holds dicts, lists, str/bytes, ints, uint8 arrays."""
    return b"\x80\x02" + _py2(obj) + b"."


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], batch_label: str = "batch") -> None:
    """One official-layout CIFAR-10 batch file: data uint8 [N, 3072], labels, batch_label, filenames."""
    batch = {"batch_label": batch_label, "labels": labels, "data": data,
             "filenames": [f"image_{i}.png" for i in range(len(labels))]}
    path.write_bytes(py2_pickle(batch))


# ---------------------------------------------------------------- images
def class_images(n: int, seed: int, shape: tuple[int, int, int], n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, C, H, W], int64 labels [n] in 0..n_classes-1): noise plus a bright square whose
    place and channel depend on the class. shape: (C, H, W)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    images = rng.integers(0, 60, (n, c, h, w)).astype(np.int32)
    side = max(2, min(h, w) // 4)
    for i, k in enumerate(labels):
        r, col = (int(k) * 5) % (h - side), (int(k) * 7) % (w - side)
        images[i, int(k) % c, r : r + side, col : col + side] += 190
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


Split = tuple[np.ndarray, np.ndarray]


def _write_cifar10(root: Path, train: Split, test: Split) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, rows in enumerate(np.array_split(np.arange(len(train[1])), 5)):
        write_cifar_batch(folder / f"data_batch_{i + 1}", train[0][rows].reshape(len(rows), -1), train[1][rows].tolist(),
                          f"training batch {i + 1} of 5")
    write_cifar_batch(folder / "test_batch", test[0].reshape(len(test[1]), -1), test[1].tolist(), "testing batch 1 of 1")
    (folder / "batches.meta").write_bytes(py2_pickle({"num_cases_per_batch": len(train[1]) // 5,
                                                      "label_names": CIFAR10_NAMES, "num_vis": 3072}))


def _write_cifar100(root: Path, train: Split, test: Split) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("test", test)):
        batch = {"filenames": [f"image_{i}.png" for i in range(len(y))], "batch_label": f"{split}ing batch 1 of 1",
                 "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x.reshape(len(y), -1)}
        (folder / split).write_bytes(py2_pickle(batch))
    meta = {"fine_label_names": [f"fine_{k}" for k in range(100)], "coarse_label_names": [f"coarse_{k}" for k in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))


def _write_idx(folder: Path, train: Split, test: Split) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x[:, 0], 2051)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y, 2049)))


def _write_svhn(folder: Path, train: Split, test: Split) -> None:
    import scipy.io as scipy_io  # SVHN's reader needs scipy too

    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("test", test)):
        digits = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)  # SVHN stores the digit 0 as 10
        scipy_io.savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": digits}, do_compression=True)


def _write_image_folder(root: Path, train: Split, test: Split) -> None:
    from PIL import Image  # reading an image folder needs Pillow too

    for split, (x, y) in (("train", train), ("test", test)):
        y = y.copy()
        y[: min(len(y), 10)] = np.arange(min(len(y), 10))  # every class folder holds an image
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
            Image.fromarray(pixels).save(folder / f"{i}.png")


def synthetic_classes(name: str) -> int:
    """The number of classes `write_synthetic` writes for `name` (100 for CIFAR-100, else 10)."""
    return 100 if canonical_name(name) == "cifar100" else 10


def write_synthetic(name: str, root: Path, n_train: int, n_test: int, seed: int = 0,
                    shape: tuple[int, int, int] | None = None) -> Path:
    """Write a synthetic `name` dataset (one of SYNTHETIC_DATASETS) with n_train / n_test images in
    its official file layout under `root`; returns `root`, the folder to pass as data.root.
    shape: (C, H, W) of an image folder's PNGs (root/{train,test}/class_<k>/<i>.png); other
    datasets have their own."""
    key = canonical_name(name)
    if key not in SYNTHETIC_DATASETS:
        raise ValueError(f"no synthetic writer for dataset {key!r}; available: {', '.join(SYNTHETIC_DATASETS)}")
    shape = image_shape(key) if key != "imagefolder" else shape
    if shape is None:
        raise ValueError("a synthetic image folder needs shape=(channels, height, width)")
    n_classes = synthetic_classes(key)
    train, test = class_images(n_train, seed, shape, n_classes), class_images(n_test, seed + 1, shape, n_classes)
    root = Path(root)
    if key == "cifar10":
        _write_cifar10(root, train, test)
    elif key == "cifar100":
        _write_cifar100(root, train, test)
    elif key == "svhn":
        _write_svhn(root, train, test)
    elif key == "imagefolder":
        _write_image_folder(root, train, test)
    else:
        _write_idx(root, train, test)
    return root
