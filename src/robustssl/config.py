"""Run configuration: typed dataclasses, loaded from YAML plus `key=value` overrides.

Every key is validated before any work starts: an unknown key lists the valid ones, a
value of the wrong type or out of range says what is expected.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, phrased for the user."""


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None
    download: bool = False
    train_subset: int | None = None  # a seeded random subset of the training split (None: all)


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    width: int = 64
    stem: str = "cifar"
    dual_bn: bool = True
    proj_hidden: int = 512
    proj_out: int = 512
    proj_layers: int = 3
    proj_bn: bool = True


@dataclass
class AugmentConfig:
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    flip: bool = True
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    jitter_p: float = 0.8
    grayscale_p: float = 0.2


@dataclass
class MethodConfig:
    name: str = "acl"
    tau: float = 0.5


@dataclass
class AttackConfig:
    """The training attack (PGD on the method's own loss)."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 5
    norm: str = "linf"
    random_start: bool = True


@dataclass
class OptimConfig:
    name: str = "lars"
    lr: float = 5.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    nesterov: bool = False
    trust_coef: float = 1e-3
    batch_size: int = 512
    warmup_epochs: float = 10.0
    schedule: str = "cosine"


@dataclass
class TrainConfig:
    epochs: int = 1000
    seed: int = 0
    device: str = "auto"
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    checkpoint_every_epochs: int = 1
    log_every_steps: int = 10
    progress: bool = True


@dataclass
class CoresetConfig:
    method: str = "full"
    fraction: float = 0.2
    warmup_epochs: int = 100
    every: int = 20
    unit: str = "batch"
    val_fraction: float = 0.01
    rd_eps: float = 8 / 255
    rd_alpha: float = 8 / 255 / 3
    rd_steps: int = 3
    eta: float = 0.01  # the simulated head step of the greedy loop
    refresh_every: int = 1  # re-evaluate g_val every r picks (1: after every pick, as in the paper)
    sketch_dim: int = 0  # 0: score with the full flattened head gradient; k: a seeded random projection to k dims
    candidate_attack_steps: int | None = None  # attack steps for candidate losses (None: the method's own)
    candidate_fraction: float = 1.0  # score a seeded random share of the candidates (1.0: all, as in the paper)


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["slf"])
    attacks: list[str] = field(default_factory=lambda: ["pgd20", "autoattack"])
    eps: float = 8 / 255
    pgd_alpha: float = 2 / 255
    n_examples: int | None = None  # None: the full test set
    autoattack_examples: int | None = None  # AutoAttack on the first M of those (None: all of them)
    train_examples: int | None = None  # linear-probe training images (None: the full training split)
    eps_curve: list[float] = field(default_factory=list)  # extra eps values for the robustness curve
    linear_epochs: int = 25
    linear_lr: float = 0.01
    linear_batch_size: int = 512
    alf_steps: int = 10
    seed: int = 0
    batch_size: int = 500


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


# Closed vocabularies, checked before any work. Kept here so the error can list them.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder"),
    "model.arch": ("resnet18", "cnn"),
    "model.stem": ("cifar", "imagenet"),
    "method.name": ("simclr", "acl"),
    "attack.norm": ("linf", "l2"),
    "optim.name": ("lars", "sgd"),
    "optim.schedule": ("cosine", "constant"),
    "coreset.method": ("full", "random", "rcs"),
    "coreset.unit": ("batch", "sample"),
    "train.device": ("auto", "cpu", "cuda"),
}
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "eval.protocols": ("slf", "alf"),
    "eval.attacks": ("pgd20", "autoattack"),
}
POSITIVE = {
    "model.width", "model.proj_hidden", "model.proj_out", "model.proj_layers", "method.tau", "optim.lr",
    "optim.batch_size", "train.epochs", "train.log_every_steps", "eval.linear_epochs", "eval.linear_lr",
    "eval.linear_batch_size", "eval.batch_size", "coreset.every", "coreset.refresh_every", "data.train_subset",
    "eval.n_examples", "eval.train_examples", "eval.autoattack_examples",
}
NON_NEGATIVE = {
    "attack.eps", "attack.alpha", "attack.steps", "optim.momentum", "optim.weight_decay", "optim.trust_coef",
    "optim.warmup_epochs", "train.checkpoint_every_steps", "train.checkpoint_every_epochs", "coreset.warmup_epochs",
    "coreset.rd_eps", "coreset.rd_alpha", "coreset.rd_steps", "coreset.eta", "coreset.sketch_dim",
    "coreset.candidate_attack_steps", "eval.eps",
    "eval.pgd_alpha", "eval.alf_steps", "train.seed", "eval.seed",
}
UNIT_INTERVAL = {"augment.jitter_p", "augment.grayscale_p", "coreset.fraction", "coreset.val_fraction", "coreset.candidate_fraction"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting ints to floats where a float is expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} (write it as [a, b] or a YAML list)")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot, no sign) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = _hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(prefix + v for v in valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return cls(**kwargs)


def _validate(cfg: RunConfig) -> None:
    flat = to_flat_dict(cfg)
    for key, options in CHOICES.items():
        if flat[key] not in options:
            raise ConfigError(f"{key}={flat[key]!r} is not valid; choose one of: {', '.join(options)}")
    for key, options in LIST_CHOICES.items():
        for v in flat[key]:
            if v not in options:
                raise ConfigError(f"{key}: {v!r} is not valid; choose from: {', '.join(options)}")
    for key in POSITIVE:
        if flat[key] is not None and flat[key] <= 0:
            raise ConfigError(f"{key} must be > 0, got {flat[key]}")
    for key in NON_NEGATIVE:
        if flat[key] is not None and flat[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {flat[key]}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= flat[key] <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {flat[key]}")
    lo, hi = (cfg.augment.crop_scale + [None, None])[:2]
    if len(cfg.augment.crop_scale) != 2 or not 0 < lo <= hi <= 1:
        raise ConfigError(f"augment.crop_scale must be [low, high] with 0 < low <= high <= 1, got {cfg.augment.crop_scale}")
    if len(cfg.augment.jitter) != 4 or any(v < 0 for v in cfg.augment.jitter):
        raise ConfigError(f"augment.jitter must be 4 non-negative numbers [brightness, contrast, saturation, hue], got {cfg.augment.jitter}")
    if not 0 < cfg.coreset.fraction <= 1:
        raise ConfigError(f"coreset.fraction must be in (0, 1], got {cfg.coreset.fraction}")
    if cfg.coreset.val_fraction >= 1:
        raise ConfigError(f"coreset.val_fraction must be < 1, got {cfg.coreset.val_fraction}")
    if cfg.method.name == "acl" and cfg.attack.steps == 0:
        raise ConfigError("method acl needs attack.steps >= 1 (ACL trains on PGD views); use method.name=simclr for clean training")


def parse_override(item: str) -> tuple[str, Any]:
    """'optim.lr=0.5' -> ('optim.lr', 0.5). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (for example optim.lr=0.5)")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: cannot parse the value ({e})") from None
    return key.strip(), value


def merge(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must be section.key; sections: {', '.join(sections)}")
        section, name = parts
        if section not in sections:
            raise ConfigError(f"unknown config section '{section}' in {item!r}; valid sections: {', '.join(sections)}")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][name] = value
    return raw


def from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validated RunConfig from a nested dict plus overrides; raises ConfigError before any work."""
    cfg = _build(RunConfig, merge(raw or {}, overrides or []), "")
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe (a file path, or the name of a bundled recipe) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = resolve_recipe(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
    return from_dict(raw, overrides)


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
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: RunConfig) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in to_dict(cfg).items() for k, v in sec.items()}
