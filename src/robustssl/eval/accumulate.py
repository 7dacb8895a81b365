"""report.json accumulates: each evaluation adds to what earlier ones measured instead of replacing it.

An *evaluation group* is what one set of evaluation conditions measured: the threat model
(eval.norm, eval.eps), the BN branch, the training and test data (name, split, number of test
images). The latest group's fields sit at the top level of report.json, exactly as one
evaluation's report (`settings`, `data`, `test_subset`, `protocols`, `notes`, `created`,
`transfer`); groups under other conditions are kept in `other_evaluations`, each in the same
shape. An evaluation under conditions met before updates that group:

- a protocol not in it is added;
- a protocol in it is replaced by the new entry; when its classifier settings (`recipe`: the
  evaluation settings except the attack choice, eval.autoattack_examples, eval.eps_curve,
  the device and the hardware) are unchanged, the earlier attack records the new run did not repeat are kept
  (marked `from_evaluation`: the time of the evaluation that measured them); when they
  changed, those records belonged to another classifier and are dropped;
- every other protocol of the group is kept as it was.

`merge_reports` says each of these in a line (`robustssl evaluate` prints them).
"""
from __future__ import annotations

from typing import Any

GROUP_KEYS = ("created", "data", "test_subset", "settings", "protocols", "sanity_passed", "notes", "transfer")
NOT_RECIPE = ("protocols", "attacks", "autoattack_examples", "eps_curve", "device", "hardware", "components")


def groups(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation groups of a report: the top-level one first, then `other_evaluations`."""
    top = {k: report[k] for k in GROUP_KEYS if k in report}
    return [top, *report.get("other_evaluations", [])]


def conditions(group: dict[str, Any]) -> dict[str, Any]:
    """What makes two evaluations' numbers comparable: threat model, BN branch, train and test data."""
    s, d = group["settings"], group["data"]
    return {
        "norm": s.get("norm", "linf"), "eps": s["eps"], "bn_branch": s.get("bn_branch"),
        "train": [d["train"]["name"], d["train"]["split"]],
        "test": [d["test"]["name"], d["test"]["split"], d["test"]["n_used"]],
    }


def describe_conditions(group: dict[str, Any]) -> str:
    c = conditions(group)
    return (f"{c['norm']} eps {c['eps']:.4g} on {c['test'][0]}/{c['test'][1]} ({c['test'][2]} images)"
            + (f", branch {c['bn_branch']}" if c["bn_branch"] else ""))


def recipe(settings: dict[str, Any], protocol: str) -> dict[str, Any]:
    """The settings that make a protocol's classifier: all but NOT_RECIPE, plus the protocol's own settings."""
    out = {k: v for k, v in settings.items() if k not in NOT_RECIPE}
    out["own_settings"] = settings.get("components", {}).get(protocol)
    return out


def _stamped(group: dict[str, Any]) -> dict[str, Any]:
    """The group with each protocol entry stamped with its evaluation time and recipe (kept when present)."""
    protocols = {}
    for name, p in group["protocols"].items():
        protocols[name] = {**p, "created": p.get("created", group.get("created")),
                           "recipe": p.get("recipe", recipe(group["settings"], name))}
    return {**group, "protocols": protocols}


def _changed_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def merge_reports(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the accumulated report, one line per change): `new` (one evaluation's report) merged into `old`
    (report.json as stored, or None). Neither argument is modified."""
    group = _stamped({k: new[k] for k in GROUP_KEYS if k in new})
    if old is None:
        merged = {**new, **group, "other_evaluations": []}
        return merged, [f"added {', '.join(n.upper() for n in group['protocols'])} ({describe_conditions(group)})"]
    earlier = [_stamped(g) for g in groups(old)]
    key = conditions(group)
    match = next((g for g in earlier if conditions(g) == key), None)
    others = [g for g in earlier if g is not match]
    changes: list[str] = []
    if match is None:
        protocols = dict(group["protocols"])
        changes.append(f"added {', '.join(n.upper() for n in protocols)} under new conditions ({describe_conditions(group)}); "
                       f"the earlier evaluations ({'; '.join(describe_conditions(g) for g in others)}) are kept")
        kept_notes: list[str] = []
    else:
        protocols = dict(match["protocols"])
        for name, p in group["protocols"].items():
            before = match["protocols"].get(name)
            if before is None:
                changes.append(f"{name.upper()}: added")
            else:
                rerun = {a["attack"] for a in p["attacks"]}
                earlier_only = [a for a in before["attacks"] if a["attack"] not in rerun]
                line = f"{name.upper()}: replaced its earlier entry (same protocol, threat model and test data)"
                if before["recipe"] == p["recipe"]:
                    kept = [{**a, "from_evaluation": a.get("from_evaluation", before["created"])} for a in earlier_only]
                    p = {**p, "attacks": [*p["attacks"], *kept]}
                    if kept:
                        line += f"; kept its earlier {', '.join(a['attack'] for a in kept)} record(s) (same classifier settings)"
                elif earlier_only:
                    line += (f"; its classifier settings changed ({', '.join(_changed_keys(before['recipe'], p['recipe']))}), "
                             f"so its earlier {', '.join(a['attack'] for a in earlier_only)} record(s) were dropped")
                changes.append(line)
            protocols[name] = p
        untouched = [n for n in match["protocols"] if n not in group["protocols"]]
        if untouched:
            changes.append(f"kept {', '.join(n.upper() for n in untouched)} from the earlier evaluation(s)")
        kept_notes = [note for n in untouched for note in match["protocols"][n].get("notes", [])]
        for g in others:
            changes.append(f"kept the evaluation under other conditions ({describe_conditions(g)})")
    top = {**group, "protocols": protocols, "notes": [*group.get("notes", []), *kept_notes],
           "sanity_passed": all(p["sanity_passed"] for p in protocols.values())}
    merged = {**{k: v for k, v in new.items() if k not in GROUP_KEYS}, **top, "other_evaluations": others,
              "extra": _merged_extra(old.get("extra", {}), new.get("extra", {}))}
    return merged, changes


def _merged_extra(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The caller's extras: new keys win; a mapping in both (the saved classifiers per protocol) is merged."""
    out = {**old, **new}
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            out[k] = {**old[k], **v}
    return out


def all_sanity_passed(report: dict[str, Any]) -> bool:
    """Whether every check of every protocol of every evaluation group passed."""
    return all(p["sanity_passed"] for g in groups(report) for p in g["protocols"].values())
