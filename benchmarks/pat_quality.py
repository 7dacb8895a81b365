"""Perceptual adversarial training (PAT) on Fashion-MNIST, CPU, side by side in one process:

1. PAT against PGD-AT and TRADES of the same size (same model, data, epochs, optimizer: the
   `<method>_fmnist_cpu` recipes) with each one's training time: clean, l_inf PGD-20, l_2 PGD-20,
   PPGD, LPA and union accuracy of the trained classifier (`direct`).
2. PAT on full data against PAT on Adv. GradMatch and random coresets (ACS's warm start with kappa
   and c = f, re-selection every R epochs): step-normalized speed-up and the same accuracies.

Every run is evaluated with eval.attacks=[pgd20, ppgd, lpa, union] (eval.norm=linf at eval.eps; the
union's l_2 PGD-20 at eval.union.l2_eps, whose accuracy is read from the union record's parts).
The perceptual attacks are expensive on a CPU: --eval-extra sets their steps and test subset (the
defaults below), and the report of every run names them.

    cd benchmarks && python pat_quality.py --runs runs/pat --json results/pat_quality_cpu.json

Ends with RESULT lines:
RESULT compare method=<m> clean=<%> pgd20_linf=<%> pgd20_l2=<%> ppgd=<%> lpa=<%> union=<%> train_s=<s>
RESULT coreset selector=<s> step_normalized=<x.xx>x speedup=<x.xx>x union=<%> full_union=<%> lpa=<%> full_lpa=<%>
(speedup: median wall-clock ratio against PAT full; step_normalized: full's training steps over the arm's
steps plus its selection time converted into its own steps, which cancels drift between runs.)
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from arms import acs_schedule, coreset_overrides, step_normalized, train_and_evaluate
from robustssl.config import load_config
from timing import machine, mean_sd

COLUMNS = ("clean", "pgd20", "pgd20_l2", "ppgd", "lpa", "union")
EVAL_EXTRA = ("eval.attacks=[pgd20,ppgd,lpa,union] eval.eps_curve=[] eval.n_examples=500 eval.ppgd.steps=10 "
              "eval.ppgd.n_examples=200 eval.lpa.steps=10 eval.lpa.rounds=3 eval.lpa.n_examples=200 eval.union.l2_eps=1.0")


def numbers(report: dict[str, Any]) -> dict[str, float | None]:
    """The direct classifier's accuracies: clean, each attack, and the union's l_2 PGD-20 part."""
    p = report["protocols"]["direct"]
    acc: dict[str, float | None] = {"clean": p["clean"]["accuracy"], "sanity_passed": float(bool(p["sanity_passed"]))}
    for rec in p["attacks"]:
        acc[rec["attack"]] = rec["accuracy"]
        if rec["attack"] == "union":
            acc["pgd20_l2"] = rec.get("parts", {}).get("pgd20_l2")
            acc["union_examples"] = rec["n_examples"]
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="pat,pgd_at,trades", help="part 1: the methods compared")
    p.add_argument("--selectors", default="gradmatch,random", help="part 2: PAT's coreset arms")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--kappa", type=float, default=0.5)
    p.add_argument("--every", type=int, default=3, help="re-selection every R epochs")
    p.add_argument("--unit", default="batch", choices=("batch", "sample"),
                   help="coreset atoms: minibatches (ACS's shipped GradMatchPB) or per-class images")
    p.add_argument("--extra", default="", help="space-separated overrides for every training run")
    p.add_argument("--eval-extra", default=EVAL_EXTRA, help="space-separated overrides for every evaluation (lists hold commas)")
    p.add_argument("--runs", required=True)
    p.add_argument("--json")
    p.add_argument("--reuse", action="store_true",
                   help="a finished run folder is evaluated again, not retrained; an interrupted one is resumed")
    p.add_argument("--from-json", help="print the tables of an earlier --json (a partial run included) and stop")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    selectors = [s for s in args.selectors.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = args.extra.split()
    eval_extra = args.eval_extra.split()
    runs = Path(args.runs)
    where = machine(torch.device("cpu"))
    rows: list[dict[str, Any]] = []

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "settings": vars(args), "threads": torch.get_num_threads(),
                                                   "rows": rows}, indent=2))

    if args.from_json:
        done = json.loads(Path(args.from_json).read_text())
        rows, where = done["rows"], done["machine"]
        seeds = sorted({r["seed"] for r in rows})
    # (method, arm): PAT full is shared by both parts
    plan = [(m, "full") for m in methods] + [("pat", s) for s in selectors]
    for seed in [] if args.from_json else seeds:
        shift = seed % len(plan)
        for method, arm in plan[shift:] + plan[:shift]:  # rotated per seed: machine drift does not always hit one arm
            recipe = f"{method}_fmnist_cpu"
            cfg = load_config(recipe, extra)
            out = runs / f"{method}-{arm}-{seed}"
            over = extra + [f"train.seed={seed}"]
            if arm != "full":
                warm, core = acs_schedule(cfg.train.epochs, args.kappa, args.fraction)
                over += coreset_overrides(arm, args.fraction, warm, core, args.every, args.unit)
            report, summary, total_s = train_and_evaluate(recipe, out, over, eval_extra, args.reuse)
            sel_s = summary["coreset"].get("selection_seconds", 0.0)
            rows.append({"seed": seed, "method": method, "arm": arm, "run": str(out), "train_s": summary["seconds"],
                         "selection_s": sel_s, "steps": summary["steps"], "total_s": total_s,
                         "numbers": numbers(report),
                         "threat_models": {a["attack"]: a.get("threat_model") for a in report["protocols"]["direct"]["attacks"]}})
            n = rows[-1]["numbers"]
            print(f"seed {seed} {method} {arm}: train {summary['seconds']:.0f}s; "
                  + " ".join(f"{c} {n.get(c)}" for c in COLUMNS), flush=True)
            save()

    def values(rs: list[dict[str, Any]], col: str) -> list[float]:
        return [v for r in rs if (v := r["numbers"].get(col)) is not None]

    print(f"\nmachine: {where}; seeds {seeds}; extra {extra or 'none'}; evaluation {eval_extra}")
    print("| method | train s | " + " | ".join(f"{c} %" for c in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    results = []
    for method in methods:
        rs = [r for r in rows if r["method"] == method and r["arm"] == "full"]
        if not rs:
            continue
        train_s = statistics.mean(r["train_s"] for r in rs)
        print(f"| {method} | {train_s:.0f} | " + " | ".join(mean_sd(values(rs, c)) for c in COLUMNS) + " |")
        results.append(f"RESULT compare method={method} " + " ".join(
            f"{c if c != 'pgd20' else 'pgd20_linf'}={100 * statistics.mean(v):.2f}%" if (v := values(rs, c)) else f"{c}=n/a"
            for c in COLUMNS) + f" train_s={train_s:.0f}")

    full = {r["seed"]: r for r in rows if r["method"] == "pat" and r["arm"] == "full"}
    if full:
        print(f"\nPAT on coresets: f={args.fraction} kappa={args.kappa} R={args.every} unit={args.unit}")
        print("| arm | wall-clock speed-up (median, min-max) | step-normalized | " + " | ".join(f"{c} %" for c in COLUMNS) + " |")
        print("|---|---|---|" + "---|" * len(COLUMNS))
        for arm in ["full", *selectors]:
            rs = [r for r in rows if r["method"] == "pat" and r["arm"] == arm and r["seed"] in full]
            if not rs:
                continue
            ratios = [full[r["seed"]]["train_s"] / r["train_s"] for r in rs]
            normalized = [step_normalized(full[r["seed"]], r) for r in rs if r["steps"] > 0]
            if not normalized:
                raise SystemExit(f"PAT on {arm} made no training step: the coreset is smaller than one batch")
            print(f"| {arm} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
                  f"{statistics.median(normalized):.2f}x | " + " | ".join(mean_sd(values(rs, c)) for c in COLUMNS) + " |")
            if arm != "full":
                mine, ref = values(rs, "union"), values(list(full.values()), "union")
                lpa_mine, lpa_ref = values(rs, "lpa"), values(list(full.values()), "lpa")
                results.append(
                    f"RESULT coreset selector={arm} step_normalized={statistics.median(normalized):.2f}x "
                    f"speedup={statistics.median(ratios):.2f}x "
                    + " ".join(f"{k}={100 * statistics.mean(v):.2f}%" if v else f"{k}=n/a"
                               for k, v in (("union", mine), ("full_union", ref), ("lpa", lpa_mine), ("full_lpa", lpa_ref))))
    if not args.from_json:
        save()
    print("\n".join(results))


if __name__ == "__main__":
    main()
