"""ACL step time against its pass-count limit, measured side by side in one run.

An ACL step on a batch of B images makes K attack forward-backward passes and 2 training
forward-backward passes, each over the 2B views. Its lower bound is therefore the time of
(K+2) raw forward-backward passes of the same model on 2B images; the ratio
step / ((K+2) x raw) says how much the rest (augmentation, loss, BN-branch switching,
optimizer) costs on top. Interleaved repeats keep machine noise out of the ratio.

    python benchmarks/acl_step.py                      # CPU: small CNN, Fashion-MNIST-sized input
    python benchmarks/acl_step.py --preset resnet18-cifar --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from robustssl.config import load_config
from robustssl.data import Batch
from robustssl.methods import build_method
from robustssl.models import ModelSpec, build_model
from robustssl.train.optim import build_optimizer, build_scheduler
from robustssl.train.timer import PhaseTimer
from timing import machine, spread, time_it

PRESETS = {
    "cnn-fmnist": dict(arch="cnn", width=16, channels=1, size=28, batch=256, proj=64),
    "resnet18-cifar": dict(arch="resnet18", width=64, channels=3, size=32, batch=512, proj=512),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cnn-fmnist")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5, help="attack steps K")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    pr = PRESETS[args.preset]
    device = torch.device(args.device)
    torch.manual_seed(0)

    cfg = load_config("acl_cifar10" if pr["channels"] == 3 else "acl_fmnist_cpu",
                      [f"attack.steps={args.steps}", f"optim.batch_size={pr['batch']}"])
    spec = ModelSpec(arch=pr["arch"], width=pr["width"], in_channels=pr["channels"], dual_bn=True, proj_hidden=pr["proj"],
                     proj_out=pr["proj"], proj_layers=3, mean=(0.5,) * pr["channels"], std=(0.25,) * pr["channels"])
    model = build_model(spec).to(device)
    method = build_method(cfg, pr["size"], pr["channels"])
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, total_steps=10**9, steps_per_epoch=1)
    batch = Batch(torch.arange(pr["batch"], device=device), torch.rand(pr["batch"], pr["channels"], pr["size"], pr["size"], device=device))
    views = torch.rand(2 * pr["batch"], pr["channels"], pr["size"], pr["size"], device=device)
    timer = PhaseTimer(device)

    def acl_step() -> None:
        method.step(model, opt, sched, batch, timer)

    def raw_pass() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        model(views).sum().backward()

    acl_step(), raw_pass()  # warm-up (allocator, kernels)
    timer.reset()
    step_t, raw_t = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine state
        step_t += time_it(acl_step, device, 1, warmup=0)
        raw_t += time_it(raw_pass, device, 1, warmup=0)
    k = args.steps
    ratios = [s / ((k + 2) * r) for s, r in zip(step_t, raw_t)]
    result = {
        "preset": args.preset, "machine": machine(device), "batch": pr["batch"], "attack_steps": k,
        "step_s": step_t, "raw_pass_s": raw_t, "ratio": ratios, "ratio_median": statistics.median(ratios),
        "phases_s": {name: v / args.repeats for name, v in timer.seconds.items()},
    }
    print(f"machine: {result['machine']}")
    print(f"ACL step ({args.preset}, batch {pr['batch']}, K={k}): {spread(step_t)} s")
    print(f"raw fwd+bwd on {2 * pr['batch']} views:          {spread(raw_t)} s")
    print(f"ratio step / ((K+2) x raw): {spread(ratios)}")
    print("mean phase seconds per step: " + ", ".join(f"{n} {v:.4f}" for n, v in result["phases_s"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"RESULT preset={args.preset} step_s={statistics.median(step_t):.4f} ratio={result['ratio_median']:.2f}")


if __name__ == "__main__":
    main()
