"""The run folder: what it holds, how a new run claims it, and the one place a run's own
config is read back (resume, evaluate, select).

    config.yaml          the resolved config          checkpoint.pt   the resumable state
    metrics.jsonl        steps and epochs             encoder.safetensors, run.json at the end
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, flatten, from_dict, load_config, to_dict
from ..errors import ConfigError, RunError
from ..io import atomic_write_text, remove_orphans

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
CONFIG = "config.yaml"
SUMMARY = "run.json"
METRICS = "metrics.jsonl"
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, ENCODER, SUMMARY)


# Keys added after runs were saved whose new default would change how a saved run continues: a saved
# config without the key gets the value that run was made with (a resumed run is the same run). A key
# is filled in only where its parent mapping is there (a method's settings exist for the saved method).
LEGACY_VALUES: dict[str, Any] = {
    "optim.lr_clock": "updates",  # runs before the epoch clock followed the update count
    "method.pgd_at.attack_mode": "eval",  # PGD-AT and fast AT attacked in eval mode before the setting
    "method.fast_at.attack_mode": "eval",
}


def with_legacy_values(raw: Any) -> Any:
    """A saved config dict with LEGACY_VALUES filled in where it lacks those keys (a copy; anything
    that is not a config mapping is returned as it is, for the validation to name)."""
    if not isinstance(raw, dict):
        return raw
    raw = copy.deepcopy(raw)
    for dotted, value in LEGACY_VALUES.items():
        *parents, key = dotted.split(".")
        node: Any = raw
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and key not in node:
            node[key] = value
    return raw


def check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder; choose a folder path for the run")


def claim_new_run(out: Path, cfg: RunConfig) -> None:
    """Create the folder and write config.yaml, refusing a folder that holds any run file:
    nothing of an earlier run (finished, failed or killed) is overwritten or appended to."""
    check_folder(out)
    if (out / CHECKPOINT).exists():
        raise RunError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise RunError(
            f"{out} holds files of an earlier run that saved no checkpoint ({', '.join(found)}); nothing can be "
            f"resumed from it. Choose another --out, or delete those files to reuse the folder"
        )
    write_config(out, cfg)


def write_config(out: Path, cfg: RunConfig) -> None:
    atomic_write_text(out / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def clear_orphans(out: Path) -> None:
    """Remove temp files left by writes that a kill interrupted (one per kill during a save)."""
    for name in RUN_FILES:
        remove_orphans(out, name)


def read_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The run's own config.yaml (plus `overrides`, validated). A damaged file is a RunError naming it."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a robustssl run (no {CONFIG}); pass the --out folder of `robustssl pretrain`")
    try:
        raw = with_legacy_values(yaml.safe_load(path.read_text()))
        from_dict(raw)  # the file on its own must be a valid config
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
        raise RunError(f"{path} is damaged ({e}); restore it (the checkpoint keeps a copy under 'config') "
                       "or start a new run") from None
    return from_dict(raw, overrides)


def resume_config(run_dir: str | Path, config: str | Path | RunConfig | None, overrides: list[str] | None) -> RunConfig:
    """The config a resumed run continues with: its own. Overrides are refused (a resumed run is
    the same run); a --config given as well must match it."""
    if overrides:
        raise ConfigError("--resume continues the same run: key=value overrides are not allowed")
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise RunError(f"--resume: {run_dir / CHECKPOINT} does not exist (the run saved no checkpoint); "
                       "start the run without --resume in a new --out folder")
    cfg = read_run_config(run_dir)
    if config is not None:
        given = config if isinstance(config, RunConfig) else load_config(config)
        differ = config_differences(to_dict(given), to_dict(cfg))
        if differ:
            raise ConfigError(f"--resume with --config: the given config differs from the run's {run_dir / CONFIG} in "
                              f"{', '.join(differ)}; drop --config to continue the run as it was, or start a new run")
    return cfg


def with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with every key this version knows, at its default (or its LEGACY_VALUES
    entry) where the dict has none: a checkpoint written before a key was added then compares
    equal to its own run.
    A dict this version cannot read is returned as it is (the comparison then names the keys)."""
    try:
        return to_dict(from_dict(with_legacy_values(raw)))
    except ConfigError:
        return raw


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two nested config dicts."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
