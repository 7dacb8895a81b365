"""Robustness over training time: the online probe's curves in `robustssl compare`.

Each run trained with `train.probe_every` has probe records in its metrics.jsonl (train/probe.py):
robust accuracy (PGD-k at eval.eps on a fixed held-out slice) against `train_seconds` (training
time without the probes' own time; a coreset run's selection time is in it) and epochs. From them:

    robustness_vs_time.png    probe robust accuracy vs training seconds, one line per run; the
                              run's final evaluation (its first protocol's PGD-20 accuracy on the
                              test set) marked with a star at the run's end
    robustness_vs_epoch.png   the same against epochs trained
    columns                   "time to reach X % robust": the training seconds of the first probe at
                              or above the target X (default: 90 % of the best run's final probe
                              value); "robust at the shortest run's time": each run's probe value
                              at the training time of the run that trained shortest (the last
                              probe at or before that time; an equal-budget comparison)

Both columns read the measured probe points as a step function (no interpolation between
probes): a value is what had been measured by then. Runs without probe records are listed in
the notes and left out of the curves.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import progress
from ..errors import ConfigError
from ..train.metrics import read_metrics
from ..train.run_dir import METRICS
from .report import agg_figure, save_axes

if TYPE_CHECKING:
    from .compare import RunRecord

FILES = {"time": "robustness_vs_time.png", "epoch": "robustness_vs_epoch.png"}
TARGET_SHARE = 0.9  # default target: this share of the best run's final probe robust accuracy
TIME_TOLERANCE = 1e-9

__all__ = ["FILES", "probe_curve", "probe_curves", "robust_at", "time_to_reach"]


def probe_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """The probe records of a run folder (empty without metrics.jsonl or probes), in training order."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [r for r in read_metrics(path) if r.get("type") == "probe"]


def time_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds of the first probe with robust accuracy >= target (None: never reached)."""
    return next((float(p["train_seconds"]) for p in curve if p["robust"] >= target), None)


def robust_at(curve: list[dict[str, Any]], seconds: float) -> float | None:
    """Robust accuracy of the last probe at or before `seconds` of training (None: no probe by then)."""
    before = [p for p in curve if p["train_seconds"] <= seconds + TIME_TOLERANCE]
    return float(before[-1]["robust"]) if before else None


def final_evaluation(run: RunRecord) -> tuple[str, float] | None:
    """(protocol, PGD-20 accuracy) of the run's first evaluated protocol that has a PGD-20 result."""
    for name, p in run.report["protocols"].items():
        for a in p["attacks"]:
            if a["attack"] == "pgd20":
                return name.upper(), float(a["accuracy"])
    return None


def pct_cell(v: float | None) -> str:
    """A table cell of an accuracy in [0, 1], in percent ("-" for none)."""
    return "-" if v is None else f"{100 * v:.2f}"


def seconds_cell(v: float | None) -> str:
    """A table cell of a duration in seconds ("-" for none; minutes from 120 s)."""
    if v is None:
        return "-"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def probe_curves(runs: list[RunRecord], out: Path, target: float | None = None) -> dict[str, Any]:
    """The curves' figures (written into `out`), per-run columns, notes and a Markdown section.

    target: robust accuracy in [0, 1] for "time to reach"; None: TARGET_SHARE x the best run's
    final probe value. Returns {"target", "target_rule", "shortest_seconds", "rows", "figures",
    "notes", "markdown"}; the figures are None when no run has probe records.
    """
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target is a robust accuracy in percent, 0 < X <= 100; got {100 * target:g}")
    curves = {}
    progress.stage("probe curves", len(runs), unit="run")
    for r in runs:
        curves[r.label] = probe_curve(r.path)
        progress.advance(1)
    probed = [r for r in runs if curves[r.label]]
    notes = [f"{r.label}: no probe records (trained with train.probe_every=0), so it has no robustness-over-time curve"
             for r in runs if not curves[r.label]]
    result: dict[str, Any] = {"target": None, "target_rule": None, "shortest_seconds": None, "rows": [],
                              "figures": {"time": None, "epoch": None}, "notes": notes, "markdown": ""}
    if not probed:
        return result
    finals = {r.label: curves[r.label][-1] for r in probed}
    rule = "given (--target)"
    if target is None:
        target = TARGET_SHARE * max(float(f["robust"]) for f in finals.values())
        rule = f"{100 * TARGET_SHARE:g}% of the best run's final probe robust accuracy"
        if target == 0:
            notes.append("no run's final probe is above 0% robust, so every run reaches the default target at its first "
                         "probe; pass --target")
    shortest = min(float(f["train_seconds"]) for f in finals.values())
    eps = {float(p["eps"]) for c in curves.values() for p in c}
    if len(eps) > 1:
        notes.append(f"the probes ran at different eps ({', '.join(f'{e:g}' for e in sorted(eps))}); their curves are not comparable")
    for r in probed:
        ev = final_evaluation(r)
        if ev is not None and float(r.report["settings"]["eps"]) != float(finals[r.label]["eps"]):
            notes.append(f"{r.label}: probed at eps {finals[r.label]['eps']:g} but evaluated at eps "
                         f"{r.report['settings']['eps']:g}; its star is not on the curve's scale")
    rows = []
    for r in probed:
        c, ev = curves[r.label], final_evaluation(r)
        rows.append({
            "run": r.label, "method": r.method, "selector": r.selector, "probes": len(c),
            "final_train_seconds": float(finals[r.label]["train_seconds"]), "final_probe_robust": float(finals[r.label]["robust"]),
            "final_probe_clean": float(finals[r.label]["clean"]), "probe_attack": finals[r.label].get("attack"),
            "probe_n": finals[r.label].get("n"), "time_to_target": time_to_reach(c, target),
            "robust_at_shortest": robust_at(c, shortest),
            "final_eval_protocol": None if ev is None else ev[0], "final_eval_pgd20": None if ev is None else ev[1],
            "curve": [{k: p[k] for k in ("epoch", "step", "train_seconds", "clean", "robust")} for p in c],
        })
    out.mkdir(parents=True, exist_ok=True)
    _plot(probed, curves, rows, out / FILES["time"], "time", target, shortest)
    _plot(probed, curves, rows, out / FILES["epoch"], "epoch", target, shortest)
    result.update(target=target, target_rule=rule, shortest_seconds=shortest, rows=rows, figures=dict(FILES))
    result["markdown"] = _markdown(rows, target, rule, shortest, notes)
    return result


def _plot(runs: list[RunRecord], curves: dict[str, list[dict[str, Any]]], rows: list[dict[str, Any]], path: Path,
          axis: str, target: float, shortest: float) -> Path:
    from .compare import plot_text  # compare imports this module

    many = len(runs) > 6  # the legend goes beside the axes, and more than 10 lines need more than 10 colors
    fig = agg_figure(10.5 if many else 6.4, 4.6 if many else 4.0)
    ax = fig.add_subplot(1, 1, 1)
    if len(runs) > 10:
        import matplotlib

        ax.set_prop_cycle(color=[matplotlib.colormaps["tab20"](i % 20) for i in range(len(runs))])
    for r, row in zip(runs, rows):
        c = curves[r.label]
        xs = [p["train_seconds"] for p in c] if axis == "time" else [p["epoch"] + 1 for p in c]
        (line,) = ax.plot(xs, [100 * p["robust"] for p in c], marker=".", label=plot_text(f"{r.label} ({r.method}, {r.selector})"))
        if row["final_eval_pgd20"] is not None:
            x_end = row["final_train_seconds"] if axis == "time" else r.cfg.train.epochs
            ax.plot([x_end], [100 * row["final_eval_pgd20"]], marker="*", markersize=11, linestyle="none",
                    color=line.get_color())
    ax.axhline(100 * target, color="gray", linestyle="--", linewidth=0.8, label=f"target {100 * target:.1f}%")
    if axis == "time":
        ax.axvline(shortest, color="gray", linestyle=":", linewidth=0.8, label="shortest run's time")
        ax.set_xlabel("training seconds (probe time excluded; selection included)")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epochs trained")
    ax.set_ylabel("probe robust accuracy % (star: final PGD-20 evaluation)")
    title = "Robust accuracy vs training time" if axis == "time" else "Robust accuracy vs epoch"
    return save_axes(fig, ax, title, path, "small", legend_outside=many)


def _markdown(rows: list[dict[str, Any]], target: float, rule: str, shortest: float, notes: list[str]) -> str:
    from .compare import md_text  # compare imports this module

    header = ["run", "method", "selector", "probes", "train time", "final probe robust %", f"time to reach {100 * target:.1f}% robust",
              f"robust % at {seconds_cell(shortest)} (shortest run)", "final evaluation PGD-20 %"]
    lines = ["## Robustness over training (online probe)", "",
             f"Target {100 * target:.1f}% robust: {rule}. Probe: {rows[0]['probe_attack']} at the evaluation eps on "
             f"{rows[0]['probe_n']} fixed training-split images the run does not train on with labels; times exclude the probes' own time.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        final = "-" if r["final_eval_pgd20"] is None else f"{pct_cell(r['final_eval_pgd20'])} ({r['final_eval_protocol']})"
        lines.append("| " + " | ".join([
            md_text(r["run"]), md_text(r["method"]), md_text(r["selector"]), str(r["probes"]), seconds_cell(r["final_train_seconds"]),
            pct_cell(r["final_probe_robust"]), seconds_cell(r["time_to_target"]) if r["time_to_target"] is not None else "not reached",
            pct_cell(r["robust_at_shortest"]), final]) + " |")
    lines.append("")
    if notes:
        lines += ["Notes:", "", *(f"- {md_text(n)}" for n in notes), ""]
    lines += [f"![Robust accuracy vs training time]({FILES['time']})", "", f"![Robust accuracy vs epoch]({FILES['epoch']})", ""]
    return "\n".join(lines)
