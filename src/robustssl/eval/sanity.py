"""Sanity checks that catch gradient masking (methods.md §7).

Each check returns {"name", "passed", "detail"}. A failed check is warned about
(`SanityCheckWarning`, through `warnings`, and logged) and recorded in the report; it is
never raised and never hidden.

- eps_zero: PGD at eps=0 gives exactly the clean per-example flags (same examples). A
  difference means the model is randomized or the attack pipeline changes the inputs.
- attack_order: AutoAttack <= PGD-50x10 <= PGD-20 <= FGSM <= clean, on accuracies (in
  general: the registered attacks of one threat model by their rank, threat.py), with
  tolerance 0, except PGD-20 <= FGSM, which allows one example or 1 % (`FGSM_SLACK_PERCENT`), whichever is
  larger: on a nearly linear model the single full-size FGSM step can beat a random-start
  PGD on a handful of examples (and GPU runs vary by an example); masking shows as PGD
  well above FGSM. A stronger attack scoring higher than a weaker one means the gradients
  mislead the stronger attack.
- large_eps: PGD-20 at a large radius (`large_eps(eps)`, 0.5 by default) must drive the
  accuracy to at most `LARGE_EPS_MAX_ACCURACY` (0.1). At eps=0.5 every image of [0, 1]^d
  lies within reach of the constant mid-gray image, which carries no class information, so
  a working attack can always get to chance level or below; an honest PGD on a
  differentiable model gets close to 0. 0.1 is chance for 10 classes and leaves room for
  the few examples 20 steps do not move. Accuracy above it at that radius means the
  attack is not getting useful gradients.
- above_chance: clean accuracy must be above chance, 1/n_classes + `CHANCE_MARGIN` (0.05,
  absolute; 0.15 for 10 classes). An encoder that lost its features (e.g. BatchNorm running
  variances of inf, so every image maps to the same feature vector) gives a probe that
  predicts one class; such a model passes the three checks above (it has no gradients to
  mask and is already at chance), and its robust accuracies mean nothing. A real encoder
  with a trained probe is far above this bar; on a tiny test subset (tens of images) a
  chance-level model can clear it by luck, so the check is a floor, not a guarantee.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

from .robust import AttackResult

log = logging.getLogger(__name__)

LARGE_EPS = 0.5
LARGE_EPS_MAX_ACCURACY = 0.1
LARGE_EPS_STEPS = 20
FGSM_SLACK_PERCENT = 1
CHANCE_MARGIN = 0.05


class SanityCheckWarning(UserWarning):
    """A robustness number failed a sanity check (a sign of gradient masking)."""


def large_eps(eps: float, norm: str = "linf", dim: int | None = None) -> float:
    """The radius of the large-eps check: 0.5, or 4*eps when that is larger (capped at 1).

    l_2 (`dim`: the input's number of values, C*H*W): 0.5 * sqrt(dim), the l_2 ball around the
    l_inf ball of 0.5 (the l_inf check's radius), or 4*eps when larger, capped at sqrt(dim)
    (the diameter of the image cube)."""
    if norm == "l2":
        if dim is None:
            raise ValueError("the l2 large-eps radius needs the input dimension")
        return min(dim**0.5, max(LARGE_EPS * dim**0.5, 4 * eps))
    return min(1.0, max(LARGE_EPS, 4 * eps))


def large_eps_alpha(eps: float, steps: int = LARGE_EPS_STEPS) -> float:
    """Step size for the large-eps PGD: 2.5*eps/steps, so the steps can cross the whole ball."""
    return 2.5 * eps / steps


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    if not passed:
        message = f"robustness sanity check '{name}' FAILED: {detail}"
        log.warning(message)
        warnings.warn(message, SanityCheckWarning, stacklevel=3)
    return {"name": name, "passed": bool(passed), "detail": detail}


def check_eps_zero(clean: AttackResult, pgd_zero: AttackResult) -> dict[str, Any]:
    """PGD at eps=0 must reproduce the clean per-example flags exactly."""
    if pgd_zero.eps != 0:
        raise ValueError(f"check_eps_zero needs a PGD result at eps=0, got eps={pgd_zero.eps}")
    if clean.n_examples != pgd_zero.n_examples:
        return _check("eps_zero", False, f"different example counts: clean {clean.n_examples}, PGD {pgd_zero.n_examples}")
    differ = int((clean.flags != pgd_zero.flags).sum().item())
    detail = (
        f"{pgd_zero.attack} at eps=0: {pgd_zero.accuracy:.4f}, clean: {clean.accuracy:.4f}; "
        f"{differ} of {clean.n_examples} examples differ"
    )
    return _check("eps_zero", differ == 0, detail)


def fgsm_slack(n_examples: int) -> int:
    """How many more examples PGD-20 may get right than FGSM: one, or 1 % when that is more."""
    return max(1, -(-n_examples * FGSM_SLACK_PERCENT // 100))


def _correct(r: AttackResult) -> int:
    return int(r.flags.sum().item())


RANK_CLEAN, RANK_FGSM = 0, 10  # the attack-order ranks of clean accuracy and of the checks' FGSM (threat.py)


def check_order(chain: list[tuple[int, AttackResult]], name: str = "attack_order") -> dict[str, Any]:
    """Accuracies must not increase with attack strength, on results of one threat model and the same examples.

    chain: (rank, result) pairs; for every pair with rank_a > rank_b, result a must not leave
    more examples correct than result b: tolerance 0, except against the FGSM of the checks
    (attack "fgsm"), which a stronger attack may exceed by `fgsm_slack(n)` examples (see the
    module docstring). Compared as counts of correct examples.
    """
    chain = sorted(chain, key=lambda t: -t[0])
    results = [r for _, r in chain]
    order = " <= ".join(f"{r.attack} {r.accuracy:.4f}" for r in results)
    if len({r.n_examples for r in results}) > 1:
        return _check(name, False, f"{order}: results on different numbers of examples")
    n = results[0].n_examples if results else 0
    broken = []
    for i, (rank_strong, strong) in enumerate(chain):
        for rank_weak, weak in chain[i + 1:]:
            if rank_weak >= rank_strong:
                continue
            tol = fgsm_slack(n) if weak.attack == "fgsm" else 0
            if _correct(strong) > _correct(weak) + tol:
                broken.append(f"{weak.attack} {weak.accuracy:.4f} < {strong.attack} {strong.accuracy:.4f}"
                              + (f" (slack {tol} examples)" if tol else ""))
    detail = f"{order} on {n} examples" + ("" if not broken else " violated: " + "; ".join(broken))
    return _check(name, not broken, detail)


def check_attack_order(
    clean: AttackResult, pgd: AttackResult, autoattack: AttackResult | None = None, fgsm: AttackResult | None = None,
    name: str = "attack_order",
) -> dict[str, Any]:
    """AutoAttack <= PGD <= FGSM <= clean (`check_order` with the built-in attacks' ranks: AutoAttack 100,
    PGD-20 20, FGSM 10, clean 0). AutoAttack and FGSM are optional."""
    chain = [(100, autoattack), (20, pgd), (RANK_FGSM, fgsm), (RANK_CLEAN, clean)]
    return check_order([(rank, r) for rank, r in chain if r is not None], name)


def check_large_eps(result: AttackResult, max_accuracy: float = LARGE_EPS_MAX_ACCURACY) -> dict[str, Any]:
    """PGD at a large radius must bring the accuracy down to at most `max_accuracy`."""
    detail = f"{result.attack} at eps={result.eps:.4g}: accuracy {result.accuracy:.4f} (must be <= {max_accuracy})"
    return _check("large_eps", result.accuracy <= max_accuracy, detail)


def chance_threshold(n_classes: int, margin: float = CHANCE_MARGIN) -> float:
    """The clean accuracy a model must exceed: 1/n_classes + margin (0.15 for 10 classes)."""
    if n_classes < 2:
        raise ValueError(f"chance level needs at least 2 classes, got {n_classes}")
    return 1.0 / n_classes + margin


def check_above_chance(clean: AttackResult, n_classes: int, margin: float = CHANCE_MARGIN) -> dict[str, Any]:
    """Clean accuracy must exceed chance (1/n_classes) by more than `margin`; else the model predicts garbage."""
    bar = chance_threshold(n_classes, margin)
    detail = (
        f"clean accuracy {clean.accuracy:.4f} on {clean.n_examples} examples (must be > {bar:.4f} = "
        f"chance 1/{n_classes} + {margin}; at or below it the encoder or probe is broken)"
    )
    return _check("above_chance", clean.accuracy > bar, detail)


def all_passed(checks: list[dict[str, Any]]) -> bool:
    return all(c["passed"] for c in checks)

