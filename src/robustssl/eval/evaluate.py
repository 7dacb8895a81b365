"""Evaluate a frozen encoder: linear probes, clean / PGD / AutoAttack accuracy, eps curve, sanity checks.

    report = evaluate_encoder(model, train, test, cfg, device)
    write_report(report, "runs/acl/eval")   # report.json, report.md, robustness_curve.png
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn

from .. import progress
from ..config import EvalConfig
from ..data.dataset import ImageDataset
from ..errors import ConfigError
from ..models.dual_bn import has_dual_bn, model_mode
from ..models.encoder import SSLModel
from ..run_setup import hardware
from .classifier import choose_branch, model_device
from .linear import ProbeNotConvergedWarning
from .registry import ATTACKS, PROTOCOLS, check_names, components_with_settings
from .report import SCHEMA, write_report
from .robust import AttackResult, clean_accuracy, pgd_accuracy
from .sanity import (
    CHANCE_MARGIN,
    LARGE_EPS_MAX_ACCURACY,
    RANK_CLEAN,
    RANK_FGSM,
    all_passed,
    chance_threshold,
    check_above_chance,
    check_eps_zero,
    check_large_eps,
    check_order,
    fgsm_slack,
    large_eps,
    large_eps_alpha,
)
from .threat import ThreatModel

log = logging.getLogger(__name__)

PGD_STEPS = 20

__all__ = ["curve_points", "evaluate_classifier", "evaluate_encoder", "write_report"]


def curve_points(cfg: EvalConfig) -> list[float]:
    """The eps values of the robustness curve: cfg.eps_curve plus 0 and cfg.eps, sorted, unique."""
    return sorted({0.0, float(cfg.eps), *(float(e) for e in cfg.eps_curve)})


def curve_alpha(eps: float, cfg: EvalConfig) -> float:
    """PGD step for a curve point: cfg.pgd_alpha scaled with eps (alpha/eps fixed), exactly cfg.pgd_alpha at cfg.eps."""
    if cfg.eps <= 0:
        return cfg.pgd_alpha
    return cfg.pgd_alpha * eps / cfg.eps


def _test_tensors(test: ImageDataset, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images as float [n, C, H, W] in [0, 1] and labels int64 [n] (CPU)."""
    if test.labels is None:
        raise ValueError(f"{test.name}/{test.split} has no labels; evaluation needs a labelled test split")
    n = len(test) if n is None else min(n, len(test))
    if n <= 0:
        raise ValueError(f"{test.name}/{test.split}: no test images to evaluate on")
    return test.images[:n].cpu().float().div_(255.0), test.labels[:n].cpu()


def _n_classes(train: ImageDataset, test: ImageDataset) -> int:
    counts = [d.num_classes for d in (train, test) if d.num_classes is not None]
    if not counts:
        raise ValueError("neither split has labels; evaluation needs labelled data")
    return max(counts)


def _logit_width(model: nn.Module, x: torch.Tensor) -> int:
    """The number of classes a classifier scores: the width of its logits on one example (eval mode)."""
    with torch.no_grad(), model_mode(model, "eval"):
        return int(model(x[:1].to(model_device(model)).float()).shape[1])


def attack_run_order(names: Sequence[str]) -> list[str]:
    """`names` with each attack's `requires` placed before it (added when not named)."""
    out: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in out:
            return
        if name in path:
            raise ConfigError(f"evaluation attacks require each other in a cycle: {' -> '.join((*path, name))}")
        for dep in ATTACKS[name].requires:
            visit(dep, (*path, name))
        out.append(name)

    for name in names:
        visit(name, ())
    return out


def run_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig) -> dict[str, AttackResult]:
    """Every attack of cfg.attacks (and what they require) on `model`, each on its first
    `n_examples(cfg, N)` examples, in registry terms; each result's record names its threat model."""
    results: dict[str, AttackResult] = {}
    for name in attack_run_order(cfg.attacks):
        attack = ATTACKS[name]
        n = attack.n_examples(cfg, x.shape[0])
        progress.stage(attack.label, n)  # the name on the display (PGD and AutoAttack then count their examples)
        result = attack.run(model, x[:n], y[:n], cfg, dict(results))
        result.extra["threat_model"] = attack.threat_model(cfg).describe()
        result.extra["label"] = attack.label
        log.info("%s accuracy %.4f (%s) on %d examples", attack.label, result.accuracy,
                 result.extra["threat_model"], result.n_examples)
        results[name] = result
    return results


def order_checks(clean: AttackResult, fgsm: AttackResult, results: dict[str, AttackResult], cfg: EvalConfig) -> list[dict[str, Any]]:
    """The attack-order checks: per threat model, the attacks by rank, with clean (and, for the
    evaluation's l_p ball, the FGSM of the checks). An attack run on the first n < N examples
    gets its own check (`attack_order_<name>_subset`) against the others restricted to those n."""
    lp = ThreatModel.lp(cfg.norm, cfg.eps)
    groups: dict[ThreatModel, list[str]] = {}
    for name in results:
        groups.setdefault(ATTACKS[name].threat_model(cfg), []).append(name)
    groups.setdefault(lp, [])
    checks = []
    n_all = clean.n_examples
    for tm, names in sorted(groups.items(), key=lambda kv: kv[0] != lp):
        base = [(RANK_CLEAN, clean)] + ([(RANK_FGSM, fgsm)] if tm == lp else [])
        full = [(ATTACKS[n].rank, results[n]) for n in names if results[n].n_examples == n_all]
        checks.append(check_order(base + full, "attack_order" if tm == lp else f"attack_order_{tm.norm}"))
        for name in names:
            r = results[name]
            if r.n_examples < n_all:
                k = r.n_examples
                chain = [(rank, res.first(k)) for rank, res in base + full] + [(ATTACKS[name].rank, r)]
                checks.append(check_order(chain, f"attack_order_{name}_subset"))
    return checks


def evaluate_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: EvalConfig, n_classes: int | None = None
) -> dict[str, Any]:
    """Every accuracy and check for one trained classifier (a `LinearEvalModel`, or any module
    mapping inputs in [0, 1] to logits; it is run in eval mode).

    x: float [N, C, H, W] in [0, 1]; y: int64 [N]. Runs clean accuracy, the registered attacks
    of `cfg.attacks` (`ATTACKS`, each in its own threat model, by default eval.norm at eval.eps),
    the PGD-20 curve over `curve_points(cfg)`, and the attacks the sanity checks need (FGSM at
    cfg.eps, PGD-20 at `large_eps(cfg.eps)`). All in eval mode, fp32, seeded with cfg.seed.
    n_classes: for the above-chance check; None takes the width of the model's logits.
    """
    bs, seed = cfg.batch_size, cfg.seed
    n_classes = _logit_width(model, x) if n_classes is None else n_classes
    clean = clean_accuracy(model, x, y, bs)
    log.info("clean accuracy %.4f (%d examples)", clean.accuracy, clean.n_examples)
    norm = cfg.norm
    results = run_attacks(model, x, y, cfg)
    # PGD-20 at eps: the curve's point and the checks' reference, measured when not requested
    pgd20 = results.get("pgd20") or pgd_accuracy(model, x, y, cfg.eps, cfg.pgd_alpha, PGD_STEPS, norm=norm, seed=seed,
                                                 batch_size=bs, name="pgd20")
    fgsm = pgd_accuracy(model, x, y, cfg.eps, cfg.eps, 1, norm=norm, random_start=False, seed=seed, batch_size=bs, name="fgsm")
    curve: dict[float, AttackResult] = {float(cfg.eps): pgd20}
    for e in curve_points(cfg):
        if e not in curve:
            curve[e] = pgd_accuracy(model, x, y, e, curve_alpha(e, cfg), PGD_STEPS, norm=norm, seed=seed, batch_size=bs,
                                    name="pgd20")
    big = large_eps(cfg.eps, norm, x[0].numel())
    large = pgd_accuracy(model, x, y, big, large_eps_alpha(big, PGD_STEPS), PGD_STEPS, norm=norm, seed=seed, batch_size=bs,
                         name="pgd20")
    order = order_checks(clean, fgsm, {**results, "pgd20": pgd20}, cfg)
    sanity = [check_eps_zero(clean, curve[0.0]), *order, check_large_eps(large), check_above_chance(clean, n_classes)]
    sanity += [c for r in results.values() for c in r.extra.pop("checks", [])]  # an attack's own checks (perceptual.py)
    for r in results.values():
        if r.n_examples < x.shape[0]:  # run on the first n: what the others measured on exactly those
            r.extra["pgd20_on_same_examples"] = pgd20.first(r.n_examples).accuracy
            r.extra["clean_on_same_examples"] = clean.first(r.n_examples).accuracy
    return {
        "clean": clean.record(),
        "attacks": [results[name].record() for name in cfg.attacks],
        "curve": [curve[e].record() for e in sorted(curve)],
        "sanity_attacks": {"fgsm": fgsm.record(), "large_eps": large.record()},
        "sanity": sanity,
        "sanity_passed": all_passed(sanity),
    }


def _split_info(d: ImageDataset, n_used: int, how: str) -> dict[str, Any]:
    return {"name": d.name, "split": d.split, "n_total": len(d), "n_used": n_used, "selection": how}


def _versions() -> dict[str, str]:
    out = {"torch": str(torch.__version__)}
    for pkg in ("robustssl", "pyautoattack"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _probe_notes(protocols: dict[str, Any]) -> list[str]:
    """One note per protocol whose linear probe did not converge (see linear.probe_convergence); each is
    also kept in its protocol's entry ("notes"), so it stays with the protocol when reports accumulate."""
    notes = []
    for name, p in protocols.items():
        conv = p["training"].get("convergence", {})
        p["notes"] = []
        if conv and not conv["converged"]:
            p["notes"].append(f"the {name.upper()} linear probe did not converge: {conv['detail']}")
            notes.append(p["notes"][-1])
            log.warning(notes[-1])
            warnings.warn(notes[-1], ProbeNotConvergedWarning, stacklevel=3)
    return notes


def evaluate_encoder(
    model: SSLModel,
    train: ImageDataset,
    test: ImageDataset,
    cfg: EvalConfig,
    device: torch.device | str,
    branch: str | None = None,
    trained_branches: Sequence[str] | None = None,
    keep_classifier: Callable[[str, nn.Module, dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Run every protocol of `cfg.protocols` on copies of `model` and return the report dict.
    keep_classifier(protocol, trained classifier, its report entry), when given, is called after
    each protocol (`robustssl evaluate` saves the classifier with it: models/hub.py).

    train / test: labelled uint8 splits. For each protocol a classifier (encoder + a fresh
    linear head) is trained on `train` (a seeded subset of cfg.train_examples when set):
    "slf" / "alf" train the head on a frozen copy of the encoder (eval mode), "slf-mc" /
    "alf-mc" the same on the mean features of cfg's fixed crop set (multicrop.py), "aff"
    finetunes encoder and head with TRADES on its own copy (train mode). Each classifier is
    then evaluated on the first cfg.n_examples test images (all when None): clean accuracy,
    cfg.attacks at cfg.eps, the PGD-20 eps curve, and the sanity checks, in eval mode, fp32.
    Everything runs on BN `branch`; when None, dual-BN encoders use "pgd" if it was
    trained or `trained_branches` is unknown (None), else the trained branch
    (`classifier.default_branch`). Evaluating a branch outside `trained_branches` warns
    (`UntrainedBranchWarning`) and is noted in the report. `model` itself is never modified,
    and a finetuning protocol's changes never reach another protocol. See report.py for the schema.
    """
    check_names(cfg.protocols, cfg.attacks)
    device = torch.device(device)
    n_classes = _n_classes(train, test)
    x, y = _test_tensors(test, cfg.n_examples)
    used_branch, branch_note = choose_branch(model, branch, trained_branches)
    trained = None if trained_branches is None else list(trained_branches)

    frozen: SSLModel | None = None  # one frozen copy, shared by the linear protocols
    protocols: dict[str, Any] = {}
    for name in cfg.protocols:
        log.info("evaluating protocol %s", name.upper())
        protocol = PROTOCOLS[name]
        if protocol.finetunes_encoder:
            encoder = copy.deepcopy(model).to(device)  # its own copy: finetuning reaches nothing else
        else:
            frozen = frozen if frozen is not None else copy.deepcopy(model).to(device)
            encoder = frozen
        clf = protocol.classifier(encoder, n_classes, used_branch, cfg).to(device)
        with progress.section(name.upper()):  # the active progress display names the protocol
            training = protocol.train(clf, train, cfg, device)
            protocols[name] = {"training": training, **evaluate_classifier(clf, x, y, cfg, n_classes)}
        if keep_classifier is not None:
            keep_classifier(name, clf, protocols[name])
    notes = ([branch_note] if branch_note else []) + _probe_notes(protocols)

    big = large_eps(cfg.eps, cfg.norm, x[0].numel())  # the large-eps check's radius, as evaluate_classifier uses it
    n_train = len(train) if cfg.train_examples is None else min(cfg.train_examples, len(train))
    subset = x.shape[0] < len(test)
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "encoder": {
            "feature_dim": int(model.feature_dim),
            "dual_bn": has_dual_bn(model),
            "bn_branch": used_branch,
            "trained_branches": trained,
            "branch_trained": None if trained is None or used_branch is None else used_branch in trained,
            "n_classes": n_classes,
        },
        "data": {
            "train": _split_info(train, n_train, "all" if n_train == len(train) else f"seeded random subset (seed {cfg.seed})"),
            "test": _split_info(test, x.shape[0], "all" if not subset else f"first {x.shape[0]}"),
        },
        "test_subset": {"used": subset, "n_examples": int(x.shape[0]), "n_total": len(test)},
        "settings": {
            **dataclasses.asdict(cfg),
            # the own settings every selected attack and protocol ran with (defaults included)
            "components": {n: dataclasses.asdict(cfg.component(n)) for n in [*cfg.protocols, *attack_run_order(cfg.attacks)]
                           if n in components_with_settings()},
            "device": str(device),
            "hardware": hardware(device),
            "bn_branch": used_branch,
            "trained_branches": trained,
            "threat_model": ThreatModel.lp(cfg.norm, cfg.eps).record(),
            "pgd_steps": PGD_STEPS,
            "curve_alpha": "pgd_alpha * eps / cfg.eps (alpha/eps fixed)",
            "fgsm": {
                "eps": cfg.eps, "alpha": cfg.eps, "steps": 1, "random_start": False,
                "pgd_slack_examples": fgsm_slack(int(x.shape[0])),
            },
            "large_eps": {
                "eps": big, "alpha": large_eps_alpha(big, PGD_STEPS), "steps": PGD_STEPS,
                "max_accuracy": LARGE_EPS_MAX_ACCURACY,
            },
            "above_chance": {"min_clean_accuracy": chance_threshold(n_classes), "margin": CHANCE_MARGIN},
        },
        "protocols": protocols,
        "sanity_passed": all(p["sanity_passed"] for p in protocols.values()),
        "notes": notes,
        "versions": _versions(),
        "extra": {},
    }
