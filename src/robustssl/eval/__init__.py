"""Evaluation: linear probes (SLF, ALF) on a frozen encoder, adversarial full finetuning (AFF,
TRADES), clean / PGD / AutoAttack accuracy, gradient-masking and chance-level sanity checks, and
the robustness report (JSON, Markdown, curve).

Importing the package is cheap: AutoAttack and matplotlib are imported only when used.
"""
from .classifier import FinetuneClassifier, LinearEvalModel, UntrainedBranchWarning, choose_branch, default_branch
from .evaluate import curve_points, evaluate_classifier, evaluate_encoder, write_report
from .finetune import FinetuneSettings, aff_settings, finetune_trades, train_aff
from .linear import ProbeNotConvergedWarning, extract_features, lr_at, probe_convergence, train_alf, train_slf, train_subset
from .registry import ATTACKS, PROTOCOLS, Protocol
from .report import format_table, plot_robustness_curve, render_markdown, summary_rows
from .robust import AttackResult, autoattack_accuracy, clean_accuracy, pgd_accuracy, predict
from .sanity import (
    SanityCheckWarning,
    check_above_chance,
    check_attack_order,
    check_eps_zero,
    check_large_eps,
    check_order,
    large_eps,
)
from .threat import EvalAttack, ThreatModel

__all__ = [
    "ATTACKS",
    "PROTOCOLS",
    "AttackResult",
    "EvalAttack",
    "FinetuneClassifier",
    "FinetuneSettings",
    "LinearEvalModel",
    "ProbeNotConvergedWarning",
    "Protocol",
    "SanityCheckWarning",
    "ThreatModel",
    "UntrainedBranchWarning",
    "aff_settings",
    "autoattack_accuracy",
    "check_above_chance",
    "check_attack_order",
    "check_eps_zero",
    "check_large_eps",
    "check_order",
    "choose_branch",
    "clean_accuracy",
    "curve_points",
    "default_branch",
    "evaluate_classifier",
    "evaluate_encoder",
    "extract_features",
    "finetune_trades",
    "format_table",
    "large_eps",
    "lr_at",
    "pgd_accuracy",
    "plot_robustness_curve",
    "predict",
    "probe_convergence",
    "render_markdown",
    "summary_rows",
    "train_aff",
    "train_alf",
    "train_slf",
    "train_subset",
    "write_report",
]
