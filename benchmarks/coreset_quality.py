"""Robustness of ACL trained on full data vs an RCS coreset vs a random coreset, and vs the
baseline a skeptical user would pick: full ACL for the same time as the RCS run.

Fashion-MNIST (a training subset), ACL, f=0.2, the same epochs and schedule for the
coreset arms and `full` (warm-up 10% of the epochs, re-selection every 10%); `full-time`
trains full ACL for the epochs that took the RCS run's time (per seed, step-normalized: RCS's
steps at full's per-step time plus its selection time, free of machine drift); `--curve`
adds full-ACL runs of other lengths to show where its robust accuracy plateaus. Each run
is evaluated with SLF, PGD-20 (and AutoAttack) at eps 0.1 on the first --n-test test
images. Prints mean and spread per arm and each arm's pretraining time; writes every
number to --json after every run.

    python benchmarks/coreset_quality.py                      # CPU, about an hour
    python benchmarks/coreset_quality.py --device cuda --arms full,rcs,rcs-fast,random

The tables of issues #3 and #6 in docs/benchmarks.md were made with it (and the lr then following the
update count). Issue #18's arms for RCS-ACL (the plateau check, full for the same updates, paired
differences, its RESULT line) are in acs_speed_quality.py (`--methods acl --selectors rcs,random`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from coreset_speed import ARMS, arm_overrides
from robustssl import api
from timing import machine


def stats(values: list[float]) -> str:
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:5.2f} ± {100 * sd:4.2f} (min {100 * min(values):5.2f}, max {100 * max(values):5.2f})"


def epochs_for_equal_time(rows: dict[str, list[dict]], seed: int, epochs: int) -> int:
    """Epochs of full ACL that take the RCS run's time, step-normalized as in coreset_speed.py:
    RCS's steps charged at full's seconds per step plus RCS's selection seconds (this seed), so
    drift in the machine's per-step speed between the two runs does not move the budget."""
    full = next(r for r in rows["full"] if r["seed"] == seed)
    rcs = next(r for r in rows["rcs"] if r["seed"] == seed)
    rcs_time = rcs["steps"] * full["pretrain_s"] / full["steps"] + rcs["selection_s"]
    return max(1, round(epochs * rcs_time / full["pretrain_s"]))


def run_and_evaluate(out: Path, overrides: list[str]) -> dict:
    r = api.pretrain("acl_fmnist_cpu", out, overrides=overrides)
    report = api.evaluate(out)
    slf = report["protocols"]["slf"]
    acc = {a["attack"]: a["accuracy"] for a in slf["attacks"]}
    summary = json.loads((out / "run.json").read_text())
    return {"clean": slf["clean"]["accuracy"], "pgd20": acc["pgd20"], "autoattack": acc.get("autoattack"),
            "pretrain_s": r.seconds, "steps": r.steps, "selection_s": summary["coreset"].get("selection_seconds", 0.0),
            "checks_passed": bool(slf["sanity_passed"]), "probe_converged": bool(slf["training"]["convergence"]["converged"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=5000, help="Fashion-MNIST training images")
    p.add_argument("--n-test", type=int, default=1000, help="test images for clean and PGD-20 accuracy")
    p.add_argument("--n-aa", type=int, default=500, help="test images for AutoAttack (the first of --n-test; 0: no AutoAttack)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="full,rcs,random,full-time",
                   help="full-time: full ACL for the epochs that take the RCS run's time (needs full and rcs); "
                        "other names: the arms of coreset_speed.py")
    p.add_argument("--curve", default="", help="extra full-ACL epoch counts, to show where its robust accuracy plateaus")
    p.add_argument("--fast", default="coreset.candidate_fraction=0.4,coreset.candidate_attack_steps=1")
    p.add_argument("--extra", default="", help="comma-separated overrides for every run")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--from-json", nargs="+", help="print the table of earlier --json files (seeds run separately)")
    args = p.parse_args()
    every = max(1, args.epochs // 10)
    attacks = "[pgd20,autoattack]" if args.n_aa else "[pgd20]"
    common = [
        f"data.train_subset={args.n}", f"train.device={args.device}", "train.progress=false",
        "coreset.fraction=0.2", f"coreset.warmup_epochs={every}", f"coreset.every={every}", "coreset.rd_eps=0.1",
        "coreset.rd_alpha=0.04", "train.log_every_steps=1000", f"eval.n_examples={args.n_test}",
        f"eval.autoattack_examples={max(1, args.n_aa)}", f"eval.attacks={attacks}", "eval.eps_curve=[]",
    ] + [e for e in args.extra.split(",") if e]
    fast = args.fast.split(",") if args.fast else []
    arms = args.arms.split(",")
    if "full-time" in arms and not {"full", "rcs"} <= set(arms[: arms.index("full-time")]):
        raise SystemExit("--arms: full-time needs full and rcs before it")
    curve = [int(e) for e in args.curve.split(",") if e]
    rows: dict[str, list[dict]] = {a: [] for a in arms}
    rows.update({f"full-{e}ep": [] for e in curve})

    def save() -> None:  # after every run, so an interrupted benchmark keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(torch.device(args.device)), "settings": vars(args),
                                                   "rows": rows}, indent=2))

    if args.from_json:
        rows = {}
        first = json.loads(Path(args.from_json[0]).read_text())
        for key in ("device", "n", "n_test", "n_aa", "epochs", "extra"):  # the header describes the runs, not this call
            setattr(args, key, first["settings"][key])
        every = max(1, args.epochs // 10)
        for path in args.from_json:
            for name, rs in json.loads(Path(path).read_text())["rows"].items():
                rows.setdefault(name, []).extend(rs)
        for name in rows:
            rows[name].sort(key=lambda r: r["seed"])
        args.json, args.seeds = None, ",".join(sorted({str(r["seed"]) for rs in rows.values() for r in rs}))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [] if args.from_json else [int(s) for s in args.seeds.split(",")]:
            jobs = [(arm, args.epochs, arm_overrides(arm, fast) if arm != "full-time" else ARMS["full"]) for arm in arms]
            jobs += [(f"full-{e}ep", e, ARMS["full"]) for e in curve]
            for name, epochs, overrides in jobs:
                if name == "full-time":
                    epochs = epochs_for_equal_time(rows, seed, args.epochs)
                row = run_and_evaluate(Path(tmp) / f"{name}-{seed}", common + overrides + [f"train.epochs={epochs}", f"train.seed={seed}"])
                rows[name].append({"seed": seed, "epochs": epochs, **row})
                print(f"seed {seed} {name:9s}: {epochs} epochs, clean {row['clean']:.4f} pgd20 {row['pgd20']:.4f} "
                      f"AA {row['autoattack'] if row['autoattack'] is not None else 'n/a'} pretrain {row['pretrain_s']:.0f}s", flush=True)
                save()
    print(f"\nmachine: {first['machine'] if args.from_json else machine(torch.device(args.device))}")
    print(f"ACL, {args.n} Fashion-MNIST images, {args.epochs} epochs, f=0.2, warm-up {every}, every {every}; SLF; eps 0.1; "
          f"clean/PGD-20 on {args.n_test} test images, AutoAttack on {args.n_aa}; seeds {args.seeds}")
    print("| arm | epochs | clean % | PGD-20 % | AutoAttack % | pretrain s (mean) | selection s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        aa = [r["autoattack"] for r in rs if r["autoattack"] is not None]
        print(f"| {name} | {','.join(str(e) for e in sorted({r['epochs'] for r in rs}))} | {stats([r['clean'] for r in rs])} | "
              f"{stats([r['pgd20'] for r in rs])} | {stats(aa) if aa else 'n/a'} | "
              f"{statistics.mean(r['pretrain_s'] for r in rs):.0f} | {statistics.mean(r['selection_s'] for r in rs):.1f} |")
    save()
    for other in ("random", "full-time"):
        if "rcs" in rows and other in rows:
            theirs = {r["seed"]: r for r in rows[other]}
            diff = [a["pgd20"] - theirs[a["seed"]]["pgd20"] for a in rows["rcs"] if a["seed"] in theirs]
            print(f"RCS - {other} PGD-20 per seed: {', '.join(f'{100 * d:+.1f}' for d in diff)} points")
    for name, rs in rows.items():
        print(f"RESULT arm={name} clean={100 * statistics.mean(r['clean'] for r in rs):.2f}% "
              f"pgd20={100 * statistics.mean(r['pgd20'] for r in rs):.2f}% pretrain_s={statistics.mean(r['pretrain_s'] for r in rs):.0f}")


if __name__ == "__main__":
    main()
