"""Supervised adversarial training on full data vs on coresets (ACS: GradMatch, CRAIG; RCS; random),
for TRADES and l_inf PGD-AT: training wall-clock ratio (with the selection share) and clean /
PGD-20 / AutoAttack accuracy of the trained classifier (`direct`), over seeds, side by side in one
process.

Every run trains from `<method>_fmnist_cpu` (same model, data, attack, optimizer). Full AT trains
E epochs on all data. A coreset arm follows ACS's warm start with kappa and c = f: round(c kappa E)
full epochs, then (1 - kappa) E epochs on a coreset of fraction f re-selected every R epochs, so it
trains round(c kappa E) + (1 - kappa) E epochs. Its speed-up bound, selections free, is the ratio of
training steps, about E / (round(c kappa E) + (1 - kappa) E f) (whole batches); measured ratios above
it are measurement problems.
Arms run in a rotated order per seed (shared-machine drift does not always hit the same arm).

    cd benchmarks && python acs_speed_quality.py --runs runs/acs --json results/acs_speed_quality_cpu.json

Ends with one line per method and selector:
RESULT method=<m> selector=<s> speedup=<x.xx>x step_normalized=<y.yy>x pgd20=<a> full_pgd20=<b>
(speedup: the median wall-clock ratio; step_normalized: full AT's training steps over the arm's
steps plus its selection time converted into its own steps, which cancels drift between runs.)
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from arms import acs_schedule, coreset_overrides, train_and_evaluate
from robustssl.config import load_config
from timing import accuracies, machine, mean_sd, protocol_numbers

SELECTORS = ("gradmatch", "craig", "rcs", "random")


def step_bound(cfg: Any, warm: int, core: int, fraction: float) -> float:
    """Full AT's training steps over a coreset arm's (whole batches: a coreset of round(f N) images
    makes round(f N) // B steps), i.e. the speed-up with free selections."""
    n = cfg.data.train_subset
    if n is None:
        raise SystemExit("the bound needs data.train_subset (the pool size) in the recipe or --extra")
    b = cfg.optim.batch_size
    full, coreset = n // b, round(fraction * n) // b
    return cfg.train.epochs * full / (warm * full + core * coreset)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="trades,pgd_at")
    p.add_argument("--selectors", default=",".join(SELECTORS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--kappa", type=float, default=0.5)
    p.add_argument("--every", type=int, default=3, help="re-selection every R epochs")
    p.add_argument("--extra", default="", help="comma-separated overrides for every training run")
    p.add_argument("--eval-extra", default="eval.eps_curve=[]", help="comma-separated overrides for every evaluation")
    p.add_argument("--runs", required=True)
    p.add_argument("--json")
    p.add_argument("--reuse", action="store_true",
                   help="a finished run folder is evaluated again, not retrained; an interrupted one is resumed")
    p.add_argument("--from-json", help="print the tables of an earlier --json (a partial run included) and stop")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    arms = ["full"] + [s for s in args.selectors.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [e for e in args.extra.split(",") if e]
    eval_extra = [e for e in args.eval_extra.split(",") if e]
    runs = Path(args.runs)
    where = machine(torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    bounds: dict[str, float] = {}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "settings": vars(args), "threads": torch.get_num_threads(),
                                                   "bounds": bounds, "rows": rows}, indent=2))

    if args.from_json:
        done = json.loads(Path(args.from_json).read_text())
        rows, bounds, where = done["rows"], done["bounds"], done["machine"]
        extra = done["settings"]["extra"].split(",") if done["settings"]["extra"] else []
        seeds = sorted({r["seed"] for r in rows})
        methods = [m for m in methods if any(r["method"] == m for r in rows)]
        for m in methods:  # recomputed: runs before the step bound existed stored an epoch-based one
            cfg = load_config(f"{m}_fmnist_cpu", extra)
            bounds[m] = step_bound(cfg, *acs_schedule(cfg.train.epochs, args.kappa, args.fraction), args.fraction)
        arms = [a for a in arms if any(r["arm"] == a for r in rows)]
    for seed in [] if args.from_json else seeds:
        for method in methods:
            recipe = f"{method}_fmnist_cpu"
            cfg = load_config(recipe, extra)
            epochs = cfg.train.epochs
            warm, core = acs_schedule(epochs, args.kappa, args.fraction)
            bounds[method] = step_bound(cfg, warm, core, args.fraction)
            shift = (seed + methods.index(method)) % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                out = runs / f"{method}-{arm}-{seed}"
                over = extra + [f"train.seed={seed}"]
                if arm != "full":
                    over += coreset_overrides(arm, args.fraction, warm, core, args.every)
                report, summary, total_s = train_and_evaluate(recipe, out, over, eval_extra, args.reuse)
                sel_s = summary["coreset"].get("selection_seconds", 0.0)
                rows.append({"seed": seed, "method": method, "arm": arm, "run": str(out), "train_s": summary["seconds"],
                             "selection_s": sel_s, "steps": summary["steps"], "phase_seconds": summary["phase_seconds"],
                             "total_s": total_s, "protocols": protocol_numbers(report)})
                d = rows[-1]["protocols"]["direct"]
                print(f"seed {seed} {method} {arm:9s}: train {summary['seconds']:.0f}s (selection {sel_s:.0f}s); clean "
                      f"{d['clean']:.3f} pgd20 {d['pgd20']:.3f} AA {d['autoattack']}", flush=True)
                save()

    print(f"\nmachine: {where}; seeds {seeds}; f={args.fraction} "
          f"kappa={args.kappa} R={args.every}; extra {extra or 'none'}")
    print("| method | selector | wall-clock speed-up (median, min-max) | step-normalized | bound | selection share | clean % | "
          "PGD-20 % | AutoAttack % |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        full = {r["seed"]: r for r in mine if r["arm"] == "full"}
        if not full:
            continue
        full_pgd = statistics.mean(r["protocols"]["direct"]["pgd20"] for r in full.values())
        for arm in arms:
            rs = [r for r in mine if r["arm"] == arm and r["seed"] in full]
            if not rs:
                continue
            ratios = [full[r["seed"]]["train_s"] / r["train_s"] for r in rs]
            # Step-normalized: each run's selection seconds converted into its own training steps, so drift
            # between runs (minutes apart on a shared machine) cancels: full steps / (steps + selection in steps).
            normalized = [full[r["seed"]]["steps"] / (r["steps"] * r["train_s"] / max(1e-9, r["train_s"] - r["selection_s"]))
                          for r in rs]
            share = statistics.mean(r["selection_s"] / r["train_s"] for r in rs)
            vals = accuracies([r["protocols"]["direct"] for r in rs])
            flag = " (ABOVE BOUND: measurement problem)" if arm != "full" and max(ratios) > bounds[method] else ""
            print(f"| {method} | {arm} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}){flag} | "
                  f"{statistics.median(normalized):.2f}x ({min(normalized):.2f}-{max(normalized):.2f}) | "
                  f"{bounds[method]:.2f}x | {100 * share:.1f}% | {mean_sd(vals['clean'])} | {mean_sd(vals['pgd20'])} | "
                  f"{mean_sd(vals['autoattack'])} |")
            if arm != "full":
                results.append(f"RESULT method={method} selector={arm} speedup={statistics.median(ratios):.2f}x "
                               f"step_normalized={statistics.median(normalized):.2f}x "
                               f"pgd20={100 * statistics.mean(vals['pgd20']):.2f}% full_pgd20={100 * full_pgd:.2f}%")
    if not args.from_json:
        save()
    print("\n".join(results))


if __name__ == "__main__":
    main()
