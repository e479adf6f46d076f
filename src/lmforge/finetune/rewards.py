"""Reward functions for GRPO: `reward(completion: str, record: dict) -> float`.

`record` is the prompt record the completion answers (docs/finetuning.md), e.g. with `answer`.
Built-in:
    exact_match     1.0 when the final answer (the text after the last "Answer:", else the last
                    non-empty line; stripped, a trailing period dropped) equals str(answer)
    number          1.0 when the answer number (the last \\boxed{...}, else the last number in
                    the text) equals `answer` within a relative tolerance of 1e-6
    format          1.0 when the stripped completion matches the configured regex whole
    length_penalty  -min(1, (characters - target) / target) past `target` characters, else 0
A `module:function` spec names the user's own function: it is imported (so its module's code
runs) and called on every completion, in a worker process (reward_set.py).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from functools import partial
from numbers import Real

from lmforge.errors import ConfigError
from lmforge.reward_config import PREFIX, RewardConfig, compile_format

RewardFn = Callable[[str, dict], float]
REL_TOL = 1e-6

# A minus sign counts only where it cannot be subtraction: not after a digit, letter or ")"
# ("5-3" is 5 and 3; "= -3" is -3). Thousands groups need exactly three digits ("1,234");
# "1,2" is two numbers. No nested quantifiers, so a long run of digits stays linear.
_SIGN = r"(?<![\w)])[-\u2212]"
_PLAIN = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(
    rf"(?P<fraction>(?:{_SIGN})?\d+\s*/\s*\d+(?![\d.]))|(?P<number>(?:{_SIGN})?{_PLAIN})"
)
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}")


def _to_float(text: str) -> float | None:
    text = text.replace("\u2212", "-").replace(",", "").replace(" ", "")
    try:
        if "/" in text:
            top, bottom = text.split("/")
            return float(top) / float(bottom) if float(bottom) != 0 else None
        return float(text)
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    """The last number in `text` (1,234 / -2.5 / 3/4 / 1e-3 / \\frac{3}{4}), or None."""
    text = _FRAC.sub(lambda m: f" {m[1]}/{m[2]} ", text)
    found = None
    for match in _NUMBER.finditer(text):
        found = match
    return None if found is None else _to_float(found[0])


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces inside it balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return text[begin:i]
    return None  # unclosed: fall back to the last number of the whole text


def extract_number(completion: str) -> float | None:
    """The completion's answer number: from its last \\boxed{} if any, else its last number."""
    content = boxed(completion)
    return last_number(content if content is not None else completion)


def answer_number(answer: object) -> float:
    """The record's `answer` as a number: an int or float, or a string holding one."""
    if isinstance(answer, Real) and not isinstance(answer, bool):
        return float(answer)
    if isinstance(answer, str) and (value := _to_float(answer.strip())) is not None:
        return value
    raise ValueError(f"record answer {answer!r} is not a number")


def number(completion: str, record: dict) -> float:
    got = extract_number(completion)
    if got is None or not math.isfinite(got):
        return 0.0
    want = answer_number(record["answer"])
    return float(math.isclose(got, want, rel_tol=REL_TOL, abs_tol=1e-9))


def final_answer(completion: str, marker: str = "Answer:") -> str:
    """The text after the last `marker` (case-insensitive), else the last non-empty line."""
    at = completion.lower().rfind(marker.lower()) if marker else -1
    if at >= 0:
        text = completion[at + len(marker) :]
    else:
        lines = [line for line in completion.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    return text.strip().removesuffix(".").strip()


def exact_match(completion: str, record: dict, marker: str = "Answer:") -> float:
    return float(final_answer(completion, marker) == str(record["answer"]).strip())


def format_match(completion: str, record: dict, pattern: re.Pattern) -> float:
    return float(pattern.fullmatch(completion.strip()) is not None)


def length_penalty(completion: str, record: dict, target: int = 1024) -> float:
    return -min(1.0, max(0, len(completion) - target) / target)


def load_user_function(spec: str) -> RewardFn:
    """`module:function` from the current directory or sys.path. This imports and so runs the
    user's own module; a missing module or attribute, or a non-callable, is a ConfigError."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name.strip())
    except ImportError as error:
        raise ConfigError(
            f"{PREFIX}.functions: cannot import {module_name!r} for {spec!r} ({error}); put the "
            "module in the current directory or on PYTHONPATH"
        ) from None
    function = module
    for part in attribute.strip().split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ConfigError(
                f"{PREFIX}.functions: {module_name!r} has no {attribute!r} (from {spec!r}); "
                "check the function name"
            )
    if not callable(function):
        raise ConfigError(
            f"{PREFIX}.functions: {spec!r} is a {type(function).__name__}, not a function; "
            "name a function(completion, record) -> float"
        )
    return function


def resolve(spec: str, config: RewardConfig) -> RewardFn:
    """The function a spec names, with its settings from `config` bound."""
    if spec == "number":
        return number
    if spec == "exact_match":
        return partial(exact_match, marker=config.answer_marker)
    if spec == "format":
        return partial(format_match, pattern=compile_format(config.format_regex))
    if spec == "length_penalty":
        return partial(length_penalty, target=config.length_target)
    return load_user_function(spec)
