"""The online robust probe (train.probe_every) and TensorBoard scalars (train.tensorboard), on real tiny runs."""
import itertools
import json
from pathlib import Path

import pytest
import torch

from robustssl import api
from robustssl.config import ConfigError, load_config
from robustssl.data import load_dataset
from robustssl.run_setup import load_train_set
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.metrics import read_metrics
from robustssl.train.probe import draw_slices, probe_due

from .datafiles import write_fashion_mnist
from .kill_resume import kill_when

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.arch=cnn", "model.width=4", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=32",
    "train.progress=false", "train.log_every_steps=1", "attack.steps=2",
]
PROBE = ["train.probe_every=1", "train.probe_train_examples=64", "train.probe_test_examples=32"]
TIMING = ("train_seconds", "probe_seconds")


@pytest.fixture
def data_root(tmp_path):
    return write_fashion_mnist(tmp_path / "fmnist", n_train=200, n_test=40)


def _probes(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "probe"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_probe_due_every_k_epochs_and_the_last():
    assert [e for e in range(7) if probe_due(e, 3, 7)] == [2, 5, 6]
    assert [e for e in range(4) if probe_due(e, 1, 4)] == [0, 1, 2, 3]
    assert not any(probe_due(e, 0, 5) for e in range(5))


def test_probe_records_and_bit_identical_weights(tmp_path, data_root):
    base = TINY + [f"data.root={data_root}", "train.epochs=3", "train.seed=1"]
    with_probe, without = tmp_path / "probe", tmp_path / "plain"
    api.pretrain("acl_fmnist_cpu", with_probe, overrides=base + PROBE[1:] + ["train.probe_every=2"])
    api.pretrain("acl_fmnist_cpu", without, overrides=base + ["train.probe_every=0"])  # the CPU recipes probe by default
    _same_weights(with_probe, without)  # the probe never touches the model or the training RNG stream
    probes = _probes(with_probe)
    assert [p["epoch"] for p in probes] == [1, 2]  # every 2nd epoch and the last
    epochs = {r["epoch"]: r["step"] for r in read_metrics(with_probe / "metrics.jsonl") if r["type"] == "epoch"}
    for p in probes:
        assert set(p) >= {"type", "epoch", "step", "train_seconds", "clean", "robust", "eps", "n", "probe_seconds"}
        assert p["step"] == epochs[p["epoch"]] and p["n"] == 32 and p["eps"] == pytest.approx(0.1)
        assert 0 <= p["robust"] <= p["clean"] <= 1 and p["head"] == "slf" and p["bn_branch"] == "pgd"
    assert not _probes(without)


def test_supervised_probe_uses_its_classifier_on_held_out_images(tmp_path, data_root, capsys):
    sup = ["model.width=4", "optim.batch_size=32", "train.progress=false", "train.log_every_steps=1", "attack.steps=1",
           f"data.root={data_root}", "train.epochs=2", "data.train_subset=150"]
    cfg = load_config("pgd_at_fmnist_cpu", sup + ["train.probe_every=1", "train.probe_test_examples=40"])
    data = load_train_set(cfg)
    slices = draw_slices(cfg, data, torch.arange(len(data)), True, torch.device("cpu"))
    full = load_dataset("fashion-mnist", "train", root=str(data_root))
    assert slices.head is None and slices.x.shape[0] == 40
    assert not set(slices.ids.tolist()) & set(data.indices.tolist())  # never trained on
    assert torch.equal(slices.y, full.labels[slices.ids])
    smaller = draw_slices(load_config("pgd_at_fmnist_cpu", sup + ["train.probe_every=1", "train.probe_test_examples=60"]),
                          data, torch.arange(len(data)), True, torch.device("cpu"))
    assert smaller.x.shape[0] == 50 and not set(smaller.ids.tolist()) & set(data.indices.tolist())  # all 50 held out
    whole = load_config("pgd_at_fmnist_cpu", sup + ["train.probe_every=1", "data.train_subset=200"])
    with pytest.raises(ConfigError, match="leaves none"):
        draw_slices(whole, load_train_set(whole), torch.arange(200), True, torch.device("cpu"))
    capsys.readouterr()
    api.pretrain("pgd_at_fmnist_cpu", tmp_path / "no_held_out", overrides=sup + ["train.probe_every=1", "data.train_subset=200",
                                                                               "train.epochs=1"])
    assert "the online probe (train.probe_every) is off for this run" in capsys.readouterr().out  # the run goes on
    assert not _probes(tmp_path / "no_held_out") and (tmp_path / "no_held_out" / "encoder.safetensors").is_file()
    a, b = tmp_path / "probe", tmp_path / "plain"
    api.pretrain("pgd_at_fmnist_cpu", a, overrides=sup + ["train.probe_every=1", "train.probe_test_examples=40"])
    api.pretrain("pgd_at_fmnist_cpu", b, overrides=sup + ["train.probe_every=0"])
    _same_weights(a, b)
    probes = _probes(a)
    assert [p["head"] for p in probes] == ["direct", "direct"] and probes[0]["n"] == 40


@pytest.mark.slow
def test_probe_records_resume_after_sigkill(tmp_path, data_root):
    overrides = TINY + PROBE + [f"data.root={data_root}", "train.epochs=2", "train.checkpoint_every_steps=1", "train.seed=3"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    api.pretrain("acl_fmnist_cpu", ref, overrides=overrides)
    killed_at = kill_when(run, overrides, "ck['epoch'] == 1 and ck['batch'] >= 2")
    assert killed_at["step"] < 2 * (200 // 32), "the run finished before it could be killed"
    assert [p["epoch"] for p in _probes(run)] == [0]  # the probe of the checkpointed epoch is kept
    api.pretrain(None, run, resume=True)
    _same_weights(ref, run)
    strip = [[{k: v for k, v in p.items() if k not in TIMING} for p in _probes(r)] for r in (ref, run)]
    assert strip[0] == strip[1] and [p["epoch"] for p in strip[1]] == [0, 1]
    seconds = [p["train_seconds"] for p in _probes(run)]
    assert seconds == sorted(seconds)


@pytest.mark.slow
def test_train_seconds_exclude_probe_time(tmp_path, data_root):
    # A probe much slower than an epoch (PGD-80 on 64 images): its time must not reach train_seconds.
    run = tmp_path / "slow_probe"
    api.pretrain("simclr_fmnist_cpu", run, overrides=TINY + [
        f"data.root={data_root}", "train.epochs=3", "train.probe_every=1", "train.probe_attack_steps=80",
        "train.probe_train_examples=64", "train.probe_test_examples=64", "data.train_subset=64"])
    records = read_metrics(run / "metrics.jsonl")
    epochs = {r["epoch"]: r["seconds"] for r in records if r["type"] == "epoch"}
    probes = _probes(run)
    assert len(probes) == 3 and min(p["probe_seconds"] for p in probes) > 2 * max(epochs.values())
    for before, after in itertools.pairwise(probes):
        gap = after["train_seconds"] - before["train_seconds"]  # one epoch (+ a checkpoint), no probe
        assert epochs[after["epoch"]] <= gap < epochs[after["epoch"]] + 0.5 * before["probe_seconds"]
    total = float(json.loads((run / "run.json").read_text())["seconds"])
    assert probes[-1]["train_seconds"] <= total - sum(p["probe_seconds"] for p in probes)


def test_probe_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="train.probe_attack_steps=2 .* cannot reach eval.eps=0.1"):
        load_config("acl_fmnist_cpu", ["train.probe_every=1", "train.probe_attack_steps=2"])
    with pytest.raises(ConfigError, match="train.probe_every"):
        load_config("acl_fmnist_cpu", ["train.probe_every=-1"])


def test_tensorboard_scalars_are_written(tmp_path, data_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    api.pretrain("acl_fmnist_cpu", run, overrides=TINY + PROBE + [f"data.root={data_root}", "train.epochs=2",
                                                                  "train.tensorboard=true"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/loss", "time/attack", "time/update", "probe/robust", "probe/clean"} <= tags
    probes = _probes(run)
    assert [(e.step, e.value) for e in events.Scalars("probe/robust")] == [(p["step"], pytest.approx(p["robust"])) for p in probes]
    assert len(events.Scalars("train/loss")) == 2 * (200 // 32)


def test_tensorboard_missing_is_a_clear_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'robustssl\[tensorboard\]'"):
        load_config("acl_fmnist_cpu", ["train.tensorboard=true"])


def test_knn_probe_is_the_weighted_cosine_knn_on_its_slices(tmp_path, data_root):
    """train.probe_head=knn (the online monitor of solo-learn and lightly): the probe's clean accuracy
    is a weighted cosine kNN (eval.knn.k, eval.knn.temperature) over the head slice's features, recomputed
    here by a plain per-image loop on the exported encoder; the weights are those of a run without probes."""

    base = TINY + [f"data.root={data_root}", "train.epochs=2", "train.seed=3", "eval.knn.k=7", "eval.knn.temperature=0.5"]
    knn_run, plain = tmp_path / "knn", tmp_path / "plain"
    api.pretrain("acl_fmnist_cpu", knn_run, overrides=base + PROBE + ["train.probe_head=knn"])
    api.pretrain("acl_fmnist_cpu", plain, overrides=base + ["train.probe_every=0"])
    _same_weights(knn_run, plain)
    last = _probes(knn_run)[-1]
    assert last["head"] == "knn" and last["epoch"] == 1 and 0 <= last["robust"] <= last["clean"] <= 1
    cfg = load_config(knn_run / "config.yaml")
    data = load_train_set(cfg)
    slices = draw_slices(cfg, data, torch.arange(len(data)), False, torch.device("cpu"))
    encoder = api.load(knn_run / "encoder.safetensors")  # eval mode, the pgd branch the probe uses
    with torch.no_grad():
        bank = torch.nn.functional.normalize(encoder.features(slices.head.images.float() / 255), dim=1)
        test = torch.nn.functional.normalize(encoder.features(slices.x), dim=1)
    correct = 0
    for f, y in zip(test, slices.y):
        sims = bank @ f
        top = sims.topk(7)
        scores = torch.zeros(slices.n_classes)
        for s, i in zip(top.values, top.indices):
            scores[slices.head.labels[i]] += torch.exp(s / 0.5)
        correct += int(scores.argmax() == y)
    assert last["clean"] == pytest.approx(correct / len(slices.y))
