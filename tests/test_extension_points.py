"""Two extension points used from outside the package, end to end: a dataset (a `DatasetSpec` with
its own reader of real files on disk) and a selector (a `Selector` with its own `coreset.<name>.*`
settings), each registered from this test module, then pretrained, selected and evaluated
through the API and the CLI exactly as a bundled one."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from robustssl import api
from robustssl.cli import main
from robustssl.config import ConfigError, load_config
from robustssl.coreset.registry import SELECTORS
from robustssl.coreset.selectors import Selection, SelectionMethod, Selector
from robustssl.data import DatasetError, DatasetSpec, ImageDataset, catalog, dataset_stats, load_dataset, register_dataset
from robustssl.data.dataset import ImageSource
from robustssl.settings import positive
from robustssl.train.checkpoint import load_checkpoint

from .datafiles import structured_images, write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.width=4", "optim.batch_size=16", "train.progress=false", "train.log_every_steps=1", "attack.steps=1",
        "eval.n_examples=16", "eval.attacks=[pgd20]", "eval.eps_curve=[]"]


# ---------------------------------------------------------------- a dataset: numpy files, 20x20 grayscale

def write_npy_digits(root: Path, n_train: int = 64, n_test: int = 24) -> Path:
    """<root>/<split>_images.npy (uint8 [N, 20, 20]) and <split>_labels.npy (int64 [N]), numpy's .npy format."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = structured_images(n, seed=seed, size=20)
        np.save(root / f"{split}_images.npy", images)
        np.save(root / f"{split}_labels.npy", labels.astype(np.int64))
    return root


def read_npy_digits(spec: DatasetSpec, split: str, root: str | None, download: bool) -> ImageDataset:
    """The toy reader: the split's two .npy files in `root`; DatasetError naming them when missing."""
    folder = catalog.data_folder(root)  # data.root, else $ROBUSTSSL_DATA, else ~/.cache/robustssl
    images, labels = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    if not images.is_file() or not labels.is_file():
        raise DatasetError(f"{spec.name} {split}: no {images.name} / {labels.name} in {folder}; pass data.root=<their folder>")
    x = torch.from_numpy(np.load(images))[:, None]  # [N, 1, 20, 20]
    y = torch.from_numpy(np.load(labels))
    return ImageDataset(x, y, torch.arange(len(y)), spec.name, split, classes=list(spec.classes))


NPY_DIGITS = DatasetSpec("npy-digits", ("train", "test"), read_npy_digits, shape=(1, 20, 20), stats=((0.3,), (0.4,)),
                         aliases=("npydigits",), classes=tuple(str(d) for d in range(10)))


@pytest.fixture
def npy_digits():
    before = dict(catalog.DATASETS)
    register_dataset(NPY_DIGITS)  # the one registry line, from outside the package
    yield NPY_DIGITS
    catalog.DATASETS.clear()
    catalog.DATASETS.update(before)


def test_unregistered_dataset_is_refused_with_the_valid_names():
    with pytest.raises(ConfigError, match="data.name='npy-digits' is not valid; choose one of: fashion-mnist"):
        load_config("pgd_at_fmnist_cpu", ["data.name=npy-digits"])
    with pytest.raises(DatasetError, match="Unknown dataset 'npy-digits'"):
        load_dataset("npy-digits", "train")


def test_registered_dataset_pretrains_and_evaluates_end_to_end(npy_digits, tmp_path):
    root = write_npy_digits(tmp_path / "npy")
    assert catalog.canonical_name("NPY_Digits") == "npy-digits" and dataset_stats("npydigits") == ((0.3,), (0.4,))
    assert catalog.image_shape("npy-digits") == (1, 20, 20)
    with pytest.raises(DatasetError, match="no split 'val'"):
        load_dataset("npy-digits", "val", root=str(root))
    with pytest.raises(ValueError, match="already name another dataset"):
        register_dataset(DatasetSpec("digits2", ("train",), read_npy_digits, aliases=("npy-digits",)))
    run = tmp_path / "run"
    api.pretrain("pgd_at_fmnist_cpu", run, overrides=TINY + ["data.name=npy-digits", f"data.root={root}", "train.epochs=1",
                                                              "data.train_subset=null", "method.pgd_at.padding=2"])
    summary = json.loads((run / "run.json").read_text())
    assert summary["steps"] == 64 // 16  # every training image of the .npy file, in batches of 16
    report = api.evaluate(run)
    direct = report["protocols"]["direct"]
    assert direct["clean"]["n_examples"] == 16 and 0.0 <= direct["clean"]["accuracy"] <= 1.0
    assert (run / "report.md").is_file()


# ---------------------------------------------------------------- a selector: the first k units of a seeded shuffle, strided

@dataclass
class StrideSettings:
    stride: int = positive(2)  # take every stride-th position of the pool


class StrideSelector(Selector):
    """A toy selector: positions pool[offset::stride][:budget] (sample units), offset = selections so far."""

    name = "stride"
    Settings = StrideSettings
    settings: StrideSettings

    def __init__(self, cfg, seed: int) -> None:
        super().__init__(cfg, seed)
        self.calls = 0

    def select(self, model: torch.nn.Module, method: SelectionMethod, data: ImageSource, pool: torch.Tensor,
               val: torch.Tensor, budget: int, batch_size: int) -> Selection:
        assert method.supervised and method.attack_cfg.steps == 1  # the typed interface, no getattr probing
        picked = pool[self.calls % self.settings.stride :: self.settings.stride][:budget]
        self.calls += 1
        return Selection(picked, torch.full((len(picked),), 2.0))

    def state_dict(self):
        return {**super().state_dict(), "calls": self.calls}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.calls = state["calls"]


@pytest.fixture
def stride_selector(monkeypatch):
    monkeypatch.setitem(SELECTORS, "stride", StrideSelector)  # the one registry line, from outside the package
    return StrideSelector


def test_registered_selector_has_its_own_settings_and_runs_end_to_end(stride_selector, tmp_path, capsys):
    with pytest.raises(ConfigError, match="coreset.stride.stride must be > 0"):
        load_config("pgd_at_fmnist_cpu", ["coreset.selector=stride", "coreset.stride.stride=0"])
    with pytest.raises(ConfigError, match="unknown config key 'coreset.stride.offset'; valid keys here: coreset.stride.stride"):
        load_config("pgd_at_fmnist_cpu", ["coreset.selector=stride", "coreset.stride.offset=1"])
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    run = tmp_path / "run"
    over = TINY + [f"data.root={root}", "train.epochs=2", "coreset.selector=stride", "coreset.stride.stride=3",
                   "coreset.unit=sample", "coreset.fraction=0.25", "coreset.warmup_epochs=1", "coreset.every=1"]
    api.pretrain("pgd_at_fmnist_cpu", run, overrides=over)
    cfg = load_config(run / "config.yaml")
    assert cfg.coreset.selector == "stride" and cfg.coreset.params == StrideSettings(3)  # saved and read back
    state = load_checkpoint(run / "checkpoint.pt")["coreset"]
    assert state["current"].tolist() == list(range(0, 64, 3))[:16]  # epoch 1's selection: pool[0::3][:budget]
    assert state["weights"].tolist() == [2.0] * 16 and state["selector"]["calls"] == 1
    summary = json.loads((run / "run.json").read_text())["coreset"]
    assert summary["selector"] == "stride" and summary["coreset_size"] == 16 and summary["n_selections"] == 1
    # the CLI's select takes the registered selector as a choice and its settings as overrides
    assert main(["select", "--run", str(run), "--selector", "stride", "coreset.stride.stride=2"]) == 0
    assert "selected 16 of 64 images (25.0%, unit sample) with stride" in capsys.readouterr().out
    assert json.loads((run / "selection.json").read_text())["sample_ids"] == list(range(0, 32, 2))
