"""Distributed training on CPU: 2 processes (torchrun, gloo) against 1 process on the same global batch.

The scenarios live in tests/ddp_worker.py; one torchrun launch runs them all in 2 processes and
this process runs them again alone as the reference.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from robustssl import dist
from robustssl.data.dataset import ImageDataset
from robustssl.data.loader import DeviceLoader
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.metrics import read_metrics

from . import ddp_worker
from .datafiles import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    """Every scenario's results on rank 0 and rank 1 of one 2-process gloo run."""
    out = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run(torchrun(str(WORKER), str(out)), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_rank() -> dict[str, Any]:
    """The same scenarios in this process alone (the whole global batch on one rank)."""
    assert not dist.is_distributed()
    return {name: fn() for name, fn in ddp_worker.SCENARIOS.items()}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str, rel: float = 1e-4) -> None:
    """Each tensor within `rel` of the reference in norm (fp32 sums in another order differ by ~1e-5;
    a gradient scaled by 1/world_size, or missing other ranks' terms, is off by tens of percent)."""
    assert a.keys() == b.keys(), what
    for k in a:
        if a[k].is_floating_point():
            err = float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp_min(1e-12))
            assert err < rel, f"{what}: {k} differs by {err:.3g} of its norm"
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k}"


@pytest.mark.slow
def test_gather_with_grad_gives_the_one_process_gradient_not_scaled_by_world_size(two_ranks, one_rank):
    ref = one_rank["gather"]
    grad = torch.cat([two_ranks[0]["gather"]["grad"], two_ranks[1]["gather"]["grad"]])
    assert two_ranks[0]["gather"]["loss"] == pytest.approx(ref["loss"], rel=1e-12)
    # A backward without the all-reduce would drop other ranks' terms; an averaging one would halve it.
    assert torch.allclose(grad, ref["grad"], rtol=1e-10, atol=1e-12), (grad / ref["grad"]).flatten()[:4]


@pytest.mark.parametrize("scenario", ["acl", "emp"])
def test_two_process_steps_give_the_one_process_loss_and_gradients(two_ranks, one_rank, scenario):
    """ACL (dual BN, sync BN, NT-Xent gathered in the attack and the loss) and robust EMP-SSL (the
    coding rate of the gathered batch, LARS): 2 steps on 2 ranks equal 1 process on the global batch."""
    ref = one_rank[scenario]
    for r in range(2):
        got = two_ranks[r][scenario]
        for step in range(2):
            assert got["loss"][step] == pytest.approx(ref["loss"][step], rel=1e-5), (scenario, r, step)
            assert_close(got["grads"][step], ref["grads"][step], f"{scenario} rank {r} gradients of step {step}")
            assert_close(got["state"][step], ref["state"][step], f"{scenario} rank {r} weights after step {step}")


def test_a_methods_owned_ema_encoder_is_replicated_under_torchrun(two_ranks, one_rank):
    """DynACL's momentum encoder (an owned module): with sync BN, 2 ranks equal 1 process (model and
    EMA copy); without it, the EMA copy's BN statistics (its own shard's) are averaged like the model's."""
    ref = one_rank["dynacl_ema"]
    for r in range(2):
        got = two_ranks[r]["dynacl_ema"]
        for step in range(2):
            assert got["loss"][step] == pytest.approx(ref["loss"][step], rel=1e-5), (r, step)
            assert_close(got["state"][step], ref["state"][step], f"rank {r} weights after step {step}")
            assert got["parts"][step].keys() == ref["parts"][step].keys() and ref["parts"][step]
            assert_close(got["parts"][step], ref["parts"][step], f"rank {r} EMA encoder after step {step}")
    a, b = two_ranks[0]["dynacl_ema_local_bn"], two_ranks[1]["dynacl_ema_local_bn"]
    for step in range(2):
        for k in a["parts"][step]:
            assert torch.equal(a["parts"][step][k], b["parts"][step][k]), (step, k)


def test_replicas_stay_identical_without_sync_bn(two_ranks):
    """Each rank's BN statistics come from its own shard; averaged after every update, the replicas agree bit for bit."""
    a, b = two_ranks[0]["acl_local_bn"], two_ranks[1]["acl_local_bn"]
    for step in range(2):
        for k in a["state"][step]:
            assert torch.equal(a["state"][step][k], b["state"][step][k]), (step, k)


def test_distributed_selection_equals_single_process_selection(two_ranks, one_rank):
    ref = one_rank["selection"]
    for r in range(2):
        got = two_ranks[r]["selection"]
        # 7 candidates stacked 2 per forward, shared 2 + 2 forwards: the gathered rows are the one-process rows, in order.
        assert torch.allclose(got["grads"], ref["grads"], rtol=1e-5, atol=1e-7), r
        assert torch.equal(got["rcs"], ref["rcs"]), (r, got["rcs"], ref["rcs"])
        assert torch.equal(got["random"], ref["random"]), r
        # ACS: the pool's head gradients (9 batches shared 5 + 4) are the one-process rows, and the coreset the same.
        assert torch.allclose(got["acs_grads"], ref["acs_grads"], rtol=1e-5, atol=1e-7), r
        assert torch.equal(got["gradmatch"], ref["gradmatch"]), r


def test_loader_shards_each_global_batch_in_the_one_process_order():
    data = ImageDataset(torch.zeros(40, 1, 2, 2, dtype=torch.uint8), None, torch.arange(40), "toy", "train")
    positions = torch.arange(3, 40)
    whole = [b.positions for b in DeviceLoader(data, 8, 5).epoch(positions, 2, start_batch=1)]
    shards = [[b.positions for b in DeviceLoader(data, 8, 5, rank=r, world_size=2).epoch(positions, 2, start_batch=1)]
              for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 37 // 8 - 1
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][i], shards[1][i]]), batch)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        DeviceLoader(data, 9, 5, rank=0, world_size=2)


# --- a real run: torchrun + the CLI, killed and resumed --------------------------------------------------
RUN = ["model.width=4", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=32", "train.progress=false",
       "train.log_every_steps=1", "attack.steps=2", "train.device=cpu", "coreset.warmup_epochs=1", "coreset.every=1",
       "coreset.fraction=0.5", "coreset.rcs.rd_steps=1", "train.epochs=3", "train.checkpoint_every_steps=1", "train.seed=3"]


def pretrain_cmd(out: Path, overrides: list[str]) -> list[str]:
    return torchrun("-m", "robustssl.cli", "pretrain", "--config", "acl_rcs_fmnist_cpu", "--out", str(out), *overrides)


def kill_job(agent: int) -> None:
    """SIGKILL torchrun's workers (its children: it starts each in a session of its own, so they
    outlive a kill of the agent alone and would finish the run) and then the agent."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    os.kill(agent, signal.SIGKILL)


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_gives_the_same_weights(tmp_path):
    """ACL on RCS coresets (selected by both ranks): SIGKILL of the whole job inside a coreset
    epoch, then --resume, ends with the weights of an uninterrupted 2-process run."""
    root = write_fashion_mnist(tmp_path / "fmnist", n_train=192, n_test=16)
    overrides = RUN + [f"data.root={root}"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(pretrain_cmd(ref, overrides), env=ENV, check=True, capture_output=True, timeout=300)
    summary = (ref / "run.json").read_text()
    assert '"world_size": 2' in summary and '"n_selections": 2' in summary

    proc = subprocess.Popen(pretrain_cmd(run, overrides), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_at = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        try:
            ck = load_checkpoint(run / "checkpoint.pt")
        except (FileNotFoundError, RuntimeError):
            ck = None
        if ck and ck["epoch"] >= 1 and ck["batch"] >= 1:  # inside a coreset epoch
            kill_job(proc.pid)
            killed_at = ck
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["world_size"] == 2 and len(ck["ranks"]) == 2 and ck["step"] < load_checkpoint(ref / "checkpoint.pt")["step"]
    assert not torch.equal(ck["ranks"][0]["rng"]["torch"], ck["ranks"][1]["rng"]["torch"])
    time.sleep(1.0)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == ck["step"], "a worker outlived the kill and trained on"
    assert not (run / "encoder.safetensors").exists()

    subprocess.run(torchrun("-m", "robustssl.cli", "pretrain", "--out", str(run), "--resume"), env=ENV, check=True,
                   capture_output=True, timeout=300)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["coreset"]["current"], b["coreset"]["current"])
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    assert steps == sorted(set(steps)), "the resumed metrics log repeats or skips steps"
