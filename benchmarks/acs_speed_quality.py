"""Adversarial training on full data vs on coresets, in the regime of the papers' claim: is full
training's robustness on a plateau, and does a selector beat random selection and stay close to full
at its speed-up? Supervised methods (TRADES, l_inf PGD-AT) with ACS's selectors (GradMatch, CRAIG) and
schedule; label-free ones (ACL) with RCS and the RCS code's schedule; random in either.

Every run trains from the method's CPU recipe (RECIPES: same model, data, attack, optimizer) with --extra
on top (the regime: data size, batch, epochs E); a supervised run is evaluated by its own classifier
(`direct`), a label-free one by SLF. The arms, per method and seed:
- `full`: E epochs on all data; `full-half`: E/2 epochs (its own cosine). The plateau check: full's
  mean PGD-20 at E/2 within 1 point of its value at E (`plateau=yes`), printed, not assumed.
- each selector, and `random`: supervised (`--schedule acs`), ACS's warm start with kappa and c = f:
  round(c kappa E) full epochs then (1 - kappa) E epochs on a coreset of fraction f (default 0.3)
  re-selected every R epochs (default 20% of E), picking minibatches (`--unit batch`, ACS's shipped
  GradMatchPB / CRAIGPB) or per-class images; label-free (`--schedule rcs`), the RCS code's: full
  warm-up for 10% of E, then coresets of fraction f (default 0.2) re-selected every 10% of E;
- `full-time`: full training for the epochs that take the first selector's time (its steps at full's
  seconds per step plus its selection seconds, this seed: free of machine drift), the baseline a
  careful user would pick; `full-updates`: full training for the first selector's number of updates.
A coreset arm's speed-up bound, selections free, is the ratio of training steps (whole batches, as the
run's own coreset schedule counts them); measured ratios above it are measurement problems. Arms run
in a rotated order per seed.

Small pools and long schedules, nearer the plateau (docs/benchmarks.md, "Nearer the plateau"):

    cd benchmarks && python acs_speed_quality.py --methods pgd_at --selectors gradmatch,craig,random \\
        --extra data.train_subset=250,optim.batch_size=32,train.epochs=640,train.probe_every=0,train.progress=false \\
        --runs ../runs/acs_plateau250 --json results/acs_plateau250_cpu.json
    cd benchmarks && python acs_speed_quality.py --methods acl --selectors rcs,random --seeds 0,1,2 \\
        --extra data.train_subset=250,optim.batch_size=32,train.epochs=320,train.probe_every=0,train.progress=false \\
        --eval-extra eval.eps_curve=[],eval.train_examples=250,eval.linear_epochs=100 \\
        --runs ../runs/rcs_plateau250 --json results/rcs_plateau250_cpu.json

`--selector-extra` gives a selector's arm its own settings, e.g. the weights' ablation (the same picks trained
unweighted; full and random run folders copied from the weighted benchmark are re-evaluated with --reuse):

    cd benchmarks && python acs_speed_quality.py --methods pgd_at --selectors gradmatch,craig,random --no-baselines --reuse \\
        --selector-extra coreset.gradmatch.weighted=false,coreset.craig.weighted=false --extra ... --runs ../runs/x_unweighted

A longer E reuses a shorter one's full runs as its full-half (--reuse checks that a folder's config is the arm's,
key by key, and names what differs; a finished run whose report.json holds this very evaluation is not evaluated
again, so arms added later cost only their own runs); `--baselines full-half` leaves out full-time and full-updates:

    cp -r runs/rcs_plateau250/acl-full-3 runs/rcs_plateau250_e640/acl-full-half-3   # from the repository root
    cd benchmarks && python acs_speed_quality.py --methods acl --selectors rcs,random --seeds 3,4,0 --baselines full-half \\
        --reuse --extra data.train_subset=250,...,train.epochs=640,... --runs ../runs/rcs_plateau250_e640

Seeds run separately make one table: run with --seeds 3,4 --json results/x_seeds34.json, then
`--from-json results/x.json results/x_seeds34.json` with the same --methods and --selectors (the runs' settings
are read from the files).

After the table: the coreset fit (each coreset arm's training loss just before and after a re-selection,
against full's at the same points) and the coreset overlap (the share of a re-selected coreset the one
before it held); both are kept in the JSON (`coreset_fit`, each row's `kept`), so --from-json prints them
after the run folders are gone.

Ends with one line per method and selector (step-normalized speed-up; accuracies in percent):
RESULT method=<m> selector=<s> speedup=<x.xx>x pgd20=<a> full_pgd20=<b> random_pgd20=<c> plateau=<yes|no>
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from arms import (
    acs_schedule,
    coreset_overrides,
    epoch_losses,
    rcs_schedule,
    reselection_epochs,
    step_normalized,
    train_and_evaluate,
)
from robustssl.config import load_config
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.methods import METHODS
from timing import accuracies, machine, mean_sd, protocol_numbers

SELECTORS = ("gradmatch", "craig", "random")
BASELINES = ("full-time", "full-updates")  # full training at the first selector's cost, run after it
RECIPES = {"acl": "acl_rcs_fmnist_cpu"}  # others: <method>_fmnist_cpu; ACL's carries RCS's attack settings for eps 0.1
FULL = ["coreset.selector=full"]  # every full-data arm says so (a recipe may name a selector)


def recipe(method: str) -> str:
    return RECIPES.get(method, f"{method}_fmnist_cpu")


def coreset_schedule(epochs: int, schedule: str, kappa: float, fraction: float, every: int | None) -> tuple[int, int, int]:
    """(full warm-up epochs, coreset epochs, re-selection every) of a coreset arm: ACS's warm start with
    kappa and c = f (R default 20% of E), or the RCS code's (10% warm-up, re-selection every 10%)."""
    if schedule == "rcs":
        warm, core, tenth = rcs_schedule(epochs)
        return warm, core, every or tenth
    warm, core = acs_schedule(epochs, kappa, fraction)
    return warm, core, every or max(1, round(0.2 * epochs))


def step_bound(method: str, extra: list[str], over: list[str], full_epochs: int) -> float:
    """Full training's steps (full_epochs on all data) over a coreset arm's `over` (whole batches, counted by the
    run's own coreset schedule: the warm-up on the pool, then the coreset's batches): the speed-up with free selections."""
    cfg = load_config(recipe(method), extra + over)
    n = cfg.data.train_subset
    if n is None:
        raise SystemExit("the bound needs data.train_subset (the pool size) in the recipe or --extra")
    b = cfg.optim.batch_size
    return full_epochs * (n // b) / CoresetSchedule(cfg.coreset, cfg.train.epochs, n, b, cfg.train.seed).total_steps()


def baseline_epochs(arm: str, full: dict[str, Any], chosen: dict[str, Any], epochs: int) -> int:
    """Epochs of full training costing what the chosen selector's run cost: its time (full-time) or its updates."""
    per_epoch = full["steps"] / epochs
    if arm == "full-updates":
        return max(1, round(chosen["steps"] / per_epoch))
    seconds = chosen["steps"] * full["train_s"] / full["steps"] + chosen["selection_s"]  # at full's speed per step
    return max(1, round(epochs * seconds / full["train_s"]))


def protocol(r: dict[str, Any]) -> dict[str, Any]:
    """The run's evaluation: its own classifier (supervised) or SLF (label-free)."""
    return r["protocols"]["direct" if "direct" in r["protocols"] else "slf"]


def pgd(r: dict[str, Any]) -> float:
    return float(protocol(r)["pgd20"])


PLATEAU_POINTS = 1.0  # the plateau rule: full training's mean PGD-20 gain from E/2 to E within this many points


def plateau_gaps(rows: list[dict[str, Any]]) -> list[float]:
    """Full training's PGD-20 at E minus at E/2, in points, per seed (sorted) that has both runs; one method's rows."""
    full = {r["seed"]: r for r in rows if r["arm"] == "full"}
    return [100 * (pgd(full[r["seed"]]) - pgd(r))
            for r in sorted(rows, key=lambda r: r["seed"]) if r["arm"] == "full-half" and r["seed"] in full]


def on_plateau(gaps: list[float]) -> bool:
    """The plateau rule on `plateau_gaps` (at least one seed): their mean within PLATEAU_POINTS."""
    return abs(statistics.mean(gaps)) <= PLATEAU_POINTS


def signed_mean_sd(points: list[float]) -> str:
    """Differences or gains in points as '+mean ± sd' (sd 0 for one value)."""
    sd = statistics.stdev(points) if len(points) > 1 else 0.0
    return f"{statistics.mean(points):+.2f} ± {sd:.2f}"


def per_seed(diffs: list[float]) -> str:
    """Paired differences in points as 'mean ± sd (each seed)' (sd 0 for one seed)."""
    return f"{signed_mean_sd(diffs)} ({', '.join(f'{d:+.1f}' for d in diffs)})"


def coreset_fit(arm_run: Path, full_run: Path) -> list[tuple[float, float, float, float]] | None:
    """How far a coreset arm fits each coreset before replacing it: per re-selection at epoch e, its training loss at
    e - 1 (last epoch on the old coreset) and at e (first on the new one), then full training's at the same points of
    its own schedule (epochs scaled by the runs' lengths: ACS's coreset arms run fewer epochs than full). None where a
    run folder is gone."""
    if not all((r / name).is_file() for r in (arm_run, full_run) for name in ("metrics.jsonl", "run.json")):
        return None
    mine, full = epoch_losses(arm_run), epoch_losses(full_run)
    scale = (max(full) + 1) / (max(mine) + 1)
    return [(mine[e - 1], mine[e], full[round((e - 1) * scale)], full[round(e * scale)]) for e in reselection_epochs(arm_run)]


def kept_shares(r: dict[str, Any]) -> list[float] | None:
    """The share of each re-selected coreset already in the one before it (`kept` in run.json), from the row, or from
    the run folder for rows saved before the row held it; None where neither has it."""
    if "kept" in r:
        return list(r["kept"])
    path = Path(r["run"]) / "run.json"
    return kept_of(json.loads(path.read_text())) if path.is_file() else None


def kept_of(summary: dict[str, Any]) -> list[float]:
    """run.json's kept shares, one per re-selection (the first selection has no coreset before it)."""
    return [s["kept"] for s in summary.get("coreset", {}).get("selections", []) if "kept" in s]


RUN_SETTINGS = ("extra", "fraction", "kappa", "every", "unit", "schedule", "selector_extra")
LEGACY_SETTINGS = {"schedule": "acs", "unit": "sample", "selector_extra": ""}  # files made before these settings existed


def read_results(files: list[str]) -> tuple[list[dict[str, Any]], str, dict[str, Any], dict[str, dict[str, list[float]]]]:
    """The rows of --json files of one setting (seeds run separately), their machine line(s), the runs' settings
    (RUN_SETTINGS) and the coreset fits saved with them. SystemExit when the files differ in a setting or repeat a
    seed's method and arm."""
    done = [json.loads(Path(f).read_text()) for f in files]
    # files run on different machines (CPU models, kernels' instruction sets) are named each
    rows, where = [r for d in done for r in d["rows"]], " | ".join(dict.fromkeys(d["machine"] for d in done))
    fits: dict[str, dict[str, list[float]]] = {}
    for d in done:  # the fits saved with the rows stand in where the run folders are gone
        for name, fit in d.get("coreset_fit", {}).items():
            for key, values in fit.items():
                fits.setdefault(name, {}).setdefault(key, []).extend(values)
    settings = {}
    for key in RUN_SETTINGS:
        values = [d["settings"].get(key, LEGACY_SETTINGS.get(key)) for d in done]
        if any(v != values[0] for v in values):
            raise SystemExit(f"--from-json: the files were run with different {key} ({', '.join(map(str, values))}); "
                             "give only files of one setting")
        settings[key] = values[0]
    if len({(r["seed"], r["method"], r["arm"]) for r in rows}) < len(rows):
        raise SystemExit("--from-json: two files hold the same seed, method and arm; give each seed's runs once")
    return rows, where, settings, fits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="trades,pgd_at")
    p.add_argument("--selectors", default=",".join(SELECTORS), help="the first one also sets the full-time/updates budgets")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--schedule", default="auto", choices=("auto", "acs", "rcs"),
                   help="coreset arms' schedule; auto: ACS's for supervised methods, RCS's for label-free ones")
    p.add_argument("--fraction", type=float, help="coreset fraction (default: ACS 0.3, RCS 0.2)")
    p.add_argument("--kappa", type=float, default=0.5, help="ACS's warm-start share")
    p.add_argument("--every", type=int, help="re-selection every R epochs (default: ACS 20%%, RCS 10%% of E)")
    p.add_argument("--unit", default="batch", choices=("batch", "sample"),
                   help="coreset atoms: minibatches (ACS's shipped GradMatchPB / CRAIGPB) or per-class images")
    p.add_argument("--selector-extra", default="",
                   help="comma-separated coreset.<selector>.<key>=<value> overrides, each for its own selector's arm only "
                        "(e.g. coreset.gradmatch.weighted=false: the same picks trained without their weights)")
    p.add_argument("--baselines", default="full-half," + ",".join(BASELINES),
                   help="the full-data baselines to run beside full and the selectors (comma-separated; e.g. full-half "
                        "alone for the plateau check when full-time and full-updates are known from a shorter E)")
    p.add_argument("--no-baselines", action="store_true", help="skip full-half, full-time and full-updates (--baselines '')")
    p.add_argument("--extra", default="", help="comma-separated overrides for every training run")
    p.add_argument("--eval-extra", default="eval.eps_curve=[]", help="comma-separated overrides for every evaluation")
    p.add_argument("--runs", required=True)
    p.add_argument("--json")
    p.add_argument("--reuse", action="store_true",
                   help="a finished run folder is evaluated again, not retrained; an interrupted one is resumed")
    p.add_argument("--from-json", nargs="+",
                   help="print the tables of earlier --json files (a partial run included; seeds run separately, "
                        "with the same settings) and stop")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    selectors = [s for s in args.selectors.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [e for e in args.extra.split(",") if e]
    eval_extra = [e for e in args.eval_extra.split(",") if e]
    selector_extra = [o for o in args.selector_extra.split(",") if o]
    baselines = [] if args.no_baselines else [b for b in args.baselines.split(",") if b]
    if unknown := [b for b in baselines if b not in ("full-half", *BASELINES)]:
        raise SystemExit(f"--baselines {','.join(unknown)}: not a baseline arm; choose among full-half, {', '.join(BASELINES)}")
    for o in selector_extra:
        if not any(o.startswith(f"coreset.{s}.") for s in selectors):
            raise SystemExit(f"--selector-extra {o}: each override must set coreset.<selector>.<key> of a selector in "
                             f"--selectors ({', '.join(selectors)}), e.g. coreset.gradmatch.weighted=false")
    runs = Path(args.runs)
    where = machine(torch.device("cpu"))
    rows: list[dict[str, Any]] = []
    bounds: dict[str, dict[str, float]] = {}  # method -> coreset arm -> its step bound
    fits: dict[str, dict[str, list[float]]] = {}  # "method arm" -> training losses around its re-selections
    stored_fits: dict[str, dict[str, list[float]]] = {}  # --from-json: the files' own coreset_fit
    overlaps: dict[str, list[float]] = {}  # "method arm" -> kept shares at its re-selections, all seeds

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": where, "settings": vars(args), "threads": torch.get_num_threads(),
                                                   "bounds": bounds, "rows": rows, "coreset_fit": fits}, indent=2))

    def run(method: str, arm: str, seed: int, over: list[str], epochs: int) -> dict[str, Any]:
        out = runs / f"{method}-{arm}-{seed}"
        report, summary, total_s = train_and_evaluate(recipe(method), out, extra + [f"train.seed={seed}"] + over, eval_extra, args.reuse)
        sel_s = summary["coreset"].get("selection_seconds", 0.0)
        rows.append({"seed": seed, "method": method, "arm": arm, "epochs": epochs, "run": str(out),
                     "train_s": summary["seconds"], "selection_s": sel_s, "steps": summary["steps"],
                     "phase_seconds": summary["phase_seconds"], "total_s": total_s, "protocols": protocol_numbers(report),
                     "kept": kept_of(summary)})
        d = protocol(rows[-1])
        print(f"seed {seed} {method} {arm:12s} ({epochs} epochs): train {summary['seconds']:.0f}s (selection {sel_s:.0f}s); "
              f"clean {d['clean']:.3f} pgd20 {d['pgd20']:.3f} AA {d['autoattack']}", flush=True)
        save()
        return rows[-1]

    if args.from_json:
        rows, where, settings, stored_fits = read_results(args.from_json)
        for key, value in settings.items():  # the settings of the runs, not of this call
            setattr(args, key, value)
        extra = args.extra.split(",") if args.extra else []
        selector_extra = [o for o in args.selector_extra.split(",") if o]
        seeds = sorted({r["seed"] for r in rows})
        methods = [m for m in methods if any(r["method"] == m for r in rows)]

    def arm_plan(method: str) -> tuple[int, int, Any]:
        """(E, a coreset arm's epochs, its overrides given its selector) for this method's schedule and fraction."""
        kind = args.schedule if args.schedule != "auto" else ("acs" if METHODS[method].supervised else "rcs")
        fraction = args.fraction or (0.3 if kind == "acs" else 0.2)
        epochs = load_config(recipe(method), extra).train.epochs
        warm, core, every = coreset_schedule(epochs, kind, args.kappa, fraction, args.every)
        return epochs, warm + core, lambda s: (coreset_overrides(s, fraction, warm, core, every, args.unit)
                                               + [o for o in selector_extra if o.startswith(f"coreset.{s}.")])

    for m in methods:
        epochs, _, overrides = arm_plan(m)
        bounds[m] = {s: step_bound(m, extra, overrides(s), epochs) for s in selectors}  # RCS holds a validation split out
    for seed in [] if args.from_json else seeds:
        for method in methods:
            epochs, coreset_epochs, overrides = arm_plan(method)
            arms = ["full", *selectors] + [b for b in baselines if b == "full-half"]
            shift = (seed + methods.index(method)) % len(arms)
            done_here: dict[str, dict[str, Any]] = {}
            for arm in arms[shift:] + arms[:shift]:
                if arm == "full":
                    done_here[arm] = run(method, arm, seed, FULL, epochs)
                elif arm == "full-half":
                    done_here[arm] = run(method, arm, seed, [*FULL, f"train.epochs={epochs // 2}"], epochs // 2)
                else:
                    done_here[arm] = run(method, arm, seed, overrides(arm), coreset_epochs)
            for arm in [b for b in BASELINES if b in baselines]:
                e = baseline_epochs(arm, done_here["full"], done_here[selectors[0]], epochs)
                run(method, arm, seed, [*FULL, f"train.epochs={e}"], e)

    print(f"\nmachine: {where}; seeds {seeds}; schedule {args.schedule} f={args.fraction or 'default'} kappa={args.kappa} "
          f"R={args.every or 'default'} unit={args.unit}; selector overrides {args.selector_extra or 'none'}; "
          f"extra {extra or 'none'}")
    print("| method | arm | epochs | step-normalized speed-up (median, min-max) | wall-clock | bound | selection share | "
          "clean % | PGD-20 % | AutoAttack % | PGD-20 minus random, per seed (mean ± sd) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results, checks = [], []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        full = {r["seed"]: r for r in mine if r["arm"] == "full"}
        if not full:
            continue
        # Why a coreset arm trails: does it memorize a coreset between re-selections (loss far below full's, then a jump)?
        for r in mine:
            if r["arm"] in selectors and r["seed"] in full and (points := coreset_fit(Path(r["run"]), Path(full[r["seed"]]["run"]))):
                fit = fits.setdefault(f"{method} {r['arm']}", {"before": [], "after": [], "full_before": [], "full_after": []})
                for key, column in zip(fit, zip(*points)):
                    fit[key].extend(column)
            if r["arm"] in selectors and (shares := kept_shares(r)):
                overlaps.setdefault(f"{method} {r['arm']}", []).extend(shares)
        random_runs = {r["seed"]: r for r in mine if r["arm"] == "random"}
        full_pgd = statistics.mean(pgd(r) for r in full.values())
        plateau = "n/a"
        if gaps := plateau_gaps(mine):  # paired by seed: a seed run without full-half (--baselines) has no E/2 run
            plateau = "yes" if on_plateau(gaps) else "no"
            checks.append(f"plateau check, {method}: full PGD-20 at E minus at E/2 = {statistics.mean(gaps):+.2f} points "
                          f"over {len(gaps)} seeds ({', '.join(f'{g:+.1f}' for g in gaps)}; |mean| <= 1: {plateau})")
        for arm in ["full", "full-half", *selectors, *BASELINES]:
            rs = sorted((r for r in mine if r["arm"] == arm and r["seed"] in full), key=lambda r: r["seed"])  # per-seed cells in seed order
            if not rs:
                continue
            ratios = [full[r["seed"]]["train_s"] / r["train_s"] for r in rs]
            normalized = [step_normalized(full[r["seed"]], r) for r in rs]
            share = statistics.mean(r["selection_s"] / r["train_s"] for r in rs)
            vals = accuracies([protocol(r) for r in rs])
            diffs = [100 * (pgd(r) - pgd(random_runs[r["seed"]])) for r in rs if r["seed"] in random_runs]
            diff = per_seed(diffs) if diffs and arm != "random" else ""
            coreset_arm = arm not in ("full", "full-half", *BASELINES)
            bound = bounds[method].get(arm, max(bounds[method].values()))
            flag = " (ABOVE BOUND: measurement problem)" if coreset_arm and max(normalized) > bound else ""
            epochs_cell = "/".join(sorted({str(r.get("epochs", "?")) for r in rs}))  # rows before #18 have none
            print(f"| {method} | {arm} | {epochs_cell} | "
                  f"{statistics.median(normalized):.2f}x ({min(normalized):.2f}-{max(normalized):.2f}){flag} | "
                  f"{statistics.median(ratios):.2f}x | {bound:.2f}x | {100 * share:.1f}% | {mean_sd(vals['clean'])} | "
                  f"{mean_sd(vals['pgd20'])} | {mean_sd(vals['autoattack'])} | {diff} |")
            if coreset_arm:
                rand = [pgd(random_runs[s]) for s in random_runs if s in full]
                rand_pgd = f"{100 * statistics.mean(rand):.2f}" if rand else "n/a"
                results.append(f"RESULT method={method} selector={arm} speedup={statistics.median(normalized):.2f}x "
                               f"pgd20={100 * statistics.mean(vals['pgd20']):.2f} full_pgd20={100 * full_pgd:.2f} "
                               f"random_pgd20={rand_pgd} plateau={plateau}")
    fits = fits or stored_fits  # recomputed from the run folders where they still exist
    if fits:
        print("\ncoreset fit: training loss (the method's own) at the last epoch on a coreset -> the first on the next one, "
              "mean over seeds and re-selections; full training at the same points of its schedule")
    for name, fit in fits.items():
        m = {k: statistics.mean(v) for k, v in fit.items()}
        print(f"  {name}: {m['before']:.3f} -> {m['after']:.3f} ({len(fit['before'])} re-selections); "
              f"full {m['full_before']:.3f} -> {m['full_after']:.3f}")
    if overlaps:  # a selector that re-picks its last coreset trains longer on the same data than its period says
        print("\ncoreset overlap: share of a re-selected coreset already in the one before it, mean (min-max) over seeds")
        for name, shares in overlaps.items():
            print(f"  {name}: {100 * statistics.mean(shares):.0f} % ({100 * min(shares):.0f}-{100 * max(shares):.0f} %, "
                  f"{len(shares)} re-selections)")
    if not args.from_json:
        save()
    print("\n".join(checks + results))


if __name__ == "__main__":
    main()
