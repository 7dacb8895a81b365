"""The run folder: what it holds, how a new run claims it, and the one place a run's own
config is read back (resume, evaluate, select).

    config.yaml          the resolved config          checkpoint.pt   the resumable state
    metrics.jsonl        steps and epochs             encoder.safetensors, run.json at the end
"""
from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, flatten, from_dict, load_config, load_yaml, one_line, parse_override, to_dict
from ..errors import ConfigError, RunError
from ..io import LOCK_FILE, TMP_SUFFIX, atomic_write_text, check_output_path, remove_orphans

CHECKPOINT = "checkpoint.pt"
ENCODER = "encoder.safetensors"
CONFIG = "config.yaml"
SUMMARY = "run.json"
METRICS = "metrics.jsonl"
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, ENCODER, SUMMARY)
# Every other file robustssl writes into a run or output folder (evaluate, postprocess, compare):
# never the target of another command's output (`select --output`), whatever --force says.
PROJECT_FILES = (*RUN_FILES, "postprocess.json", "report.json", "report.md", "robustness_curve.png", "compare.md",
                 "compare.json", "robustness_vs_eps.png", "loss_curves.png", "time_breakdown.png", LOCK_FILE)


def check_output_file(path: str | Path, flag: str, force: bool) -> Path:
    """A file a command writes (`select --output`): never a file robustssl writes for a run
    (PROJECT_FILES, report.*, *.safetensors: encoders and classifiers), an existing file only
    with `force`; RunError naming the fix."""
    path = check_output_path(path, flag)
    name = path.name
    if name in PROJECT_FILES or name.startswith("report.") or name.endswith((TMP_SUFFIX, ".safetensors")):
        raise RunError(f"{flag} {path}: {name} is a file robustssl writes for a run, never replaced by another "
                       "command's output (--force does not change that); choose another file name")
    if path.is_dir():
        raise RunError(f"{flag} {path} is a folder; give a file path (for example {path / 'selection.json'})")
    if path.exists() and not force:
        raise RunError(f"{flag} {path} already exists; nothing was overwritten. Choose another file, or pass --force "
                       "to replace it")
    return path


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


def check_new_run(out: Path, cfg: RunConfig) -> None:
    """Refuse a folder holding any run file, writing nothing: nothing of an earlier run
    (finished, failed or killed) is overwritten or appended to. One exception: a folder
    holding only the config.yaml of the same config (an earlier attempt of this command that
    stopped before its first step, e.g. on a full disk or an out-of-memory first step) may be
    claimed again."""
    check_folder(out)
    if (out / CHECKPOINT).exists():
        raise RunError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found == [CONFIG]:
        differ = differs_from_saved(out / CONFIG, cfg)
        if not differ:
            return  # the same command again: its earlier attempt never trained a step
        raise RunError(
            f"{out} holds the config.yaml of a run that stopped before its first step, with another config "
            f"({differ}); rerun that command to retry it, choose another --out, or delete {out / CONFIG}"
        )
    if found:
        raise RunError(
            f"{out} holds files of an earlier run that saved no checkpoint ({', '.join(found)}); nothing can be "
            f"resumed from it. Choose another --out, or delete those files to reuse the folder"
        )


def differs_from_saved(path: Path, cfg: RunConfig) -> str:
    """'' when the config.yaml at `path` is `cfg`; else what differs (or that it cannot be read)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return "it cannot be read"
    if not isinstance(raw, dict):
        return "it is not a config"
    differ = config_differences(with_defaults(raw), to_dict(cfg))
    return "" if not differ else "differs in " + ", ".join(differ[:5])


def claim_new_run(out: Path, cfg: RunConfig) -> None:
    """`check_new_run`, then create the folder and write config.yaml. The trainer calls it once the
    data are loaded and the model is built, so a run that fails before that (a missing
    dataset) leaves the folder as it was."""
    check_new_run(out, cfg)
    write_config(out, cfg)


def write_config(out: Path, cfg: RunConfig) -> None:
    atomic_write_text(out / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def clear_orphans(out: Path) -> None:
    """Remove temp files left by writes that a kill interrupted (one per kill during a save)."""
    for name in RUN_FILES:
        remove_orphans(out, name)


# Keys a command that reads a finished run may override besides its own section: where the data
# are and which device runs it. Nothing that describes how the encoder was trained.
LOCATION_KEYS = ("data.root", "data.download", "train.device")


def check_override_keys(overrides: list[str], command: str, sections: tuple[str, ...]) -> None:
    """Refuse an override outside `sections` (and LOCATION_KEYS): `evaluate` and `postprocess` read a
    trained encoder, so model.*, method.*, ... would be recorded as fact without being true."""
    for item in overrides:
        key = parse_override(item)[0]
        if key.split(".")[0] in sections or key in LOCATION_KEYS:
            continue
        allowed = ", ".join([f"{s}.<key>" for s in sections] + list(LOCATION_KEYS))
        raise ConfigError(f"{command} does not take the override {item[:200]!r}: it reads a trained run, whose other "
                          f"settings are facts of that run. Allowed here: {allowed}")


def read_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The run's own config.yaml (plus `overrides`, validated). A damaged file is a RunError naming it."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a robustssl run (no {CONFIG}); pass the --out folder of `robustssl pretrain`")
    try:
        raw = with_legacy_values(load_yaml(path.read_text()))
        from_dict(raw)  # the file on its own must be a valid config
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
        raise RunError(f"{path} is damaged ({one_line(e)}); restore it (the checkpoint keeps a copy under 'config') "
                       "or start a new run") from None
    return from_dict(raw, overrides)


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's run.json (None when absent). A file that is not a JSON object, or whose method,
    seconds, phase_seconds, classes or hardware have the wrong type, is a RunError naming it."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        summary, why = None, f"not JSON: {one_line(e, 80)}"
    else:
        why = f"a JSON {type(summary).__name__}, not an object"
    if isinstance(summary, dict):  # the fields other commands read, with their types
        phases = summary.get("phase_seconds", {})
        why = ("'method' is not a string" if not isinstance(summary.get("method", ""), str) else
               "'seconds' is not a number" if not _number(summary.get("seconds", 0)) else
               "'phase_seconds' is not a mapping of numbers"
               if not isinstance(phases, dict) or not all(_number(v) for v in phases.values()) else
               "'classes' is not a list of names" if not isinstance(summary.get("classes", []), list) else
               "'hardware' is not a mapping" if not isinstance(summary.get("hardware", {}), dict) else "")
        if not why:
            return summary
    raise RunError(f"{path} is damaged ({why}); it is written when `robustssl pretrain` (or postprocess) finishes: "
                   "restore it, or delete it (the training record is then unknown)")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_data_root(root: str | Path, flag: str) -> None:
    """A data folder given on the command line: refuse a symbolic-link loop (ELOOP), which
    would otherwise surface as 'not found' or an error naming no file."""
    path = Path(root).expanduser()
    try:
        os.stat(path)
    except FileNotFoundError:
        return  # the reader names what it searched
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"{flag} {root} is a loop of symbolic links; point it at a real folder") from None
        raise RunError(f"{flag} {root}: {e.strerror}; point it at a folder you can read") from None


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
