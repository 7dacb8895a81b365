import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from robustssl import api
from robustssl.config import ConfigError
from robustssl.errors import RunError
from robustssl.run_setup import cpu_model
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.metrics import read_metrics
from robustssl.train.trainer import TrainingError

from .datafiles import write_fashion_mnist
from .kill_resume import cli, kill_when, pretrain, resume

TINY = [
    "model.arch=cnn", "model.width=4", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=32",
    "train.progress=false", "train.log_every_steps=1", "attack.steps=2",
]


@pytest.fixture
def data_root(tmp_path):
    return write_fashion_mnist(tmp_path / "fmnist", n_train=200, n_test=40)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_pretrain_writes_run_artifacts(tmp_path, data_root):
    run = tmp_path / "run"
    result = api.pretrain("acl_fmnist_cpu", run, overrides=TINY + [f"data.root={data_root}", "train.epochs=2"])
    assert result.steps == 2 * (200 // 32)
    for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl", "encoder.safetensors", "run.json"):
        assert (run / name).is_file(), name
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert {"augment", "attack", "update", "selection"} <= set(epochs[0]["time"])
    assert epochs[0]["time"]["attack"] > 0
    with pytest.raises(RunError, match="already holds a run"):
        api.pretrain("acl_fmnist_cpu", run, overrides=TINY + [f"data.root={data_root}"])


def test_run_json_records_the_kernels_instruction_set_the_run_used(tmp_path, data_root):
    """The same seed gives other numbers where torch's kernels use another instruction set, so run.json names the
    set this run dispatched to: forced to the portable scalar kernels (ATEN_CPU_CAPABILITY=default, which every
    x86 CPU runs), it must say DEFAULT, not the host's best (AVX2 / AVX512), with the CPU model and threads."""
    run = tmp_path / "run"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}
    subprocess.run(cli("pretrain", "--config", "acl_fmnist_cpu", "--out", str(run), *TINY, f"data.root={data_root}",
                       "train.epochs=1"), check=True, env=env, capture_output=True)
    hw = json.loads((run / "run.json").read_text())["hardware"]
    assert hw == {"device": "cpu", "torch": torch.__version__, "name": cpu_model(), "cpu_capability": "DEFAULT",
                  "cores": os.cpu_count(), "threads": 1}


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_weights(tmp_path, data_root):
    overrides = TINY + [f"data.root={data_root}", "train.epochs=3", "train.checkpoint_every_steps=1", "train.seed=3"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides)
    # Kill mid-epoch, after a step checkpoint of the second epoch exists.
    killed_at = kill_when(run, overrides, "ck['epoch'] == 1 and ck['batch'] >= 2")
    assert killed_at["step"] < 3 * (200 // 32), "the run finished before it could be killed"
    assert not (run / "encoder.safetensors").exists()
    resume(run)
    a, b = _final_weights(ref), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    assert steps == sorted(set(steps)), "the resumed metrics log repeats or skips steps"


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, data_root):
    run = tmp_path / "nan"
    overrides = TINY + [f"data.root={data_root}", "train.epochs=1", "train.checkpoint_every_steps=1", "optim.lr=1.0e30"]
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 0, step \d+.*intact"):
        api.pretrain("simclr_fmnist_cpu", run, overrides=overrides)
    ck = load_checkpoint(run / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    errors = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "error"]
    assert errors and errors[0]["step"] == ck["step"]


def test_bad_config_is_rejected_before_any_work(tmp_path, data_root):
    run = tmp_path / "bad"
    with pytest.raises(ConfigError, match="optim.lrr"):
        api.pretrain("acl_fmnist_cpu", run, overrides=[f"data.root={data_root}", "optim.lrr=1"])
    assert not run.exists()
    proc = subprocess.run(cli("pretrain", "--config", "acl_fmnist_cpu", "--out", str(run), "method.name=byol"), capture_output=True, text=True)
    assert proc.returncode == 2 and "choose one of: simclr, acl" in proc.stderr
    assert not run.exists()


def test_resume_uses_the_runs_own_config(tmp_path, data_root):
    run = tmp_path / "r"
    api.pretrain("simclr_fmnist_cpu", run, overrides=TINY + [f"data.root={data_root}", "train.epochs=1"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["method"]["name"] == "simclr" and saved["data"]["root"] == str(data_root)
    with pytest.raises(ValueError, match="overrides are not allowed"):
        api.pretrain(None, run, overrides=["optim.lr=1"], resume=True)
