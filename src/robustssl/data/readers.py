"""Readers for the real on-disk formats of the supported datasets.

Every reader returns an :class:`ImageDataset` whose images are uint8 [N, C, H, W],
labels int64 [N] (or None) and indices int64 [N] = 0..N-1. Problems with the files
raise :class:`DatasetError`, whose message names the file, what is wrong and the fix.
"""
from __future__ import annotations

import gzip
import importlib
import logging
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustssl.data.dataset import ImageDataset
from robustssl.errors import RobustSSLError

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "check_same_classes", "read_cifar", "read_idx", "read_image_folder", "read_stl10", "read_svhn"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8 data, 3 dims (N, H, W)
_IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8 data, 1 dim (N,)
_IDX_FIX = (
    "Re-download the file (for Fashion-MNIST from the Debian package: "
    "`apt-get install --reinstall -y dataset-fashion-mnist`)."
)
_STL_SIZE = 96
_STL_DEFAULT_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
# Pillow modes that hold one channel; every other mode is decoded as RGB.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class DatasetError(RobustSSLError):
    """A dataset cannot be read; the message names the file/folder, the problem and the fix."""


def _make_dataset(
    images: np.ndarray, labels: np.ndarray | None, name: str, split: str, classes: Sequence[str]
) -> ImageDataset:
    """Wrap uint8 [N, C, H, W] images and integer [N] labels into an ImageDataset."""
    n = images.shape[0]
    if labels is not None:  # readers check per file; this guards any reader that forgets
        _check_label_range(np.asarray(labels), len(classes), f"{name} {split} split", "Fix the label files.")
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        labels=None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        indices=torch.arange(n, dtype=torch.int64),
        name=name,
        split=split,
        classes=list(classes),
    )


def _check_label_range(labels: np.ndarray, n_classes: int, source: str | Path, fix: str, offset: int = 0) -> None:
    """Refuse labels outside offset..offset+n_classes-1: they would index past the classifier's outputs."""
    low, high = offset, offset + n_classes - 1
    bad = np.flatnonzero((labels < low) | (labels > high))
    if bad.size:
        raise DatasetError(
            f"{source} holds label {int(labels[bad[0]])} (position {int(bad[0])}; {bad.size} labels out of range), "
            f"but valid labels are {low}..{high} ({n_classes} classes). The file is corrupt or belongs to another "
            f"dataset. {fix}"
        )


def check_same_classes(expected: Sequence[str], found: Sequence[str], expected_from: str, found_from: str, fix: str) -> None:
    """Refuse two class lists that differ (labels are positions in the list, so a split with one
    more or one other class folder numbers every class differently). Empty lists are not compared.

    expected_from / found_from say where each list comes from ("the run's training classes (RUN/run.json)",
    "the test split FOLDER"); the error names both lists and `fix`."""
    expected, found = list(expected), list(found)
    if not expected or not found or expected == found:
        return
    raise DatasetError(
        f"the class lists differ: {expected_from} has {_class_list(expected)} but {found_from} has "
        f"{_class_list(found)}; labels are positions in these lists, so the accuracies would be wrong. {fix}"
    )


def _class_list(classes: list[str]) -> str:
    shown = ", ".join(repr(c)[1:-1] if isinstance(c, str) else str(c) for c in classes[:12])
    return f"{len(classes)} classes [{shown}{', ...' if len(classes) > 12 else ''}]"


def _require_file(path: Path, fix: str) -> None:
    if not path.is_file():
        raise DatasetError(f"Missing file {path}. {fix}")


# ---------------------------------------------------------------- idx (MNIST, Fashion-MNIST)


def _read_maybe_gzip(path: Path) -> bytes:
    """Whole file content, gunzipped when it starts with the gzip magic (extension ignored)."""
    _require_file(path, _IDX_FIX)
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DatasetError(f"{path} is a corrupt or truncated gzip file ({err}). {_IDX_FIX}") from err


def _parse_idx(path: Path, magic: int, what: str) -> np.ndarray:
    """Parse an idx file of uint8 data; returns an array shaped by its header dims."""
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DatasetError(f"{path} is truncated: {len(data)} bytes, too short for an idx header. {_IDX_FIX}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{path} is not an idx {what} file: magic number {found}, expected {magic}. "
            f"The file is corrupt or the images/labels files are swapped. {_IDX_FIX}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated inside its idx header. {_IDX_FIX}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(
            f"{path} is corrupt or truncated: header says dims {dims} ({expected} bytes) "
            f"but the (decompressed) file has {len(data)} bytes. {_IDX_FIX}"
        )
    # copy: frombuffer views are read-only and torch wants writable memory
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(
    images_path: str | Path,
    labels_path: str | Path,
    name: str,
    split: str,
    classes: Sequence[str] | None = None,
) -> ImageDataset:
    """Read an MNIST-style idx pair (gzip or raw, detected from the magic bytes).

    Returns images uint8 [N, 1, H, W] and labels int64 [N]. `classes` defaults to
    the label values as strings ("0", "1", ...).
    """
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = _parse_idx(images_path, _IDX_IMAGES_MAGIC, "images")
    labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC, "labels")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels: "
            f"the two files come from different splits or one is damaged. {_IDX_FIX}"
        )
    if classes is None:
        classes = [str(c) for c in range(int(labels.max(initial=0)) + 1)]
    _check_label_range(labels, len(classes), labels_path, _IDX_FIX)
    return _make_dataset(images[:, None], labels, name, split, classes)


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100

_CIFAR_LAYOUT = {
    # which: (folder, {split: batch files}, label key, meta file, class-names key, number of classes)
    "cifar10": (
        "cifar-10-batches-py",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        b"labels",
        "batches.meta",
        b"label_names",
        10,
    ),
    "cifar100": (
        "cifar-100-python",
        {"train": ["train"], "test": ["test"]},
        b"fine_labels",
        "meta",
        b"fine_label_names",
        100,
    ),
}

# The only globals the official CIFAR pickles reference (numpy arrays inside dicts of
# bytes/str/int/list); numpy 2 renamed numpy.core to numpy._core, and pickle protocol 5
# stores contiguous arrays through _frombuffer. Anything else could run code.
_CIFAR_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})


def _cifar_folder(root: Path, folder: str) -> Path:
    """Accept both the parent folder and the extracted folder itself as `root`."""
    return root if root.name == folder else root / folder


def _numpy_global(module: str, name: str):
    """Resolve an allowed numpy global under whichever of numpy.core / numpy._core this numpy has."""
    spellings = [module]
    if module.startswith("numpy.core."):  # numpy 1.x pickle: prefer numpy 2's name (no deprecation warning)
        spellings.insert(0, "numpy._core." + module[len("numpy.core."):])
    elif module.startswith("numpy._core."):  # numpy 2.x pickle read by numpy 1.x
        spellings.append("numpy.core." + module[len("numpy._core."):])
    for spelling in spellings:
        try:
            return getattr(importlib.import_module(spelling), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {module}.{name}")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays and plain containers, so a planted file cannot run code."""

    def __init__(self, file, path: Path, fix: str) -> None:
        super().__init__(file, encoding="bytes")  # the official files are Python 2 pickles
        self._path, self._fix = path, fix

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise DatasetError(
                f"{self._path} is not an official CIFAR file: it references {module}.{name}, which CIFAR "
                f"batches never contain, so it was refused without running it. Delete the folder and "
                f"re-download the official archive (data.download=true). {self._fix}"
            )
        return _numpy_global(module, name)


def _load_pickle(path: Path, keys: Sequence[bytes], fix: str) -> dict:
    """Unpickle a CIFAR dict (numpy arrays and plain containers only) and check it has `keys`."""
    _require_file(path, fix)
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, path, fix).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DatasetError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}). {fix}") from err
    missing = [k.decode() for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise DatasetError(f"{path} is not a CIFAR python batch: missing keys {missing}. {fix}")
    return obj


def read_cifar(root: str | Path, which: str, split: str) -> ImageDataset:
    """Read CIFAR-10/100 from the official python-pickle layout.

    `root` is the folder holding `cifar-10-batches-py/` (or `cifar-100-python/`), or that
    folder itself. Returns images uint8 [N, 3, 32, 32] (N = 50000 train, 10000 test),
    labels int64 [N] (CIFAR-100: the 100 fine labels) and the class names.

    Security: the files are Python pickles, which can carry code; they are read with an
    unpickler that admits only numpy arrays/dtypes and plain containers and raises
    DatasetError on any other global. Labels outside the class range raise DatasetError.
    """
    if which not in _CIFAR_LAYOUT:
        raise DatasetError(f"Unknown CIFAR variant {which!r}; use one of {sorted(_CIFAR_LAYOUT)}.")
    if split not in ("train", "test"):
        raise DatasetError(f"{which} has no split {split!r}; use 'train' or 'test'.")
    folder_name, split_files, label_key, meta_file, names_key, n_classes = _CIFAR_LAYOUT[which]
    folder = _cifar_folder(Path(root), folder_name)
    fix = f"Re-extract the official {which} archive so that {folder} holds its files (or use download=True)."
    batches = []
    for fname in split_files[split]:
        batch = _load_pickle(folder / fname, (b"data", label_key), fix)
        _check_label_range(np.asarray(batch[label_key], dtype=np.int64), n_classes, folder / fname, fix)
        batches.append(batch)
    images = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{folder}: {split} batches hold data of shape {images.shape} and {labels.shape[0]} labels; "
            f"expected [N, 3072] and N labels. {fix}"
        )
    meta = _load_pickle(folder / meta_file, (names_key,), fix)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    if len(classes) != n_classes:
        raise DatasetError(
            f"{folder / meta_file} lists {len(classes)} class names under {names_key.decode()!r}; "
            f"{which} has {n_classes}. {fix}"
        )
    return _make_dataset(images.reshape(-1, 3, 32, 32), labels, which, split, classes)


# ---------------------------------------------------------------- STL-10


def _stl_images(path: Path, fix: str) -> np.ndarray:
    """STL-10 *_X.bin -> uint8 [N, 3, 96, 96] (the file stores each channel column-major)."""
    _require_file(path, fix)
    flat = np.fromfile(path, dtype=np.uint8)
    per_image = 3 * _STL_SIZE * _STL_SIZE
    if flat.size == 0 or flat.size % per_image:
        raise DatasetError(
            f"{path} is corrupt or truncated: {flat.size} bytes is not a positive multiple of {per_image} "
            f"(one 3x96x96 image). {fix}"
        )
    # stored as [N, C, W, H]; swapping the last two axes gives row-major [N, C, H, W]
    return flat.reshape(-1, 3, _STL_SIZE, _STL_SIZE).transpose(0, 1, 3, 2)


def _stl_labels(path: Path, n: int, fix: str) -> np.ndarray:
    """STL-10 *_y.bin (uint8, classes 1..10) -> int64 [N] in 0..9."""
    _require_file(path, fix)
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.shape[0] != n:
        raise DatasetError(f"{path} is corrupt: {labels.shape[0]} labels for {n} images. {fix}")
    _check_label_range(labels, len(_STL_DEFAULT_CLASSES), path, fix, offset=1)
    return labels - 1


def _stl_classes(path: Path) -> list[str]:
    # class_names.txt ships with the archive; fall back to the published names if it was lost
    if not path.is_file():
        return list(_STL_DEFAULT_CLASSES)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{path} is not a text file of class names ({err.reason} at byte {err.start}). Delete the file to use "
            "the published names, or re-extract the official archive."
        ) from None
    if len(names) != len(_STL_DEFAULT_CLASSES):
        raise DatasetError(
            f"{path} lists {len(names)} class names; STL-10 has {len(_STL_DEFAULT_CLASSES)}. "
            "Delete the file to use the published names, or re-extract the official archive."
        )
    return names


def read_stl10(root: str | Path, split: str) -> ImageDataset:
    """Read STL-10 from the official binary layout `root/stl10_binary/*.bin`.

    `root` is the folder holding `stl10_binary/`, or that folder itself. Returns images
    uint8 [N, 3, 96, 96] (N = 5000 train, 8000 test, 100000 unlabeled), labels int64 [N]
    in 0..9, or None for the 'unlabeled' split.
    """
    if split not in ("train", "test", "unlabeled"):
        raise DatasetError(f"stl10 has no split {split!r}; use 'train', 'test' or 'unlabeled'.")
    root = Path(root)
    folder = root if root.name == "stl10_binary" else root / "stl10_binary"
    fix = f"Re-extract the official STL-10 archive so that {folder} holds its .bin files (or use download=True)."
    images = _stl_images(folder / f"{split}_X.bin", fix)
    labels = None if split == "unlabeled" else _stl_labels(folder / f"{split}_y.bin", images.shape[0], fix)
    return _make_dataset(images, labels, "stl10", split, _stl_classes(folder / "class_names.txt"))


# ---------------------------------------------------------------- SVHN (cropped digits, .mat)

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_SVHN_CLASSES = [str(d) for d in range(10)]


def _loadmat(path: Path, keys: Sequence[str], fix: str) -> dict:
    """The named variables of a MATLAB v5 file.

    scipy.io.loadmat, not an own parser: the official files store their arrays in zlib-
    compressed elements and MATLAB may save a double array in a narrower integer storage
    type; scipy handles every such variant of the v5 format, and it only decodes arrays
    (no code runs), so the dependency buys correctness on files we cannot test here.
    """
    try:
        from scipy.io import loadmat, whosmat
        from scipy.io.matlab import MatReadError
    except ImportError as err:
        raise DatasetError(f"Reading {path} (MATLAB .mat) needs scipy: run `pip install 'scipy>=1.10'`.") from err
    _require_file(path, fix)
    try:
        data = loadmat(path, variable_names=list(keys))
    except NotImplementedError as err:  # v7.3 files are HDF5
        raise DatasetError(f"{path} is a MATLAB v7.3 (HDF5) file; SVHN's official files are v5 ({err}). {fix}") from err
    except (ValueError, TypeError, OSError, EOFError, zlib.error, MatReadError) as err:
        raise DatasetError(f"{path} ({path.stat().st_size} bytes) is not a readable MATLAB v5 file, or it is truncated ({type(err).__name__}: {err}). {fix}") from err
    missing = [k for k in keys if k not in data]
    if missing:
        found = sorted(name for name, _, _ in whosmat(path))  # loadmat read only the names asked for
        raise DatasetError(f"{path} has no variable(s) {missing} (found {found or 'none'}): it is not an SVHN cropped-digits file. {fix}")
    return data


def read_svhn(path: str | Path, split: str) -> ImageDataset:
    """Read one SVHN cropped-digits file (train_32x32.mat / test_32x32.mat, MATLAB v5).

    The file holds 'X' uint8 [32, 32, 3, N] (row, column, RGB, image) and 'y' [N, 1] in
    1..10, where 10 is the digit 0. Returns images uint8 [N, 3, 32, 32], labels int64 [N] in
    0..9 (label = digit) and classes "0".."9".
    """
    path = Path(path)
    fix = f"Put the official {path.name} from http://ufldl.stanford.edu/housenumbers/ at {path} (or use download=True)."
    data = _loadmat(path, ("X", "y"), fix)
    images, labels = np.asarray(data["X"]), np.asarray(data["y"])
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8:
        raise DatasetError(f"{path}: 'X' is {images.dtype} {list(images.shape)}; SVHN's is uint8 [32, 32, 3, N]. {fix}")
    n = images.shape[3]
    if n == 0:
        raise DatasetError(f"{path} holds no images ('X' is [32, 32, 3, 0]). {fix}")
    if labels.size != n or (labels.ndim == 2 and labels.shape[1] != 1) or labels.ndim > 2:
        raise DatasetError(f"{path}: 'y' has shape {list(labels.shape)} for {n} images; SVHN's is [N, 1]. {fix}")
    labels = labels.reshape(n)
    real = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    if not real or not np.array_equal(labels, np.round(labels)):
        raise DatasetError(f"{path}: 'y' holds non-integer labels ({labels.dtype}). {fix}")
    labels = labels.astype(np.int64)
    _check_label_range(labels, 10, path, fix, offset=1)  # stored as 1..10
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    return _make_dataset(images.transpose(3, 2, 0, 1), labels, "svhn", split, _SVHN_CLASSES)


# ---------------------------------------------------------------- ImageFolder


def _import_pil():
    try:
        from PIL import Image
    except ImportError as err:
        raise DatasetError("Reading an image folder needs Pillow: run `pip install pillow`.") from err
    return Image


# What Pillow raises for a damaged or hostile file: OSError (truncated, unidentified), SyntaxError
# (a broken PNG chunk), ValueError / struct.error / EOFError / zlib.error (bad headers, streams), and
# DecompressionBombError (more than twice Image.MAX_IMAGE_PIXELS pixels; not an OSError).
def _pil_errors(Image) -> tuple[type[BaseException], ...]:
    return (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error, MemoryError, Image.DecompressionBombError)


def _pil_reason(err: BaseException) -> str:
    if type(err).__name__ == "DecompressionBombError":
        return f"{err}; a decompression bomb, or a real image too large to decode"
    return f"{type(err).__name__}: {err}" if isinstance(err, SyntaxError) else str(err)


def _list_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Sorted class folders and the (file, class id) pairs under them, files sorted."""
    if not root.is_dir():
        raise DatasetError(f"Image folder {root} does not exist. Create it as {root}/<class name>/<image files>.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class subfolders; expected {root}/<class name>/<image files>.")
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(
            p for p in (root / cls).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DatasetError(
                f"Class folder {root / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                "Add images or remove the folder."
            )
        samples.extend((f, label) for f in files)
    return classes, samples


def _probe(Image, path: Path) -> tuple[int, tuple[int, int]]:
    """(channels, (width, height)) read from the image header only."""
    try:
        with Image.open(path) as img:
            return (1 if img.mode in _GRAY_MODES else 3), img.size
    except _pil_errors(Image) as err:
        raise DatasetError(f"Cannot read image {path} ({_pil_reason(err)}). Replace or delete the file.") from None


def _decide_channels(found: list[int], files: list[Path], channels: int | None) -> int:
    if channels is not None:
        if channels not in (1, 3):
            raise DatasetError(
                f"channels must be 1 (grayscale) or 3 (RGB), got {channels}. Set data.channels=<1|3>."
            )
        return channels
    # majority wins; a tie goes to RGB because gray -> RGB loses nothing
    chosen = 1 if found.count(1) > found.count(3) else 3
    if len(set(found)) > 1:  # RGB -> gray loses colour, so say which files were converted and how to choose
        gray, rgb = (files[found.index(c)] for c in (1, 3))
        log.warning(
            "Images differ in channels: %s is grayscale (%d files) but %s is RGB (%d files); converting all to "
            "%s (the majority). Set data.channels=<1|3> (load_dataset(channels=...)) to choose.",
            gray, found.count(1), rgb, found.count(3), "grayscale" if chosen == 1 else "RGB",
        )
    return chosen


def _decide_size(sizes: list[tuple[int, int]], files: list[Path], image_size: int | None) -> tuple[int, int]:
    """Target (width, height): the common size, or image_size x image_size when given."""
    if image_size is not None:
        if image_size <= 0:
            raise DatasetError(
                f"image_size must be a positive number of pixels, got {image_size}. Set data.image_size=<N>."
            )
        return image_size, image_size
    for size, path in zip(sizes, files):
        if size != sizes[0]:
            raise DatasetError(
                f"Images differ in size: {files[0]} is {sizes[0][0]}x{sizes[0][1]} but {path} is "
                f"{size[0]}x{size[1]} (width x height). Set data.image_size=<N> (load_dataset(image_size=N)) "
                "to resize every image to NxN, or make all images one size."
            )
    return sizes[0]


def _decode(Image, path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Decode one file to uint8 [H, W, C] in `mode`, resized to `size` if it differs."""
    try:
        with Image.open(path) as img:
            img = img.convert(mode)  # RGBA -> RGB drops alpha; RGB -> L uses ITU-R 601 luma
            if img.size != size:
                # bilinear; Pillow widens the filter when shrinking, so it antialiases
                img = img.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except _pil_errors(Image) as err:
        raise DatasetError(f"Cannot decode image {path} ({_pil_reason(err)}). Replace or delete the file.") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


@dataclass(frozen=True)
class ImageFolderIndex:
    """An ImageFolder tree listed but not decoded: what a reader needs to decode any file.

    files[i] has label labels[i] (int64 [N]); every image decodes to `channels` (1 or 3)
    channels at `size` = (width, height).
    """

    classes: list[str]
    files: list[Path]
    labels: np.ndarray
    channels: int
    size: tuple[int, int]

    def decode(self, i: int) -> np.ndarray:
        """Image i as uint8 [H, W, C] (0..255), converted and resized as the index says."""
        return _decode(_import_pil(), self.files[i], "L" if self.channels == 1 else "RGB", self.size)


def index_image_folder(root: str | Path, image_size: int | None = None, channels: int | None = None,
                       probe: bool = True) -> ImageFolderIndex:
    """List `root/<class>/<image files>` and decide channels and size (see `read_image_folder`).

    probe=False with both image_size and channels given skips reading every file's header
    (a large tree is then listed without opening its files; a damaged file fails when decoded).
    """
    Image = _import_pil()
    root = Path(root)
    classes, samples = _list_image_folder(root)
    files = [f for f, _ in samples]
    labels = np.array([label for _, label in samples], dtype=np.int64)
    if not probe and image_size is not None and channels is not None:
        return ImageFolderIndex(classes, files, labels, _decide_channels([], files, channels),
                                _decide_size([], files, image_size))
    probes = [_probe(Image, f) for f in files]
    c = _decide_channels([p[0] for p in probes], files, channels)
    size = _decide_size([p[1] for p in probes], files, image_size)
    return ImageFolderIndex(classes, files, labels, c, size)


def read_image_folder(
    root: str | Path,
    split_name: str,
    image_size: int | None = None,
    channels: int | None = None,
    name: str = "imagefolder",
) -> ImageDataset:
    """Read an ImageFolder tree `root/<class>/<image files>` decoded with Pillow.

    Classes are the subfolders sorted by name (label = position); files are sorted
    within a class. Returns images uint8 [N, C, H, W] and labels int64 [N].
    Sizes: all images must share one size unless `image_size` is given, which resizes
    every image to image_size x image_size with bilinear resampling (aspect not kept).
    Channels: `channels` (1 or 3) if given, else the mode of the majority of images
    (ties -> RGB); the others are converted, with a warning naming a file of each mode.
    """
    index = index_image_folder(root, image_size, channels)
    width, height = index.size
    shape = (len(index.files), height, width, index.channels)
    try:
        images = np.empty(shape, dtype=np.uint8)
    except MemoryError:
        raise DatasetError(
            f"{root}: {shape[0]} images of {width}x{height}x{shape[3]} need {np.prod(shape, dtype=np.float64) / 2**30:.1f} "
            "GiB of memory, more than this machine has. Pass a smaller data.image_size, or data.stream=true to decode "
            "each batch's files only."
        ) from None
    for i in range(len(index.files)):
        images[i] = index.decode(i)
    return _make_dataset(images.transpose(0, 3, 1, 2), index.labels, name, split_name, index.classes)
