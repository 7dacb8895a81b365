"""The lr follows fractional epoch progress (issue 18): a coreset run and a full run of the same
config have the same lr at every epoch boundary, warm-up counted in epochs, a method with m updates
per batch sweeps one schedule; runs saved before the epoch clock keep the update clock."""
import itertools
import math

import pytest
import torch
import yaml

from robustssl import api
from robustssl.config import load_config
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.metrics import read_metrics
from robustssl.train.optim import LRSchedule, epoch_lr_factor, lr_factor

from . import tiny
from .datafiles import write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume

TINY = tiny.run("train.log_every_steps=1", batch=16, cnn=True)
CORESET = ["coreset.warmup_epochs=1", "coreset.every=1", "coreset.fraction=0.25"]


def _boundary_lrs(run):
    """The lr set for the first update after each epoch (the epoch line's lr)."""
    return [r["lr"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "epoch"]


def test_a_coreset_run_has_the_full_runs_lr_at_every_epoch_boundary(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    common = TINY + [f"data.root={root}", "train.epochs=4", "optim.warmup_epochs=1.5", *CORESET]
    api.pretrain("simclr_fmnist_cpu", tmp_path / "full", overrides=common)
    api.pretrain("simclr_fmnist_cpu", tmp_path / "random", overrides=[*common, "coreset.method=random"])
    pools = [r["pool_size"] for r in read_metrics(tmp_path / "random" / "metrics.jsonl") if r["type"] == "epoch"]
    assert pools == [64, 16, 16, 16], "the coreset run trains 1 batch per epoch after its warm-up, the full run 4"
    lr = load_config("simclr_fmnist_cpu", common).optim.lr
    full, core = _boundary_lrs(tmp_path / "full"), _boundary_lrs(tmp_path / "random")
    expected = [lr * epoch_lr_factor(e + 1, 4, 1.5, "cosine", 1 / 4) for e in range(4)]
    assert full == pytest.approx(expected, abs=1e-12)
    assert core == pytest.approx(expected, abs=1e-12)  # update-count clock: 0.5 x lr at epoch 2, not 0.85
    # Inside the coreset's first epoch (epoch 1, one batch, warm-up to t = 1.5): the single update ran at t = 1.
    steps = [r for r in read_metrics(tmp_path / "random" / "metrics.jsonl") if r["type"] == "step"]
    assert [r["epoch"] for r in steps] == [0, 0, 0, 0, 1, 2, 3]


def test_m_updates_per_batch_sweep_one_schedule_over_epochs_of_different_length():
    """start_epoch with the epoch's batches, then m steps per batch: each update's lr is the formula at
    t = e + (b + j / m) / batches, monotone after the warm-up, 0 at the end of the run."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    cfg = load_config("cfamc_fmnist_cpu", ["optim.lr=2.0", "optim.warmup_epochs=1"]).optim
    sched = LRSchedule(opt, cfg, epochs=3, full_batches=4, updates_per_batch=3)
    seen, want = [], []
    for epoch, batches in enumerate([4, 2, 1]):  # a full warm-up epoch, then coreset epochs
        sched.start_epoch(epoch, batches)
        for b in range(batches):
            for j in range(3):
                t = epoch + (b + j / 3) / batches
                seen.append(opt.param_groups[0]["lr"])
                want.append(2.0 * epoch_lr_factor(t, 3, 1.0, "cosine", 1 / 12))
                sched.step()
    assert seen == pytest.approx(want, abs=1e-12)
    assert seen[0] == pytest.approx(2.0 / 12) and seen[11] == pytest.approx(2.0)  # warm-up in epochs: 12 updates
    assert all(a >= b for a, b in itertools.pairwise(seen[12:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert sched.updates == 12 + 6 + 3


def test_cfamc_coreset_run_sweeps_one_epoch_schedule_across_its_replays(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=3", "method.cfamc.replays=3", "method.cfamc.n_crops=2",
                        "optim.warmup_epochs=0", "coreset.method=random", *CORESET]
    run = tmp_path / "run"
    api.pretrain("cfamc_fmnist_cpu", run, overrides=overrides)
    lr = load_config("cfamc_fmnist_cpu", overrides).optim.lr
    assert _boundary_lrs(run) == pytest.approx([lr * (1 + math.cos(math.pi * (e + 1) / 3)) / 2 for e in range(3)], abs=1e-12)
    steps = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    # After each batch (3 replays) of a 1-batch coreset epoch the lr is at the next epoch's boundary.
    assert [r["lr"] for r in steps if r["epoch"] >= 1] == pytest.approx(_boundary_lrs(run)[1:], abs=1e-12)
    assert load_checkpoint(run / "checkpoint.pt")["scheduler"]["updates"] == 3 * (4 + 1 + 1)


def test_the_update_clock_reproduces_the_old_schedule_and_reads_its_checkpoints():
    """optim.lr_clock=updates is the schedule of runs made before the epoch clock: the factor of each
    update over the run's real update count, and torch LambdaLR states of their checkpoints load."""
    param = torch.nn.Parameter(torch.zeros(1))
    cfg = load_config("acl_fmnist_cpu", ["optim.lr_clock=updates", "optim.lr=1.0", "optim.warmup_epochs=1"]).optim
    total, full = 4 + 1 + 1, 4
    old_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.LambdaLR(old_opt, lambda s: lr_factor(s, total, full, "cosine"))
    opt = torch.optim.SGD([param], lr=1.0)
    new = LRSchedule(opt, cfg, epochs=3, full_batches=full, total_updates=total)
    for epoch, batches in enumerate([4, 1, 1]):
        new.start_epoch(epoch, batches)
        for _ in range(batches):
            assert opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"]
            old.step()
            new.step()
    resumed = LRSchedule(torch.optim.SGD([param], lr=1.0), cfg, epochs=3, full_batches=full, total_updates=total)
    for _ in range(2):
        old.step()  # a LambdaLR state mid-run
    resumed.load_state_dict(old.state_dict())
    assert resumed.updates == 8 and resumed.get_last_lr() == pytest.approx(old.get_last_lr(), abs=0)


@pytest.mark.slow
def test_a_run_saved_without_the_clock_resumes_on_the_update_clock(tmp_path):
    """A checkpoint and config.yaml written before optim.lr_clock existed (the key removed here) get the
    legacy value `updates`, stated in LEGACY_VALUES, and the resumed run ends as an uninterrupted run
    on that clock."""
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=3", "train.seed=2", "coreset.method=random", *CORESET,
                        "optim.lr_clock=updates"]
    ref, run = tmp_path / "ref", tmp_path / "old"
    pretrain(ref, overrides, recipe="simclr_fmnist_cpu")  # a subprocess, as the killed run (same threads)
    kill_when(run, overrides, "ck['epoch'] >= 2", recipe="simclr_fmnist_cpu")
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["optim"]["lr_clock"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    ck = load_checkpoint(run / "checkpoint.pt")
    del ck["config"]["optim"]["lr_clock"]
    torch.save(ck, run / "checkpoint.pt")
    assert api.run_config(run).optim.lr_clock == "updates"
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt")["model"], load_checkpoint(run / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _boundary_lrs(run)[-1] == pytest.approx(0.0, abs=1e-12)


def test_saved_configs_without_the_new_keys_get_their_legacy_values():
    from robustssl.config import from_dict, to_dict
    from robustssl.train.run_dir import with_legacy_values

    raw = to_dict(load_config("pgd_at_fmnist_cpu"))
    assert raw["optim"]["lr_clock"] == "epochs" and raw["method"]["pgd_at"]["attack_mode"] == "train"
    del raw["optim"]["lr_clock"], raw["method"]["pgd_at"]["attack_mode"]
    old = from_dict(with_legacy_values(raw))
    assert old.optim.lr_clock == "updates" and old.method.params.attack_mode == "eval"
    assert "attack_mode" not in raw["method"]["pgd_at"], "the saved dict itself is left alone"
    assert "fast_at" not in with_legacy_values(raw)["method"], "no settings are made up for another method"
