"""Small datasets written in real on-disk formats, read back through robustssl's own readers."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from robustssl.data.synthetic import CIFAR10_NAMES, idx_bytes, py2_pickle, write_cifar_batch


def structured_images(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """10 classes: a bright 7x7 square at a class-specific place, plus noise (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.int32)
    for i, c in enumerate(labels):
        r, col = 3 + 7 * (c // 4) % (size - 7), 3 + 6 * (c % 4)
        images[i, r : r + 7, col : col + 7] += 160
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fashion_mnist(root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """The four Fashion-MNIST idx.gz files (the Debian package's names) with structured images."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = structured_images(n, s)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 2051)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 2049)))
    return root


# ---------------------------------------------------------------- CIFAR (Python 2 pickles, as officially shipped)


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """root/cifar-10-batches-py/ with the official file names and dict layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_x": rng.integers(0, 256, (5 * per_batch, 3072), dtype=np.uint8),
              "train_y": rng.integers(0, 10, 5 * per_batch),
              "test_x": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
              "test_y": rng.integers(0, 10, n_test)}
    batches = {f"data_batch_{i + 1}": slice(i * per_batch, (i + 1) * per_batch) for i in range(5)}
    for fname, rows in batches.items():
        x, y = arrays["train_x"][rows], arrays["train_y"][rows]
        write_cifar_batch(folder / fname, x, y.tolist(), f"training batch {fname[-1]} of 5")
    write_cifar_batch(folder / "test_batch", arrays["test_x"], arrays["test_y"].tolist(), "testing batch 1 of 1")
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return arrays


def colour_images(n: int, seed: int, size: int = 32, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 3, size, size] RGB images: a bright square whose place and colour depend on the class, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    images = rng.integers(0, 60, (n, 3, size, size)).astype(np.int32)
    side = max(2, size // 4)
    for i, c in enumerate(labels):
        r, col = (c * 5) % (size - side), (c * 7) % (size - side)
        images[i, c % 3, r : r + side, col : col + side] += 190
    return np.clip(images, 0, 255).astype(np.uint8), labels


CIFAR100_NAMES = [f"fine_{k}" for k in range(100)]


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """root/cifar-100-python/ (train, test, meta) in the official dict layout, as Python 2 pickles."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = colour_images(n, s, 32, 100)
        batch = {"filenames": [f"image_{i}.png" for i in range(n)], "batch_label": f"{split}ing batch 1 of 1",
                 "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(), "data": images.reshape(n, -1)}
        (folder / split).write_bytes(py2_pickle(batch))
    meta = {"fine_label_names": CIFAR100_NAMES, "coarse_label_names": [f"coarse_{k}" for k in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    return root


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """root/stl10_binary/{train,test}_{X,y}.bin: 3x96x96 images stored column-major per channel, labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = colour_images(n, s, 96, 10)
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    return root


def write_image_folder(root: Path, size: int = 16, n_per_class: int = 6, classes: tuple[str, ...] = ("cat", "dog"),
                       seed: int = 0) -> Path:
    """root/{train,test}/<class>/<i>.png: RGB PNGs of `size` x `size` (needs Pillow)."""
    from PIL import Image

    for split, s in (("train", seed), ("test", seed + 1)):
        images, labels = colour_images(n_per_class * len(classes), s, size, len(classes))
        labels[: len(classes)] = np.arange(len(classes))  # every class folder holds at least one image
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(folder / f"{i}.png")
    return root
