"""`load_dataset`: find a named dataset on disk (or download it) and read one split."""
from __future__ import annotations

import os
from pathlib import Path

from robustssl.data.dataset import ImageDataset
from robustssl.data.download import ARCHIVES, download_and_verify, extract_archive, file_md5, manual_download_help
from robustssl.data.readers import SVHN_FILES, DatasetError, read_cifar, read_idx, read_image_folder, read_stl10, read_svhn

__all__ = [
    "DATASET_NAMES", "DATA_ENV_VAR", "SYSTEM_DATA_DIR", "canonical_name", "dataset_stats", "image_folder_split", "image_shape",
    "load_dataset",
]

DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "svhn", "imagefolder")
DATA_ENV_VAR = "ROBUSTSSL_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # where Debian's dataset-* packages install

_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
    "image-folder": "imagefolder",
}

# Per-channel mean/std of the training images in [0, 1], as commonly published.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

# Image shape [C, H, W] of the fixed-format datasets (an image folder has none of its own).
_SHAPES: dict[str, tuple[int, int, int]] = {
    "fashion-mnist": (1, 28, 28),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "stl10": (3, 96, 96),
    "svhn": (3, 32, 32),
}

_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_SPLITS = {
    "fashion-mnist": ("train", "test"),
    "mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled"),
    "svhn": ("train", "test"),
}

# SVHN ships as one .mat file per split, not an archive: (url, md5) of each official file
# (the md5s are the ones torchvision and other loaders check).
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3"}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise DatasetError(f"Unknown dataset {name!r}. Valid names: {', '.join(DATASET_NAMES)}.")
    return key


def canonical_name(name: str) -> str:
    """The catalog's spelling of a dataset name ("CIFAR-10" -> "cifar10"); DatasetError listing the valid names otherwise."""
    return _canonical(name)


def image_shape(name: str) -> tuple[int, int, int] | None:
    """[C, H, W] of a fixed-format dataset's images; None for 'imagefolder' (its images decide)."""
    return _SHAPES.get(_canonical(name))


def dataset_stats(name: str, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel for normalising images scaled to [0, 1].

    'imagefolder' has no fixed statistics: (0.5,) * channels for both, mapping to [-1, 1].
    """
    key = _canonical(name)
    if key == "imagefolder":
        return (0.5,) * channels, (0.5,) * channels
    return _STATS[key]


def _env_root() -> Path | None:
    value = os.environ.get(DATA_ENV_VAR)
    return Path(value).expanduser() if value else None


def _check_split(key: str, split: str) -> None:
    if split not in _SPLITS[key]:
        raise DatasetError(f"{key} has no split {split!r}. Valid splits: {', '.join(_SPLITS[key])}.")


# ---------------------------------------------------------------- MNIST-style idx


def _idx_file(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem`.gz inside folder, whichever exists (gzip is detected by content)."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _chosen_base(root: str | None) -> tuple[Path | None, str]:
    """The folder the user chose and the setting that chose it: data.root, else $ROBUSTSSL_DATA.

    A chosen folder is the only place searched: falling back elsewhere would hide a typo
    while the run records the wrong path.
    """
    if root:
        return Path(root).expanduser(), "data.root"
    env = _env_root()
    if env is not None:
        return env, f"${DATA_ENV_VAR}"
    return None, ""


def _idx_search_dirs(key: str, root: str | None) -> list[Path]:
    """root and root/<name>; else $ROBUSTSSL_DATA and its <name>/; else /usr/share/datasets/<name>."""
    base, _ = _chosen_base(root)
    return [base, base / key] if base is not None else [SYSTEM_DATA_DIR / key]


def _idx_fix(key: str, root: str | None) -> str:
    """How to make the idx files findable, for whichever setting chose the searched folders."""
    base, via = _chosen_base(root)
    system = SYSTEM_DATA_DIR / key
    debian = f"`apt-get install -y dataset-{key}` (installs them in {system})" if key == "fashion-mnist" else ""
    if base is None:
        return (
            f"{debian + ', or ' if debian else ''}put the idx files (gzipped or not) in a folder and pass "
            f"data.root=<that folder> (or set {DATA_ENV_VAR} to a folder holding {key}/)."
        )
    system_copy = f"the system copy in {system}" + (f" ({debian})" if debian else "")
    if via == "data.root":
        env = _env_root()
        instead = f"${DATA_ENV_VAR} ({env})" if env is not None else system_copy
        return (
            f"put the idx files (gzipped or not) in {base} or {base / key}, correct data.root=<folder holding "
            f"them>, or remove data.root to use {instead}."
        )
    return (
        f"put the idx files (gzipped or not) in {base} or {base / key}, pass data.root=<folder holding them>, "
        f"or unset {DATA_ENV_VAR} to use {system_copy}."
    )


def _only_note(root: str | None) -> str:
    """Why the search stopped at the chosen folder, so the user does not expect a fallback."""
    _, via = _chosen_base(root)
    return f" (only there, because {via} is set)" if via else ""


def _load_idx(key: str, split: str, root: str | None) -> ImageDataset:
    prefix = _IDX_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    dirs = _idx_search_dirs(key, root)
    for folder in dirs:
        images, labels = _idx_file(folder, stems[0]), _idx_file(folder, stems[1])
        if images is not None and labels is not None:
            classes = _FASHION_CLASSES if key == "fashion-mnist" else [str(d) for d in range(10)]
            return read_idx(images, labels, key, split, classes=classes)
    raise DatasetError(
        f"{key} {split} split not found: looked for {stems[0]}[.gz] and {stems[1]}[.gz] in "
        f"{', '.join(str(d) for d in dirs)}{_only_note(root)}. Fix: {_idx_fix(key, root)}"
    )


# ---------------------------------------------------------------- archives (CIFAR, STL-10)


def _archive_roots(root: str | None) -> list[Path]:
    """The one place for CIFAR/STL data: root, else $ROBUSTSSL_DATA, else ~/.cache/robustssl (downloads go there)."""
    base, _ = _chosen_base(root)
    return [base] if base is not None else [Path.home() / ".cache" / "robustssl"]


def _has_folder(base: Path, folder: str) -> bool:
    return (base.name == folder and base.is_dir()) or (base / folder).is_dir()


def _locate_archive_data(key: str, root: str | None, download: bool) -> Path:
    """A root holding the extracted folder, extracting or downloading the archive if needed."""
    archive = ARCHIVES[key]
    roots = _archive_roots(root)
    for base in roots:
        if _has_folder(base, archive.folder):
            return base
    for base in roots:  # a hand-downloaded archive: verify and extract, no network
        path = base / archive.filename
        if path.is_file():
            if file_md5(path) != archive.md5:
                if download:  # download_and_verify fetches a good copy
                    continue
                raise DatasetError(
                    f"{path} has the wrong md5 (expected {archive.md5}): it is incomplete or not the official "
                    f"archive. Delete it, then {manual_download_help(archive.url, path, archive.md5)}"
                )
            extract_archive(path, base)
            return base
    if download:
        download_and_verify(archive.url, roots[0], archive.md5)
        return roots[0]
    target = roots[0] / archive.filename
    raise DatasetError(
        f"{key} not found: no {archive.folder}/ in {', '.join(str(r) for r in roots)}{_only_note(root)}. "
        f"Fix: correct the folder if it is a typo, pass download=True "
        f"(data.download=true) to fetch it, or {manual_download_help(archive.url, target, archive.md5)}"
    )


# ---------------------------------------------------------------- SVHN (.mat per split)


def _load_svhn(split: str, root: str | None, download: bool) -> ImageDataset:
    """SVHN's <split>_32x32.mat in the data folder or its svhn/ subfolder; downloads go to svhn/.

    A file found there is read as it is (its md5 is checked on download only, as CIFAR's
    extracted folders are not re-hashed); read_svhn checks its variables, shapes and labels."""
    fname = SVHN_FILES[split]
    base = _archive_roots(root)[0]
    folders = [base, base / "svhn"]
    for folder in folders:
        if (folder / fname).is_file():
            return read_svhn(folder / fname, split)
    url, md5 = _SVHN_URL + fname, _SVHN_MD5[split]
    if download:
        return read_svhn(download_and_verify(url, folders[1], md5, extract=False), split)
    raise DatasetError(
        f"svhn {split} split not found: no {fname} in {', '.join(str(f) for f in folders)}{_only_note(root)}. "
        f"Fix: correct the folder if it is a typo, pass download=True (data.download=true) to fetch it, or "
        f"download it by hand from {url} (e.g. `curl -L -o {folders[1] / fname} {url}`; md5 {md5}) and put it "
        f"in one of those folders."
    )


# ---------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    split: str,
    root: str | None = None,
    download: bool = False,
    *,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load one split of a named dataset as an ImageDataset (uint8 [N, C, H, W], int64 labels).

    name: one of DATASET_NAMES. split: 'train'/'test' ('unlabeled' too for stl10); for
    'imagefolder' the subfolder of `root` to read (root/<split>/<class>/<images>).
    root: where the data are (config data.root). Exactly one place is searched, never a
    fallback, so a mistyped folder fails instead of silently reading other data:
    root if given, else $ROBUSTSSL_DATA if set, else the default. fashion-mnist/mnist
    look for the idx files (.gz or raw) in that folder and its <name>/ subfolder (default:
    /usr/share/datasets/<name>); cifar10/cifar100/stl10 look for the extracted archive
    folder (or the archive) in that folder (default: ~/.cache/robustssl), which is also
    where downloads go; svhn looks for train_32x32.mat / test_32x32.mat in that folder and
    its svhn/ subfolder (downloads go to svhn/). A miss raises DatasetError listing the
    folders searched.
    download: fetch and verify the official archive (SVHN: the split's .mat file) when missing.
    image_size, channels: imagefolder only (resize / force 1 or 3 channels).
    """
    key = _canonical(name)
    if key != "imagefolder" and (image_size is not None or channels is not None):
        raise DatasetError(f"image_size and channels apply to 'imagefolder' only; {key} has a fixed format.")
    if key == "imagefolder":
        return _load_image_folder(split, root, image_size, channels)
    _check_split(key, split)
    if key in ("fashion-mnist", "mnist"):
        return _load_idx(key, split, root)
    if key == "svhn":
        return _load_svhn(split, root, download)
    base = _locate_archive_data(key, root, download)
    return read_stl10(base, split) if key == "stl10" else read_cifar(base, key, split)


def _load_image_folder(split: str, root: str | None, image_size: int | None, channels: int | None) -> ImageDataset:
    return read_image_folder(image_folder_split(split, root), split, image_size=image_size, channels=channels)


def image_folder_split(split: str, root: str | None) -> Path:
    """The folder `root/<split>` of an 'imagefolder' dataset; DatasetError naming what exists otherwise."""
    if not root:
        raise DatasetError("'imagefolder' needs a root: pass data.root=<folder holding <split>/<class>/<images>>.")
    base = Path(root).expanduser()
    folder = base / split
    if not folder.is_dir():
        found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise DatasetError(
            f"Split folder {folder} does not exist (subfolders of {base}: {found or 'none'}). "
            f"Create {folder}/<class>/<images> or pick an existing split."
        )
    return folder
