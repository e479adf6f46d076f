"""The one validator of sampling options, shared by `sample`, `chat` and (later) `serve`.

Each bad value is a ConfigError naming the option and the allowed range, raised before a model
is loaded. `flag` formats the option's name the way the caller's users spell it (`--top_p` on
the command line, `top_p` in an HTTP request body).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from lmforge.errors import ConfigError


def _cli_flag(name: str) -> str:
    return f"--{name}"


def check_sampling_options(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    prompts: Sequence[str] | None = None,
    flag: Callable[[str], str] = _cli_flag,
) -> None:
    """max_new_tokens >= 1, finite temperature >= 0 (0 is greedy), top_k >= 0 (0 is off),
    top_p in (0, 1], and, when `prompts` is given, at least one prompt."""
    if isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ConfigError(f"{flag('max_new_tokens')} must be >= 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(
            f"{flag('temperature')} must be a finite number >= 0 (0 is greedy), got {temperature}"
        )
    if top_k is not None and top_k < 0:
        raise ConfigError(f"{flag('top_k')} must be >= 0 (0 turns it off), got {top_k}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise ConfigError(f"{flag('top_p')} must be in (0, 1] (1 turns it off), got {top_p}")
    if prompts is not None and len(prompts) == 0:
        raise ConfigError(f"{flag('prompt')} needs a value, e.g. {flag('prompt')} 'Once upon'")
