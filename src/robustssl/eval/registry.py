"""The names evaluation accepts, and what each one does: evaluation protocols and evaluation attacks.

Cheap to import (no AutoAttack, no matplotlib), so the config and the CLI build their
choices from these tables:

    PROTOCOLS  name -> Protocol: how the classifier is built from the encoder (`build`), how it
               is trained (`train`), how its training record is written in report.md
               (`render`), and its own settings (`Settings`, keys eval.<name>.<key>)
               ("slf": linear head on clean features; "alf": linear head on PGD examples of
               the whole model; "aff": encoder + head finetuned with TRADES; "slf-mc" /
               "alf-mc": SLF / ALF on the mean of the features of a fixed set of crops of
               the image, EMP-SSL's multi-patch aggregation, see multicrop.py; "direct": a
               supervised run's own classifier; "knn": weighted cosine kNN on the
               frozen features, as solo-learn and lightly, see knn.py)
    ATTACKS    name -> EvalAttack (threat.py): how it runs, its settings, its threat model,
               its report label and its rank in the attack-order sanity check ("pgd20":
               PGD-20 with random start; "autoattack": the official AutoAttack, standard
               version; "pgd50x10": PGD-50 with 10 random restarts, ACS's protocol; "cw": PGD on
               the Carlini-Wagner margin loss, see cw.py)

A protocol declares whether it finetunes the encoder. `evaluate_encoder` gives a protocol
that does its own deep copy of the encoder (so the caller's encoder, and every other
protocol, sees the pretrained weights); the other protocols share one frozen copy. The
protocol's trainer is called as train(classifier, train: ImageDataset, cfg: EvalConfig,
device) -> training record dict, and leaves the classifier ready to be evaluated (eval mode).

A new protocol is a file with its classifier, trainer and renderer plus one Protocol line
here; a new attack is a file with an EvalAttack subclass plus one line in ATTACKS. Tests and
plug-ins may also add entries at run time (`PROTOCOLS[p.name] = p`, `ATTACKS[a.name] = a`):
the config, the CLI, evaluation, report.md and compare all read these dicts when used.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ConfigError
from .classifier import finetune_classifier, linear_classifier
from .cw import CWAttack
from .direct import direct_markdown, train_direct
from .finetune import finetune_markdown, train_aff
from .knn import KNNSettings, knn_classifier, knn_markdown, train_knn
from .linear import linear_markdown, train_alf, train_slf
from .multicrop import multicrop_classifier, train_alf_mc, train_slf_mc
from .perceptual import LPAAttack, PPGDAttack, UnionAttack
from .robust import AutoAttackStandard, PGD50x10Attack, PGDAttack
from .threat import EvalAttack, NoSettings

if TYPE_CHECKING:
    from ..config import EvalConfig, RunConfig
    from ..models.encoder import SSLModel


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol.

    name, title: its name and a one-line description. finetunes_encoder: whether it trains the
    encoder (it then gets its own copy). train(classifier, train, cfg, device) -> training
    record. build(encoder, n_classes, branch, cfg) -> the classifier it trains (default: a
    frozen encoder + linear head). render(training record) -> report.md lines describing the
    training. Settings: its own settings (eval.<name>.<key>), read with cfg.component(name).
    check(run_config): rules on the whole config, raising ConfigError, before any work.
    """

    name: str
    title: str
    finetunes_encoder: bool
    train: Callable[..., dict[str, Any]]
    build: Callable[..., nn.Module] = linear_classifier
    render: Callable[[dict[str, Any]], list[str]] = linear_markdown
    Settings: type = NoSettings
    check: Callable[[RunConfig], None] | None = None

    def classifier(self, encoder: SSLModel, n_classes: int, branch: str | None, cfg: EvalConfig | None = None) -> nn.Module:
        """The classifier this protocol trains: encoder + a head with `n_classes` outputs, on BN `branch`.
        A finetuning protocol's classifier owns `encoder` (pass a copy); a frozen one freezes it in place.
        cfg: the evaluation settings (None: the defaults)."""
        from ..config import EvalConfig

        return self.build(encoder, n_classes, branch, cfg or EvalConfig())


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("slf", "standard linear finetuning (frozen encoder, clean features)", False, train_slf),
        Protocol("alf", "adversarial linear finetuning (frozen encoder, PGD examples)", False, train_alf),
        Protocol("aff", "adversarial full finetuning (encoder + head, TRADES)", True, train_aff,
                 build=finetune_classifier, render=finetune_markdown),
        Protocol("slf-mc", "SLF on the mean features of a fixed crop set (EMP-SSL multi-patch)", False, train_slf_mc,
                 build=multicrop_classifier),
        Protocol("alf-mc", "ALF on the mean features of a fixed crop set (EMP-SSL multi-patch)", False, train_alf_mc,
                 build=multicrop_classifier),
        Protocol("direct", "a supervised run's own classifier, as trained (no probe)", False, train_direct,
                 render=direct_markdown),
        Protocol("knn", "weighted cosine kNN on the frozen features (attacked through its soft scores)", False, train_knn,
                 build=knn_classifier, render=knn_markdown, Settings=KNNSettings),
    )
}

ATTACKS: dict[str, EvalAttack] = {
    a.name: a for a in (PGDAttack(), AutoAttackStandard(), PGD50x10Attack(), CWAttack(), PPGDAttack(), LPAAttack(), UnionAttack())
}


def component_settings_class(name: str) -> type:
    """The Settings class of the attack or protocol `name` (NoSettings when it has none or is unknown)."""
    if name in PROTOCOLS:
        return PROTOCOLS[name].Settings
    if name in ATTACKS:
        return ATTACKS[name].Settings
    return NoSettings


def components_with_settings() -> list[str]:
    """The protocols and attacks that declare settings of their own (eval.<name>.<key>)."""
    return [n for n in [*PROTOCOLS, *ATTACKS] if component_settings_class(n) is not NoSettings]


def check_eval_config(cfg: RunConfig) -> None:
    """The selected protocols' and attacks' own rules on the whole config (ConfigError)."""
    for name in cfg.eval.protocols:
        check = PROTOCOLS[name].check
        if check is not None:
            check(cfg)
    for name in cfg.eval.attacks:
        ATTACKS[name].check_config(cfg)


def check_names(protocols: list[str], attacks: list[str]) -> None:
    """ConfigError naming the valid choices when a protocol or attack name is not registered."""
    bad_protocols = [p for p in protocols if p not in PROTOCOLS]
    bad_attacks = [a for a in attacks if a not in ATTACKS]
    if bad_protocols or bad_attacks:
        raise ConfigError(
            f"unknown eval.protocols {bad_protocols} / eval.attacks {bad_attacks}; "
            f"valid protocols: {', '.join(PROTOCOLS)}; valid attacks: {', '.join(ATTACKS)}"
        )


__all__ = ["ATTACKS", "PROTOCOLS", "EvalAttack", "Protocol", "check_eval_config", "check_names",
           "component_settings_class", "components_with_settings"]
