"""SVHN cropped digits: .mat files written in the real layout (scipy.io.savemat) and read back
through load_dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as scipy_io
import torch

from robustssl.data import DatasetError, catalog, dataset_stats, load_dataset
from robustssl.data.catalog import image_shape


@pytest.fixture(autouse=True)
def _isolated_data_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ROBUSTSSL_DATA", raising=False)
    monkeypatch.setattr(catalog.Path, "home", classmethod(lambda cls: tmp_path / "home"))


def _svhn_arrays(n: int, seed: int = 0, label_dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """'X' uint8 [32, 32, 3, N] (row, column, RGB, image) and 'y' [N, 1] in 1..10 (10 = digit 0)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [7], [10], [3], [9]][:n], dtype=label_dtype)
    return x, y


def _write(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, arrays, do_compression=True)  # the official files use compressed elements
    return path


@pytest.mark.parametrize("subfolder", ["", "svhn"])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.float64])
def test_svhn_round_trip_layout_and_labels(tmp_path, subfolder, label_dtype):
    x, y = _svhn_arrays(6, label_dtype=label_dtype)
    x[1, 5, 2, 3] = 201  # row 1, column 5, blue, image 3: a pixel to find again
    _write(tmp_path / subfolder / "train_32x32.mat", X=x, y=y)
    ds = load_dataset("svhn", "train", root=str(tmp_path))
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (6, 3, 32, 32)
    assert int(ds.images[3, 2, 1, 5]) == 201
    assert torch.equal(ds.images, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))
    assert ds.labels.tolist() == [0, 1, 7, 0, 3, 9]  # 10 is the digit 0
    assert ds.labels.dtype == torch.int64 and torch.equal(ds.indices, torch.arange(6))
    assert ds.classes == [str(d) for d in range(10)] and (ds.name, ds.split) == ("svhn", "train")


def test_svhn_test_split_from_env_var(tmp_path, monkeypatch):
    x, y = _svhn_arrays(4, seed=1)
    _write(tmp_path / "env" / "test_32x32.mat", X=x, y=y)
    monkeypatch.setenv("ROBUSTSSL_DATA", str(tmp_path / "env"))
    ds = load_dataset("SVHN", "test")
    assert len(ds) == 4 and ds.split == "test"


def test_svhn_missing_file_names_the_file_places_url_and_md5(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("svhn", "train", root=str(tmp_path))
    msg = str(err.value)
    assert "train_32x32.mat" in msg and str(tmp_path) in msg and str(tmp_path / "svhn") in msg
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg
    assert "e26dedcc434d2e4c54c9b2d4a06d8373" in msg and "data.download=true" in msg
    with pytest.raises(DatasetError, match="no split 'extra'"):
        load_dataset("svhn", "extra", root=str(tmp_path))


def test_svhn_wrong_keys_name_the_missing_and_found_variables(tmp_path):
    x, y = _svhn_arrays(3)
    _write(tmp_path / "train_32x32.mat", images=x, y=y)
    with pytest.raises(DatasetError) as err:
        load_dataset("svhn", "train", root=str(tmp_path))
    msg = str(err.value)
    assert "train_32x32.mat" in msg and "'X'" in msg and "images" in msg


@pytest.mark.parametrize(
    "x,y,match",
    [
        (np.zeros((3, 32, 32, 2), np.uint8), np.ones((2, 1), np.uint8), "uint8 \\[32, 32, 3, N\\]"),
        (np.zeros((32, 32, 3, 2), np.float64), np.ones((2, 1), np.uint8), "uint8 \\[32, 32, 3, N\\]"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.ones((3, 1), np.uint8), "'y' has shape"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[1.0], [2.5]]), "non-integer"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[0], [3]], np.uint8), "label 0 .*1..10"),
        (np.zeros((32, 32, 3, 2), np.uint8), np.array([[11], [3]], np.uint8), "label 11"),
    ],
)
def test_svhn_malformed_contents_are_refused(tmp_path, x, y, match):
    _write(tmp_path / "train_32x32.mat", X=x, y=y)
    with pytest.raises(DatasetError, match=match):
        load_dataset("svhn", "train", root=str(tmp_path))


def test_svhn_truncated_or_foreign_file_is_named(tmp_path):
    x, y = _svhn_arrays(6)
    path = _write(tmp_path / "train_32x32.mat", X=x, y=y)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="train_32x32.mat.*truncated"):
        load_dataset("svhn", "train", root=str(tmp_path))
    path.write_bytes(b"not a matlab file at all " * 10)
    with pytest.raises(DatasetError, match="not a readable MATLAB v5 file"):
        load_dataset("svhn", "train", root=str(tmp_path))


def test_svhn_download_fetches_the_official_file_into_svhn_folder(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest, md5, timeout=60.0, extract=True):
        calls.append((url, Path(dest), md5, extract))
        x, y = _svhn_arrays(2)
        return _write(Path(dest) / url.rsplit("/", 1)[-1], X=x, y=y)

    monkeypatch.setattr(catalog, "download_and_verify", fake_download)
    ds = load_dataset("svhn", "test", root=str(tmp_path), download=True)
    assert len(ds) == 2
    assert calls == [("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", tmp_path / "svhn",
                      "eb5a983be6a315427106f1b164d9cef3", False)]
    load_dataset("svhn", "test", root=str(tmp_path), download=True)  # now on disk: no second download
    assert len(calls) == 1


def test_svhn_catalog_metadata():
    assert "svhn" in catalog.DATASET_NAMES
    assert image_shape("svhn") == (3, 32, 32)
    mean, std = dataset_stats("svhn")
    assert len(mean) == len(std) == 3 and all(0 < v < 1 for v in mean + std)
