"""Dataset readers: each format is written to disk in its real layout and read back."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from robustssl.data import DATASET_NAMES, DatasetError, ImageDataset, catalog, dataset_stats, load_dataset
from robustssl.data.download import Archive, download_and_verify, extract_archive, verify_md5
from robustssl.data.readers import read_cifar, read_idx, read_image_folder, read_stl10

from .datafiles import CIFAR10_NAMES, py2_pickle, write_cifar10, write_cifar_batch, write_fashion_mnist

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch, tmp_path):
    # keep the user's data folders out of every test
    monkeypatch.delenv("ROBUSTSSL_DATA", raising=False)
    monkeypatch.setattr(catalog.Path, "home", classmethod(lambda cls: tmp_path / "home"))


def _check_common(ds: ImageDataset, n: int, shape: tuple[int, ...]) -> None:
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (n, *shape)
    assert ds.indices.dtype == torch.int64 and torch.equal(ds.indices, torch.arange(n))
    if ds.labels is not None:
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)


# ---------------------------------------------------------------- idx


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, data in ((f"{prefix}-images-idx3-ubyte", _idx_bytes(images, 2051)),
                       (f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, 2049))):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def _fake_mnist(n: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_through_load_dataset(tmp_path, gz):
    images, labels = _fake_mnist()
    _write_idx_split(tmp_path, "t10k", images, labels, gz)
    ds = load_dataset("fashion-mnist", "test", root=str(tmp_path))
    _check_common(ds, 7, (1, 28, 28))
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels)
    assert ds.name == "fashion-mnist" and ds.split == "test"
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10


def test_idx_gzip_detected_by_content_not_extension(tmp_path):
    images, labels = _fake_mnist(3)
    (tmp_path / "imgs.raw").write_bytes(gzip.compress(_idx_bytes(images, 2051)))  # gzip without .gz
    (tmp_path / "labels.gz").write_bytes(_idx_bytes(labels, 2049))  # raw despite .gz
    ds = read_idx(tmp_path / "imgs.raw", tmp_path / "labels.gz", "mnist", "train")
    assert np.array_equal(ds.images[:, 0].numpy(), images) and np.array_equal(ds.labels.numpy(), labels)


def test_mnist_train_from_env_var(tmp_path, monkeypatch):
    images, labels = _fake_mnist(5, seed=1)
    _write_idx_split(tmp_path / "mnist", "train", images, labels, gz=True)
    monkeypatch.setenv("ROBUSTSSL_DATA", str(tmp_path))
    ds = load_dataset("mnist", "train")
    assert np.array_equal(ds.images[:, 0].numpy(), images) and ds.classes == [str(d) for d in range(10)]


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_names_the_file(tmp_path, gz):
    images, labels = _fake_mnist()
    data = _idx_bytes(images, 2051)[:-100]
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 2049))
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("fashion-mnist", "test", root=str(tmp_path))
    assert name in str(err.value) and "dataset-fashion-mnist" in str(err.value)


def test_idx_truncated_gzip_stream(tmp_path):
    images, _ = _fake_mnist()
    packed = gzip.compress(_idx_bytes(images, 2051))
    path = tmp_path / "imgs.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DatasetError, match="imgs.gz.*truncated"):
        read_idx(path, path, "mnist", "test")


def test_idx_wrong_magic(tmp_path):
    images, labels = _fake_mnist()
    # images and labels swapped: each file carries the other's magic number
    (tmp_path / "labels").write_bytes(_idx_bytes(images, 2051))
    (tmp_path / "images").write_bytes(_idx_bytes(labels, 2049))
    with pytest.raises(DatasetError, match="magic number 2049, expected 2051"):
        read_idx(tmp_path / "images", tmp_path / "labels", "mnist", "test")


def test_idx_missing_files_names_places_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", "train", root=str(tmp_path / "empty"))
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "empty") in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "data.root=" in msg


@pytest.fixture
def system_fashion(tmp_path, monkeypatch):
    """Valid Fashion-MNIST files in a stand-in for /usr/share/datasets, so a fallback would succeed."""
    system = tmp_path / "system"
    write_fashion_mnist(system / "fashion-mnist", n_train=8, n_test=4)
    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIR", system)
    return system


def test_explicit_root_never_falls_back(tmp_path, monkeypatch, system_fashion):
    write_fashion_mnist(tmp_path / "env" / "fashion-mnist", n_train=8, n_test=4)
    monkeypatch.setenv("ROBUSTSSL_DATA", str(tmp_path / "env"))
    typo = tmp_path / "fashoin"
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", "test", root=str(typo))
    msg = str(err.value)
    assert f"in {typo}, {typo / 'fashion-mnist'} (only there, because data.root is set)" in msg
    assert "correct data.root=" in msg and "remove data.root to use $ROBUSTSSL_DATA" in msg
    assert load_dataset("fashion-mnist", "test").images.shape[0] == 4  # the fallback data were valid


def test_env_var_never_falls_back_to_system(tmp_path, monkeypatch, system_fashion):
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("ROBUSTSSL_DATA", str(env))
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", "train")
    msg = str(err.value)
    assert f"in {env}, {env / 'fashion-mnist'} (only there, because $ROBUSTSSL_DATA is set)" in msg
    assert f"unset ROBUSTSSL_DATA to use the system copy in {system_fashion / 'fashion-mnist'}" in msg
    monkeypatch.delenv("ROBUSTSSL_DATA")
    assert load_dataset("fashion-mnist", "train").images.shape[0] == 8


def test_env_var_folder_itself_may_hold_the_idx_files(tmp_path, monkeypatch):
    images, labels = _fake_mnist(4, seed=2)
    _write_idx_split(tmp_path / "env", "t10k", images, labels, gz=False)
    monkeypatch.setenv("ROBUSTSSL_DATA", str(tmp_path / "env"))
    assert np.array_equal(load_dataset("mnist", "test").images[:, 0].numpy(), images)


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_explicit_root_ignores_installed_fashion_mnist(tmp_path):
    with pytest.raises(DatasetError, match="only there, because data.root is set"):
        load_dataset("fashion-mnist", "train", root=str(tmp_path / "typo"))


def test_idx_label_out_of_range_names_file_value_and_range(tmp_path):
    images, labels = _fake_mnist(5)
    labels[3] = 12
    _write_idx_split(tmp_path, "train", images, labels, gz=True)
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "train", root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in msg
    assert "label 12 (position 3" in msg and "valid labels are 0..9 (10 classes)" in msg


@pytest.mark.skipif(not (REAL_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_test_split():
    ds = load_dataset("fashion-mnist", "test")
    _check_common(ds, 10000, (1, 28, 28))
    assert ds.num_classes == 10 and set(ds.labels.tolist()) == set(range(10))


# ---------------------------------------------------------------- CIFAR


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def _write_cifar10(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    train_x = rng.integers(0, 256, (5 * per_batch, 3072), dtype=np.uint8)
    train_y = rng.integers(0, 10, 5 * per_batch)
    for i in range(5):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        _pickle(folder / f"data_batch_{i + 1}", {b"batch_label": b"x", b"data": train_x[rows],
                                                  b"labels": train_y[rows].tolist(), b"filenames": []})
    test_x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    test_y = np.array([3, 0, 9, 1])
    _pickle(folder / "test_batch", {b"data": test_x, b"labels": test_y.tolist()})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return train_x, train_y, test_x, test_y


def test_cifar10_round_trip(tmp_path):
    train_x, train_y, test_x, test_y = _write_cifar10(tmp_path)
    train = load_dataset("cifar10", "train", root=str(tmp_path))
    _check_common(train, 15, (3, 32, 32))
    assert np.array_equal(train.images.numpy().reshape(15, -1), train_x)
    assert np.array_equal(train.labels.numpy(), train_y)
    test = read_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test")  # extracted folder as root
    _check_common(test, 4, (3, 32, 32))
    # row-major [3, 32, 32]: the first 1024 bytes are the red plane
    assert np.array_equal(test.images[1, 0].numpy(), test_x[1, :1024].reshape(32, 32))
    assert test.labels.tolist() == test_y.tolist()
    assert test.classes[1] == "automobile" and len(test.classes) == 10


def test_cifar100_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    test_x = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    fine = [0, 99, 5, 42, 42, 7]
    _pickle(folder / "test", {b"data": test_x, b"fine_labels": fine, b"coarse_labels": [0] * 6})
    _pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                              b"coarse_label_names": [b"x"] * 20})
    ds = load_dataset("cifar100", "test", root=str(tmp_path))
    _check_common(ds, 6, (3, 32, 32))
    assert np.array_equal(ds.images.numpy().reshape(6, -1), test_x)
    assert ds.labels.tolist() == fine and ds.classes[99] == "c99" and ds.num_classes == 100


def test_cifar_corrupt_pickle(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetError, match="test_batch is corrupt or truncated"):
        load_dataset("cifar10", "test", root=str(tmp_path))


def test_cifar10_official_python2_pickles(tmp_path):
    arrays = write_cifar10(tmp_path, per_batch=3, n_test=4)  # numpy.core._reconstruct, byte strings
    train = load_dataset("cifar10", "train", root=str(tmp_path))
    _check_common(train, 15, (3, 32, 32))
    assert np.array_equal(train.images.numpy().reshape(15, -1), arrays["train_x"])
    assert train.labels.tolist() == arrays["train_y"].tolist() and train.classes == CIFAR10_NAMES
    test = load_dataset("cifar10", "test", root=str(tmp_path))
    assert np.array_equal(test.images.numpy().reshape(4, -1), arrays["test_x"])


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_cifar10_python3_pickles(tmp_path, protocol):
    arrays = write_cifar10(tmp_path)
    x, y = arrays["test_x"], arrays["test_y"].tolist()
    batch = {b"data": np.asfortranarray(x) if protocol == 5 else x, b"labels": y}  # 5: _frombuffer, order F
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    assert np.array_equal(load_dataset("cifar10", "test", root=str(tmp_path)).images.numpy().reshape(4, -1), x)


class _RunsCode:
    """Unpickling this calls exec, which creates the marker file: stands in for any payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("split, fname", [("train", "data_batch_1"), ("test", "batches.meta")])
def test_cifar_pickle_that_runs_code_is_refused(tmp_path, split, fname):
    write_cifar10(tmp_path)
    marker = tmp_path / "code_ran"
    payload = pickle.dumps({b"data": _RunsCode(marker), b"labels": [0], b"label_names": [b"x"]})
    path = tmp_path / "cifar-10-batches-py" / fname
    path.write_bytes(payload)
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", split, root=str(tmp_path))
    msg = str(err.value)
    assert f"{path} is not an official CIFAR file" in msg and "builtins.exec" in msg and "data.download=true" in msg
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: a plain unpickler runs it
    assert marker.exists()


@pytest.mark.parametrize("bad", [10, -1])
def test_cifar_label_out_of_range_names_file_value_and_range(tmp_path, bad):
    arrays = write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    write_cifar_batch(path, arrays["train_x"][6:9], [1, bad, 2])
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", "train", root=str(tmp_path))
    msg = str(err.value)
    assert str(path) in msg and f"label {bad} (position 1" in msg and "valid labels are 0..9" in msg


def test_cifar_meta_with_wrong_class_count(tmp_path):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(py2_pickle({"label_names": CIFAR10_NAMES[:9]}))
    with pytest.raises(DatasetError, match="batches.meta lists 9 class names.*cifar10 has 10"):
        load_dataset("cifar10", "test", root=str(tmp_path))


def test_cifar_missing_gives_download_instructions(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", "train", root=str(tmp_path))
    msg = str(err.value)
    assert "download=True" in msg and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "c58f30108f718f92721af3b95e74349a" in msg and str(tmp_path / "cifar-10-python.tar.gz") in msg


def test_archive_env_var_never_falls_back_to_cache(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "home" / ".cache" / "robustssl")  # the default place, Path.home() is patched
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("ROBUSTSSL_DATA", str(env))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", "test")
    msg = str(err.value)
    assert f"no cifar-10-batches-py/ in {env} (only there, because $ROBUSTSSL_DATA is set)" in msg
    assert str(env / "cifar-10-python.tar.gz") in msg
    monkeypatch.delenv("ROBUSTSSL_DATA")
    assert load_dataset("cifar10", "test").images.shape[0] == 4


def _tar_gz(path: Path, source: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_hand_downloaded_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    staging, root = tmp_path / "staging", tmp_path / "root"
    _, _, test_x, _ = _write_cifar10(staging)
    root.mkdir()
    md5 = _tar_gz(root / "cifar-10-python.tar.gz", staging / "cifar-10-batches-py")
    local = Archive("http://127.0.0.1:9/cifar-10-python.tar.gz", md5, "cifar-10-batches-py")
    monkeypatch.setitem(catalog.DATASETS, "cifar10", dataclasses.replace(catalog.DATASETS["cifar10"], archives=(local,)))
    ds = load_dataset("cifar10", "test", root=str(root))  # no network: the archive is already there
    assert np.array_equal(ds.images.numpy().reshape(4, -1), test_x)
    assert (root / "cifar-10-batches-py" / "batches.meta").is_file()


def test_hand_downloaded_archive_with_wrong_md5(tmp_path):
    (tmp_path / "stl10_binary.tar.gz").write_bytes(b"half a download")
    with pytest.raises(DatasetError, match="wrong md5.*91f7769df0f17e558f3565bffb0c7dfb"):
        load_dataset("stl10", "train", root=str(tmp_path))
    assert not (tmp_path / "stl10_binary").exists()


# ---------------------------------------------------------------- STL-10


def _stl_file(images: np.ndarray) -> bytes:
    # the official files store each channel column-major: [N, C, W, H] in C order
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


def test_stl10_orientation_and_labels(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = np.zeros((2, 3, 96, 96), dtype=np.uint8)
    images[0, 0, 0, 90] = 255  # top-right corner of the red plane: asymmetric under transpose
    images[1, 2, 95, 1] = 7
    images[1, 1, :, :3] = 100  # left stripe
    (folder / "train_X.bin").write_bytes(_stl_file(images))
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    (folder / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")
    ds = load_dataset("stl10", "train", root=str(tmp_path))
    _check_common(ds, 2, (3, 96, 96))
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert ds.images[0, 0, 0, 90] == 255 and ds.images[0, 0, 90, 0] == 0
    assert ds.labels.tolist() == [0, 9] and ds.classes[7] == "monkey"


def test_stl10_unlabeled_has_no_labels(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = np.random.default_rng(4).integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    (folder / "unlabeled_X.bin").write_bytes(_stl_file(images))
    ds = read_stl10(tmp_path, "unlabeled")
    _check_common(ds, 3, (3, 96, 96))
    assert ds.labels is None and torch.equal(ds.images, torch.from_numpy(images)) and len(ds.classes) == 10


def test_stl10_truncated_bin(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "test_X.bin").write_bytes(bytes(3 * 96 * 96 + 5))
    with pytest.raises(DatasetError, match="test_X.bin is corrupt or truncated"):
        read_stl10(tmp_path, "test")


@pytest.mark.parametrize("bad", [0, 11])
def test_stl10_label_out_of_range_names_file_value_and_range(tmp_path, bad):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "train_X.bin").write_bytes(bytes(2 * 3 * 96 * 96))
    (folder / "train_y.bin").write_bytes(bytes([1, bad]))
    with pytest.raises(DatasetError) as err:
        read_stl10(tmp_path, "train")
    assert "train_y.bin" in str(err.value) and f"label {bad} (position 1" in str(err.value)
    assert "valid labels are 1..10" in str(err.value)


def test_stl10_class_names_with_wrong_count(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "test_X.bin").write_bytes(bytes(3 * 96 * 96))
    (folder / "test_y.bin").write_bytes(bytes([4]))
    (folder / "class_names.txt").write_text("airplane\nbird\n")
    with pytest.raises(DatasetError, match="class_names.txt lists 2 class names.*Delete the file"):
        read_stl10(tmp_path, "test")


# ---------------------------------------------------------------- ImageFolder


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    pics = {("dog", "b.png"): rng.integers(0, 256, (8, 10, 3), dtype=np.uint8),
            ("dog", "a.png"): rng.integers(0, 256, (8, 10, 3), dtype=np.uint8),
            ("cat", "z.png"): rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)}
    for (cls, fname), arr in pics.items():
        _save_png(tmp_path / "train" / cls / fname, arr)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", "train", root=str(tmp_path))
    _check_common(ds, 3, (3, 8, 10))  # non-square [C, H, W] keeps H=8, W=10
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 1, 1]
    for i, key in enumerate([("cat", "z.png"), ("dog", "a.png"), ("dog", "b.png")]):
        assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), pics[key])


def test_image_folder_majority_mode_and_resize(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    _save_png(tmp_path / "a" / "1.png", gray)
    _save_png(tmp_path / "a" / "2.png", gray)
    _save_png(tmp_path / "b" / "3.png", np.stack([gray] * 3, axis=-1))
    ds = read_image_folder(tmp_path, "all")
    _check_common(ds, 3, (1, 8, 8))  # majority grayscale
    assert np.array_equal(ds.images[0, 0].numpy(), gray) and np.array_equal(ds.images[2, 0].numpy(), gray)
    rgb = read_image_folder(tmp_path, "all", image_size=4, channels=3)
    _check_common(rgb, 3, (3, 4, 4))
    assert torch.equal(rgb.images[0, 0], rgb.images[0, 2])  # gray -> RGB repeats the plane


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    _save_png(tmp_path / "a" / "1.png", np.zeros((8, 8), dtype=np.uint8))
    _save_png(tmp_path / "a" / "2.png", np.zeros((6, 8), dtype=np.uint8))
    with pytest.raises(DatasetError, match="2.png is 8x6.*image_size"):
        read_image_folder(tmp_path, "all")
    assert read_image_folder(tmp_path, "all", image_size=5).images.shape == (2, 1, 5, 5)


def test_image_folder_size_error_names_both_files_and_config_key(tmp_path):
    _save_png(tmp_path / "a" / "1.png", np.zeros((8, 8), dtype=np.uint8))
    _save_png(tmp_path / "b" / "2.png", np.zeros((8, 5), dtype=np.uint8))
    with pytest.raises(DatasetError) as err:
        read_image_folder(tmp_path, "all")
    msg = str(err.value)
    assert str(tmp_path / "a" / "1.png") in msg and str(tmp_path / "b" / "2.png") in msg
    assert "data.image_size=<N>" in msg
    with pytest.raises(DatasetError, match="data.image_size=<N>"):
        read_image_folder(tmp_path, "all", image_size=0)


def test_image_folder_mixed_channels_warn_with_files_and_config_key(tmp_path, caplog):
    _save_png(tmp_path / "a" / "gray.png", np.zeros((4, 4), dtype=np.uint8))
    _save_png(tmp_path / "a" / "rgb1.png", np.zeros((4, 4, 3), dtype=np.uint8))
    _save_png(tmp_path / "b" / "rgb2.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with caplog.at_level("WARNING", logger="robustssl.data.readers"):
        assert read_image_folder(tmp_path, "all").images.shape == (3, 3, 4, 4)  # majority RGB
    text = caplog.text
    assert str(tmp_path / "a" / "gray.png") in text and str(tmp_path / "a" / "rgb1.png") in text
    assert "converting all to RGB" in text and "data.channels=<1|3>" in text
    with pytest.raises(DatasetError, match=r"data\.channels=<1\|3>"):
        read_image_folder(tmp_path, "all", channels=2)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="needs a root"):
        load_dataset("imagefolder", "train")
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="train does not exist.*val"):
        load_dataset("imagefolder", "train", root=str(tmp_path))
    (tmp_path / "val" / "cls").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset("imagefolder", "val", root=str(tmp_path))
    (tmp_path / "val" / "cls" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset("imagefolder", "val", root=str(tmp_path))


# ---------------------------------------------------------------- catalog


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet", "train")
    assert all(name in str(err.value) for name in DATASET_NAMES)


def test_unknown_split_and_misplaced_options(tmp_path):
    with pytest.raises(DatasetError, match="unlabeled"):
        load_dataset("stl10", "val", root=str(tmp_path))
    with pytest.raises(DatasetError, match="imagefolder"):
        load_dataset("cifar10", "train", root=str(tmp_path), image_size=64)


def test_dataset_stats():
    assert dataset_stats("fashion-mnist") == ((0.2860,), (0.3530,))
    assert dataset_stats("MNIST") == ((0.1307,), (0.3081,))
    for name in ("cifar10", "cifar100", "stl10"):
        mean, std = dataset_stats(name)
        assert len(mean) == len(std) == 3 and all(0 < v < 1 for v in mean + std)
    assert dataset_stats("imagefolder", channels=1) == ((0.5,), (0.5,))
    assert dataset_stats("imagefolder") == ((0.5,) * 3, (0.5,) * 3)


# ---------------------------------------------------------------- download


def test_verify_md5_detects_mismatch(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"robustssl")
    good = hashlib.md5(b"robustssl").hexdigest()
    assert verify_md5(path, good) and verify_md5(path, good.upper())
    assert not verify_md5(path, "0" * 32)
    assert not verify_md5(tmp_path / "absent", good)


def test_download_without_network_gives_manual_instructions(tmp_path):
    url, md5 = "http://127.0.0.1:9/x.tar.gz", "0123456789abcdef0123456789abcdef"
    with pytest.raises(DatasetError) as err:
        download_and_verify(url, tmp_path / "data", md5, timeout=5)
    msg = str(err.value)
    assert url in msg and md5 in msg and str(tmp_path / "data" / "x.tar.gz") in msg
    assert list((tmp_path / "data").iterdir()) == []  # no partial file


def test_download_md5_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "src" / "payload"
    source.mkdir(parents=True)
    (source / "f.txt").write_text("hi")
    _tar_gz(tmp_path / "payload.tar.gz", source)
    with pytest.raises(DatasetError, match="md5"):
        download_and_verify((tmp_path / "payload.tar.gz").as_uri(), tmp_path / "dest", "f" * 32)
    assert list((tmp_path / "dest").iterdir()) == []


def test_download_verify_and_extract(tmp_path):
    source = tmp_path / "src" / "payload"
    source.mkdir(parents=True)
    (source / "f.txt").write_text("hi")
    md5 = _tar_gz(tmp_path / "payload.tar.gz", source)
    archive = download_and_verify((tmp_path / "payload.tar.gz").as_uri(), tmp_path / "dest", md5)
    assert verify_md5(archive, md5) and (tmp_path / "dest" / "payload" / "f.txt").read_text() == "hi"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["payload", "payload.tar.gz"]


def test_extract_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(DatasetError, match="evil.tar.gz"):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists() and list((tmp_path / "dest").iterdir()) == []
