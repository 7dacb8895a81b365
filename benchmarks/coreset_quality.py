"""Robustness of ACL trained on full data vs an RCS coreset vs a random coreset.

Fashion-MNIST (a training subset), ACL, f=0.2, the same epochs and schedule for every arm
(warm-up 10% of the epochs, re-selection every 10%), several seeds. Each run is evaluated
with SLF, PGD-20 and AutoAttack at eps 0.1 on the first --n-test test images. Prints mean
and spread per arm and each arm's pretraining time; writes every number to --json.

    python benchmarks/coreset_quality.py                      # CPU, about an hour
    python benchmarks/coreset_quality.py --device cuda --arms full,rcs,rcs-fast,random
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from coreset_speed import arm_overrides
from robustssl import api
from timing import machine


def stats(values: list[float]) -> str:
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:5.2f} ± {100 * sd:4.2f} (min {100 * min(values):5.2f}, max {100 * max(values):5.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=5000, help="Fashion-MNIST training images")
    p.add_argument("--n-test", type=int, default=1000, help="test images for clean and PGD-20 accuracy")
    p.add_argument("--n-aa", type=int, default=500, help="test images for AutoAttack (the first of --n-test)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="full,rcs,random")
    p.add_argument("--fast", default="coreset.candidate_fraction=0.4,coreset.candidate_attack_steps=1")
    p.add_argument("--extra", default="", help="comma-separated overrides for every run")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    every = max(1, args.epochs // 10)
    common = [
        f"data.train_subset={args.n}", f"train.epochs={args.epochs}", f"train.device={args.device}", "train.progress=false",
        "coreset.fraction=0.2", f"coreset.warmup_epochs={every}", f"coreset.every={every}", "coreset.rd_eps=0.1",
        "coreset.rd_alpha=0.04", "train.log_every_steps=1000", f"eval.n_examples={args.n_test}",
        f"eval.autoattack_examples={args.n_aa}", "eval.eps_curve=[]",
    ] + [e for e in args.extra.split(",") if e]
    fast = args.fast.split(",") if args.fast else []
    arms = args.arms.split(",")
    rows: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for arm in arms:
                out = Path(tmp) / f"{arm}-{seed}"
                r = api.pretrain("acl_fmnist_cpu", out, overrides=common + arm_overrides(arm, fast) + [f"train.seed={seed}"])
                report = api.evaluate(out)
                slf = report["protocols"]["slf"]
                acc = {a["attack"]: a["accuracy"] for a in slf["attacks"]}
                summary = json.loads((out / "run.json").read_text())
                rows[arm].append({"seed": seed, "clean": slf["clean"]["accuracy"], "pgd20": acc["pgd20"], "autoattack": acc["autoattack"],
                                  "pretrain_s": r.seconds, "selection_s": summary["coreset"]["selection_seconds"],
                                  "checks_passed": bool(slf["sanity_passed"])})
                print(f"seed {seed} {arm:9s}: clean {slf['clean']['accuracy']:.4f} pgd20 {acc['pgd20']:.4f} "
                      f"AA {acc['autoattack']:.4f} pretrain {r.seconds:.0f}s", flush=True)
                if args.json:  # after every run, so an interrupted benchmark keeps what it measured
                    Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"\nmachine: {machine(torch.device(args.device))}")
    print(f"ACL, {args.n} Fashion-MNIST images, {args.epochs} epochs, f=0.2, warm-up {every}, every {every}; SLF; eps 0.1; "
          f"clean/PGD-20 on {args.n_test} test images, AutoAttack on {args.n_aa}; seeds {args.seeds}")
    print("| arm | clean % | PGD-20 % | AutoAttack % | pretrain s (mean) | selection s (mean) |")
    print("|---|---|---|---|---|---|")
    for arm in arms:
        rs = rows[arm]
        print(f"| {arm} | {stats([r['clean'] for r in rs])} | {stats([r['pgd20'] for r in rs])} | "
              f"{stats([r['autoattack'] for r in rs])} | {statistics.mean(r['pretrain_s'] for r in rs):.0f} | "
              f"{statistics.mean(r['selection_s'] for r in rs):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(torch.device(args.device)), "settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
