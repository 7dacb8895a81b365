"""Does the RCS greedy do what it claims? A direct check, independent of linear probes.

From one ACL checkpoint (warm-up on the full pool), pick a coreset with RCS and with
random selection, train the same number of steps on each starting from the same weights
and RNG state, then measure the representational divergence RD (the quantity RCS
minimizes) on (a) RCS's own validation split and (b) held-out test images it never saw.
RCS working means lower RD than random on (a); generalizing means lower RD on (b) too.
Repeats over seeds, and over validation-split sizes (--val-fractions).

    python benchmarks/rcs_diagnostic.py --n 4000 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import torch

from robustssl import api
from robustssl.attacks import PGDConfig
from robustssl.config import from_dict, to_dict
from robustssl.coreset.divergence import representational_divergence, virtual_adversarial
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.data import DeviceLoader, load_dataset
from robustssl.methods import build_method
from robustssl.models import build_model
from robustssl.run_setup import load_train_set, model_spec
from robustssl.timer import PhaseTimer
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.optim import build_optimizer


class HeldLR:
    """The checkpoint's learning rate, held for the short training on the coreset (no schedule)."""

    def step(self) -> None:
        pass


def rd(model: torch.nn.Module, x: torch.Tensor, attack: PGDConfig) -> float:
    """RD under RCS's own convention (eval mode; natural on `normal`, adversarial on `pgd`),
    the attack included; the model's mode and branch are left as they were."""
    x_adv = virtual_adversarial(model, x, attack)
    with torch.no_grad():
        return float(representational_divergence(model, x, x_adv))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--train-epochs", type=int, default=2, help="epochs on the coreset after the selection")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--val-fractions", default="0.01,0.05")
    p.add_argument("--unit", default="batch")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(2)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            base = [f"data.train_subset={args.n}", "train.progress=false", f"train.seed={seed}", "optim.batch_size=128",
                    f"train.epochs={args.warmup_epochs}", "train.device=cpu", "train.log_every_steps=1000"]
            api.pretrain("acl_fmnist_cpu", Path(tmp) / "warm", overrides=base)
            ck = load_checkpoint(Path(tmp) / "warm" / "checkpoint.pt")
            for vf in [float(v) for v in args.val_fractions.split(",")]:
                cfg = from_dict(to_dict(api.run_config(Path(tmp) / "warm")),
                                ["coreset.selector=rcs", f"coreset.rcs.val_fraction={vf}", f"coreset.unit={args.unit}",
                                 "coreset.rcs.rd_eps=0.1", "coreset.rcs.rd_alpha=0.04", "coreset.fraction=0.2"])
                data = load_train_set(cfg)
                test = load_dataset(cfg.data.name, "test").images[:1000].float() / 255
                attack = PGDConfig(0.1, 0.04, 3)
                row = {"seed": seed, "val_fraction": vf}
                for arm in ("rcs", "random"):
                    model = build_model(model_spec(cfg, data))
                    model.load_state_dict(ck["model"])
                    c = copy.deepcopy(cfg)
                    c.coreset.selector = arm
                    sched = CoresetSchedule(c.coreset, 1, len(data), cfg.optim.batch_size, seed)
                    # Both arms keep the same validation split out of the pool (random has none by default).
                    rcs_sched = CoresetSchedule(cfg.coreset, 1, len(data), cfg.optim.batch_size, seed)
                    sched.val, sched.pool = rcs_sched.val, rcs_sched.pool
                    method = build_method(cfg, data.image_size, data.num_channels)
                    torch.manual_seed(seed)
                    positions = sched.select(0, model, method, data).positions
                    opt = build_optimizer(model, cfg.optim)
                    opt.load_state_dict(ck["optimizer"])
                    lr = HeldLR()
                    loader, timer = DeviceLoader(data, cfg.optim.batch_size, seed), PhaseTimer()
                    torch.manual_seed(seed + 1)
                    for e in range(args.train_epochs):
                        for batch in loader.epoch(positions, e):
                            method.step(model, opt, lr, batch, timer)
                    x_val = data.images[sched.val].float() / 255
                    torch.manual_seed(0)
                    row[f"{arm}_rd_val"] = rd(model, x_val, attack)
                    torch.manual_seed(0)
                    row[f"{arm}_rd_heldout"] = rd(model, test, attack)
                results.append(row)
                print(json.dumps(row), flush=True)
    print("\nRD after training on the coreset (lower is better), mean over seeds:")
    for vf in sorted({r["val_fraction"] for r in results}):
        rs = [r for r in results if r["val_fraction"] == vf]
        for where in ("val", "heldout"):
            d = [r[f"rcs_rd_{where}"] - r[f"random_rd_{where}"] for r in rs]
            print(f"val_fraction {vf}: {where:8s} RCS {statistics.mean(r[f'rcs_rd_{where}'] for r in rs):.4f}  "
                  f"random {statistics.mean(r[f'random_rd_{where}'] for r in rs):.4f}  RCS-random per seed {[round(v, 4) for v in d]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    for vf in sorted({r["val_fraction"] for r in results}):
        rs = [r for r in results if r["val_fraction"] == vf]
        diff = {w: statistics.mean(r[f"rcs_rd_{w}"] - r[f"random_rd_{w}"] for r in rs) for w in ("val", "heldout")}
        print(f"RESULT val_fraction={vf} rcs_minus_random_rd_val={diff['val']:+.4f} rcs_minus_random_rd_heldout={diff['heldout']:+.4f}")


if __name__ == "__main__":
    main()
