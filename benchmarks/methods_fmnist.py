"""SimCLR, ACL, DynACL (and DynACL++) and RoCL side by side on Fashion-MNIST at the CPU recipes'
scale: clean / PGD-20 / AutoAttack accuracy per evaluation protocol, mean ± sd over seeds, and
one `robustssl compare` output over the first seed's runs.

Every method trains from its bundled `<method>_fmnist_cpu` recipe (same data, model size,
epochs and SLF evaluation); `--extra` overrides apply to every run alike. DynACL++ is the
DynACL run post-processed with LP-AFT (`robustssl postprocess`). `--aff` adds the AFF protocol
to the evaluation of the named methods (AFF vs SLF on the same encoder). Runs are kept under
--runs (evaluated folders, reusable by `robustssl compare`); every number goes to --json after
each run.

    python benchmarks/methods_fmnist.py --runs runs/methods_fmnist --compare docs/compare_fmnist \\
        --json benchmarks/results/methods_fmnist_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from robustssl import api
from timing import accuracies, machine, mean_sd, protocol_numbers

METHODS = ("simclr", "acl", "dynacl", "rocl")




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS) + ",dynacl++")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--aff", default="acl,dynacl", help="methods whose evaluation adds the AFF protocol ('' for none)")
    p.add_argument("--extra", default="", help="comma-separated overrides for every pretraining run")
    p.add_argument("--eval-extra", default="", help="comma-separated overrides for every evaluation")
    p.add_argument("--post-extra", default="", help="comma-separated overrides for the DynACL++ post-processing")
    p.add_argument("--runs", help="folder for the run folders (kept)")
    p.add_argument("--from-json", nargs="+", help="print the table of earlier --json files (seeds run in separate processes)")
    p.add_argument("--compare", help="write `robustssl compare` over the first seed's runs here")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--reuse", action="store_true", help="a run folder that holds an encoder is evaluated again, not retrained")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    aff = {m for m in args.aff.split(",") if m}
    extra = [e for e in args.extra.split(",") if e]
    eval_extra = [e for e in args.eval_extra.split(",") if e]
    if "dynacl++" in methods and "dynacl" not in methods:
        raise SystemExit("--methods: dynacl++ post-processes the dynacl runs; list dynacl too")
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    where = machine(torch.device("cpu"))
    if args.from_json:
        where = json.loads(Path(args.from_json[0]).read_text())["machine"]
        for path in args.from_json:
            for m, rs in json.loads(Path(path).read_text())["rows"].items():
                rows.setdefault(m, []).extend(rs)
        seeds = []
    elif not args.runs:
        raise SystemExit("--runs is needed to train (or --from-json to summarize)")
    runs = Path(args.runs or ".")

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(torch.device("cpu")), "settings": vars(args),
                                                   "rows": rows}, indent=2))

    for seed in seeds:
        for m in methods:
            out = runs / f"{m.replace('+', 'p')}-{seed}"
            started = time.perf_counter()
            if args.reuse and (out / "encoder.safetensors").is_file():
                train_s = json.loads((out / "run.json").read_text()).get("seconds")
            elif m == "dynacl++":
                api.postprocess(runs / f"dynacl-{seed}", out, [e for e in args.post_extra.split(",") if e])
                train_s = json.loads((out / "run.json").read_text()).get("seconds")
            else:
                r = api.pretrain(f"{m}_fmnist_cpu", out, overrides=extra + [f"train.seed={seed}"])
                train_s = r.seconds
            protocols = "[slf,aff]" if m.rstrip("+") in aff else "[slf]"
            report = api.evaluate(out, overrides=[f"eval.protocols={protocols}", *eval_extra])
            row = {"seed": seed, "run": str(out), "train_s": train_s, "total_s": time.perf_counter() - started,
                   "protocols": protocol_numbers(report)}
            rows[m].append(row)
            nums = "; ".join(f"{k} clean {v['clean']:.3f} pgd20 {v['pgd20']:.3f} AA {v['autoattack']}"
                             for k, v in row["protocols"].items())
            print(f"seed {seed} {m:8s}: train {train_s:.0f}s; {nums}", flush=True)
            save()
    if args.compare and seeds:
        api.compare([runs / f"{m.replace('+', 'p')}-{seeds[0]}" for m in methods], args.compare, force=True)  # refreshes the docs copy
    seeds_run = sorted({r["seed"] for rs in rows.values() for r in rs})
    print(f"\nmachine: {where}; seeds {seeds_run}; extra {extra or 'none'}")
    print("| method | protocol | seeds | clean % | PGD-20 % | AutoAttack % | sanity | train s |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for m, rs in rows.items():
        for proto in sorted({p for r in rs for p in r["protocols"]}, key=lambda p: (p != "slf", p)):
            with_p = [r for r in rs if proto in r["protocols"]]  # AFF may run on some seeds only
            vals = accuracies([r["protocols"][proto] for r in with_p])
            sane = sum(int(r["protocols"][proto]["sanity_passed"] or 0) for r in with_p)
            print(f"| {m} | {proto} | {','.join(str(r['seed']) for r in with_p)} | {mean_sd(vals['clean'])} | "
                  f"{mean_sd(vals['pgd20'])} | {mean_sd(vals['autoattack'])} | {sane}/{len(with_p)} passed | "
                  f"{statistics.mean(r['train_s'] for r in with_p):.0f} |")
            fmt = {k: f"{100 * statistics.mean(v):.2f}%" if v else "n/a" for k, v in vals.items()}
            results.append(f"RESULT method={m} protocol={proto} clean={fmt['clean']} pgd20={fmt['pgd20']} "
                           f"autoattack={fmt['autoattack']}")
    save()
    print("\n".join(results))


if __name__ == "__main__":
    main()
