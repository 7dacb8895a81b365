"""The dataset registry (`DATASETS`: one `DatasetSpec` per dataset) and `load_dataset`, which
finds a named dataset on disk (or downloads it) and reads one split.

To add a dataset: a file with its reader and its `DatasetSpec` (or one spec here), and one
line in `DATASETS` (or `register_dataset(spec)` from your own code); docs/design.md, "Adding a
dataset". The config's `data.name` vocabulary, the CLI's help, the normalisation statistics,
the image shapes and the downloads all read the registry.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustssl.data.dataset import ImageDataset
from robustssl.data.download import Archive, download_and_verify, extract_archive, file_md5, manual_download_help
from robustssl.data.readers import SVHN_FILES, DatasetError, read_cifar, read_idx, read_image_folder, read_stl10, read_svhn

__all__ = [
    "DATASETS", "DATASET_NAMES", "DATA_ENV_VAR", "SYSTEM_DATA_DIR", "DatasetSpec", "canonical_name", "data_folder",
    "dataset_names", "dataset_spec", "dataset_stats", "image_folder_split", "image_shape", "load_dataset", "register_dataset",
]

DATA_ENV_VAR = "ROBUSTSSL_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # where Debian's dataset-* packages install

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the package knows about one dataset.

    name: the canonical name (`data.name`); aliases: other spellings (lower case, '-' for '_').
    splits: the split names `read` accepts. read(spec, split, root, download) -> ImageDataset
    (uint8 [N, C, H, W] images, int64 labels or None): reads one split from `root` (None: the
    reader's default place, see `data_folder`), downloading `archives` when `download` is true;
    a miss raises DatasetError naming the folders searched and the fix.
    shape: [C, H, W] of every image (None: the files decide, as for an image folder).
    stats: per-channel (mean, std) of the training images in [0, 1] (None: 0.5 per channel).
    archives: the official files (url, md5, the folder they extract to) the reader downloads.
    classes: class names in label order (informational; readers set the dataset's own).
    resizable: the reader also takes image_size= and channels= (data.image_size, data.channels).
    """

    name: str
    splits: tuple[str, ...]
    read: Callable[..., ImageDataset]
    shape: tuple[int, int, int] | None = None
    stats: Stats | None = None
    aliases: tuple[str, ...] = ()
    archives: tuple[Archive, ...] = ()
    classes: tuple[str, ...] = ()
    resizable: bool = False


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def canonical_name(name: str) -> str:
    """The catalog's spelling of a dataset name ("CIFAR-10" -> "cifar10"); DatasetError listing the valid names otherwise."""
    key = _key(name)
    for spec in DATASETS.values():
        if key == spec.name or key in spec.aliases:
            return spec.name
    raise DatasetError(f"Unknown dataset {name!r}. Valid names: {', '.join(DATASETS)}.")


def dataset_spec(name: str) -> DatasetSpec:
    """The registered spec of a dataset name or alias; DatasetError listing the valid names otherwise."""
    return DATASETS[canonical_name(name)]


def dataset_names() -> list[str]:
    """The canonical names of every registered dataset (the `data.name` vocabulary)."""
    return list(DATASETS)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (from user code or a test); ValueError if a name or alias is taken."""
    taken = {n for s in DATASETS.values() if s.name != spec.name for n in (s.name, *s.aliases)}
    clash = sorted({spec.name, *spec.aliases} & taken)
    if clash or spec.name != _key(spec.name):
        raise ValueError(f"cannot register dataset {spec.name!r}: " + (f"{clash} already name another dataset" if clash
                         else "names are lower case with '-' (no '_' or spaces)"))
    DATASETS[spec.name] = spec
    return spec


def image_shape(name: str) -> tuple[int, int, int] | None:
    """[C, H, W] of a fixed-format dataset's images; None where the files decide ('imagefolder')."""
    return dataset_spec(name).shape


def dataset_stats(name: str, channels: int = 3) -> Stats:
    """(mean, std) per channel for normalising images scaled to [0, 1].

    A dataset without fixed statistics ('imagefolder'): (0.5,) * channels for both, mapping to [-1, 1].
    """
    stats = dataset_spec(name).stats
    return stats if stats is not None else ((0.5,) * channels, (0.5,) * channels)


def _env_root() -> Path | None:
    value = os.environ.get(DATA_ENV_VAR)
    return Path(value).expanduser() if value else None


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise DatasetError(f"{spec.name} has no split {split!r}. Valid splits: {', '.join(spec.splits)}.")


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


def _load_idx(spec: DatasetSpec, split: str, root: str | None, download: bool) -> ImageDataset:
    """MNIST-style idx files (gzipped or not) of `split` in the data folder or its <name>/ subfolder
    (default: /usr/share/datasets/<name>); `download` is not offered for these."""
    key = spec.name
    prefix = {"train": "train", "test": "t10k"}[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    dirs = _idx_search_dirs(key, root)
    for folder in dirs:
        images, labels = _idx_file(folder, stems[0]), _idx_file(folder, stems[1])
        if images is not None and labels is not None:
            return read_idx(images, labels, key, split, classes=list(spec.classes))
    raise DatasetError(
        f"{key} {split} split not found: looked for {stems[0]}[.gz] and {stems[1]}[.gz] in "
        f"{', '.join(str(d) for d in dirs)}{_only_note(root)}. Fix: {_idx_fix(key, root)}"
    )


# ---------------------------------------------------------------- archives (CIFAR, STL-10)


def data_folder(root: str | None) -> Path:
    """The one folder a reader of downloadable data searches: root, else $ROBUSTSSL_DATA, else
    ~/.cache/robustssl (downloads go there)."""
    base, _ = _chosen_base(root)
    return base if base is not None else Path.home() / ".cache" / "robustssl"


def _archive_roots(root: str | None) -> list[Path]:
    return [data_folder(root)]


def _has_folder(base: Path, folder: str) -> bool:
    return (base.name == folder and base.is_dir()) or (base / folder).is_dir()


def _locate_archive_data(spec: DatasetSpec, root: str | None, download: bool) -> Path:
    """A root holding the extracted folder of the spec's (one) archive, extracting or downloading it if needed."""
    key, (archive,) = spec.name, spec.archives
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


def _load_cifar(spec: DatasetSpec, split: str, root: str | None, download: bool) -> ImageDataset:
    return read_cifar(_locate_archive_data(spec, root, download), spec.name, split)


def _load_stl10(spec: DatasetSpec, split: str, root: str | None, download: bool) -> ImageDataset:
    return read_stl10(_locate_archive_data(spec, root, download), split)


def _load_svhn(spec: DatasetSpec, split: str, root: str | None, download: bool) -> ImageDataset:
    """SVHN's <split>_32x32.mat in the data folder or its svhn/ subfolder; downloads go to svhn/.

    A file found there is read as it is (its md5 is checked on download only, as CIFAR's
    extracted folders are not re-hashed); read_svhn checks its variables, shapes and labels."""
    fname = SVHN_FILES[split]
    official = next(a for a in spec.archives if a.filename == fname)
    base = _archive_roots(root)[0]
    folders = [base, base / "svhn"]
    for folder in folders:
        if (folder / fname).is_file():
            return read_svhn(folder / fname, split)
    url, md5 = official.url, official.md5
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
    """Load one split of a registered dataset as an ImageDataset (uint8 [N, C, H, W], int64 labels).

    name: a name or alias in DATASETS. split: one of the spec's splits ('train'/'test';
    'unlabeled' too for stl10); for 'imagefolder' the subfolder of `root` to read
    (root/<split>/<class>/<images>). root: where the data are (config data.root). Exactly one
    place is searched, never a fallback, so a mistyped folder fails instead of silently reading
    other data: root if given, else $ROBUSTSSL_DATA if set, else the reader's default.
    fashion-mnist/mnist look for the idx files (.gz or raw) in that folder and its <name>/
    subfolder (default: /usr/share/datasets/<name>); cifar10/cifar100/stl10 look for the
    extracted archive folder (or the archive) in that folder (default: ~/.cache/robustssl), which
    is also where downloads go; svhn looks for train_32x32.mat / test_32x32.mat in that folder
    and its svhn/ subfolder (downloads go to svhn/). A miss raises DatasetError listing the
    folders searched.
    download: fetch and verify the spec's official archives (SVHN: the split's .mat file) when missing.
    image_size, channels: resizable datasets only ('imagefolder': resize / force 1 or 3 channels).
    """
    spec = dataset_spec(name)
    if not spec.resizable and (image_size is not None or channels is not None):
        raise DatasetError(f"image_size and channels apply to 'imagefolder' only; {spec.name} has a fixed format.")
    if spec.resizable:
        return spec.read(spec, split, root, download, image_size=image_size, channels=channels)
    _check_split(spec, split)
    return spec.read(spec, split, root, download)


def _load_image_folder(spec: DatasetSpec, split: str, root: str | None, download: bool, *, image_size: int | None = None,
                       channels: int | None = None) -> ImageDataset:
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


# ---------------------------------------------------------------- the registry

_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_DIGITS = tuple(str(d) for d in range(10))

# Statistics: per-channel mean/std of the training images in [0, 1], as commonly published.
FASHION_MNIST = DatasetSpec("fashion-mnist", ("train", "test"), _load_idx, (1, 28, 28), ((0.2860,), (0.3530,)),
                            aliases=("fashionmnist",), classes=_FASHION_CLASSES)
MNIST = DatasetSpec("mnist", ("train", "test"), _load_idx, (1, 28, 28), ((0.1307,), (0.3081,)), classes=_DIGITS)
CIFAR10 = DatasetSpec(
    "cifar10", ("train", "test"), _load_cifar, (3, 32, 32), ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    aliases=("cifar-10",),
    archives=(Archive(_TORONTO + "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),),
)
CIFAR100 = DatasetSpec(
    "cifar100", ("train", "test"), _load_cifar, (3, 32, 32), ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    aliases=("cifar-100",),
    archives=(Archive(_TORONTO + "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),),
)
STL10 = DatasetSpec(
    "stl10", ("train", "test", "unlabeled"), _load_stl10, (3, 96, 96), ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    aliases=("stl-10",),
    archives=(Archive("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb",
                      "stl10_binary"),),
)
# SVHN ships as one .mat file per split, not an archive (the md5s are the ones torchvision and other loaders check).
SVHN = DatasetSpec(
    "svhn", ("train", "test"), _load_svhn, (3, 32, 32), ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    archives=(Archive(_SVHN_URL + SVHN_FILES["train"], "e26dedcc434d2e4c54c9b2d4a06d8373", "svhn"),
              Archive(_SVHN_URL + SVHN_FILES["test"], "eb5a983be6a315427106f1b164d9cef3", "svhn")),
    classes=_DIGITS,
)
IMAGE_FOLDER = DatasetSpec("imagefolder", (), _load_image_folder, aliases=("image-folder",), resizable=True)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (FASHION_MNIST, MNIST, CIFAR10, CIFAR100, STL10, SVHN, IMAGE_FOLDER)}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)  # the bundled datasets; dataset_names() lists every registered one
