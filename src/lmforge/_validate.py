"""The generic config validator: nested dicts (TOML, JSON) into dataclasses, with one-line errors
for unknown keys (suggesting the closest) and wrong types. It knows no lmforge config, so every
layer can use it: run configs, model configs in checkpoints, per-layer overrides, adapters."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
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
