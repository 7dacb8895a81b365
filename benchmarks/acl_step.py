"""ACL step time against its pass-count limit, and the speed switches side by side, in one run.

An ACL step on a batch of B images makes K attack forward-backward passes and 2 training
forward-backward passes, each over the 2B views. Its lower bound is therefore the time of
(K+2) raw forward-backward passes of the same model on 2B images; the ratio
step / ((K+2) x raw) says how much the rest (augmentation, loss, BN-branch switching,
optimizer) costs on top. Interleaved repeats keep machine noise out of the ratio.

Variants (`--variants`): `fp32` (the default training), `bf16` (train.bf16), `channels_last`
(train.channels_last), `compile` (train.compile), each alone, each with its own model built
from the same seed and set up by `train.accelerate`. Every variant's step and raw pass
(under the same switches) are timed in each repeat, so `speedup` = fp32 step / variant step
compares runs that saw the same machine state.

    python benchmarks/acl_step.py                      # CPU: small CNN, Fashion-MNIST-sized input
    python benchmarks/acl_step.py --preset resnet18-cifar --device cuda
    python benchmarks/acl_step.py --variants fp32,bf16 --batch 64 --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch

from robustssl.config import load_config
from robustssl.data import Batch
from robustssl.methods import build_method
from robustssl.models import ModelSpec, build_model
from robustssl.timer import TIMING_MODES, PhaseTimer
from robustssl.train.accelerate import accelerate
from robustssl.train.optim import build_optimizer, build_scheduler
from timing import machine, spread, time_it

PRESETS = {
    "cnn-fmnist": dict(arch="cnn", width=16, channels=1, size=28, batch=256, proj=64),
    "resnet18-cifar": dict(arch="resnet18", width=64, channels=3, size=32, batch=512, proj=512),
}
SWITCHES = {
    "fp32": {},
    "bf16": {"bf16": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}


def build_variant(name: str, pr: dict[str, Any], cfg: Any, device: torch.device, timing: str,
                  batch: Batch, views: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None], PhaseTimer]:
    """(one ACL step, one raw train-mode forward+backward on 2B views, the step's phase timer) of a variant."""
    torch.manual_seed(0)
    spec = ModelSpec(arch=pr["arch"], width=pr["width"], in_channels=pr["channels"], dual_bn=True, proj_hidden=pr["proj"],
                     proj_out=pr["proj"], proj_layers=3, mean=(0.5,) * pr["channels"], std=(0.25,) * pr["channels"])
    model = build_model(spec).to(device)
    method = build_method(cfg, pr["size"], pr["channels"])
    accelerate(model, method, **SWITCHES[name])
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, epochs=10**9, full_batches=1)
    timer = PhaseTimer(device, timing)

    def acl_step() -> None:
        method.step(model, opt, sched, batch, timer)

    def raw_pass() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with method.autocast(device) if method.amp_dtype is not None else contextlib.nullcontext():
            out = model(views)
        out.float().sum().backward()

    return acl_step, raw_pass, timer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cnn-fmnist")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5, help="attack steps K")
    p.add_argument("--batch", type=int, help="batch size B (default: the preset's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="fp32,bf16,channels_last,compile",
                   help=f"comma-separated, from {', '.join(SWITCHES)}; fp32 is always included (the reference)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compile builds its graphs here)")
    p.add_argument("--timing", choices=TIMING_MODES, default="auto", help="the phase timer's mode (train.timing)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    pr = dict(PRESETS[args.preset])
    if args.batch:
        pr["batch"] = args.batch
    variants = ["fp32"] + [v for v in args.variants.split(",") if v and v != "fp32"]
    unknown = [v for v in variants if v not in SWITCHES]
    if unknown:
        p.error(f"unknown variants {unknown}; valid: {', '.join(SWITCHES)}")
    device = torch.device(args.device)

    cfg = load_config("acl_cifar10" if pr["channels"] == 3 else "acl_fmnist_cpu",
                      [f"attack.steps={args.steps}", f"optim.batch_size={pr['batch']}"])
    torch.manual_seed(0)
    batch = Batch(torch.arange(pr["batch"], device=device), torch.rand(pr["batch"], pr["channels"], pr["size"], pr["size"], device=device))
    views = torch.rand(2 * pr["batch"], pr["channels"], pr["size"], pr["size"], device=device)
    built = {v: build_variant(v, pr, cfg, device, args.timing, batch, views) for v in variants}
    for step, raw, timer in built.values():  # warm-up (allocator, kernels, compiled graphs)
        for _ in range(args.warmup):
            step(), raw()
        timer.reset()
    times: dict[str, dict[str, list[float]]] = {v: {"step_s": [], "raw_pass_s": []} for v in variants}
    for r in range(args.repeats):  # interleaved, the order rotated: every variant sees the same machine state
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            step, raw, _ = built[v]
            times[v]["step_s"] += time_it(step, device, 1, warmup=0)
            times[v]["raw_pass_s"] += time_it(raw, device, 1, warmup=0)
    k = args.steps
    out: dict[str, Any] = {}
    for v in variants:
        s, raw = times[v]["step_s"], times[v]["raw_pass_s"]
        ratios = [a / ((k + 2) * b) for a, b in zip(s, raw)]
        speedups = [a / b for a, b in zip(times["fp32"]["step_s"], s)]  # same repeat, fp32 / variant
        out[v] = {"step_s": s, "raw_pass_s": raw, "ratio": ratios, "ratio_median": statistics.median(ratios),
                  "speedup_vs_fp32": speedups, "speedup_median": statistics.median(speedups),
                  "phases_s": {n: sec / args.repeats for n, sec in built[v][2].seconds.items()}}
    ref = out["fp32"]
    result = {
        "preset": args.preset, "machine": machine(device), "batch": pr["batch"], "attack_steps": k, "repeats": args.repeats,
        "timing": PhaseTimer(device, args.timing).mode,
        # the fp32 keys as before, so earlier result files compare directly
        "step_s": ref["step_s"], "raw_pass_s": ref["raw_pass_s"], "ratio": ref["ratio"], "ratio_median": ref["ratio_median"],
        "phases_s": ref["phases_s"], "variants": out,
    }
    print(f"machine: {result['machine']}")
    print(f"ACL step ({args.preset}, batch {pr['batch']}, K={k}), median (min..max, n):")
    for v, o in out.items():
        print(f"  {v:14s} step {spread(o['step_s'])} s | raw {spread(o['raw_pass_s'])} s | "
              f"step/((K+2) raw) {o['ratio_median']:.2f} | speedup vs fp32 {spread(o['speedup_vs_fp32'])}")
    print("fp32 mean phase seconds per step: " + ", ".join(f"{n} {sec:.4f}" for n, sec in ref["phases_s"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"RESULT preset={args.preset} step_s={statistics.median(ref['step_s']):.4f} ratio={ref['ratio_median']:.2f} "
          + " ".join(f"{v}={o['speedup_median']:.2f}x" for v, o in out.items() if v != "fp32"))


if __name__ == "__main__":
    main()
