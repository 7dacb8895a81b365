"""Robust EMP-SSL (PGD-K crops) vs CF-AMC-SSL (free adversarial training, m replays, E/m passes):
training wall-clock ratio and clean / PGD-20 / AutoAttack accuracy of both, per evaluation mode,
over seeds, side by side in one process.

Both arms train from their bundled recipes (`robust_emp_fmnist_cpu`, `cfamc_fmnist_cpu` on a CPU:
the same model, data, crops and optimizer; only the adversarial training differs), with `--extra`
overrides applied to both. The arm order alternates between seeds, so slow drift of a shared
machine does not always fall on the same arm. Each seed's ratio is robust EMP-SSL's training
seconds over CF-AMC-SSL's; the bound is the ratio of forward-backward passes per image,
E_pgd (K + 1) / (E_free m), which a measured ratio should not exceed (augmentation and the
optimizer step are the same per batch in both arms, so they pull the ratio below it).

    cd benchmarks && python free_vs_pgd.py --runs runs/free_vs_pgd --json results/free_vs_pgd_cpu.json \
        --eval-extra eval.autoattack_examples=100,eval.eps_curve=[]

AutoAttack's Square (5000 queries) through the multi-crop classifier costs n_crops forwards per
query, so the CPU run limits AutoAttack to the first 100 test images (PGD-20 on 1000).

The last line: RESULT ratio=<median x> robust_emp_pgd20=<mean %> cfamc_pgd20=<mean %> (full-image SLF).
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
from robustssl.config import load_config
from timing import accuracies, machine, mean_sd, protocol_numbers

ARMS = {"robust_emp": "robust_emp_fmnist_cpu", "cfamc": "cfamc_fmnist_cpu"}



def pass_bound(extra: list[str]) -> dict[str, Any]:
    """Forward-backward passes per image over each arm's whole run, and their ratio (the speed-up's bound)."""
    pgd = load_config(ARMS["robust_emp"], extra)
    free = load_config(ARMS["cfamc"], extra)
    pgd_passes = pgd.train.epochs * (pgd.attack.steps + 1)
    free_passes = free.train.epochs * free.method.params.replays
    return {"robust_emp_passes": pgd_passes, "cfamc_passes": free_passes, "bound": pgd_passes / free_passes}



def interleaved_step_ratio(extra: list[str], repeats: int, seed: int = 0) -> dict[str, Any]:
    """Per-batch seconds of each arm's training step (robust EMP-SSL: its attack + one update;
    CF-AMC-SSL: its m replays) on the same model and batches, alternated step by step, so drift
    of a shared machine hits both alike. The run-time ratio these predict: (per-batch seconds x
    batches per run) of robust EMP-SSL over CF-AMC-SSL's."""
    from robustssl.data.batch import make_batch
    from robustssl.methods import build_method
    from robustssl.models import build_model
    from robustssl.run_setup import load_train_set, model_spec
    from robustssl.timer import PhaseTimer
    from robustssl.train.optim import build_optimizer, build_scheduler

    cfgs = {arm: load_config(recipe, extra) for arm, recipe in ARMS.items()}
    data = load_train_set(cfgs["robust_emp"])
    torch.manual_seed(seed)
    base = build_model(model_spec(cfgs["robust_emp"], data))
    parts = {}
    for arm, cfg in cfgs.items():
        model = build_model(model_spec(cfg, data))
        model.load_state_dict(base.state_dict())
        opt = build_optimizer(model, cfg.optim)
        parts[arm] = (model, build_method(cfg, data.image_size, data.num_channels), opt, build_scheduler(opt, cfg.optim, 10**6, 100))
    b = cfgs["robust_emp"].optim.batch_size
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for i in range(repeats + 1):  # the first round warms up and is dropped
        batch = make_batch(data, torch.arange(i * b, (i + 1) * b) % len(data))
        for arm in (ARMS if i % 2 == 0 else list(ARMS)[::-1]):
            model, method, opt, sched = parts[arm]
            t0 = time.perf_counter()
            method.step(model, opt, sched, batch, PhaseTimer())
            if i:
                times[arm].append(time.perf_counter() - t0)
    per_batch = {arm: statistics.median(v) for arm, v in times.items()}
    batches = {arm: cfg.train.epochs * (len(data) // b) for arm, cfg in cfgs.items()}
    predicted = per_batch["robust_emp"] * batches["robust_emp"] / (per_batch["cfamc"] * batches["cfamc"])
    return {"per_batch_s": per_batch, "raw_s": times, "batches_per_run": batches, "predicted_ratio": predicted,
            "per_pass_s": {"robust_emp": per_batch["robust_emp"] / (cfgs["robust_emp"].attack.steps + 1),
                           "cfamc": per_batch["cfamc"] / cfgs["cfamc"].method.params.replays}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--protocols", default="slf,slf-mc", help="evaluation protocols (full image; mean of crops)")
    p.add_argument("--extra", default="", help="comma-separated overrides for both pretraining runs")
    p.add_argument("--eval-extra", default="", help="comma-separated overrides for every evaluation")
    p.add_argument("--runs", help="folder for the run folders (kept)")
    p.add_argument("--json", help="write every number here (after each run)")
    p.add_argument("--reuse", action="store_true", help="a run folder that holds an encoder is evaluated again, not retrained")
    p.add_argument("--from-json", help="print the tables of an earlier --json (seeds with both arms) and stop")
    p.add_argument("--step-repeats", type=int, default=20, help="interleaved steps per arm for the per-batch step ratio")
    p.add_argument("--steps-only", action="store_true", help="measure only the interleaved step ratio")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [e for e in args.extra.split(",") if e]
    eval_extra = [e for e in args.eval_extra.split(",") if e]
    runs = Path(args.runs or ".")
    bound = pass_bound(extra)
    where = machine(torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    if args.from_json:
        done = json.loads(Path(args.from_json).read_text())
        where, bound = done["machine"], done["bound"]
        arms_of = {s_: {r["arm"] for r in done["rows"] if r["seed"] == s_} for s_ in {r["seed"] for r in done["rows"]}}
        seeds = sorted(s_ for s_, a in arms_of.items() if a == set(ARMS))
        rows = [r for r in done["rows"] if r["seed"] in seeds]
    elif not args.runs and not args.steps_only:
        raise SystemExit("--runs is needed to train (or --from-json to summarize, --steps-only for the step ratio)")

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "settings": vars(args), "threads": torch.get_num_threads(),
                                                   "bound": bound, "steps": steps, "rows": rows}, indent=2))

    steps = None if args.from_json else interleaved_step_ratio(extra, args.step_repeats)
    if steps:
        print(f"interleaved steps ({args.step_repeats} per arm): per batch robust EMP-SSL {steps['per_batch_s']['robust_emp']:.3f}s, "
              f"CF-AMC-SSL {steps['per_batch_s']['cfamc']:.3f}s; per pass {steps['per_pass_s']['robust_emp']:.4f}s vs "
              f"{steps['per_pass_s']['cfamc']:.4f}s; predicted run ratio {steps['predicted_ratio']:.2f}x", flush=True)
    if args.steps_only:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "settings": vars(args), "steps": steps}, indent=2))
        return
    for i, seed in enumerate([] if args.from_json else seeds):
        order = list(ARMS) if i % 2 == 0 else list(ARMS)[::-1]
        for arm in order:
            out = runs / f"{arm}-{seed}"
            started = time.perf_counter()
            if args.reuse and (out / "encoder.safetensors").is_file():
                summary = json.loads((out / "run.json").read_text())
                train_s, steps, phases = summary["seconds"], summary["steps"], summary["phase_seconds"]
            else:
                result = api.pretrain(ARMS[arm], out, overrides=extra + [f"train.seed={seed}"])
                train_s, steps, phases = result.seconds, result.steps, result.phase_seconds
            report = api.evaluate(out, overrides=[f"eval.protocols=[{args.protocols}]", *eval_extra])
            rows.append({"seed": seed, "arm": arm, "run": str(out), "train_s": train_s, "steps": steps,
                         "phase_seconds": phases, "total_s": time.perf_counter() - started,
                         "protocols": protocol_numbers(report)})
            nums = "; ".join(f"{k} clean {v['clean']:.3f} pgd20 {v['pgd20']:.3f} AA {v['autoattack']}"
                             for k, v in rows[-1]["protocols"].items())
            print(f"seed {seed} {arm:10s}: train {train_s:.0f}s ({steps} batches); {nums}", flush=True)
            save()

    by = {(r["seed"], r["arm"]): r for r in rows}
    ratios = [by[(s, "robust_emp")]["train_s"] / by[(s, "cfamc")]["train_s"] for s in seeds]
    print(f"\nmachine: {where}; seeds {seeds}; extra {extra or 'none'}")
    print(f"passes per image: robust EMP-SSL {bound['robust_emp_passes']}, CF-AMC-SSL {bound['cfamc_passes']} "
          f"-> bound {bound['bound']:.2f}x")
    print(f"training time ratio per seed: {', '.join(f'{r:.2f}x' for r in ratios)}")
    if max(ratios) > bound["bound"]:
        print("WARNING: a ratio is above the pass-count bound: a measurement problem (machine drift); do not report it as is")
    print("| arm | protocol | clean % | PGD-20 % | AutoAttack % | sanity | train s (mean) |")
    print("|---|---|---|---|---|---|---|")
    means: dict[tuple[str, str], float] = {}
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        for proto in rs[0]["protocols"]:
            vals = accuracies([r["protocols"][proto] for r in rs])
            sane = sum(int(r["protocols"][proto]["sanity_passed"]) for r in rs)
            means[(arm, proto)] = statistics.mean(vals["pgd20"])
            print(f"| {arm} | {proto} | {mean_sd(vals['clean'])} | {mean_sd(vals['pgd20'])} | {mean_sd(vals['autoattack'])} | "
                  f"{sane}/{len(rs)} passed | {statistics.mean(r['train_s'] for r in rs):.0f} |")
    if not args.from_json:
        save()
    first = args.protocols.split(",")[0]
    print(f"RESULT ratio={statistics.median(ratios):.2f}x robust_emp_pgd20={100 * means[('robust_emp', first)]:.2f}% "
          f"cfamc_pgd20={100 * means[('cfamc', first)]:.2f}%")


if __name__ == "__main__":
    main()
