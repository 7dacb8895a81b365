"""The robustness report of one evaluation: report.json, report.md, robustness_curve.png.

report.json (schema "robustssl.eval/1"), as returned by `evaluate_encoder`:

    schema, created                  format tag, UTC time
    encoder                          feature_dim, dual_bn, bn_branch, trained_branches (None:
                                     unknown), branch_trained (None: unknown), n_classes
    data.train / data.test           name, split, n_total, n_used, selection
    test_subset                      used (bool), n_examples, n_total
    settings                         the EvalConfig fields, device, hardware (run_setup.hardware),
                                     bn_branch, trained_branches,
                                     pgd_steps, and the settings of the FGSM / large-eps /
                                     above-chance sanity checks
    protocols.<slf|alf|aff|slf-mc|alf-mc>
      training                       slf / alf (linear head): optimizer settings,
                                     train_examples, epoch_loss, epoch_lr, convergence
                                     {converged, tol, first_phase_epochs, share_at_cut,
                                     detail}, standardized_features, seconds.
                                     slf-mc / alf-mc: the same, plus multicrop {crops, seed,
                                     scale, ratio, flip, ops, aggregation, threat_model}.
                                     aff (finetunes_encoder: true): objective "TRADES",
                                     optimizer settings, beta, attack {loss, norm, eps,
                                     alpha, steps, start, mode}, bn_branch, update_mode,
                                     head_init, augmentation, train_examples, epoch_loss /
                                     epoch_ce / epoch_kl / epoch_lr, encoder_change (relative
                                     change of the backbone weights), seed, seconds
      clean                          a record (below) with attack "clean"
      attacks                        one record per requested attack (pgd20, autoattack)
      curve                          PGD-20 records over the eps points (0 and eps included)
      sanity_attacks                 fgsm and large_eps records
      sanity                         [{name, passed, detail}, ...]
      sanity_passed                  bool
    sanity_passed                    all checks of all protocols passed
    notes                            warnings about the evaluation itself: an untrained BN
                                     branch evaluated, a linear probe that did not converge
    versions                         torch, robustssl, pyautoattack
    extra                            whatever the caller passed (training time, coreset, ...)
    transfer                         only for a transfer evaluation (`robustssl evaluate
                                     --data`): source and target dataset, image shapes and
                                     the conversion applied (see eval/transfer.py)

A record: {attack, norm, eps, steps, accuracy, n_examples, seed, seconds, ...} (PGD adds
alpha and random_start; AutoAttack adds version, sub_attacks and autoattack_warnings).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..io import atomic_write_text
from .threat import LP_NORMS, ThreatModel, fmt_eps

SCHEMA = "robustssl.eval/1"  # report.json's schema tag
REPORT_FILE = "report.json"


def threat_of(settings: dict[str, Any]) -> ThreatModel:
    """The evaluation's l_p threat model from a report's settings (eval.norm, eval.eps; l_inf for old reports)."""
    return ThreatModel.lp(settings.get("norm", "linf"), settings["eps"])


def _threat_short(tm: ThreatModel) -> str:
    return f"{tm.label} {fmt_eps(tm.eps, tm.norm)}"


def _pct(acc: float) -> str:
    return f"{100 * acc:.2f}%"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table (columns: the keys of the first row) for the terminal; floats with 4 digits."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        # first column (names) left-aligned, numbers right-aligned
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per protocol: clean and attack accuracies, examples, checks passed."""
    rows = []
    lp = threat_of(report["settings"])
    for name, p in report["protocols"].items():
        row: dict[str, Any] = {"protocol": name.upper(), "clean": p["clean"]["accuracy"]}
        for rec in p["attacks"]:
            other = rec.get("threat_model", lp.describe()) != lp.describe()  # an attack with its own threat model
            row[f"{rec['attack']} ({rec['norm']})" if other else rec["attack"]] = rec["accuracy"]
        row["n_examples"] = p["clean"]["n_examples"]
        row["threat model"] = _threat_short(lp)
        passed = sum(c["passed"] for c in p["sanity"])
        row["checks"] = f"{passed}/{len(p['sanity'])} " + ("PASS" if passed == len(p["sanity"]) else "FAIL")
        row["probe"] = _probe_state(p)
        rows.append(row)
    return rows


def _probe_state(p: dict[str, Any]) -> str:
    """The probe column: converged or NOT CONVERGED for a linear probe (converged for reports that
    predate the record); n/a for full finetuning, whose loss is not judged."""
    if p["training"].get("finetunes_encoder") or p["training"].get("direct") or "convergence" not in p["training"]:
        return "n/a"
    return "converged" if p["training"].get("convergence", {}).get("converged", True) else "NOT CONVERGED"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def _record_row(rec: dict[str, Any]) -> list[str]:
    norm = rec["norm"]
    threat = "-" if norm is None else rec.get("threat_model") or LP_NORMS.get(norm, (norm,))[0]
    return [
        rec.get("label") or rec["attack"], threat, fmt_eps(rec["eps"], norm), str(rec["steps"]),
        _pct(rec["accuracy"]), str(rec["n_examples"]), "-" if rec["seed"] is None else str(rec["seed"]),
    ]


def training_markdown(name: str, training: dict[str, Any]) -> list[str]:
    """The training lines of protocol `name`'s record, by the protocol's own renderer (`PROTOCOLS[name].render`);
    a protocol not registered here gets its record as JSON, never another protocol's renderer."""
    from .registry import PROTOCOLS  # the registry imports the protocols, which import this module

    if name in PROTOCOLS:
        return PROTOCOLS[name].render(training)
    return [f"Protocol `{name}` is not registered in this robustssl; its training record as stored:", "", "```json",
            json.dumps(training, indent=2, default=str), "```"]


def _protocol_md(name: str, p: dict[str, Any], group_created: str | None = None) -> list[str]:
    out = [f"## {name.upper()}", ""]
    if p.get("created") and p["created"] != group_created:
        out += [f"Evaluated {p['created']} (an earlier evaluation under the same conditions).", ""]
    out += training_markdown(name, p["training"])
    out.append("")
    header = ["attack", "threat model", "eps", "steps", "accuracy", "examples", "seed"]
    out += _md_table(header, [_record_row(r) for r in [p["clean"], *p["attacks"]]])
    carried = [r for r in p["attacks"] if r.get("from_evaluation")]
    if carried:
        out += ["", "Kept from earlier evaluations of the same classifier settings: "
                + ", ".join(f"{r['attack']} ({r['from_evaluation']})" for r in carried) + "."]
    for rec in p["attacks"]:
        if rec.get("autoattack_warnings"):
            out += ["", "AutoAttack warned: " + " / ".join(rec["autoattack_warnings"])]
    out += ["", "Robustness curve (PGD-20, random start):", ""]
    curve_rows = [[fmt_eps(r["eps"], r["norm"]), f"{r['alpha']:.4g}", _pct(r["accuracy"])] for r in p["curve"]]
    out += _md_table(["eps", "alpha", "accuracy"], curve_rows)
    out += ["", "Sanity checks:", ""]
    out += [f"- {'PASS' if c['passed'] else '**FAIL**'} `{c['name']}`: {c['detail']}" for c in p["sanity"]]
    return [*out, ""]


def _shape(shape: list[int] | None) -> str:
    return "as stored" if shape is None else "x".join(map(str, shape))


def _transfer_md(t: dict[str, Any]) -> list[str]:
    """The transfer section: source and target dataset, their shapes, the conversion."""
    src, tgt, conv = t["source"], t["target"], t["conversion"]
    return [
        f"**Transfer:** encoder pretrained on {src['dataset']} ({_shape(src['image_shape'])}, CxHxW), evaluated on "
        f"{tgt['dataset']} (stored {_shape(tgt['image_shape'])}, evaluated {_shape(tgt['evaluated_shape'])}"
        + (f", {tgt['classes']} classes" if tgt.get("classes") else "") + "). "
        f"Channels: {conv['channels']}. Resize: {conv['resize']}. Normalization: {t['normalization']}.",
    ]


def _other_threats(report: dict[str, Any]) -> str:
    """' Also attacked in: ...' for attacks with a threat model of their own (a perceptual bound)."""
    lp = threat_of(report["settings"]).describe()
    other: dict[str, list[str]] = {}
    for p in report["protocols"].values():
        for rec in p["attacks"]:
            tm = rec.get("threat_model", lp)
            if tm != lp and rec["attack"] not in other.setdefault(tm, []):
                other[tm].append(rec["attack"])
    return "".join(f" Also attacked in: {tm} ({', '.join(names)})." for tm, names in other.items())


def _group_md(report: dict[str, Any], encoder: dict[str, Any]) -> list[str]:
    """One evaluation group (see accumulate.py): its warnings, data, threat model, summary table and protocols."""
    out: list[str] = []
    sub = report["test_subset"]
    if sub["used"]:
        out += [
            f"> **WARNING: SUBSET EVALUATION.** Only the first {sub['n_examples']} of {sub['n_total']} test images "
            "were used. These numbers are not comparable with full-test-set results.",
            "",
        ]
    if not report["sanity_passed"]:
        out += ["> **WARNING: A SANITY CHECK FAILED** (gradient masking, or a model at chance level); the "
                "accuracies below are not trustworthy. See the checks of each protocol.", ""]
    for note in report.get("notes", []):
        out += [f"> **WARNING:** {note}.", ""]
    enc, data, s = encoder, report["data"], report["settings"]
    out += [
        f"Encoder: {enc['feature_dim']}-d features, "
        + (f"dual BN evaluated on the `{s.get('bn_branch', enc['bn_branch'])}` branch" if enc["dual_bn"] else "single BN")
        + f"; {enc['n_classes']} classes. Eval mode, fp32, inputs in [0, 1].",
        f"Train: {data['train']['name']}/{data['train']['split']}, {data['train']['n_used']} of {data['train']['n_total']} "
        f"({data['train']['selection']}). Test: {data['test']['name']}/{data['test']['split']}, "
        f"{data['test']['n_used']} of {data['test']['n_total']} ({data['test']['selection']}).",
        f"Threat model: {threat_of(s).describe()}; PGD-20 alpha {fmt_eps(s['pgd_alpha'], threat_of(s).norm)}; "
        f"seed {s['seed']}." + _other_threats(report),
        "",
    ]
    if report.get("transfer"):
        out += [*_transfer_md(report["transfer"]), ""]
    rows = summary_rows(report)
    if rows:
        out += _md_table(list(rows[0]), [[_cell(v) for v in r.values()] for r in rows])
        out.append("")
    for name, p in report["protocols"].items():
        out += _protocol_md(name, p, report.get("created"))
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: per evaluation group (the latest conditions first, then `other_evaluations`), a loud
    subset / failed-check note, the threat model, one table per protocol, the checks; then the settings."""
    from .accumulate import describe_conditions, groups

    out = ["# Robustness report", ""]
    out += _group_md(report, report["encoder"])
    others = groups(report)[1:]
    for g in others:
        out += [f"# Earlier evaluation under other conditions: {describe_conditions(g)}", "",
                f"Evaluated {g.get('created', 'at an unknown time')}.", ""]
        out += _group_md(g, report["encoder"])
    if report.get("extra"):
        out += ["## Extra", "", "```json", json.dumps(report["extra"], indent=2, default=str), "```", ""]
    out += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    return "\n".join(out)


def agg_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot state). matplotlib is imported here, not at
    module level, so importing the eval package stays cheap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_pgd_curves(ax: Any, curves: list[tuple[str, list[dict[str, Any]]]], eps_marks: list[float], norm: str = "linf") -> None:
    """PGD-20 accuracy (%) vs eps on `ax`: one line per (label, curve points), a dotted line at each eps in `eps_marks`;
    the x axis names the norm the eps is measured in. Points with an "sd" (a mean over seeds) get error bars."""
    for label, curve in curves:
        xs, ys = [c["eps"] for c in curve], [100 * c["accuracy"] for c in curve]
        if any(c.get("sd") is not None for c in curve):  # mean over seeds: error bars of one sd
            ax.errorbar(xs, ys, yerr=[100 * (c.get("sd") or 0.0) for c in curve], marker="o", capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
    for eps in eps_marks:
        ax.axvline(eps, color="gray", linestyle=":", linewidth=1)
    label, units = LP_NORMS[norm]
    ax.set_xlabel(f"eps ({label}, {units})")
    ax.set_ylabel("accuracy under PGD-20 (%)")
    ax.set_ylim(0, 100)


FIGURE_FORMATS = ("png", "svg", "pdf")  # every figure is written in each (same name, these suffixes)


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """`fig` written as PNG at `path` and beside it as SVG (text kept as text, searchable) and PDF;
    returns the PNG's path. kwargs go to savefig (bbox_inches, ...)."""
    import matplotlib

    path = Path(path)
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "robustssl"}):
        for fmt in FIGURE_FORMATS:
            fig.savefig(path.with_suffix(f".{fmt}"), format=fmt, **kwargs)
    return path


def save_axes(fig: Any, ax: Any, title: str, path: str | Path, legend_size: str | None = None,
              legend_outside: bool = False) -> Path:
    """Title, grid and legend on `ax` (right of the axes with `legend_outside`, so many lines stay visible), then
    `fig` saved (tight layout) at `path` (PNG, plus SVG and PDF: `save_figure`)."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curve_panels(panels: dict[str, list[tuple[str, list[dict[str, Any]]]]], marks: dict[str, list[float]],
                      title: str, path: str | Path, width: float = 5.0, height: float = 3.6, legend_size: str | None = None) -> Path:
    """PGD-20 accuracy vs eps: one panel per norm (`panels`: norm -> (label, curve) lines; `marks`: norm -> the
    eps evaluated at), the norm in each panel's axis and title; saved by `save_figure` (PNG, SVG, PDF)."""
    fig = agg_figure(width * len(panels), height)
    for i, (norm, curves) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        plot_pgd_curves(ax, curves, marks.get(norm, []), norm)
        ax.set_title(f"{title}, {LP_NORMS[norm][0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_robustness_curve(report: dict[str, Any], path: str | Path) -> Path:
    """PGD-20 accuracy vs eps, one line per protocol and evaluation group (a panel per norm), saved as PNG
    (plus SVG and PDF beside it). A group evaluated on a test subset is labelled SUBSET."""
    from .accumulate import groups

    panels: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    marks: dict[str, list[float]] = {}
    all_groups = groups(report)
    for i, g in enumerate(all_groups):
        tm = threat_of(g["settings"])
        sub = g["test_subset"]
        suffix = f" ({sub['n_examples']} images" + (", SUBSET)" if sub["used"] else ")")
        if i:
            suffix += f" [eps {fmt_eps(tm.eps, tm.norm)}]"
        for name, p in g["protocols"].items():
            panels.setdefault(tm.norm, []).append((name.upper() + suffix, p["curve"]))
        marks.setdefault(tm.norm, []).append(tm.eps)
    return plot_curve_panels(panels, marks, "Robustness curve", path)


def read_report(path: str | Path) -> dict[str, Any] | None:
    """report.json at `path` (None when absent); RunError naming the file and the fix when it is damaged."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict) or report.get("schema") != SCHEMA or not isinstance(report.get("protocols"), dict):
            raise ValueError(f"not a {SCHEMA} report")
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise RunError(f"{path} is damaged or not a robustssl evaluation report ({e}); it is not overwritten: move it "
                       "away and evaluate again") from None
    return report


def save_report(report: dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None
                ) -> tuple[dict[str, Path], list[str]]:
    """Add one evaluation's `report` to `out_dir`'s report.json (accumulate.py: earlier protocols,
    attacks and evaluation conditions are kept; a re-run replaces only its own entries), then
    rewrite report.md and the curve (PNG, SVG, PDF) from the accumulated report. `extra`
    (JSON-serializable) is merged into report["extra"]. Returns (paths, one line per change);
    `report` itself is not modified. A damaged report.json is an error and stays as it is."""
    from .accumulate import merge_reports

    out = Path(out_dir)
    paths = {"json": out / REPORT_FILE, "markdown": out / "report.md", "curve": out / "robustness_curve.png"}
    old = read_report(paths["json"])
    out.mkdir(parents=True, exist_ok=True)
    new = {**report, "extra": {**report.get("extra", {}), **(extra or {})}}
    full, changes = merge_reports(old, new)
    atomic_write_text(paths["json"], json.dumps(full, indent=2, default=str) + "\n")
    atomic_write_text(paths["markdown"], render_markdown(full))
    plot_robustness_curve(full, paths["curve"])
    return paths, changes


def write_report(report: dict[str, Any], out_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """`save_report` without the change lines: add `report` to out_dir's report.json, rewrite report.md
    and the curve; returns the paths."""
    return save_report(report, out_dir, extra)[0]
