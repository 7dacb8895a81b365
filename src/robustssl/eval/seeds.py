"""Runs that differ only by seed, aggregated for `compare`: mean and sample sd (n - 1) over the seeds.

Two runs are one *seed group* when their configs are equal once every `*.seed` key is left out
(train.seed, eval.seed, postprocess.seed; eval.mc_seed, the crop set of a protocol, stays) and
their methods are the same (a post-processed run is "<method>+lp-aft"). Per group, an
aggregated row is made for each (protocol, threat model, test images) that every run of the
group reports: clean and attack accuracies as mean +- sd, and the PGD-20 curve at the eps
points all runs share (drawn with error bars). The per-run rows stay in the table too.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import to_flat_dict
from .accumulate import groups
from .report import threat_of
from .threat import LP_NORMS, fmt_eps

if TYPE_CHECKING:
    from .compare import RunRecord


@dataclass
class SeedGroup:
    """Runs equal but for their seeds, and their aggregated rows."""

    label: str
    runs: list[RunRecord]
    seeds: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"label": self.label, "runs": [r.label for r in self.runs], "seeds": self.seeds, "rows": self.rows}


def seed_key(run: RunRecord) -> str:
    """The run's config without its seeds, and its method: equal for runs that differ only by seed."""
    flat = {k: v for k, v in to_flat_dict(run.cfg).items() if not k.endswith(".seed")}
    return json.dumps({"config": flat, "method": run.method}, sort_keys=True, default=str)


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def _label(runs: list[RunRecord]) -> str:
    labels = [r.label for r in runs]
    k = 0
    while all(len(lab) > k and lab[k] == labels[0][k] for lab in labels):
        k += 1
    return labels[0][:k].rstrip("_-#./ ") or labels[0]


def _entries(run: RunRecord) -> dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]]:
    """(protocol, norm, eps, test examples, subset) -> (evaluation group, protocol entry) of one run."""
    out = {}
    for g in groups(run.report):
        tm = threat_of(g["settings"])
        for name, p in g["protocols"].items():
            out[(name, tm.norm, tm.eps, p["clean"]["n_examples"], g["test_subset"]["used"])] = (g, p)
    return out


def _aggregate(key: tuple[Any, ...], found: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    name, norm, eps, n, subset = key
    entries = [p for _, p in found]
    attacks: dict[str, dict[str, Any]] = {}
    for a in entries[0]["attacks"]:
        values = [next((b["accuracy"] for b in p["attacks"] if b["attack"] == a["attack"]), None) for p in entries]
        if all(v is not None for v in values):
            attacks[a["attack"]] = {**_mean_sd([float(v) for v in values if v is not None]), "label": a.get("label") or a["attack"]}
    common = set.intersection(*({c["eps"] for c in p["curve"]} for p in entries))
    curve = []
    for e in sorted(common):
        stats = _mean_sd([float(next(c["accuracy"] for c in p["curve"] if c["eps"] == e)) for p in entries])
        curve.append({"eps": e, "accuracy": stats["mean"], "sd": stats["sd"]})
    return {
        "protocol": name.upper(), "norm": norm, "eps": eps, "threat_model": threat_of(found[0][0]["settings"]).describe(),
        "n_examples": n, "subset": subset, "n_runs": len(entries),
        "clean": _mean_sd([p["clean"]["accuracy"] for p in entries]), "attacks": attacks, "curve": curve,
        "sanity_passed": all(p["sanity_passed"] for p in entries),
    }


def seed_groups(runs: list[RunRecord]) -> list[SeedGroup]:
    """The groups of two or more runs that differ only by seed (in the order first met), with their aggregated rows."""
    by_key: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_key.setdefault(seed_key(r), []).append(r)
    out = []
    for members in by_key.values():
        if len(members) < 2 or len({_seeds(r) for r in members}) < len(members):
            continue  # a single run, or runs with the same seeds too (copies of one run, not seed replicates)
        per_run = [_entries(r) for r in members]
        keys = [k for k in per_run[0] if all(k in e for e in per_run[1:])]
        if keys:
            rows = [{**_aggregate(k, [e[k] for e in per_run]), "key": list(k)} for k in keys]
            out.append(SeedGroup(_label(members), members, [r.cfg.train.seed for r in members], rows))
    return out


def _seeds(run: RunRecord) -> tuple[Any, ...]:
    """Every seed of the run's config, and the seed its latest evaluation used."""
    flat = to_flat_dict(run.cfg)
    return (*(flat[k] for k in sorted(flat) if k.endswith(".seed")), run.report["settings"].get("seed"))


def aggregated(seed_groups: list[SeedGroup], run: RunRecord) -> set[tuple[Any, ...]]:
    """The entry keys (protocol, norm, eps, test examples, subset) of `run` that a seed group aggregated."""
    return {tuple(row["key"]) for sg in seed_groups if any(r is run for r in sg.runs) for row in sg.rows}


def _pm(stats: dict[str, float] | None) -> str:
    return "-" if stats is None else f"{100 * stats['mean']:.2f} ± {100 * stats['sd']:.2f}"


def seeds_markdown(seed_groups: list[SeedGroup], attack_names: list[str]) -> str:
    """The '## Mean ± sd over seeds' section of compare.md (sample sd, n - 1)."""
    from .compare import attack_label, md_text

    header = ["runs", "seeds", "protocol", "clean %", *(f"{attack_label(n)} %" for n in attack_names), "examples",
              "threat model", "sanity"]
    lines = ["## Mean ± sd over seeds", "",
             "Runs whose configs differ only by their seeds (train.seed, eval.seed, postprocess.seed), aggregated: "
             "mean ± sample standard deviation (n - 1) over the runs.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for sg in seed_groups:
        for row in sg.rows:
            cells = [f"{sg.label} ({len(sg.runs)} runs)", ", ".join(map(str, sg.seeds)), row["protocol"], _pm(row["clean"]),
                     *(_pm(row["attacks"].get(n)) for n in attack_names),
                     str(row["n_examples"]) + (" (SUBSET)" if row["subset"] else ""),
                     f"{LP_NORMS.get(row['norm'], (row['norm'],))[0]} {fmt_eps(row['eps'], row['norm'])}",
                     "pass" if row["sanity_passed"] else "**FAIL**"]
            cells = [md_text(c) for c in cells[:-1]] + cells[-1:]  # every text escaped
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
