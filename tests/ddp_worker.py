"""Scenarios run by tests/test_ddp.py twice: in 2 processes under torchrun (gloo), and in the test's
own process as the 1-process reference on the same global batch. Each scenario reads only
dist.rank() / dist.world_size(), so the same code is both runs.

As a script (under torchrun): python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py OUT
runs every scenario and saves rank r's results to OUT/rank{r}.pt.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from robustssl import dist
from robustssl.config import load_config
from robustssl.coreset.acs import pool_head_gradients
from robustssl.coreset.embeddings import candidate_gradients
from robustssl.coreset.head import HeadView
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.data.batch import Batch
from robustssl.data.dataset import ImageDataset
from robustssl.methods import Views, build_method
from robustssl.models import ModelSpec, build_model, model_mode
from robustssl.timer import PhaseTimer
from robustssl.train.distributed import prepare_model, replicate
from robustssl.train.optim import build_optimizer, build_scheduler
from robustssl.train.trainer import trained_networks

GLOBAL_BATCH = 8
SIZE = 16
TINY = ["model.arch=cnn", "model.width=4", "data.train_subset=null", "attack.random_start=false", "train.device=cpu"]


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the loader's sharding)."""
    n = x.shape[0] // dist.world_size()
    return x[dist.rank() * n : (dist.rank() + 1) * n]


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def setup(recipe: str, overrides: list[str], sync_bn: bool) -> tuple[Any, Any, Any, Any, Any]:
    """(cfg, model, method, optimizer, scheduler), the model seeded identically everywhere."""
    cfg = load_config(recipe, TINY + overrides)
    torch.manual_seed(0)
    model = build_model(ModelSpec.from_config(cfg.model, 1, (0.5,), (0.25,)))
    prepare_model(model, torch.device("cpu"), sync_bn)
    method = build_method(cfg, SIZE, 1)
    method.attach(model)  # the modules the method owns (DynACL's EMA encoder), as the trainer builds them
    networks = trained_networks(model, method)
    optimizer = build_optimizer(networks, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 100, 10)
    replicate(networks, optimizer, sync_bn)
    return cfg, model, method, optimizer, scheduler


def train_steps(model: Any, method: Any, optimizer: Any, scheduler: Any, steps: int) -> dict[str, Any]:
    """`steps` trainer steps on seeded global batches (this rank's shard); loss, gradients and state after each."""
    out: dict[str, Any] = {"loss": [], "grads": [], "state": []}
    for s in range(steps):
        x = shard(images(GLOBAL_BATCH, 100 + s))
        batch = Batch(torch.arange(len(x)), x)
        with dist.global_batch():
            logs = method.step(model, optimizer, scheduler, batch, PhaseTimer())
        out["loss"].append(dist.mean_values(logs)["loss"])
        out["grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        out["state"].append({k: v.clone() for k, v in model.state_dict().items()})
        out.setdefault("parts", []).append({k: v.clone() for k, v in method.parts.state_dict().items()})
    return out


def acl_steps(sync_bn: bool = True) -> dict[str, Any]:
    """Two ACL steps (dual BN, PGD-2 without random start) with a deterministic augmentation."""
    _, model, method, optimizer, scheduler = setup("acl_fmnist_cpu", ["attack.steps=2", "optim.name=sgd"], sync_bn)
    method.make_views = lambda b: Views([b.images, b.images.flip(3)], groups=b.groups)
    return train_steps(model, method, optimizer, scheduler, 2)


def dynacl_ema_steps(sync_bn: bool) -> dict[str, Any]:
    """Two DynACL steps with a momentum encoder (m = 0.5, an owned EMA copy with its own BN statistics)."""
    _, model, method, optimizer, scheduler = setup("dynacl_fmnist_cpu", ["attack.steps=1", "optim.name=sgd",
                                                                        "method.dynacl.momentum=0.5"], sync_bn)
    method.make_views = lambda b: Views([b.images, b.images.flip(3)], groups=b.groups)
    return train_steps(model, method, optimizer, scheduler, 2)


def emp_steps() -> dict[str, Any]:
    """Two robust EMP-SSL steps (3 crops, PGD-1 in train mode, LARS), deterministic crops."""
    _, model, method, optimizer, scheduler = setup(
        "robust_emp_fmnist_cpu", ["attack.steps=1", "method.robust_emp.n_crops=3", "model.pre_feature=16", "model.proj_hidden=16",
                                  "model.proj_out=8"], True)
    method.make_views = lambda b: Views([b.images, b.images.flip(3), b.images.flip(2)], groups=b.groups)
    return train_steps(model, method, optimizer, scheduler, 2)


def gather_gradient() -> dict[str, Any]:
    """x.grad of this rank's rows for L = sum_i logsumexp_j <x_i, x_j>, each rank summing its own rows' terms."""
    x_all = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = shard(x_all).clone().requires_grad_(True)
    everyone = dist.gather_with_grad(x).reshape(-1, x.shape[1])
    n = x.shape[0]
    mine = everyone[dist.rank() * n : (dist.rank() + 1) * n]
    loss = torch.logsumexp(mine @ everyone.T, dim=1).sum()
    loss.backward()
    assert x.grad is not None
    return {"grad": x.grad.clone(), "loss": dist.mean_scalar(float(loss.detach())) * dist.world_size()}


def selection() -> dict[str, Any]:
    """One RCS selection (batch candidates, 2 stacked per forward) and one random selection on a
    toy pool; the candidates' views deterministic and their attack without random start."""
    cfg, model, method, _, _ = setup("acl_rcs_fmnist_cpu", [
        "attack.steps=1", "model.proj_hidden=16", "model.proj_out=8", "coreset.rcs.val_fraction=0.1", "coreset.rcs.rd_steps=1",
        "coreset.fraction=0.4", "coreset.rcs.candidates_per_forward=2"], False)
    method.make_views = lambda b: Views([b.images, b.images.flip(3)], groups=b.groups)
    g = torch.Generator().manual_seed(9)
    data = ImageDataset(torch.randint(0, 256, (60, 1, SIZE, SIZE), generator=g, dtype=torch.uint8), None,
                        torch.arange(60), "toy", "train")
    out: dict[str, Any] = {}
    for name in ("rcs", "random"):
        cfg.coreset.selector = name
        schedule = CoresetSchedule(cfg.coreset, 4, len(data), 6, 0)
        torch.manual_seed(11)
        schedule.select(0, model, method, data)
        out[name] = schedule.current
    view = HeadView(model, "last")
    units = [torch.arange(i * 6, (i + 1) * 6) for i in range(7)]  # 7 candidates: the shares are uneven
    with model_mode(model, "eval"):
        out["grads"] = candidate_gradients(model, method, data, units, "batch", view, chunk=6, per_forward=2)
    # ACS (supervised PGD-AT, attack without random start): the pool's closed-form gradients, batches shared over ranks
    cfg, model, method, _, _ = setup("pgd_at_fmnist_cpu", ["attack.steps=1", "coreset.selector=gradmatch",
                                                           "coreset.fraction=0.3"], False)
    labelled = ImageDataset(data.images, torch.arange(60) % 10, data.indices, "toy", "train")
    out["acs_grads"] = pool_head_gradients(model, method, labelled, torch.arange(60), 7)[0]  # 9 batches, uneven shares
    schedule = CoresetSchedule(cfg.coreset, 4, len(labelled), 7, 0)
    schedule.select(0, model, method, labelled)
    out["gradmatch"] = schedule.current
    return out


SCENARIOS = {"acl": acl_steps, "acl_local_bn": lambda: acl_steps(sync_bn=False), "emp": emp_steps, "gather": gather_gradient,
             "selection": selection, "dynacl_ema": lambda: dynacl_ema_steps(sync_bn=True),
             "dynacl_ema_local_bn": lambda: dynacl_ema_steps(sync_bn=False)}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    results = {name: fn() for name, fn in SCENARIOS.items()}
    torch.save(results, out / f"rank{dist.rank()}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
