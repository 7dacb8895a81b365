"""Evaluation: linear probes (SLF, ALF) on a frozen encoder, clean / PGD / AutoAttack accuracy,
gradient-masking sanity checks, and the robustness report (JSON, Markdown, curve)."""
from .classifier import LinearEvalModel, default_branch
from .evaluate import curve_points, evaluate_classifier, evaluate_encoder, write_report
from .linear import extract_features, lr_at, train_alf, train_slf, train_subset
from .report import format_table, plot_robustness_curve, render_markdown, summary_rows
from .robust import AttackResult, autoattack_accuracy, clean_accuracy, pgd_accuracy, predict
from .sanity import (
    SanityCheckWarning,
    check_attack_order,
    check_eps_zero,
    check_large_eps,
    large_eps,
)

__all__ = [
    "AttackResult", "LinearEvalModel", "SanityCheckWarning", "autoattack_accuracy", "check_attack_order",
    "check_eps_zero", "check_large_eps", "clean_accuracy", "curve_points", "default_branch", "evaluate_classifier",
    "evaluate_encoder", "extract_features", "format_table", "large_eps", "lr_at", "pgd_accuracy",
    "plot_robustness_curve", "predict", "render_markdown", "summary_rows", "train_alf", "train_slf",
    "train_subset", "write_report",
]
