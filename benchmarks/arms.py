"""One benchmark arm: ACS's warm-start and RCS's schedules, the step-normalized speed-up, a train-then-evaluate that
--reuse can resume (and whose saved evaluation it reuses when it is this one), and a finished run's per-epoch training
loss and re-selection epochs.

Shared by acs_speed_quality.py and pat_quality.py (both compare full adversarial training with
coreset arms under ACS's warm start, or RCS's schedule for label-free methods).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from robustssl import api
from robustssl.config import load_config
from robustssl.eval.report import read_report
from robustssl.train.run_dir import differs_from_saved


def acs_schedule(epochs: int, kappa: float, fraction: float) -> tuple[int, int]:
    """(full warm-start epochs, coreset epochs) of ACS's warm start with c = f."""
    return round(fraction * kappa * epochs), round((1 - kappa) * epochs)


def rcs_schedule(epochs: int) -> tuple[int, int, int]:
    """(full warm-up epochs, coreset epochs, re-selection every) of the RCS code's schedule: warm-up 10% of the
    run, then coresets re-selected every 10% until its end."""
    tenth = max(1, round(0.1 * epochs))
    return tenth, epochs - tenth, tenth


def coreset_overrides(selector: str, fraction: float, warm: int, core: int, every: int, unit: str = "batch") -> list[str]:
    """The overrides of a coreset arm: `warm` full epochs, then `core` epochs on coresets re-selected every `every`;
    `unit` batch (ACS's shipped GradMatchPB / CRAIGPB: the atoms are fixed minibatches) or sample (per-class images)."""
    return [f"coreset.selector={selector}", f"coreset.unit={unit}", f"coreset.fraction={fraction}",
            f"coreset.warmup_epochs={warm}", f"coreset.every={every}", f"train.epochs={warm + core}"]


def step_normalized(full: dict[str, Any], arm: dict[str, Any]) -> float:
    """Full's training steps over the arm's steps plus its selection time converted into its own steps:
    drift between runs (minutes apart on a shared machine) cancels."""
    return full["steps"] / (arm["steps"] * arm["train_s"] / max(1e-9, arm["train_s"] - arm["selection_s"]))


def check_reused(out: Path, recipe: str, overrides: list[str]) -> None:
    """Refuse to reuse a run folder whose config differs from the arm's: its numbers would be another arm's.
    The folder's config is compared as a resume compares it (keys added since, at their legacy values)."""
    if differ := differs_from_saved(out / "config.yaml", load_config(recipe, overrides)):
        raise SystemExit(f"--reuse {out}: the folder's config.yaml is not this arm's ({differ}); "
                         "move the folder away or drop --reuse to retrain it")


def saved_evaluation(out: Path, eval_overrides: list[str], summary: dict[str, Any]) -> dict[str, Any] | None:
    """The latest evaluation in a finished run's report.json when it is the one `eval_overrides` ask for, else None.

    It is reused only if it evaluated this very training (the run.json it recorded is `summary`, the folder's run.json
    now: a retrained folder's report is stale) with every eval setting as the run's config plus `eval_overrides` gives it, and measured
    every requested protocol and attack; its report holds only those protocols (report.json may accumulate others)."""
    saved = read_report(out / "report.json")  # a damaged report is refused with the fix named
    if saved is None:
        return None
    wanted = dataclasses.asdict(api.run_config(out, eval_overrides).eval)
    if wanted.pop("components"):  # own attack/protocol settings are stored with their defaults filled in: not compared
        return None
    wanted = json.loads(json.dumps(wanted))  # tuples as the report's lists
    settings, training = saved.get("settings", {}), saved.get("extra", {}).get("training")
    if any(settings.get(k) != v for k, v in wanted.items()) or training != summary:
        return None
    protocols = saved["protocols"]
    if any(p not in protocols or not set(wanted["attacks"]) <= {a["attack"] for a in protocols[p]["attacks"]}
           for p in wanted["protocols"]):
        return None
    return {**saved, "protocols": {p: protocols[p] for p in wanted["protocols"]}}


def epoch_losses(run: Path) -> dict[int, float]:
    """{epoch: mean training loss of the epoch} from a run's metrics.jsonl: the method's own loss (for adversarial
    training, on the adversarial examples it trained on); a resumed epoch counts once, as last logged."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["epoch"]: float(r["loss"]) for r in map(json.loads, filter(str.strip, lines)) if r.get("type") == "epoch"}


def reselection_epochs(run: Path) -> list[int]:
    """The epochs at which a coreset run replaced its coreset (each selection after the first), from run.json."""
    selections = json.loads((run / "run.json").read_text())["coreset"].get("selections", [])
    return [int(s["epoch"]) for s in selections[1:]]


def train_and_evaluate(recipe: str, out: Path, overrides: list[str], eval_overrides: list[str],
                       reuse: bool) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Train `recipe` into `out` and evaluate it; returns (report, run.json, wall seconds of both).

    With `reuse` a finished run is not retrained and an interrupted one resumes (its elapsed
    training time carries over in run.json); either only if the folder's config is the one this arm asks for
    (a folder copied from another benchmark, e.g. full at E/2 as this one's full-half, is checked key by key); a reused
    run is not evaluated again when its report.json holds this evaluation (saved_evaluation)."""
    started = time.perf_counter()
    if reuse and (out / "config.yaml").is_file():
        check_reused(out, recipe, overrides)
    trained = not (reuse and (out / "encoder.safetensors").is_file())
    if trained:
        resumed = reuse and (out / "checkpoint.pt").is_file()
        api.pretrain(None if resumed else recipe, out, overrides=None if resumed else overrides, resume=resumed)
    summary = json.loads((out / "run.json").read_text())  # evaluation does not change it
    report = None if trained else saved_evaluation(out, eval_overrides, summary)
    if report is None:
        report = api.evaluate(out, overrides=eval_overrides)
    else:
        print(f"{out}: reused its saved evaluation (the same training and eval settings)", flush=True)
    return report, summary, time.perf_counter() - started
