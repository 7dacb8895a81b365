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


# ---------------------------------------------------------------- CIFAR (Python 2 pickles, as officially shipped)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


def _py2(obj) -> bytes:
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


def py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle (protocol 2) wrote the official CIFAR files: str as byte strings and
    numpy arrays via numpy.core.multiarray._reconstruct. Holds dicts, lists, str/bytes, ints, uint8 arrays."""
    return b"\x80\x02" + _py2(obj) + b"."


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


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], batch_label: str = "batch") -> None:
    """One official-layout CIFAR-10 batch file: data uint8 [N, 3072], labels, batch_label, filenames."""
    batch = {"batch_label": batch_label, "labels": labels, "data": data,
             "filenames": [f"image_{i}.png" for i in range(len(labels))]}
    path.write_bytes(py2_pickle(batch))
