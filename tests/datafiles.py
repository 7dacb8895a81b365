"""Small datasets written in real on-disk formats, read back through robustssl's own readers."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()


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
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images, 2051)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels, 2049)))
    return root
