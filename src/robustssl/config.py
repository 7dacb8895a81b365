"""Run configuration: typed dataclasses, loaded from YAML plus `key=value` overrides.

Every key is validated before any work starts: an unknown key lists the valid ones, a
value of the wrong type or out of range says what is expected.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import sys
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.catalog import dataset_names
from .errors import ConfigError
from .models.encoder import ModelConfig, check_model_config
from .settings import build_settings, check_fields, coerce, non_negative, one_of, positive, show, unit_interval
from .timer import TIMING_MODES

__all__ = [
    "AttackConfig", "AugmentConfig", "ConfigError", "CoresetConfig", "DataConfig", "EvalConfig", "MethodConfig",
    "ModelConfig", "OptimConfig", "PostprocessConfig", "RunConfig", "TrainConfig", "flatten", "from_dict", "load_config", "parse_override",
    "recipe_dir", "resolve_recipe", "to_dict", "to_flat_dict",
]


# --- registries: the vocabularies are the registered components themselves -------------
def method_names() -> list[str]:
    from .methods import METHODS  # imported on use: the registries' packages import this module

    return list(METHODS)


def selector_names() -> list[str]:
    from .coreset.registry import SELECTORS

    return list(SELECTORS)


def protocol_names() -> list[str]:
    from .eval.registry import PROTOCOLS

    return list(PROTOCOLS)


def attack_names() -> list[str]:
    from .eval.registry import ATTACKS

    return list(ATTACKS)


@dataclass
class DataConfig:
    name: str = one_of("fashion-mnist", dataset_names)  # a registered dataset (data/catalog.py DATASETS)
    root: str | None = None  # given: the data are searched there only
    download: bool = False
    train_subset: int | None = positive(None)  # a seeded random subset of the training split (None: all)
    image_size: int | None = positive(None)  # imagefolder: resize every image to this size (None: all must match)
    channels: int | None = one_of(None, (1, 3))  # type: ignore[arg-type]  # imagefolder: force 1 or 3 channels
    stream: bool = False  # keep the training split off the device: imagefolder decodes each batch's files, others stay on the host
    prefetch_batches: int = non_negative(2)  # stream: batches read ahead by a background thread (0: none)


@dataclass
class AugmentConfig:
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    flip: bool = True
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    jitter_p: float = unit_interval(0.8)
    grayscale_p: float = unit_interval(0.2)
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # aspect-ratio range of the crop
    blur_p: float = unit_interval(0.0)  # Gaussian blur (EMP-SSL: 0.1)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  # its sigma range, pixels
    solarize_p: float = unit_interval(0.0)  # solarize (EMP-SSL: 0.1)
    crop_size: int | None = positive(None)  # side of the views in pixels (None: the image's; CPU multi-crop recipes: smaller)


@dataclass
class MethodConfig:
    """`name` picks the method; `settings` holds each configured method's own settings
    (a dataclass declared by the method, written `method.<name>.<key>`)."""

    name: str = one_of("acl", method_names)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .methods import METHODS

        if self.name in METHODS and self.name not in self.settings:  # the selected method always has its settings
            self.settings[self.name] = METHODS[self.name].Settings()

    @property
    def params(self) -> Any:
        """The selected method's settings."""
        return self.settings[self.name]


@dataclass
class AttackConfig:
    """The training attack (PGD on the method's own loss)."""

    eps: float = non_negative(8 / 255)
    alpha: float = non_negative(2 / 255)
    steps: int = non_negative(5)
    norm: str = one_of("linf", ("linf", "l2"))
    random_start: bool = True


@dataclass
class OptimConfig:
    name: str = one_of("lars", ("lars", "sgd"))
    lr: float = positive(5.0)
    momentum: float = non_negative(0.9)
    weight_decay: float = non_negative(1e-6)
    nesterov: bool = False
    trust_coef: float = non_negative(1e-3)
    lars_exclude_1d: bool = True  # LARS: biases and norm parameters skip adaptation and weight decay
    lars_clip: bool = False  # LARS: trust ratio r -> min(r / lr, 1) (LARC's clip mode, EMP-SSL's optimizer)
    batch_size: int = positive(512)
    warmup_epochs: float = non_negative(10.0)
    schedule: str = one_of("cosine", ("cosine", "constant"))
    # epochs: the lr is a function of fractional epoch progress (a coreset run has a full run's lr at every
    # epoch boundary); updates: over the run's real number of updates (legacy; runs saved without this key)
    lr_clock: str = one_of("epochs", ("epochs", "updates"))


@dataclass
class TrainConfig:
    epochs: int = positive(1000)
    seed: int = non_negative(0)
    device: str = one_of("auto", ("auto", "cpu", "cuda"))
    checkpoint_every_steps: int = non_negative(0)  # 0: only at epoch ends
    checkpoint_every_epochs: int = non_negative(1)
    log_every_steps: int = positive(10)
    progress: bool = True
    bf16: bool = False  # bf16 autocast for the training attack and loss forwards (weights, optimizer, evaluation: fp32)
    channels_last: bool = False  # the model and every 4-D input it gets in channels_last memory format
    compile: bool = False  # torch.compile the model's forward in place (state_dict keys unchanged)
    timing: str = one_of("auto", TIMING_MODES)  # phase timing on CUDA: events (auto) or sync; CPU: perf_counter
    sync_bn: bool = False  # under torchrun: BatchNorm statistics of the global batch (dual-BN branches included)
    probe_every: int = non_negative(0)  # the online robust probe after every K-th epoch and the last (0: off); train/probe.py
    probe_attack_steps: int = positive(10)  # its PGD-k (eps eval.eps, step eval.pgd_alpha)
    probe_train_examples: int = positive(512)  # images its linear head is fitted on (self-supervised methods)
    probe_test_examples: int = positive(256)  # images its clean and PGD-k accuracy are measured on
    probe_head: str = one_of("linear", ("linear", "knn"))  # a self-supervised run's probe classifier: SLF head or kNN (eval.knn.*)
    tensorboard: bool = False  # also write loss, lr, phase times and probe numbers as TensorBoard scalars (RUN/tensorboard)


# Keys of the old flat CoresetConfig that are RCS's own now (`coreset.rcs.<key>`). Read as
# aliases until the next release, with a deprecation note; `coreset.method` is `coreset.selector`.
LEGACY_RCS_KEYS = (
    "val_fraction", "rd_eps", "rd_alpha", "rd_steps", "eta", "refresh_every", "sketch_dim", "candidate_attack_steps",
    "candidate_fraction", "head", "reattack_every", "candidates_per_forward",
)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release; write {new}", FutureWarning, stacklevel=4)


@dataclass
class CoresetConfig:
    """The schedule's keys (which selector, budget, warm-up, frequency, unit) and `settings`, each
    configured selector's own settings (a dataclass declared by the selector, written `coreset.<name>.<key>`)."""

    selector: str = one_of("full", selector_names)
    fraction: float = unit_interval(0.2)
    warmup_epochs: int = non_negative(100)
    every: int = positive(20)
    unit: str = one_of("batch", ("batch", "sample"))  # a pick is a whole batch (the selector's batch size) or one image
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .coreset.registry import SELECTORS

        if self.selector in SELECTORS and self.selector not in self.settings:  # the selected selector always has its settings
            self.settings[self.selector] = SELECTORS[self.selector].Settings()

    @property
    def params(self) -> Any:
        """The selected selector's settings (its defaults when none were configured)."""
        if self.selector not in self.settings:
            self.__post_init__()
        return self.settings[self.selector]

    @property
    def method(self) -> str:
        """Deprecated alias of `selector` (until the next release)."""
        return self.selector

    @method.setter
    def method(self, value: str) -> None:
        self.selector = value


@dataclass
class EvalConfig:
    protocols: list[str] = one_of(["slf"], protocol_names)
    attacks: list[str] = one_of(["pgd20", "autoattack"], attack_names)
    norm: str = one_of("linf", ("linf", "l2"))  # the threat model of every evaluation attack (l2: eps is an l_2 radius)
    eps: float = unit_interval(8 / 255)
    pgd_alpha: float = non_negative(2 / 255)
    n_examples: int | None = positive(None)  # None: the full test set
    autoattack_examples: int | None = positive(None)  # AutoAttack on the first M of those (None: all of them)
    train_examples: int | None = positive(None)  # linear-probe training images (None: the full training split)
    eps_curve: list[float] = unit_interval([])  # extra eps values for the robustness curve
    linear_epochs: int = positive(25)
    linear_lr: float = positive(0.01)
    linear_standardize: bool = False  # standardize features with training-set mean/std, folded exactly into the head
    linear_batch_size: int = positive(512)
    alf_steps: int = non_negative(10)
    aff_epochs: int = positive(25)  # adversarial full finetuning (TRADES), DynACL's setting
    aff_lr: float = positive(0.1)
    aff_batch_size: int = positive(128)
    aff_beta: float = non_negative(6.0)  # weight of TRADES's KL term
    aff_steps: int = positive(10)  # steps of the KL attack (eps: eval.eps)
    aff_alpha: float | None = non_negative(None)  # the KL attack's step (None: eval.pgd_alpha); steps x alpha must reach eps
    aff_augment: bool = True  # random crop (padding 4) + horizontal flip while finetuning
    seed: int = non_negative(0)
    batch_size: int = positive(500)
    # multi-crop protocols (slf-mc, alf-mc): the mean of the encoder's features over a fixed, seeded set of crops
    mc_crops: int = positive(16)  # crops per image (EMP-SSL's robust variants: 16); the encoder sees mc_crops x batch_size
    mc_crop_scale: list[float] = unit_interval([0.08, 1.0])  # area range of the crops (EMP-SSL's training crops)
    mc_crop_ratio: list[float] = positive([3 / 4, 4 / 3])  # aspect-ratio range of the crops
    mc_flip: bool = True  # each crop is mirrored with p = 0.5 (drawn once, with the geometry)
    mc_seed: int = non_negative(0)  # the seed the crop set is drawn from (once; the same crops for every image)
    mc_crop_size: int | None = positive(None)  # side of the crops in pixels (None: the image's; match augment.crop_size)
    # the own settings of attacks and protocols that declare some (eval.<name>.<key>, e.g. eval.knn.k=20)
    components: dict[str, Any] = field(default_factory=dict)

    def component(self, name: str) -> Any:
        """The own settings of the attack or protocol `name` (its `Settings` dataclass): the configured
        ones, else its defaults."""
        from .eval.registry import component_settings_class

        return self.components.get(name) or component_settings_class(name)()

    def __post_init__(self) -> None:
        """Rules on pairs of keys (the per-value ranges are the fields' own, checked after this)."""
        scale, ratio = self.mc_crop_scale, self.mc_crop_ratio
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(
                f"eval.mc_crop_scale must be [low, high] with 0 < low <= high <= 1 (area fractions of the image), "
                f"got {scale}; for example eval.mc_crop_scale=[0.08,1.0]"
            )
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(
                f"eval.mc_crop_ratio must be [low, high] with 0 < low <= high (width / height), got {ratio}; "
                f"for example eval.mc_crop_ratio=[0.75,1.3333]"
            )


@dataclass
class PostprocessConfig:
    """DynACL++ post-processing (`robustssl postprocess`): k-means pseudo-labels on the frozen
    encoder's features, a linear probe on them (LP), then adversarial full finetuning with TRADES
    (AFT) on them. Defaults: DynACL++'s code. The attack's eps and step are eval.eps and eval.pgd_alpha."""

    clusters: int = positive(10)  # k of k-means (DynACL++ uses 10)
    cluster_branch: str = one_of("normal", ("normal", "pgd"))  # dual-BN encoders: the branch whose features are clustered
    kmeans_iters: int = positive(100)  # the most Lloyd iterations per initialisation
    kmeans_inits: int = positive(1)  # k-means++ initialisations (the lowest inertia wins)
    lp_epochs: int = positive(10)
    lp_lr: float = positive(0.01)
    aft_epochs: int = positive(25)
    aft_lr: float = positive(0.1)
    aft_batch_size: int = positive(512)
    aft_beta: float = non_negative(6.0)
    aft_steps: int = positive(10)  # steps of the TRADES KL attack
    aft_alpha: float | None = non_negative(None)  # its step (None: eval.pgd_alpha); steps x alpha must reach eval.eps
    aft_augment: bool = True  # random crop (padding 4) + horizontal flip during AFT
    seed: int = non_negative(0)  # k-means++, LP and AFT


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    coreset: CoresetConfig = field(default_factory=CoresetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))
MAX_SEED = 2**32 - 1  # seeds are offset and multiplied per rank and selection: kept far from int64's end
MAX_IMAGE_SIZE = 4096  # data.image_size: the largest side an image folder is resized to


def _build_method(raw: Any) -> MethodConfig:
    """method: {name: acl, acl: {tau: 0.5}, ...}: each `<method>` mapping is built with that
    method's own settings class; the selected method's settings are always present."""
    from .methods import METHODS

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"method: expected a mapping of keys to values, got {show(raw)}")
    name = coerce(raw.get("name", MethodConfig.name), str, "method.name")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in METHODS:
            valid = ", ".join(["method.name"] + [f"method.{m}.<key>" for m in METHODS])
            raise ConfigError(f"unknown config key 'method.{key}'; valid keys here: {valid}")
        settings[key] = build_settings(METHODS[key].Settings, value, f"method.{key}.")
    cfg = MethodConfig(name=name, settings=settings)
    check_fields(cfg, "method.")
    return cfg


def _coreset_key(parts: list[str]) -> list[str]:
    """An override's path with the deprecated coreset keys renamed (a note for each)."""
    if len(parts) == 2 and parts[0] == "coreset":
        if parts[1] == "method":
            _deprecated("coreset.method", "coreset.selector")
            return ["coreset", "selector"]
        if parts[1] in LEGACY_RCS_KEYS:
            _deprecated(f"coreset.{parts[1]}", f"coreset.rcs.{parts[1]}")
            return ["coreset", "rcs", parts[1]]
    return parts


def _build_coreset(raw: Any) -> CoresetConfig:
    """coreset: {selector: rcs, fraction: 0.2, rcs: {rd_steps: 3}, ...}: the schedule's keys, and each
    `<selector>` mapping built with that selector's own settings class. The deprecated flat keys
    (coreset.method, coreset.rd_steps, ...) are read into their new places, where those are unset."""
    from .coreset.registry import SELECTORS

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"coreset: expected a mapping of keys to values, got {raw!r}")
    raw = dict(raw)
    if "method" in raw:
        _deprecated("coreset.method", "coreset.selector")
        old = raw.pop("method")
        if raw.setdefault("selector", old) != old:
            raise ConfigError(f"coreset.method={old!r} and coreset.selector={raw['selector']!r} disagree; keep coreset.selector only")
    legacy = {k: raw.pop(k) for k in LEGACY_RCS_KEYS if k in raw}
    if legacy:
        _deprecated(", ".join(f"coreset.{k}" for k in legacy), "coreset.rcs.<key>")
        rcs = raw.get("rcs") or {}
        if not isinstance(rcs, dict):
            raise ConfigError(f"coreset.rcs: expected a mapping of keys to values, got {rcs!r}")
        raw["rcs"] = {**legacy, **rcs}
    settings = {key: build_settings(SELECTORS[key].Settings, raw.pop(key), f"coreset.{key}.") for key in list(raw) if key in SELECTORS}
    if "settings" in raw:
        raw["coreset.settings"] = raw.pop("settings")  # not a key of its own: reported as unknown below
    shared = [f.name for f in dataclasses.fields(CoresetConfig) if f.name != "settings"]
    unknown = [k for k in raw if k not in shared]
    if unknown:
        valid = ", ".join([f"coreset.{k}" for k in shared] + [f"coreset.{s}.<key>" for s in SELECTORS])
        raise ConfigError(f"unknown config key 'coreset.{unknown[0]}'; valid keys here: {valid}")
    hints = typing.get_type_hints(CoresetConfig)
    cfg = CoresetConfig(**{k: coerce(v, hints[k], f"coreset.{k}") for k, v in raw.items()}, settings=settings)
    check_fields(cfg, "coreset.")
    return cfg


def _build_eval(raw: Any) -> EvalConfig:
    """eval: {protocols: [...], eps: ..., knn: {k: 20}, ...}: the flat keys build EvalConfig; each
    `<name>` mapping (an attack or protocol with settings of its own) is built with its Settings
    class. Every selected attack and protocol with settings has them recorded (defaults)."""
    from .eval.registry import component_settings_class, components_with_settings

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"eval: expected a mapping of keys to values, got {show(raw)}")
    flat = {f.name for f in dataclasses.fields(EvalConfig)} - {"components"}
    own = components_with_settings()
    components: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in raw.items():
        if key in flat:
            rest[key] = value
        elif key in own:
            components[key] = build_settings(component_settings_class(key), value, f"eval.{key}.")
        else:
            valid = ", ".join([f"eval.{k}" for k in sorted(flat)] + [f"eval.{c}.<key>" for c in own])
            raise ConfigError(f"unknown config key 'eval.{key}'; valid keys here: {valid}")
    cfg: EvalConfig = build_settings(EvalConfig, rest, "eval.")
    for name in [*cfg.protocols, *cfg.attacks]:
        if name in own and name not in components:
            components[name] = component_settings_class(name)()
    cfg.components = components
    return cfg


def _validate(cfg: RunConfig) -> None:
    """Rules that relate several keys; then the selected method's, selector's, attacks' and protocols' own checks."""
    from .coreset.registry import SELECTORS
    from .eval.registry import check_eval_config
    from .methods import METHODS

    crop = cfg.augment.crop_scale
    if len(crop) != 2 or not 0 < crop[0] <= crop[1] <= 1:
        raise ConfigError(f"augment.crop_scale must be [low, high] with 0 < low <= high <= 1, got {cfg.augment.crop_scale}")
    ratio, sigma = cfg.augment.crop_ratio, cfg.augment.blur_sigma
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"augment.crop_ratio must be [low, high] with 0 < low <= high, got {ratio}")
    if len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]:
        raise ConfigError(f"augment.blur_sigma must be [low, high] with 0 < low <= high, got {sigma}")
    if len(cfg.augment.jitter) != 4 or any(v < 0 for v in cfg.augment.jitter):
        raise ConfigError(f"augment.jitter must be 4 non-negative numbers [brightness, contrast, saturation, hue], got {cfg.augment.jitter}")
    if not 0 < cfg.coreset.fraction <= 1:
        raise ConfigError(f"coreset.fraction must be in (0, 1], got {cfg.coreset.fraction}")
    if cfg.data.name != "imagefolder" and (cfg.data.image_size is not None or cfg.data.channels is not None):
        raise ConfigError(f"data.image_size and data.channels apply to data.name=imagefolder only; {cfg.data.name} has a fixed format")
    for key, value in to_flat_dict(cfg).items():  # every seed: train.seed, eval.seed, eval.mc_seed, postprocess.seed, ...
        if key.rsplit(".", 1)[-1].endswith("seed") and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise ConfigError(f"{key}={value} is out of range; a seed must lie in 0..{MAX_SEED} (2^32 - 1), "
                              f"for example {key}=0")
    if cfg.data.image_size is not None and cfg.data.image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"data.image_size={cfg.data.image_size} is larger than {MAX_IMAGE_SIZE} pixels (one such image "
                          f"alone is {3 * cfg.data.image_size ** 2 / 2 ** 30:.1f} GiB); pass a size such as data.image_size=64")
    if cfg.postprocess.clusters < 2:
        raise ConfigError(f"postprocess.clusters must be >= 2 (k-means pseudo-labels for a classifier), got {cfg.postprocess.clusters}")
    check_model_config(cfg.model)
    METHODS[cfg.method.name].check_config(cfg)
    SELECTORS[cfg.coreset.selector].check_config(cfg)
    check_eval_config(cfg)
    from .train.probe import check_probe_config

    check_probe_config(cfg)


# --- YAML: bounded, duplicate-free -------------------------------------------------------------
MAX_YAML_DEPTH = 50  # nesting levels of mappings and lists (a recipe uses 3)
MAX_YAML_NODES = 100_000  # values after alias expansion (a recipe holds a few hundred)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing what no config needs and a hostile file uses: nesting deeper than
    MAX_YAML_DEPTH (the composer recurses per level), more than MAX_YAML_NODES values once
    aliases are expanded (a "billion laughs" file is a few hundred bytes), and a key given twice
    in one mapping (YAML would silently keep the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nested deeper than {MAX_YAML_DEPTH} levels (line {mark.line + 1}); a config has "
                                  "sections of keys and short lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value
            if key in seen:
                raise ConfigError(f"key {key[:60]!r} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values in `node` with every alias expanded, counted without expanding (memoized per node)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a recursive alias counts once here; its construction fails in yaml itself
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def load_yaml(text: str) -> Any:
    """The value of one YAML document (safe types only), bounded as `_BoundedLoader` says.

    Raises ConfigError (depth, size, duplicate keys) or yaml.YAMLError (syntax); callers add
    the file name and the fix."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise ConfigError(f"more than {MAX_YAML_NODES} values once its aliases (*name) are expanded; a config "
                              "holds a few hundred (nested aliases multiply)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[str, Any]:
    """'optim.lr=0.5' -> ('optim.lr', 0.5). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (for example optim.lr=0.5)")
    key, text = item.split("=", 1)
    try:
        value = load_yaml(text) if text.strip() else None
    except (yaml.YAMLError, ConfigError) as e:
        raise ConfigError(f"override {item[:200]!r}: cannot parse the value ({one_line(e)})") from None
    return key.strip(), value


def merge(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` (or `method.<name>.key=value`) overrides to a nested dict (a copy)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            raise ConfigError(f"unknown config section '{parts[0]}' in {item!r}; valid sections: {', '.join(SECTIONS)}")
        parts = _coreset_key(parts)
        depth = 3 if parts[0] in ("method", "coreset", "eval") and len(parts) == 3 else 2
        if len(parts) != depth:
            raise ConfigError(
                f"override key {key!r} must be section.key (or method.<method>.key, coreset.<selector>.key, "
                f"eval.<attack or protocol>.key); "
                f"sections: {', '.join(SECTIONS)}"
            )
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


OVERRIDES_ENV = "ROBUSTSSL_OVERRIDES"
_env_noted: set[str] = set()


def env_overrides() -> list[str]:
    """The key=value overrides of $ROBUSTSSL_OVERRIDES (whitespace-separated, shell quoting), applied
    after every other override to every config robustssl builds: recipes, run folders, the API and
    the CLI alike. For smoke runs of scripts and documentation (tests/test_readme.py runs README's
    commands as written with tiny settings this way). Said once per process on stderr when set."""
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return []
    if text not in _env_noted:
        _env_noted.add(text)
        print(f"note: ${OVERRIDES_ENV} applies to every config: {text}", file=sys.stderr)
    return shlex.split(text)


def from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validated RunConfig from a nested dict plus overrides (then those of $ROBUSTSSL_OVERRIDES, if
    set: `env_overrides`); raises ConfigError before any work."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(raw).__name__}")
    raw = merge(raw, [*(overrides or []), *env_overrides()])
    method_raw, coreset_raw, eval_raw = raw.pop("method", None), raw.pop("coreset", None), raw.pop("eval", None)
    cfg = build_settings(RunConfig, raw, "")
    cfg.method = _build_method(method_raw)
    cfg.coreset = _build_coreset(coreset_raw)
    cfg.eval = _build_eval(eval_raw)
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe (a file path, or the name of a bundled recipe) and apply overrides."""
    raw: Any = {}
    if path is not None:
        p = resolve_recipe(path)
        try:
            raw = load_yaml(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
            raise ConfigError(f"{p}: not a valid config file ({one_line(e)}); fix the file or pass another --config") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections ({', '.join(SECTIONS)}), "
                              f"got {type(raw).__name__}; fix the file or pass another --config")
    return from_dict(raw, overrides)


def one_line(e: BaseException, limit: int = 300) -> str:
    """An error's message on one line, at most `limit` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def recipe_dir() -> Path:
    return Path(__file__).parent / "recipes"


def resolve_recipe(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    bundled = recipe_dir() / f"{p.stem}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(q.stem for q in recipe_dir().glob("*.yaml"))
    raise ConfigError(f"config file {str(path)!r} not found; give a YAML path or a bundled recipe: {', '.join(names)}")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The nested plain-data form (what config.yaml holds); `from_dict(to_dict(cfg)) == cfg`."""
    out = dataclasses.asdict(cfg)
    out["method"] = {"name": cfg.method.name, **{k: dataclasses.asdict(v) for k, v in cfg.method.settings.items()}}
    c = cfg.coreset
    out["coreset"] = {**{f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "settings"},
                      **{k: dataclasses.asdict(v) for k, v in c.settings.items()}}
    components = out["eval"].pop("components")
    out["eval"].update(components)
    return out


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 5.0}} -> {'optim.lr': 5.0}: every leaf of a nested dict under its dotted path."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}.{key}" if prefix else key).items()}


def to_flat_dict(cfg: RunConfig) -> dict[str, Any]:
    """{'optim.lr': 5.0, 'method.acl.tau': 0.5, ...}"""
    return flatten(to_dict(cfg))
