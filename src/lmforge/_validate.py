"""The generic config validator: nested dicts (TOML, JSON) into dataclasses, with one-line errors
for unknown keys (suggesting the closest) and wrong types; and the rules of the range tables
(config_checks.RANGES, models/ranges.py) with the one check that applies them. It knows no
lmforge config, so every layer can use it: run configs, model configs in checkpoints and in other
formats' files, per-layer overrides, adapters."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from lmforge.errors import ConfigError


def from_dict(cls: type, data: dict, source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = (
                f"did you mean '{prefix}{close[0]}'?"
                if close
                else f"valid keys: {', '.join(fields)}"
            )
            raise ConfigError(f"{source}: unknown config key '{prefix}{key}'; {hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = from_dict(hint, value, source, f"{prefix}{key}.")
        else:
            values[key] = _check_type(value, hint, f"{prefix}{key}", source)
    return cls(**values)


def check_types(instance: Any, source: str, prefix: str = "") -> None:
    """The field types of a dataclass built in code (e.g. from another format's config file,
    whose values were not read through from_dict): the same one-line errors as from_dict."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        _check_type(getattr(instance, field.name), hints[field.name], prefix + field.name, source)


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, key, source)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {key} = {value!r} is not one of {choices}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{source}: {key} must be {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


# A range rule: a test of a finite number, and how the message says what it must be.
Rule = tuple[Callable[[float], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
AT_LEAST_ONE: Rule = (lambda v: v >= 1, "must be >= 1")
FRACTION_OPEN: Rule = (lambda v: 0 < v < 1, "must be in (0, 1)")
FRACTION_CLOSED: Rule = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
BETA: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
FACTOR: Rule = (lambda v: 0 < v <= 1, "must be in (0, 1]")


def between(low: int, high: int) -> Rule:
    """An integer size from `low` to `high` inclusive (the upper end refuses absurd sizes)."""
    return (lambda v: low <= v <= high, f"must be in [{low}, {high:,}]")


def check_number(key: str, value: Any, rule: Rule, fix: str | None = None) -> None:
    """ConfigError unless `value` is None or a finite number that satisfies `rule`. Other types
    pass: the type check (from_dict) names them. `fix` ends the message (default: the flag)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    allowed, description = rule
    if not math.isfinite(value) or not allowed(value):
        fix = fix or f"set --{key} (or the TOML key) to one"
        raise ConfigError(f"{key} {description}, got {value}; {fix}")
