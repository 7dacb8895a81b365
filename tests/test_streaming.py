"""Streaming training data (data.stream): the same batches, order, resume and weights as the
device-resident dataset, read from real files per batch."""
import threading
from pathlib import Path

import pytest
import torch

from robustssl import api
from robustssl.data import DatasetError, DeviceLoader, StreamingLoader, load_dataset, make_batch, open_stream
from robustssl.data.streaming import HostImages, StreamingImageFolder, prefetched
from robustssl.train.checkpoint import load_checkpoint

from .coreset_runs import run_with_one_selection
from .datafiles import write_fashion_mnist, write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs"), size=16, n_per_class=16, classes=CLASSES)


def _same_batches(a, b):
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert torch.equal(x.positions, y.positions)
        assert torch.equal(x.images, y.images) and x.images.dtype == y.images.dtype == torch.float32
        assert torch.equal(x.labels, y.labels)
        assert (x.weights is None) == (y.weights is None) and (x.weights is None or torch.equal(x.weights, y.weights))


def test_streamed_image_folder_gives_the_device_loaders_batches_and_resumes_mid_epoch(folder):
    data = load_dataset("imagefolder", "train", root=str(folder))
    stream = open_stream("imagefolder", "train", "cpu", root=str(folder))
    assert isinstance(stream, StreamingImageFolder)
    assert (len(stream), stream.num_channels, stream.image_size) == (len(data), data.num_channels, data.image_size)
    assert torch.equal(stream.labels, data.labels) and stream.classes == data.classes == list(CLASSES)
    coreset = torch.arange(3, len(data), 2)  # a coreset: any subset of positions, with weights
    weights = torch.linspace(0.5, 1.5, coreset.numel())
    device, streamed = DeviceLoader(data, 4, seed=7), StreamingLoader(stream, 4, seed=7, prefetch=2)
    for epoch in (0, 3):
        ref = list(device.epoch(coreset, epoch, weights=weights))
        _same_batches(list(streamed.epoch(coreset, epoch, weights=weights)), ref)
        _same_batches(list(streamed.epoch(coreset, epoch, start_batch=2, weights=weights)), ref[2:])
    orders = [torch.cat([b.positions for b in streamed.epoch(coreset, e)]) for e in (0, 3)]
    assert not torch.equal(*orders)  # a new order each epoch


def test_selection_reads_any_positions_from_a_stream(folder):
    data = load_dataset("imagefolder", "train", root=str(folder))
    stream = open_stream("imagefolder", "train", "cpu", root=str(folder), image_size=16, channels=3)
    positions = torch.tensor([40, 2, 2, 17, 0, 33])
    _same_batches([make_batch(stream, positions, groups=2)], [make_batch(data, positions, groups=2)])
    assert torch.equal(stream.gather(positions), data.images[positions])
    with pytest.raises(IndexError, match="0..47"):
        stream.gather(torch.tensor([48]))
    sub = stream.subset(torch.tensor([5, 9, 30]))  # data.train_subset keeps the split's sample ids
    assert torch.equal(sub.indices, torch.tensor([5, 9, 30])) and torch.equal(sub.gather(torch.tensor([1])), data.images[[9]])


def test_a_damaged_file_fails_in_the_batch_that_reads_it_naming_the_file(folder, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    bad = sorted((root / "train" / "bee").iterdir())[0]
    bad.write_bytes(b"not a png")
    # with size and channels given no file is opened up front; the batch holding it fails
    stream = open_stream("imagefolder", "train", "cpu", root=str(root), image_size=16, channels=3)
    loader = StreamingLoader(stream, 8, seed=0, prefetch=2)
    with pytest.raises(DatasetError, match=bad.name):
        list(loader.epoch(torch.arange(len(stream)), 0))
    with pytest.raises(DatasetError, match=bad.name):  # without them, every header is read at once
        open_stream("imagefolder", "train", "cpu", root=str(root))


def test_host_images_stream_other_datasets_batch_by_batch(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=40, n_test=8)
    data = load_dataset("fashion-mnist", "train", root=str(root))
    stream = open_stream("fashion-mnist", "train", "cpu", root=str(root))
    assert isinstance(stream, HostImages) and not stream.pin  # pinned staging is for CUDA devices only
    pos = torch.arange(len(data))
    _same_batches(list(StreamingLoader(stream, 8, seed=1).epoch(pos, 2, start_batch=1)),
                  list(DeviceLoader(data, 8, seed=1).epoch(pos, 2, start_batch=1)))


def test_prefetched_keeps_order_raises_producer_errors_and_stops_when_closed():
    assert list(prefetched(range(50), 3)) == list(range(50)) == list(prefetched(range(50), 0))

    def failing():
        yield 1
        raise ValueError("decode failed")

    got = prefetched(failing(), 2)
    assert next(got) == 1
    with pytest.raises(ValueError, match="decode failed"):
        next(got)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    it = prefetched(endless(), 2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()  # the consumer stops early (a NaN loss, a kill): the thread ends, bounded read-ahead
    assert threading.active_count() == before
    assert len(produced) <= 5 + 2 + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: pinned staging and non_blocking copies")
def test_cuda_stream_reads_into_pinned_memory_and_copies_asynchronously(folder):
    data = load_dataset("imagefolder", "train", root=str(folder))
    stream = open_stream("imagefolder", "train", "cuda", root=str(folder))
    positions = torch.tensor([3, 1, 4, 1, 5])
    assert stream.read(positions).is_pinned()
    got = stream.gather(positions)
    assert got.device.type == "cuda" and torch.equal(got.cpu(), data.images[positions])


def _folder_run(recipe_overrides, folder, run, stream):
    overrides = [
        "data.name=imagefolder", f"data.root={folder}", "model.arch=cnn", "model.width=4", "model.proj_hidden=16",
        "model.proj_out=8", "train.progress=false", "train.log_every_steps=1", "attack.steps=1", "train.device=cpu",
        "augment.grayscale_p=0.0", "data.train_subset=40", f"data.stream={str(stream).lower()}", *recipe_overrides,
    ]
    return run_with_one_selection("acl_fmnist_cpu", run, "rcs", overrides)


def test_streamed_pretraining_with_an_rcs_selection_equals_the_in_memory_run(folder, tmp_path, monkeypatch):
    reads = []
    original = StreamingImageFolder.read

    def counted(self, positions):  # observe that the run reads its batches from the files
        reads.append(positions.numel())
        return original(self, positions)

    monkeypatch.setattr(StreamingImageFolder, "read", counted)
    _folder_run([], folder, tmp_path / "memory", stream=False)
    assert not reads
    _folder_run(["data.prefetch_batches=3"], folder, tmp_path / "stream", stream=True)
    assert sum(reads) > 40  # the training batches and the selection's candidates and validation images
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("memory", "stream"))
    assert torch.equal(a["coreset"]["current"], b["coreset"]["current"])  # the same RCS coreset
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert api.run_config(tmp_path / "stream").data.stream
