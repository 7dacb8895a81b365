"""Does an ACS selection match the full gradient better than a random coreset, and by how much
compared with the noise of one SGD step? A direct check of the selectors' objective, free of training noise.

From a PGD-AT model trained W epochs on the pool (each seed its own), the method's own training
attack (eval mode, as selection) makes one adversarial example per pool image. On those fixed
examples we compute each image's gradient of the CE loss w.r.t. the classifier layer (what GradMatch
and CRAIG match, `head_gradients`' closed form) and w.r.t. every parameter (what training follows).
Each selector picks a coreset at ACS's fraction, with minibatch atoms (`batch`: fixed minibatches of
the pool in order, ACS's GradMatchPB / CRAIGPB) and per-class images (`sample`); random picks
--random-draws coresets of the same size. For a coreset S with normalized weights w, the error is

    err(S) = || sum_i w_i g_i / sum_i w_i  -  mean over the pool of g ||  /  || mean over the pool of g ||

(the weighted mean is the gradient a coreset epoch follows in expectation), measured on the head
gradients and on the full gradients. The scale it is judged against, `step noise`: the same error for
one training minibatch of B random pool images (mean over the pool's fixed minibatches).

    cd benchmarks && python acs_diagnostic.py --n 2000 --batch-size 64 --warmup-epochs 24 --seeds 0,1,2 \\
        --json results/acs_diagnostic_cpu.json

Ends with one line per unit, layer and selector:
RESULT unit=<batch|sample> layer=<head|full> selector=<s> err=<x> random_err=<y> percentile=<p> step_noise=<z>
(percentile: the share of random coresets with a smaller error, in percent).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robustssl import api
from robustssl.coreset.acs import ACSSelector, batch_means
from robustssl.coreset.gradmatch import normalize_weights
from robustssl.coreset.registry import build_selector
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.coreset.selectors import units_to_positions
from robustssl.data.batch import make_batch
from robustssl.methods import build_method
from robustssl.methods.supervised import SupervisedMethod, classifier_layer
from robustssl.models import build_model, model_mode
from robustssl.run_setup import load_train_set, model_spec
from robustssl.train.checkpoint import load_checkpoint


def pool_gradients(model: torch.nn.Module, method: SupervisedMethod, data: Any, pool: torch.Tensor,
                   batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(head gradients [n, C*d + C], full gradients [n, P], labels [n]) of every pool image at one
    adversarial example each (the method's attack, eval mode), in pool order."""
    heads, fulls, labels = [], [], []
    params = [p for p in model.parameters() if p.requires_grad]
    with model_mode(model, "eval"):
        for start in range(0, len(pool), batch_size):
            batch = make_batch(data, pool[start:start + batch_size])
            assert batch.labels is not None
            x, y = batch.images, batch.labels
            x_adv = method.adversarial(model, x, y, method.attack_cfg)
            with torch.no_grad():
                heads.append(method.objective_gradients(model, classifier_layer(model), x, x_adv, y))
            for i in range(len(y)):  # per-example full gradients: BN in eval mode, so examples are independent
                loss = F.cross_entropy(model(x_adv[i:i + 1]), y[i:i + 1])
                fulls.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
            labels.append(y)
    return torch.cat(heads).float(), torch.stack(fulls).float(), torch.cat(labels)


def error(grads: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> float:
    """|| weighted mean of grads[rows] - mean of grads || / || mean of grads ||."""
    target = grads.mean(0)
    w = weights.to(grads.dtype)
    est = (w[:, None] * grads[rows]).sum(0) / w.sum()
    return float((est - target).norm() / target.norm())


def expand(rows: torch.Tensor, weights: torch.Tensor, size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Atom picks (fixed minibatches of `size` of the n pool rows, in order) as pool rows, each image with its atom's weight."""
    return units_to_positions(torch.arange(n), rows, "batch", size), weights.repeat_interleave(size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="pool: Fashion-MNIST training images")
    p.add_argument("--batch-size", type=int, default=64, help="training batch, and the images of one minibatch atom")
    p.add_argument("--warmup-epochs", type=int, default=24, help="PGD-AT epochs (its own cosine) before the selection")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--random-draws", type=int, default=200)
    p.add_argument("--json")
    args = p.parse_args()
    rows_out: list[dict[str, Any]] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            warm = Path(tmp) / "warm"
            api.pretrain("pgd_at_fmnist_cpu", warm, overrides=[
                f"data.train_subset={args.n}", f"optim.batch_size={args.batch_size}", f"train.epochs={args.warmup_epochs}",
                f"train.seed={seed}", "train.device=cpu", "train.progress=false", "train.probe_every=0"])
            cfg = api.run_config(warm, [f"coreset.fraction={args.fraction}", "coreset.selector=gradmatch"])
            data = load_train_set(cfg)
            model = build_model(model_spec(cfg, data))
            model.load_state_dict(load_checkpoint(warm / "checkpoint.pt")["model"])
            method = build_method(cfg, data.image_size, data.num_channels)
            assert isinstance(method, SupervisedMethod)
            pool = CoresetSchedule(cfg.coreset, 1, len(data), args.batch_size, seed).pool
            # The selectors as training builds them; their own picks, without the fill (the subset as chosen).
            selectors = {s: build_selector(api.run_config(warm, [f"coreset.selector={s}"]).coreset, seed) for s in ("gradmatch", "craig")}
            torch.manual_seed(seed)
            head, full, labels = pool_gradients(model, method, data, pool, args.batch_size)
        size, gen = args.batch_size, torch.Generator().manual_seed(seed)
        n_atoms = len(pool) // size
        # The pool's own minibatches of B images: how far one SGD step's gradient is from the pool's.
        minibatches = [torch.arange(i * size, (i + 1) * size) for i in range(n_atoms)]
        for unit in ("batch", "sample"):
            budget = max(1, round(args.fraction * n_atoms)) if unit == "batch" else round(args.fraction * len(pool))
            picks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # one selection per unit, judged on both layers
            for sel, selector in selectors.items():
                assert isinstance(selector, ACSSelector)
                if unit == "batch":  # the selector sees the head gradients' minibatch means, as in training
                    r, w = selector.pick(batch_means(head, size), None, budget)
                    picks[sel] = expand(r, normalize_weights(w.float()), size, len(pool))
                else:
                    r, w = selector.pick(head, labels, budget)
                    picks[sel] = r, normalize_weights(w.float())
            for layer, grads in (("head", head), ("full", full)):
                noise = statistics.mean(error(grads, r, torch.ones(size)) for r in minibatches)
                row: dict[str, Any] = {"seed": seed, "unit": unit, "layer": layer, "budget": budget, "step_noise": noise}
                for sel, (r, w) in picks.items():
                    row[sel] = error(grads, r, w)
                    row[f"{sel}_images"] = len(r)
                    row[f"{sel}_weight_max_over_min"] = float(w.max() / w.min())
                    row[f"{sel}_effective_share"] = float(w.sum() ** 2 / (w ** 2).sum() / len(w))
                    row[f"{sel}_classes"] = torch.bincount(labels[r], minlength=int(labels.max()) + 1).tolist()
                draws = []
                for _ in range(args.random_draws):
                    if unit == "batch":
                        r, _w = expand(torch.randperm(n_atoms, generator=gen)[:budget], torch.ones(budget), size, len(pool))
                    else:
                        r = torch.randperm(len(pool), generator=gen)[:budget]
                    draws.append(error(grads, r, torch.ones(len(r))))
                row["random"] = statistics.mean(draws)
                row["random_sd"] = statistics.stdev(draws)
                for sel in ("gradmatch", "craig"):
                    row[f"{sel}_percentile"] = 100 * sum(d < row[sel] for d in draws) / len(draws)
                rows_out.append(row)
                print(json.dumps({k: v for k, v in row.items() if not k.endswith("_classes")}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows_out}, indent=2))

    print("\n| unit | layer | step noise (B images) | GradMatch | CRAIG | random (mean ± sd over draws) | "
          "GradMatch / CRAIG percentile among random | GradMatch weights max/min | CRAIG weights max/min |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for unit in ("batch", "sample"):
        for layer in ("head", "full"):
            rs = [r for r in rows_out if r["unit"] == unit and r["layer"] == layer]

            def m(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.mean(r[key] for r in rs)
            print(f"| {unit} | {layer} | {m('step_noise'):.3f} | {m('gradmatch'):.3f} | {m('craig'):.3f} | "
                  f"{m('random'):.3f} ± {m('random_sd'):.3f} | {m('gradmatch_percentile'):.0f} / {m('craig_percentile'):.0f} | "
                  f"{m('gradmatch_weight_max_over_min'):.1f} | {m('craig_weight_max_over_min'):.1f} |")
            for sel in ("gradmatch", "craig"):
                results.append(f"RESULT unit={unit} layer={layer} selector={sel} err={m(sel):.4f} random_err={m('random'):.4f} "
                               f"percentile={m(f'{sel}_percentile'):.0f} step_noise={m('step_noise'):.4f}")
    print("\n".join(results))


if __name__ == "__main__":
    main()
