"""The budget frontier on the CPU: for a training-time budget, which method x selector gives the most
robust encoder? (issue #19, part 3), and the online probe's overhead (`--overhead`).

Every arm trains on the same data (Fashion-MNIST, `--train-subset` images), the same CNN width and
the same eps (0.1), with the online probe after every epoch (train.probe_every=1), from its bundled
CPU recipe (method settings, batch size, lr, coreset schedule):

    self-supervised (SLF evaluation):  simclr, acl, acl+rcs, acl+random, dynacl, rocl, robust_emp, cfamc
    supervised, they use labels (their own classifier, `direct`):
                                       pgd_at, pgd_at+gradmatch, pgd_at+random, trades, trades+gradmatch, trades+random

1. Calibration, seed 0: each arm at `--calib-epochs` epochs (coreset arms: at least warm-up + 2). Full
   ACL's training seconds at its recipe's epochs are the budget unit T (probe time excluded, as in the
   probe records' train_seconds; mean over the seeds' full-ACL runs). From each calibration run: the
   set-up seconds before the first epoch and the seconds of a full-data and of a coreset epoch
   (selection included).
2. Sized runs: for every budget b in `--budgets` (1/4, 1/2, 1) and seed, each arm re-trained with the
   largest epoch count whose calibrated cost fits b x T (at least 1; its lr schedule complete at that
   length), then evaluated (SLF or direct, PGD-20 at eps 0.1 on `eval.n_examples` test images).
   A run whose measured train_seconds end above b x T x (1 + `--slack`) is flagged and not ranked.
3. The table per budget and arm: final PGD-20 (mean over seeds), training seconds, epochs, and the
   probe robust accuracy the 1x run had reached by b x T (its curve); the best arm per budget.
   `--compare` writes `robustssl compare` over the 1x runs of the first seed (robustness_vs_time.png).

Every run folder is kept under --runs (`<arm>-e<epochs>-s<seed>`); with --reuse a folder that holds an
encoder (and a report, for sized runs) is read, not retrained, so an interrupted benchmark resumes.
Every number goes to --json after each run. It ends with

    RESULT budget=<fraction> best=<method+selector> robust=<pct>

`--overhead`: the probe's cost at K=1: each of `--overhead-methods` trained from its CPU recipe with
train.probe_every=1 and 0, side by side (interleaved, per seed); the ratio of the run times (run.json
seconds, probes included) and the probes' share of the probed run (sum of probe_seconds / run
seconds, within one run so machine drift cancels):

    RESULT probe_overhead method=<m> ratio=<x.xxx> probe_share=<pct>

    python benchmarks/budget_frontier.py --runs runs/frontier --json benchmarks/results/budget_frontier_cpu.json \\
        --compare docs/frontier_fmnist
    python benchmarks/budget_frontier.py --overhead --runs runs/probe_overhead --json benchmarks/results/probe_overhead_cpu.json
    python benchmarks/budget_frontier.py --smoke --runs /tmp/frontier_smoke    # seconds: checks the script, measures nothing
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from robustssl import api
from robustssl.config import load_config
from robustssl.eval.curves import probe_curve, robust_at
from robustssl.train.metrics import read_metrics
from timing import machine


@dataclass(frozen=True)
class Arm:
    name: str  # method+selector
    recipe: str
    overrides: tuple[str, ...] = ()
    supervised: bool = False

    @property
    def protocol(self) -> str:
        return "direct" if self.supervised else "slf"


SUP_CORESET = ("coreset.fraction=0.3", "coreset.unit=sample", "coreset.warmup_epochs=2", "coreset.every=3")
ARMS = {a.name: a for a in (
    Arm("simclr", "simclr_fmnist_cpu"),
    Arm("acl", "acl_fmnist_cpu"),
    Arm("acl+rcs", "acl_rcs_fmnist_cpu"),
    Arm("acl+random", "acl_rcs_fmnist_cpu", ("coreset.selector=random",)),
    Arm("dynacl", "dynacl_fmnist_cpu"),
    Arm("rocl", "rocl_fmnist_cpu"),
    Arm("robust_emp", "robust_emp_fmnist_cpu"),
    Arm("cfamc", "cfamc_fmnist_cpu"),
    Arm("pgd_at", "pgd_at_fmnist_cpu", supervised=True),
    Arm("pgd_at+gradmatch", "pgd_at_fmnist_cpu", ("coreset.selector=gradmatch", *SUP_CORESET), True),
    Arm("pgd_at+random", "pgd_at_fmnist_cpu", ("coreset.selector=random", *SUP_CORESET), True),
    Arm("trades", "trades_fmnist_cpu", supervised=True),
    Arm("trades+gradmatch", "trades_fmnist_cpu", ("coreset.selector=gradmatch", *SUP_CORESET), True),
    Arm("trades+random", "trades_fmnist_cpu", ("coreset.selector=random", *SUP_CORESET), True),
)}
SMOKE = ["data.train_subset=256", "model.width=4", "optim.batch_size=64", "train.probe_train_examples=64",
         "train.probe_test_examples=32", "attack.steps=1"]
SMOKE_EVAL = ["eval.n_examples=32", "eval.train_examples=256", "eval.linear_epochs=2"]


@dataclass
class Costs:
    """Calibrated seconds of one arm: set-up before the first epoch, a full-data epoch, a coreset epoch."""

    setup: float
    full: float
    core: float | None
    warmup: int | None  # coreset warm-up epochs (None: no coreset)
    epochs: list[float] = field(default_factory=list)

    def cost(self, epochs: int) -> float:
        """Predicted train_seconds of a run of `epochs` epochs."""
        if self.warmup is None or self.core is None:
            return self.setup + epochs * self.full
        warm = min(epochs, self.warmup)
        return self.setup + warm * self.full + (epochs - warm) * self.core

    def epochs_within(self, seconds: float, most: int) -> int:
        """The most epochs (1 to `most`) whose predicted cost fits `seconds`."""
        e = 1
        while e < most and self.cost(e + 1) <= seconds * (1 + 1e-9):
            e += 1
        return e


def common(args: argparse.Namespace) -> list[str]:
    """The overrides every run shares: data, model width, eps, the probe after every epoch."""
    base = [f"data.train_subset={args.train_subset}", f"model.width={args.width}", "attack.eps=0.1", "eval.eps=0.1",
            "train.probe_every=1", "train.progress=false"]
    return base + (SMOKE if args.smoke else []) + [e for e in args.extra.split(",") if e]


def run_folder(runs: Path, arm: Arm, epochs: int, seed: int) -> Path:
    return runs / f"{arm.name.replace('+', '_')}-e{epochs}-s{seed}"


MADE: set[Path] = set()  # run folders trained by this invocation (a calibration run can be a sized run too)


def train(arm: Arm, epochs: int, seed: int, args: argparse.Namespace) -> Path:
    out = run_folder(Path(args.runs), arm, epochs, seed)
    if (args.reuse or out in MADE) and (out / "encoder.safetensors").is_file():
        return out
    if out.exists():
        raise SystemExit(f"{out} holds an unfinished or earlier run; delete it, or pass --reuse if it finished")
    api.pretrain(arm.recipe, out, overrides=common(args) + list(arm.overrides) + [f"train.epochs={epochs}",
                                                                                    f"train.seed={seed}"])
    MADE.add(out)
    return out


EVALUATED: set[Path] = set()


def evaluate(out: Path, arm: Arm, args: argparse.Namespace) -> dict[str, Any]:
    if not ((args.reuse or out in EVALUATED) and (out / "report.json").is_file()):
        extra = [e for e in args.eval_extra.split(",") if e] + (SMOKE_EVAL if args.smoke else [])
        api.evaluate(out, overrides=[f"eval.protocols=[{arm.protocol}]", *extra])
    EVALUATED.add(out)
    report = json.loads((out / "report.json").read_text())
    p = report["protocols"][arm.protocol]
    pgd20 = next(a["accuracy"] for a in p["attacks"] if a["attack"] == "pgd20")
    return {"clean": p["clean"]["accuracy"], "pgd20": pgd20, "n_examples": p["clean"]["n_examples"],
            "sanity_passed": p["sanity_passed"]}


def train_seconds(out: Path) -> float:
    """The run's training seconds without its probes' time: the last probe's train_seconds."""
    return float(probe_curve(out)[-1]["train_seconds"])


def calibrate(out: Path) -> Costs:
    """Set-up, full-data epoch and coreset epoch seconds of a calibration run (from its metrics). The epoch
    records' seconds are scaled so that they add up, with the set-up, to the run's train_seconds (what
    happens between epochs, checkpoints, is shared out): the calibration run's own length is predicted exactly."""
    cfg = api.run_config(out)
    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if r["type"] == "epoch"]
    probes = [r for r in records if r["type"] == "probe"]
    setup = max(0.0, float(probes[0]["train_seconds"]) - float(epochs[0]["seconds"]))
    coreset = cfg.coreset.selector != "full"
    warm = cfg.coreset.warmup_epochs if coreset else None
    scale = (float(probes[-1]["train_seconds"]) - setup) / max(1e-9, sum(float(r["seconds"]) for r in epochs))
    full = [scale * float(r["seconds"]) for r in epochs if warm is None or r["epoch"] < warm]
    core = [scale * float(r["seconds"]) for r in epochs if warm is not None and r["epoch"] >= warm]
    return Costs(setup, statistics.mean(full) if full else statistics.mean(core), statistics.mean(core) if core else None,
                 warm, [float(r["seconds"]) for r in epochs])


def frontier(args: argparse.Namespace) -> None:
    arms = [ARMS[a] for a in args.arms.split(",") if a]
    unknown = [a for a in args.arms.split(",") if a and a not in ARMS]
    if unknown or ARMS["acl"] not in arms:
        raise SystemExit(f"--arms: unknown {unknown}; valid: {', '.join(ARMS)}; acl (the budget unit) must be one")
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [Fraction(b) for b in args.budgets.split(",")]
    data: dict[str, Any] = {"machine": machine(torch.device("cpu")), "settings": vars(args), "common": common(args),
                            "calibration": {}, "budget_unit_seconds": None, "runs": [], "table": [], "results": []}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2, default=str))

    acl = ARMS["acl"]
    acl_epochs = load_config(acl.recipe, common(args)).train.epochs
    unit = statistics.mean(train_seconds(train(acl, acl_epochs, s, args)) for s in seeds)
    data["budget_unit_seconds"] = unit
    print(f"budget unit: full ACL ({acl_epochs} epochs) trains in {unit:.1f} s (probe time excluded)", flush=True)
    costs: dict[str, Costs] = {}
    for arm in arms:
        cfg = load_config(arm.recipe, common(args) + list(arm.overrides))
        epochs = acl_epochs if arm is acl else args.calib_epochs
        if cfg.coreset.selector != "full":
            epochs = max(epochs, cfg.coreset.warmup_epochs + 2)
        costs[arm.name] = calibrate(train(arm, epochs, seeds[0], args))
        data["calibration"][arm.name] = {"epochs": epochs, **vars(costs[arm.name])}
        print(f"calibrated {arm.name}: set-up {costs[arm.name].setup:.1f} s, epoch {costs[arm.name].full:.1f} s"
              + (f", coreset epoch {costs[arm.name].core:.1f} s" if costs[arm.name].core else ""), flush=True)
        save()
    for b in sorted(budgets, reverse=True):  # the 1x runs first: their curves are read at every budget
        for seed in seeds:
            for arm in arms:
                epochs = costs[arm.name].epochs_within(float(b) * unit, args.max_epochs)
                out = train(arm, epochs, seed, args)
                ev = evaluate(out, arm, args)
                seconds = train_seconds(out)
                row = {"budget": str(b), "arm": arm.name, "supervised": arm.supervised, "seed": seed, "epochs": epochs,
                       "run": str(out), "train_seconds": seconds, "over_budget": seconds > float(b) * unit * (1 + args.slack),
                       **ev, "probe_curve": [{k: p[k] for k in ("epoch", "train_seconds", "clean", "robust")}
                                             for p in probe_curve(out)]}
                data["runs"].append(row)
                print(f"budget {b} seed {seed} {arm.name:17s}: {epochs} epochs, {seconds:.1f} s"
                      f"{' (OVER BUDGET)' if row['over_budget'] else ''}; clean {ev['clean']:.3f} PGD-20 {ev['pgd20']:.3f}",
                      flush=True)
                save()
    full_runs = {(r["arm"], r["seed"]): r for r in data["runs"] if Fraction(r["budget"]) == max(budgets)}
    print(f"\nmachine: {data['machine']}; seeds {seeds}; budget unit T = {unit:.1f} s (full ACL)")
    print("| budget | arm | labels | epochs | train s | final PGD-20 % (SLF / direct) | probe robust % at b x T (1x run) | ranked |")
    print("|---|---|---|---|---|---|---|---|")
    for b in budgets:
        best: tuple[float, str] | None = None
        for arm in arms:
            rs = [r for r in data["runs"] if Fraction(r["budget"]) == b and r["arm"] == arm.name]
            if not rs:
                continue
            pgd = statistics.mean(r["pgd20"] for r in rs)
            curve = [robust_at(full_runs[(arm.name, r["seed"])]["probe_curve"], float(b) * unit)
                     for r in rs if (arm.name, r["seed"]) in full_runs]
            known = [c for c in curve if c is not None]
            probe = statistics.mean(known) if known else None
            ranked = not any(r["over_budget"] for r in rs)
            data["table"].append({"budget": str(b), "arm": arm.name, "supervised": arm.supervised, "epochs": rs[0]["epochs"],
                                  "train_seconds": statistics.mean(r["train_seconds"] for r in rs), "pgd20": pgd,
                                  "probe_at_budget": probe, "seeds": len(rs), "ranked": ranked})
            print(f"| {b} | {arm.name} | {'yes' if arm.supervised else 'no'} | {rs[0]['epochs']} | "
                  f"{statistics.mean(r['train_seconds'] for r in rs):.1f} | {100 * pgd:.2f} | "
                  f"{'-' if probe is None else f'{100 * probe:.2f}'} | {'yes' if ranked else 'no (over budget)'} |")
            if ranked and (best is None or pgd > best[0]):
                best = (pgd, arm.name)
        if best is not None:
            data["results"].append(f"RESULT budget={b} best={best[1]} robust={100 * best[0]:.2f}%")
    save()
    if args.compare:
        api.compare([Path(r["run"]) for r in data["runs"] if Fraction(r["budget"]) == max(budgets) and r["seed"] == seeds[0]],
                    args.compare)
    print("\n".join(data["results"]))


def overhead(args: argparse.Namespace) -> None:
    methods = [m for m in args.overhead_methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    data: dict[str, Any] = {"machine": machine(torch.device("cpu")), "settings": vars(args), "pairs": [], "results": []}
    runs = Path(args.runs)
    for m in methods:
        for seed in seeds:
            pair: dict[str, Any] = {"method": m, "seed": seed}
            for k in (1, 0):  # interleaved: the probed run, then the same run without probes
                out = runs / f"{m}-probe{k}-s{seed}"
                if not (args.reuse and (out / "run.json").is_file()):
                    started = time.perf_counter()
                    extra = SMOKE if args.smoke else []
                    api.pretrain(f"{m}_fmnist_cpu", out, overrides=[*extra, f"train.probe_every={k}", f"train.seed={seed}",
                                                                    "train.progress=false"])
                    pair[f"wall_{k}"] = time.perf_counter() - started
                pair[f"seconds_{k}"] = float(json.loads((out / "run.json").read_text())["seconds"])
                if k:
                    pair["probe_seconds"] = sum(p["probe_seconds"] for p in probe_curve(out))
            pair["ratio"] = pair["seconds_1"] / pair["seconds_0"]
            pair["probe_share"] = pair["probe_seconds"] / pair["seconds_1"]
            data["pairs"].append(pair)
            print(f"{m} seed {seed}: with probes {pair['seconds_1']:.1f} s, without {pair['seconds_0']:.1f} s, ratio "
                  f"{pair['ratio']:.3f}; probes {pair['probe_seconds']:.1f} s = {100 * pair['probe_share']:.2f}% of the run",
                  flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(data, indent=2))
        pairs = [p for p in data["pairs"] if p["method"] == m]
        data["results"].append(f"RESULT probe_overhead method={m} ratio={statistics.median(p['ratio'] for p in pairs):.3f} "
                               f"probe_share={100 * statistics.median(p['probe_share'] for p in pairs):.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    print("\n".join(data["results"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="folder for the run folders (kept; --reuse reads them)")
    p.add_argument("--json", help="write every number here (after each run)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--budgets", default="1/4,1/2,1", help="fractions of full ACL's training time")
    p.add_argument("--calib-epochs", type=int, default=3, help="epochs of each arm's calibration run (coreset arms: "
                   "at least warm-up + 2)")
    p.add_argument("--max-epochs", type=int, default=200, help="the most epochs a sized run gets")
    p.add_argument("--slack", type=float, default=0.15, help="a sized run above budget x (1 + slack) is not ranked")
    p.add_argument("--train-subset", type=int, default=10000, help="training images of every run")
    p.add_argument("--width", type=int, default=16, help="CNN width of every run")
    p.add_argument("--extra", default="", help="comma-separated overrides for every training run")
    p.add_argument("--eval-extra", default="eval.attacks=[pgd20],eval.eps_curve=[]",
                   help="comma-separated overrides for every evaluation (default: PGD-20 only, no eps curve)")
    p.add_argument("--compare", help="write `robustssl compare` over the first seed's 1x runs here (docs/frontier_fmnist)")
    p.add_argument("--reuse", action="store_true", help="read finished run folders instead of retraining them")
    p.add_argument("--overhead", action="store_true", help="measure the probe's overhead at K=1 instead")
    p.add_argument("--overhead-methods", default="acl,simclr,pgd_at")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (256 images, width 4): checks the script, measures nothing")
    args = p.parse_args()
    if args.smoke:
        args.train_subset, args.width = 256, 4
        if args.arms == p.get_default("arms"):
            args.arms = "simclr,acl,acl+random,pgd_at"
        if args.seeds == p.get_default("seeds"):
            args.seeds = "0"
        if args.overhead_methods == p.get_default("overhead_methods"):
            args.overhead_methods = "acl"
    overhead(args) if args.overhead else frontier(args)


if __name__ == "__main__":
    main()
