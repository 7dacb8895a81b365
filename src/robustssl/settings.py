"""Typed settings: dataclass fields that carry their own validation rule, and the one
routine that builds such a dataclass from a raw mapping and checks it.

Every config section (and every method's own settings) is a dataclass whose fields are
declared with the helpers below, so a key's type, range and vocabulary live beside its
default. `build_settings` turns a YAML mapping into the dataclass, naming the key at fault
and the fix; unknown keys list the valid ones.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any

from .errors import ConfigError

# --- declaring fields ---------------------------------------------------------------------
Choices = Callable[[], Iterable[str]] | tuple[str, ...]


def _default(default: Any) -> dict[str, Any]:
    return {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}


def positive(default: Any) -> Any:
    """A number (or None, where the type allows it) that must be > 0."""
    return field(metadata={"range": "positive"}, **_default(default))


def non_negative(default: Any) -> Any:
    """A number (or None, where the type allows it) that must be >= 0."""
    return field(metadata={"range": "non_negative"}, **_default(default))


def unit_interval(default: Any) -> Any:
    """A number in [0, 1]."""
    return field(metadata={"range": "unit_interval"}, **_default(default))


def one_of(default: Any, choices: Choices) -> Any:
    """A string (or each string of a list) from `choices`: a tuple, or a callable returning the
    names of a registry, so the vocabulary is the registry itself."""
    return field(metadata={"choices": choices}, **_default(default))


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    spec = f.metadata.get("choices")
    if spec is None:
        return None
    return tuple(spec() if callable(spec) else spec)


# --- building and checking ------------------------------------------------------------------
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = 8
INT_LIMIT = 2**63  # config integers are int64 (torch, numpy); larger ones are refused


def show(value: Any) -> str:
    """repr(value) cut to a few dozen characters, built without walking a huge value (error messages)."""
    return _REPR.repr(value)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints become floats where a float is expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {show(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {show(value)} (write it as [a, b] or a YAML list)")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:
                raise ConfigError(f"{key}: {show(value)} is out of range; integers must lie in -2^63..2^63-1")
            return value
        raise ConfigError(f"{key}: expected an integer, got {show(value)}")
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads 1e-3 (no dot, no sign) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {show(value)}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {show(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {show(value)}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    args = typing.get_args(tp)
    return " or ".join(names.get(a, str(a)) for a in args) if args else names.get(tp, str(tp))


def build_settings(cls: type, raw: Any, prefix: str) -> Any:
    """The dataclass `cls` from the mapping `raw`, every field coerced and checked.

    prefix: the dotted path of this section ("optim.", "method.acl.") for messages.
    Fields whose type is itself a dataclass are built recursively.
    """
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            valid = ", ".join(prefix + v for v in fields)
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {valid}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_settings(typing.cast(type, tp), value, f"{prefix}{key}.")
        else:
            kwargs[key] = coerce(value, tp, prefix + key)
    obj = cls(**kwargs)
    check_fields(obj, prefix)
    return obj


def check_fields(obj: Any, prefix: str) -> None:
    """Apply each field's declared rule (range, vocabulary) to its value."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        options = choices_of(f)
        if options is not None:
            for v in value if isinstance(value, list) else [value]:
                if v is not None and v not in options:
                    raise ConfigError(f"{key}={show(v)} is not valid; choose one of: {', '.join(map(str, options))}")
        rule = f.metadata.get("range")
        for v in value if isinstance(value, list) else [value]:
            if rule is None or v is None:
                continue
            if rule == "positive" and not v > 0:
                raise ConfigError(f"{key} must be > 0, got {v}")
            if rule == "non_negative" and not v >= 0:
                raise ConfigError(f"{key} must be >= 0, got {v}")
            if rule == "unit_interval" and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {v}")
