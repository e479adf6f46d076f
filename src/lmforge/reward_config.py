"""The reward settings of GRPO (`[finetune.rewards]`), apart from the reward functions in
finetune/rewards.py so that the run config and the command line read them without torch.

FinetuneConfig.rewards composes it (`lmforge finetune grpo`).
The checks run when the dataclass is made (TOML, code) and again on `validate()`, which the run
should call after command-line overrides, since those set fields without remaking the object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmforge._validate import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_number
from lmforge.errors import ConfigError

PREFIX = "finetune.rewards"
BUILTIN_REWARDS = ("exact_match", "number", "format", "length_penalty")


@dataclass
class RewardConfig:
    """Which rewards score a completion, how much each counts and how long each may take."""

    functions: tuple[str, ...] = ("number",)
    """Built-in names (exact_match, number, format, length_penalty) or `module:function` specs
    of the user's own code, which is imported and run: `fn(completion, record) -> float`."""
    weights: tuple[float, ...] = ()
    """One finite weight >= 0 per function (0 logs a reward without training on it); empty
    weighs every function 1."""
    format_regex: str | None = None
    """`format`: the stripped completion must match this whole (re.fullmatch, `.` matches
    newlines)."""
    answer_marker: str = "Answer:"
    """`exact_match`: the answer is the text after the last marker (case-insensitive); with no
    marker in the completion (or an empty marker), its last non-empty line."""
    length_target: int = 1024
    """`length_penalty`: completions longer than this many characters score below 0."""
    time_limit: float = 5.0
    """Seconds one call of a function on one completion may take; past it the call scores 0 and
    counts as a timeout."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Types, ranges and the regex, each refusal one line naming the key."""
        # TOML gives lists; keep tuples so that a dumped and reloaded config compares equal.
        self.functions = _strings(self.functions, "functions")
        self.weights = _numbers(self.weights, "weights")
        if not self.functions:
            raise ConfigError(f"{PREFIX}.functions is empty; name at least one reward")
        for spec in self.functions:
            if spec not in BUILTIN_REWARDS and not _is_spec(spec):
                raise ConfigError(
                    f"{PREFIX}.functions: {spec!r} is neither a built-in reward "
                    f"({', '.join(BUILTIN_REWARDS)}) nor a 'module:function' spec"
                )
        if len(set(self.functions)) != len(self.functions):
            raise ConfigError(f"{PREFIX}.functions names a reward twice; name each once")
        if self.weights and len(self.weights) != len(self.functions):
            raise ConfigError(
                f"{PREFIX}.weights has {len(self.weights)} values for {len(self.functions)} "
                "functions; give one weight per function, or none for all 1"
            )
        for i, weight in enumerate(self.weights):
            check_number(f"{PREFIX}.weights[{i}]", weight, NON_NEGATIVE)
        _check_int(self.length_target, "length_target")
        check_number(f"{PREFIX}.length_target", self.length_target, AT_LEAST_ONE)
        if isinstance(self.time_limit, bool) or not isinstance(self.time_limit, int | float):
            raise ConfigError(f"{PREFIX}.time_limit must be a number of seconds")
        check_number(f"{PREFIX}.time_limit", self.time_limit, POSITIVE)
        if not isinstance(self.answer_marker, str):
            raise ConfigError(f"{PREFIX}.answer_marker must be a string")
        if "format" in self.functions:
            compile_format(self.format_regex)

    def weight_of(self, index: int) -> float:
        return float(self.weights[index]) if self.weights else 1.0


def compile_format(pattern: object) -> re.Pattern:
    """The `format` reward's regex, or a one-line ConfigError naming it."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(
            f"the format reward needs {PREFIX}.format_regex (a regex the completion must match)"
        )
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as error:
        raise ConfigError(
            f"{PREFIX}.format_regex {pattern!r} is not a valid regex ({error}); fix the pattern"
        ) from None


def _is_spec(spec: str) -> bool:
    module, _, function = spec.partition(":")
    return bool(module.strip()) and bool(function.strip())


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{PREFIX}.{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _numbers(value: object, key: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{PREFIX}.{key} must be a list of numbers, got {value!r}")
    return tuple(value)


def _check_int(value: object, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{PREFIX}.{key} must be an integer, got {value!r}")
