"""The quickstart: ACL and clean SimCLR on Fashion-MNIST, each evaluated with SLF, PGD-20 and
AutoAttack, and one table showing what adversarial pretraining buys."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import api

# table label -> (bundled recipe, run folder)
RUNS = {"ACL": ("acl_fmnist_cpu", "acl"), "SimCLR": ("simclr_fmnist_cpu", "simclr")}


def _row(name: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
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
        "train_seconds": seconds,
    }


def render(rows: list[dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    eps = rows[0]["eps"] if rows else 0.0
    lines = [
        f"Fashion-MNIST, linear probe (SLF) on frozen encoders, eps = {eps:g} (l_inf)",
        "| method | clean % | PGD-20 % | AutoAttack % (PGD-20 % on the same images) | sanity checks | pretrain s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {pct(r['clean'])} | {pct(r['pgd20'])} | {pct(r['autoattack'])} ({pct(r['pgd20_on_aa_examples']).strip()}) | "
            f"{'pass' if r['checks_passed'] else 'FAIL'} | {r['train_seconds']:.0f} |"
        )
    if rows:
        lines.append(f"clean and PGD-20 on the first {rows[0]['n_examples']} test images; "
                     f"AutoAttack on the first {rows[0]['aa_examples']} of them.")
    return "\n".join(lines)


def quickstart(out: str | Path = "runs/quickstart", overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Pretrain ACL and SimCLR with the CPU recipes, evaluate both, print and write the table.

    An existing quickstart folder is replaced (the quickstart always starts fresh)."""
    out = Path(out)
    rows = []
    for label, (recipe, folder) in RUNS.items():
        run = out / folder
        if run.exists():
            shutil.rmtree(run)
        print(f"== pretraining {recipe} -> {run}")
        start = time.perf_counter()
        api.pretrain(recipe, run, overrides=overrides)
        seconds = time.perf_counter() - start
        print(f"== evaluating {run}")
        report = api.evaluate(run)
        rows.append(_row(label, report, seconds))
    table = render(rows)
    (out / "quickstart.md").write_text(table + "\n")
    (out / "quickstart.json").write_text(json.dumps(rows, indent=2))
    print()
    print(table)
    return rows
