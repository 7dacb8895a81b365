"""Compare evaluated runs side by side: one table, three figures, one JSON.

    robustssl compare RUN_DIR [RUN_DIR ...] [--out DIR]        (DIR defaults to ./compare)

Each RUN_DIR is a run folder (`robustssl pretrain --out`, or `robustssl postprocess --out`)
that `robustssl evaluate` has been run on. Read from each: config.yaml (method, coreset
selector, epochs), report.json (the evaluation), run.json (training seconds and their
phases; absent: unknown) and metrics.jsonl (per-epoch training loss; absent for a
post-processed folder). Written into DIR:

    compare.md               the table (one row per run and protocol: method, selector,
                             epochs, train time, clean / PGD-20 / AutoAttack accuracy,
                             sanity pass/fail) and the notes (different eps or test sets,
                             subsets, failed checks, unconverged probes, missing records,
                             runs trained on different hardware)
    compare.json             the same rows, per-run details (curves, phases, losses), notes
    robustness_vs_eps.png    PGD-20 accuracy vs eps, every run and protocol on one figure
    loss_curves.png          per-epoch training loss of every run that logged one
    time_breakdown.png       training seconds per run, stacked by phase (augment, attack,
                             update, selection, post-processing, other)

Every folder is checked before anything is written: a folder that is not a run, has no
evaluation report, or holds a report, run.json or metrics.jsonl with missing, mistyped or
non-finite fields, is an error naming the file and the fix. DIR is locked while compare
writes it (io.FolderLock), and an earlier compare.md / compare.json there is replaced only
with force=True (--force). Every text taken from a run (folder names, methods, notes) is
escaped in compare.md (`md_text`) and in the figures (`plot_text`). matplotlib is imported
only when the figures are drawn.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import RunError
from ..io import FolderLock, atomic_write_text, check_output_path
from ..run_setup import describe_hardware
from ..train.metrics import read_metrics
from ..train.run_dir import CONFIG, METRICS, SUMMARY, check_folder, read_run_config, read_summary
from .accumulate import groups
from .curves import pct_cell, probe_curves, seconds_cell
from .report import FIGURE_FORMATS, REPORT_FILE, agg_figure, plot_curve_panels, save_axes, save_figure, threat_of
from .report import SCHEMA as REPORT_SCHEMA
from .seeds import SeedGroup, aggregated, seed_groups, seeds_markdown
from .threat import LP_NORMS, fmt_eps

SCHEMA = "robustssl.compare/1"
PHASES = ("augment", "attack", "update", "selection", "postprocess")
FILES = {"markdown": "compare.md", "json": "compare.json", "robustness": "robustness_vs_eps.png",
         "losses": "loss_curves.png", "times": "time_breakdown.png"}

__all__ = ["FILES", "RunRecord", "compare_rows", "compare_runs", "load_run", "table_markdown"]


@dataclass
class RunRecord:
    """What compare reads from one run folder."""

    path: Path
    label: str
    cfg: RunConfig
    report: dict[str, Any]
    summary: dict[str, Any] | None = None  # run.json
    epoch_loss: list[tuple[int, float]] = field(default_factory=list)  # (epoch, mean training loss)

    @property
    def method(self) -> str:
        return str((self.summary or {}).get("method") or self.cfg.method.name)

    @property
    def selector(self) -> str:
        c = self.cfg.coreset
        return "full" if c.method == "full" else f"{c.method} {c.fraction:g} ({c.unit})"

    @property
    def train_seconds(self) -> float | None:
        seconds = (self.summary or {}).get("seconds")
        return None if seconds is None else float(seconds)


def md_text(text: object) -> str:
    """`text` safe inside one Markdown table cell or list item: one line, HTML special characters
    as entities, and the characters that end a cell or start Markdown syntax (| \\ ` * [ ] $) escaped."""
    out = html.escape(" ".join(str(text).split()), quote=False)
    for ch in "\\|`*[]$":
        out = out.replace(ch, "\\" + ch)
    return out


def plot_text(text: object) -> str:
    """`text` shown literally by matplotlib: one line, `$` escaped (no mathtext), no leading `_`
    (matplotlib hides legend entries whose label starts with one)."""
    out = " ".join(str(text).split()).replace("$", r"\$")
    return " " + out if out.startswith("_") else out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_accuracies(path: Path, report: dict[str, Any]) -> None:
    """Every accuracy compare shows is a number in [0, 1], in every evaluation group: a crafted or damaged
    report is refused."""
    for name, p in ((name, p) for g in groups(report) for name, p in g["protocols"].items()):
        values = [("clean.accuracy", p["clean"]["accuracy"])]
        values += [(f"attacks.{a['attack']}.accuracy", a["accuracy"]) for a in p["attacks"]]
        values += [(f"curve[{i}].accuracy", c["accuracy"]) for i, c in enumerate(p["curve"])]
        values += [(f"curve[{i}].eps", c["eps"]) for i, c in enumerate(p["curve"])]
        for key, v in values:
            if not _number(v) or not math.isfinite(v) or (key.endswith("accuracy") and not 0 <= v <= 1):
                raise RunError(f"{path / REPORT_FILE}: protocols.{name}.{key} is {str(v)[:40]}, not a finite accuracy "
                               f"in [0, 1]; the report is damaged or was edited. {_fix(path)}")


def _epoch_losses(path: Path) -> list[tuple[int, float]]:
    """(epoch, mean loss) of the epoch records; a record with loss null (an epoch with no step) is skipped."""
    losses = []
    for i, r in enumerate(read_metrics(path / METRICS)):
        if not isinstance(r, dict) or r.get("type") != "epoch" or r.get("loss", 0) is None:
            continue
        epoch, loss = r.get("epoch"), r.get("loss")
        if not isinstance(epoch, int) or not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise RunError(f"{path / METRICS}: record {i + 1} (an epoch record) has epoch {str(epoch)[:20]} and loss {str(loss)[:20]}, "
                           "not an integer and a number; the log is damaged. Restore it, or delete it (the loss plot "
                           "then leaves this run out)")
        losses.append((epoch, float(loss)))
    return losses


def _fix(path: Path) -> str:
    return f"run `robustssl evaluate --run {path}` first"


def load_run(path: str | Path, label: str | None = None) -> RunRecord:
    """Read one evaluated run folder; RunError naming the folder and the fix when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder; compare takes the run folders written by `robustssl pretrain` "
                       "(or `robustssl postprocess`)")
    if not (path / CONFIG).is_file():
        raise RunError(f"{path} is not a robustssl run (no {CONFIG}); compare takes the run folders written by "
                       "`robustssl pretrain` (or `robustssl postprocess`)")
    if not (path / REPORT_FILE).is_file():
        raise RunError(f"{path} has no evaluation report (no {REPORT_FILE}); {_fix(path)}")
    cfg = read_run_config(path)
    try:
        report = json.loads((path / REPORT_FILE).read_text())
        if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA or not isinstance(report.get("protocols"), dict):
            raise ValueError(f"not a {REPORT_SCHEMA} report")
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"{path / REPORT_FILE} is damaged or not a robustssl evaluation report ({e}); "
                       f"run `robustssl evaluate --run {path}` again") from None
    summary = read_summary(path)
    losses = _epoch_losses(path) if (path / METRICS).is_file() else []
    record = RunRecord(path, label or path.name, cfg, report, summary, losses)
    try:  # every field compare reads, read once now: a missing or mistyped one names this report
        _check_accuracies(path, report)
        compare_rows([record])
        _notes([record])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise RunError(f"{path / REPORT_FILE} lacks a field compare reads, or holds one of the wrong type "
                       f"({type(e).__name__}: {str(e)[:80]}); it is damaged or from another version. {_fix(path)}") from None
    return record


def _labels(paths: list[Path]) -> list[str]:
    """Folder names; parent/name where names repeat; a #k suffix where even those repeat."""
    resolved = [p.resolve() for p in paths]
    names = [p.name for p in resolved]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]
    return [f"{lab}#{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def _attack(p: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((a for a in p["attacks"] if a["attack"] == name), None)


def attack_columns(runs: list[RunRecord]) -> list[str]:
    """Every attack any report holds: the registered ones in registry order, then the others as met."""
    from .registry import ATTACKS

    met = list(dict.fromkeys(a["attack"] for r in runs for p in r.report["protocols"].values() for a in p["attacks"]))
    return [n for n in ATTACKS if n in met] + [n for n in met if n not in ATTACKS]


def attack_label(name: str, rows: list[dict[str, Any]] | None = None) -> str:
    """The column header of an attack: its registered label, else the label its records carry, else its name."""
    from .registry import ATTACKS

    if name in ATTACKS:
        return ATTACKS[name].label
    for r in rows or []:
        if r.get("labels", {}).get(name):
            return str(r["labels"][name])
    return name


def compare_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per run, evaluation group (accumulate.py: the report's latest conditions, then the
    others) and protocol, in the order given; a column per attack any report holds (None where this
    protocol was not attacked with it)."""
    names = attack_columns(runs)
    rows = []
    for run in runs:
        for g in groups(run.report):
            s = g["settings"]
            tm = threat_of(s)
            for name, p in g["protocols"].items():
                recs = {n: _attack(p, n) for n in names}
                rows.append({
                    "run": run.label, "method": run.method, "selector": run.selector, "epochs": run.cfg.train.epochs,
                    "train_seconds": run.train_seconds, "protocol": name.upper(), "clean": p["clean"]["accuracy"],
                    **{n: None if rec is None else rec["accuracy"] for n, rec in recs.items()},
                    "attack_examples": {n: rec["n_examples"] for n, rec in recs.items() if rec is not None},
                    "threat_models": {n: rec.get("threat_model", tm.describe()) for n, rec in recs.items() if rec is not None},
                    "labels": {n: rec.get("label") for n, rec in recs.items() if rec is not None},
                    "attacks": [n for n in names if recs[n] is not None],
                    "n_examples": p["clean"]["n_examples"], "subset": g["test_subset"]["used"],
                    "norm": tm.norm, "eps": s["eps"], "threat_model": tm.describe(),
                    "sanity": "pass" if p["sanity_passed"] else "FAIL",
                })
    return rows


def _notes(runs: list[RunRecord]) -> list[str]:
    """What a reader of the table must know: conditions that differ, subsets, failed checks, missing records."""
    notes = []
    threats = {r.label: threat_of(r.report["settings"]) for r in runs}
    if len({t.norm for t in threats.values()}) == 1 and len({t.eps for t in threats.values()}) > 1:
        notes.append("the runs were evaluated at different eps (" + ", ".join(f"{k}: {fmt_eps(v.eps, v.norm)}" for k, v in threats.items())
                     + "); their robust accuracies are not comparable")
    elif len(set(threats.values())) > 1:
        notes.append("the runs were evaluated under different threat models ("
                     + ", ".join(f"{k}: {v.label} eps {fmt_eps(v.eps, v.norm)}" for k, v in threats.items())
                     + "); their robust accuracies are not comparable")
    tests = {r.label: (r.report["data"]["test"]["name"], r.report["test_subset"]["n_examples"]) for r in runs}
    if len(set(tests.values())) > 1:
        notes.append("the runs were evaluated on different test images (" + ", ".join(f"{k}: {n} x {d}" for k, (d, n) in tests.items())
                     + "); their accuracies are not comparable")
    for r in runs:
        subs = {(g["test_subset"]["n_examples"], g["test_subset"]["n_total"]) for g in groups(r.report) if g["test_subset"]["used"]}
        for n, total in sorted(subs):
            notes.append(f"{r.label}: evaluated on the first {n} of {total} test images (a subset)")
        for name, p in ((name, p) for g in groups(r.report) for name, p in g["protocols"].items()):
            failed = [c["name"] for c in p["sanity"] if not c["passed"]]
            if failed:
                notes.append(f"{r.label} {name.upper()}: sanity check(s) FAILED ({', '.join(failed)}); its robust accuracy is not trustworthy")
            conv = p["training"].get("convergence")
            if conv and not conv["converged"]:
                notes.append(f"{r.label} {name.upper()}: the linear probe did not converge ({conv['detail']})")
            for a in p["attacks"]:
                if a["n_examples"] < p["clean"]["n_examples"]:
                    notes.append(f"{r.label} {name.upper()}: {attack_label(a['attack'])} ran on the first {a['n_examples']} of the "
                                 f"{p['clean']['n_examples']} images (PGD-20 on those: "
                                 f"{100 * a.get('pgd20_on_same_examples', float('nan')):.2f}%)")
        if r.summary is None:
            notes.append(f"{r.label}: no {SUMMARY}, so its training time is unknown")
        if not r.epoch_loss:
            notes.append(f"{r.label}: no per-epoch training loss ({METRICS} absent or without epoch records"
                         + (", as for a post-processed run" if (r.summary or {}).get("postprocess") else "") + ")")
    hardware = {r.label: (r.summary or {}).get("hardware") for r in runs}  # absent in runs made before it was recorded
    trained_on = {label: describe_hardware(hw) for label, hw in hardware.items() if hw is not None}
    if len(set(trained_on.values())) > 1:
        notes.append("the runs were trained on different hardware (" + ", ".join(f"{k}: {v}" for k, v in trained_on.items())
                     + "); their training times are not comparable, and on another CPU instruction set the same seed "
                     "gives other numbers")
    return notes


def row_attacks(rows: list[dict[str, Any]]) -> list[str]:
    """The attack columns of `rows` (every attack a row holds, in the rows' column order)."""
    return list(dict.fromkeys(n for r in rows for n in r.get("attacks", [])))


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison table (Markdown), one line per row of `compare_rows`: a column per attack any
    report holds; an attack with a threat model other than the row's l_p ball names it in its cell."""
    names = row_attacks(rows)
    header = ["run", "method", "selector", "epochs", "train time", "protocol", "clean %",
              *(f"{attack_label(n, rows)} %" for n in names), "examples", "threat model", "sanity"]
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [str(r["run"]), str(r["method"]), str(r["selector"]), str(r["epochs"]), seconds_cell(r["train_seconds"]),
                 str(r["protocol"]), pct_cell(r["clean"])]
        for n in names:
            cell = pct_cell(r.get(n))
            k = r["attack_examples"].get(n)
            if k is not None and k < r["n_examples"]:
                cell += f" (first {k})"
            tm = r["threat_models"].get(n)
            if tm is not None and tm != r["threat_model"]:
                cell += f" ({tm})"
            cells.append(cell)
        cells += [str(r["n_examples"]), f"{LP_NORMS[r['norm']][0]} {fmt_eps(r['eps'], r['norm'])}"]
        cells = [md_text(c) for c in cells] + ["pass" if r["sanity"] == "pass" else "**FAIL**"]  # every text escaped
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(rows: list[dict[str, Any]], notes: list[str], figures: dict[str, str | None],
              by_seed: list[SeedGroup] | None = None) -> str:
    lines = ["# Run comparison", "", table_markdown(rows), ""]
    if by_seed:
        lines += [seeds_markdown(by_seed, row_attacks(rows)), ""]
    if notes:
        lines += ["Notes:", "", *(f"- {md_text(n)}" for n in notes), ""]
    titles = {"robustness": "Robust accuracy vs eps (PGD-20)", "losses": "Training loss", "times": "Training time by phase"}
    for key, title in titles.items():
        if figures.get(key):
            lines += [f"## {title}", "", f"![{title}]({figures[key]})", ""]
    return "\n".join(lines)


def _curve_label(run: RunRecord, g: dict[str, Any], name: str, first: bool) -> str:
    tm = threat_of(g["settings"])
    return plot_text(f"{run.label} {name.upper()}" + ("" if first else f" [eps {fmt_eps(tm.eps, tm.norm)}]")
                     + (" (SUBSET)" if g["test_subset"]["used"] else ""))


def plot_robustness(runs: list[RunRecord], path: Path, seed_groups: list[SeedGroup] | None = None) -> Path:
    """PGD-20 accuracy vs eps for every run, evaluation group and protocol (dotted lines: the eps evaluated
    at), one panel per norm (an l_2 eps is not on an l_inf axis); a run evaluated on a test subset is
    labelled SUBSET. Runs of a seed group are drawn once, as the mean over seeds with +- 1 sd error bars."""
    panels: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    marks: dict[str, list[float]] = {}
    for r in runs:
        done = aggregated(seed_groups or [], r)
        for i, g in enumerate(groups(r.report)):
            tm = threat_of(g["settings"])
            marks.setdefault(tm.norm, []).append(tm.eps)
            for name, p in g["protocols"].items():
                if (name, tm.norm, tm.eps, p["clean"]["n_examples"], g["test_subset"]["used"]) not in done:
                    panels.setdefault(tm.norm, []).append((_curve_label(r, g, name, i == 0), p["curve"]))
    for sg in seed_groups or []:
        for agg in sg.rows:
            label = plot_text(f"{sg.label} {agg['protocol']} (mean of {agg['n_runs']} seeds)" + (" (SUBSET)" if agg["subset"] else ""))
            panels.setdefault(agg["norm"], []).append((label, agg["curve"]))
    return plot_curve_panels(panels, marks, "Robust accuracy vs eps", path, 6.4, 4.0, "small")


def plot_losses(runs: list[RunRecord], path: Path) -> Path:
    """Per-epoch mean training loss of every run that logged one."""
    fig = agg_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for r in runs:
        if r.epoch_loss:
            ax.plot([e + 1 for e, _ in r.epoch_loss], [v for _, v in r.epoch_loss], marker=".", label=plot_text(f"{r.label} ({r.method})"))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (each method's own)")
    return save_axes(fig, ax, "Training loss", path, "small")


def phase_breakdown(run: RunRecord) -> dict[str, float]:
    """Training seconds by phase (PHASES, then any other recorded phase), plus "other": the rest of the total."""
    phases = {k: float(v) for k, v in (run.summary or {}).get("phase_seconds", {}).items()}
    ordered = {k: phases.pop(k) for k in PHASES if k in phases}
    ordered.update(phases)
    total = run.train_seconds or 0.0
    ordered["other"] = max(0.0, total - sum(ordered.values()))
    return ordered


def plot_times(runs: list[RunRecord], path: Path) -> Path:
    """Stacked horizontal bars: each run's training seconds split by phase."""
    fig = agg_figure(6.4, 1.2 + 0.5 * len(runs))
    ax = fig.add_subplot(1, 1, 1)
    breakdowns = [phase_breakdown(r) if r.summary is not None else {} for r in runs]
    names = list(dict.fromkeys(k for b in breakdowns for k in b))
    phases = [k for k in PHASES if k in names] + [k for k in names if k not in PHASES and k != "other"] + ["other"]
    left = [0.0] * len(runs)
    for phase in phases:
        widths = [b.get(phase, 0.0) for b in breakdowns]
        ax.barh([plot_text(r.label) for r in runs], widths, left=left, label=phase)
        left = [a + w for a, w in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("training seconds")
    ax.set_title("Training time by phase")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path, bbox_inches="tight")
    return path


def compare_runs(run_dirs: list[str | Path], out: str | Path = "compare", force: bool = False,
                 target: float | None = None) -> dict[str, Any]:
    """Compare evaluated runs; writes FILES into `out` (created if needed) and returns the compare.json content.

    Every folder is read and checked first; nothing is written when one of them is not an
    evaluated run. `out` is locked while it is written; an earlier compare.md or compare.json
    in it is replaced only with force=True. A figure with nothing to show (no run logged a loss, or no run has a
    run.json) is not drawn; compare.json records it as null and the notes say why.
    """
    if not run_dirs:
        raise RunError("compare needs at least one run folder")
    paths = [Path(p) for p in run_dirs]
    out = check_output_path(out, "--out")
    check_folder(out)
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    rows, notes = compare_rows(runs), _notes(runs)
    by_seed = seed_groups(runs)
    with FolderLock(out, "robustssl compare"):
        earlier = [FILES[k] for k in ("markdown", "json") if (out / FILES[k]).exists()]
        if earlier and not force:
            raise RunError(f"{out} already holds {' and '.join(earlier)} of an earlier comparison; nothing was "
                           "overwritten. Choose another --out, or pass --force to replace them")
        return _write(runs, rows, notes, out, by_seed, target)


def _write(runs: list[RunRecord], rows: list[dict[str, Any]], notes: list[str], out: Path,
           by_seed: list[SeedGroup], target: float | None = None) -> dict[str, Any]:
    """The figures, compare.json and compare.md of checked runs into the (locked) folder `out`."""
    figures: dict[str, str | None] = {"robustness": FILES["robustness"], "losses": None, "times": None}
    plot_robustness(runs, out / FILES["robustness"], by_seed)
    if any(r.epoch_loss for r in runs):
        figures["losses"] = FILES["losses"]
        plot_losses(runs, out / FILES["losses"])
    if any(r.summary is not None for r in runs):
        figures["times"] = FILES["times"]
        plot_times(runs, out / FILES["times"])
    result = {
        "schema": SCHEMA,
        "rows": rows,
        "runs": [{
            "label": r.label, "path": str(r.path), "method": r.method, "selector": r.selector, "epochs": r.cfg.train.epochs,
            "data": r.cfg.data.name, "train_seconds": r.train_seconds,
            "phase_seconds": phase_breakdown(r) if r.summary is not None else None,
            "eps": r.report["settings"]["eps"], "norm": threat_of(r.report["settings"]).norm,
            "test_subset": r.report["test_subset"],
            "epoch_loss": [v for _, v in r.epoch_loss],
            "curves": {name: [{"eps": c["eps"], "accuracy": c["accuracy"]} for c in p["curve"]]
                       for name, p in r.report["protocols"].items()},
            "other_evaluations": [{
                "norm": threat_of(g["settings"]).norm, "eps": g["settings"]["eps"], "test_subset": g["test_subset"],
                "curves": {name: [{"eps": c["eps"], "accuracy": c["accuracy"]} for c in p["curve"]]
                           for name, p in g["protocols"].items()},
            } for g in groups(r.report)[1:]],
            "sanity_passed": r.report["sanity_passed"],
        } for r in runs],
        "seed_groups": [sg.record() for sg in by_seed],
        "notes": notes,
        "figures": figures,
        "figure_formats": list(FIGURE_FORMATS),
    }
    result["probe_curves"] = curves = probe_curves(runs, out, target)  # eval/curves.py: robustness vs training time and epoch
    atomic_write_text(out / FILES["json"], json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / FILES["markdown"], _markdown(rows, notes, figures, by_seed) + "\n" + curves["markdown"])
    return result
