"""How faithful are the cheap RCS settings? Each against the faithful selection, at several
checkpoints of one ACL run, with random selection as the floor.

At every checkpoint, each setting selects from the same candidates (the same seeded shuffle
of the pool) and the same model. Reported per setting and checkpoint:
- overlap: |picks of the setting  ∩  faithful picks| / budget (1.0: the same coreset);
- rank correlation (Spearman) of the candidates' first-pick scores <g_b, g_val(W0)> with the
  faithful scores (candidates a setting does not score are left out);
- seconds of the selection, and its ratio to the faithful one.
Random's overlap is the floor: a setting near it picks no better than chance.

    python benchmarks/rcs_fidelity.py --json benchmarks/results/rcs_fidelity_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from robustssl.config import load_config
from robustssl.coreset.divergence import ValidationRD
from robustssl.coreset.embeddings import candidate_gradients, gaussian_sketch
from robustssl.coreset.head import HeadView
from robustssl.coreset.rcs import RCSSelector
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.coreset.selectors import RandomSelector
from robustssl.data import DeviceLoader
from robustssl.methods import build_method
from robustssl.models import build_model, model_mode
from robustssl.run_setup import load_train_set, model_spec
from robustssl.train.metrics import MetricsLog
from robustssl.train.trainer import RunContext, build_state, train_epoch
from timing import machine

SETTINGS = {
    "one_step_attack": {"candidate_attack_steps": 1},
    "candidate_fraction_0.4": {"candidate_fraction": 0.4},
    "refresh_every_4": {"refresh_every": 4},
    "sketch_256": {"sketch_dim": 256},
}
SCORES_DIFFER = {"one_step_attack", "sketch_256"}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-12))


def first_scores(model: torch.nn.Module, method: Any, data: Any, cfg: Any, units: list[torch.Tensor], val: torch.Tensor,
                 batch_size: int, seed: int) -> torch.Tensor:
    """What the first pick ranks under the coreset settings `cfg`: <g_b, g_val(W0)> for each of
    `units` (sketched as the selector sketches them)."""
    sel = RCSSelector(cfg, 0)
    s = sel.settings
    view = HeadView(model, s.head)
    attack = method.attack_cfg
    if s.candidate_attack_steps is not None:
        attack = dataclasses.replace(attack, steps=s.candidate_attack_steps)
    with model_mode(model, "eval"):
        x_val = data.images[val.to(data.images.device)].float().div_(255)
        rd = ValidationRD(model, view, x_val, sel.rd_attack, s.reattack_every)
        grads = candidate_gradients(model, method, data, units, cfg.unit, view, chunk=batch_size, attack=attack)
        g_val = rd.refresh(view.flat())
    if s.sketch_dim and s.sketch_dim < view.dim:
        sketch = gaussian_sketch(view.dim, s.sketch_dim, seed, grads.device)
        return (grads @ sketch) @ (g_val @ sketch)
    return grads @ g_val


def train_with_snapshots(cfg: Any, data: Any, epochs: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """One ACL run through the trainer's own epoch loop; the model's state after each epoch in `epochs`."""
    snapshots = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        torch.manual_seed(cfg.train.seed)
        state = build_state(cfg, data, torch.device("cpu"))
        run = RunContext(cfg, out, data, DeviceLoader(data, cfg.optim.batch_size, cfg.train.seed), MetricsLog(out / "m.jsonl"),
                         tqdm(disable=True))
        while state.epoch < max(epochs):
            train_epoch(state, run)
            if state.epoch in epochs:
                snapshots[state.epoch] = copy.deepcopy(state.model.state_dict())
    return snapshots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="Fashion-MNIST training images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--checkpoints", default="2,5,10", help="ACL epochs at which to compare")
    p.add_argument("--seeds", type=int, default=2, help="selection seeds (candidate shuffles) per checkpoint")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    base = [f"data.train_subset={args.n}", "train.progress=false", "train.device=cpu", f"optim.batch_size={args.batch}",
            "model.arch=cnn", "model.width=8", "model.proj_hidden=32", "model.proj_out=32", "coreset.selector=rcs", "coreset.fraction=0.2",
            "coreset.rcs.rd_eps=0.1", "coreset.rcs.rd_alpha=0.04", "train.log_every_steps=100000"]
    rows: list[dict[str, Any]] = []
    cfg = load_config("acl_fmnist_cpu", base + [f"train.epochs={max(checkpoints)}", "train.checkpoint_every_epochs=0"])
    data = load_train_set(cfg)
    method = build_method(cfg, data.image_size, data.num_channels)
    snapshots = train_with_snapshots(dataclasses.replace(cfg, coreset=dataclasses.replace(cfg.coreset, selector="full")), data, checkpoints)
    for epoch in checkpoints:
        model = build_model(model_spec(cfg, data))
        model.load_state_dict(snapshots[epoch])
        for seed in range(args.seeds):
            sched = CoresetSchedule(cfg.coreset, 1, len(data), args.batch, seed)
            budget = sched.budget()
            row: dict[str, Any] = {"epoch": epoch, "seed": seed, "budget": budget}
            faithful_sel = RCSSelector(cfg.coreset, seed)
            units, _ = copy.deepcopy(faithful_sel).candidate_units(sched.pool, args.batch, budget)
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            ref = set(faithful_sel.select(model, method, data, sched.pool, sched.val, budget, args.batch).positions.tolist())
            row["faithful_seconds"] = time.perf_counter() - t0
            torch.manual_seed(seed)
            ref_scores = first_scores(model, method, data, cfg.coreset, units, sched.val, args.batch, seed)
            rand = set(RandomSelector(cfg.coreset, seed).select(model, method, data, sched.pool, sched.val, budget, args.batch).positions.tolist())
            row["random_overlap"] = len(ref & rand) / len(ref)
            for name, change in SETTINGS.items():
                own = dataclasses.replace(cfg.coreset.settings["rcs"], **change)
                c = dataclasses.replace(cfg.coreset, settings={**cfg.coreset.settings, "rcs": own})
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                picks = set(RCSSelector(c, seed).select(model, method, data, sched.pool, sched.val, budget, args.batch).positions.tolist())
                seconds = time.perf_counter() - t0
                # Spearman over the candidates the setting scores; None where its first-pick scores are
                # the faithful ones by construction (a refresh period changes only later picks).
                kept = RCSSelector(c, seed).candidate_units(sched.pool, args.batch, budget)[0]
                rho = None
                if name in SCORES_DIFFER:
                    torch.manual_seed(seed)
                    rho = spearman(first_scores(model, method, data, c, kept, sched.val, args.batch, seed), ref_scores[: len(kept)])
                row[name] = {"overlap": len(ref & picks) / len(ref), "spearman": rho, "candidates": len(kept),
                             "seconds": seconds, "time_ratio": seconds / row["faithful_seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary: dict[str, dict[str, Any]] = {
        name: {k: (statistics.median(v) if (v := [r[name][k] for r in rows if r[name][k] is not None]) else None)
               for k in ("overlap", "spearman", "time_ratio")}
        for name in SETTINGS
    }
    summary["random"] = {"overlap": statistics.median(r["random_overlap"] for r in rows)}
    print(f"\nmachine: {machine(torch.device('cpu'))}; {args.n} images, batch {args.batch}, checkpoints {checkpoints}, "
          f"{args.seeds} seeds each; medians over {len(rows)} selections")
    print("| setting | overlap with faithful picks | Spearman of first-pick scores | time / faithful |")
    print("|---|---|---|---|")
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    for name, s in summary.items():
        print(f"| {name} | {fmt(s['overlap'])} | {fmt(s.get('spearman'))} | {fmt(s.get('time_ratio'))} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(torch.device("cpu")), "settings": vars(args), "rows": rows,
                                               "summary": summary}, indent=2))
    for name, s in summary.items():
        if name != "random":
            print(f"RESULT setting={name} overlap={fmt(s['overlap'])} spearman={fmt(s['spearman'])} time_ratio={fmt(s['time_ratio'])} "
                  f"random_overlap={summary['random']['overlap']:.2f}")


if __name__ == "__main__":
    main()
