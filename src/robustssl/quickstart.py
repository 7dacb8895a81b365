"""The quickstart: ACL and clean SimCLR on Fashion-MNIST, each evaluated with SLF, PGD-20 and
AutoAttack, and one table showing what adversarial pretraining buys."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import api
from .config import load_config
from .errors import RunError
from .io import atomic_write_text
from .train.run_dir import check_folder

# table label -> (bundled recipe, run folder)
RUNS = {"ACL": ("acl_fmnist_cpu", "acl"), "SimCLR": ("simclr_fmnist_cpu", "simclr")}
MARKER = "quickstart.json"  # written last: its presence marks a finished quickstart of ours


def _row(name: str, report: dict[str, Any], seconds: float, eval_seconds: float) -> dict[str, Any]:
    slf = report["protocols"]["slf"]
    attacks = {a["attack"]: a for a in slf["attacks"]}
    aa = attacks.get("autoattack", {})
    return {
        "method": name,
        "clean": slf["clean"]["accuracy"],
        "pgd20": attacks.get("pgd20", {}).get("accuracy"),
        "autoattack": aa.get("accuracy"),
        "pgd20_on_aa_examples": aa.get("pgd20_on_same_examples", attacks.get("pgd20", {}).get("accuracy")),
        "aa_examples": aa.get("n_examples"),
        "n_examples": slf["clean"]["n_examples"],
        "eps": report["settings"]["eps"],
        "checks_passed": bool(slf["sanity_passed"]),
        "probe_converged": bool(slf["training"]["convergence"]["converged"]),
        "train_seconds": seconds,
        "eval_seconds": eval_seconds,
    }


def render(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    eps = rows[0]["eps"] if rows else 0.0
    lines = [
        f"Fashion-MNIST, linear probe (SLF) on frozen encoders, eps = {eps:g} (l_inf)",
        "| method | clean % | PGD-20 % | AutoAttack % (PGD-20 % on the same images) | sanity checks | probe | pretrain s | evaluate s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {pct(r['clean'])} | {pct(r['pgd20'])} | {pct(r['autoattack'])} ({pct(r['pgd20_on_aa_examples']).strip()}) | "
            f"{'pass' if r['checks_passed'] else 'FAIL'} | {'converged' if r['probe_converged'] else 'NOT CONVERGED'} | "
            f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    if rows:
        lines.append(f"clean and PGD-20 on the first {rows[0]['n_examples']} test images; "
                     f"AutoAttack on the first {rows[0]['aa_examples']} of them.")
    return "\n".join(lines)


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None,
               force: bool = False) -> list[dict[str, Any]]:
    """Pretrain ACL and SimCLR with the CPU recipes, evaluate both, print and write the table.

    Every override is validated (against both recipes) before anything is touched. Run folders
    left in `out` are replaced only when `out` holds a finished quickstart (its quickstart.json)
    or with force=True; otherwise this refuses and nothing is deleted.
    """
    out = Path(out)
    for recipe, _ in RUNS.values():
        load_config(recipe, overrides)
    clear_previous(out, force)
    rows = []
    for label, (recipe, folder) in RUNS.items():
        run = out / folder
        print(f"== pretraining {recipe} -> {run}")
        start = time.perf_counter()
        api.pretrain(recipe, run, overrides=overrides)
        seconds = time.perf_counter() - start
        print(f"== evaluating {run}")
        start = time.perf_counter()
        report = api.evaluate(run)
        rows.append(_row(label, report, seconds, time.perf_counter() - start))
    table = render(rows)
    atomic_write_text(out / "quickstart.md", table + "\n")
    atomic_write_text(out / MARKER, json.dumps(rows, indent=2))
    print()
    print(table)
    return rows


def clear_previous(out: Path, force: bool) -> None:
    """Remove the run folders of an earlier quickstart in `out`; refuse for anything else."""
    check_folder(out)
    present = [out / folder for _, folder in RUNS.values() if (out / folder).exists()]
    if not present:
        return
    if not (out / MARKER).is_file() and not force:
        raise RunError(
            f"{out} already holds {', '.join(str(p) for p in present)}, which is not a finished quickstart "
            f"(no {out / MARKER}); nothing was deleted. Choose another --out, or pass --force to replace them"
        )
    (out / MARKER).unlink(missing_ok=True)  # first: an interrupted clean-up must not look finished
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
