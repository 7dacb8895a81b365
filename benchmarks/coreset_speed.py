"""Wall-clock of full ACL vs RCS-ACL vs random-ACL for the same number of epochs.

Setting (issue #3): the same small model, coreset fraction f=0.2, warm-up on the full data
for 10% of the epochs, a new selection every 10% of the epochs. Arms run interleaved per
repeat so machine noise hits all of them alike. Reports, per repeat and as median
(min..max): full/RCS and full/random wall-clock ratios and RCS's selection share of its
own run time. Two RCS arms: `rcs` with the paper's settings (every candidate, the
method's own attack) and `rcs-fast` with cheaper candidate gradients (see --fast).

    python benchmarks/coreset_speed.py                       # CPU, Fashion-MNIST subset
    python benchmarks/coreset_speed.py --device cuda --n 20000 --epochs 50
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from robustssl import api
from timing import machine, spread


def arm_overrides(arm: str, fast: list[str]) -> list[str]:
    if arm == "full":
        return ["coreset.method=full"]
    if arm == "random":
        return ["coreset.method=random"]
    if arm == "rcs":
        return ["coreset.method=rcs"]
    return ["coreset.method=rcs", *fast]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=2560, help="Fashion-MNIST training images")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--arms", default="full,rcs,rcs-fast,random")
    p.add_argument("--fast", default="coreset.candidate_fraction=0.4,coreset.candidate_attack_steps=1",
                   help="overrides of the rcs-fast arm")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    device = torch.device(args.device)
    every = max(1, args.epochs // 10)
    common = [
        f"data.train_subset={args.n}", f"train.epochs={args.epochs}", f"train.device={args.device}", "train.progress=false",
        f"model.width={args.width}", f"optim.batch_size={args.batch}", "coreset.fraction=0.2", "coreset.unit=batch",
        f"coreset.warmup_epochs={every}", f"coreset.every={every}", "coreset.rd_eps=0.1", "coreset.rd_alpha=0.04",
        "train.checkpoint_every_epochs=0", "train.log_every_steps=1000",
    ]
    arms = args.arms.split(",")
    fast = args.fast.split(",") if args.fast else []
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for arm in arms:
                out = Path(tmp) / f"{arm}-{rep}"
                r = api.pretrain("acl_fmnist_cpu", out, overrides=common + arm_overrides(arm, fast) + [f"train.seed={rep}"])
                summary = json.loads((out / "run.json").read_text())
                runs[arm].append({"seconds": r.seconds, "steps": r.steps, "selection_s": summary["coreset"]["selection_seconds"],
                                  "n_selections": summary["coreset"]["n_selections"], "fraction_real": summary["coreset"]["fraction_real"]})
                print(f"repeat {rep} {arm:9s}: {r.seconds:7.1f}s, {r.steps} steps, selection {runs[arm][-1]['selection_s']:.1f}s "
                      f"in {runs[arm][-1]['n_selections']} selections", flush=True)
    result: dict = {"machine": machine(device), "settings": vars(args), "runs": runs, "ratios": {}, "selection_share": {}}
    print(f"\nmachine: {result['machine']}")
    print(f"setting: {args.n} Fashion-MNIST images, CNN width {args.width}, batch {args.batch}, {args.epochs} epochs, f=0.2, "
          f"warm-up {every} epochs, selection every {every} epochs, real fraction {runs[arms[-1]][0]['fraction_real']:.3f}")
    for arm in arms:
        if arm == "full" or "full" not in runs:
            continue
        ratios = [f["seconds"] / a["seconds"] for f, a in zip(runs["full"], runs[arm])]
        share = [a["selection_s"] / a["seconds"] for a in runs[arm]]
        result["ratios"][arm], result["selection_share"][arm] = ratios, share
        print(f"full / {arm:9s} wall-clock: {spread(ratios)}x   selection share of the {arm} run: {spread([100 * s for s in share])} %")
    if "rcs" in runs:
        print(f"one rcs selection: {statistics.median([a['selection_s'] / max(1, a['n_selections']) for a in runs['rcs']]):.2f}s; "
              f"one full epoch: {statistics.median([f['seconds'] / args.epochs for f in runs.get('full', [])] or [0]):.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
