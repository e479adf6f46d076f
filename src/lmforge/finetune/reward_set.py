"""The configured rewards of a GRPO run: score a batch of completions, per function and in total.

Built-in `number`, `exact_match` and `length_penalty` are linear-time and run in this process.
User functions (`module:function`, the user's own code) and `format` (whose regex comes from the
config and could backtrack for ever) run in a worker process with a time limit per call
(reward_worker.py). A call that raises, times out, or returns something other than a finite
number scores 0 for that completion and is counted (`errors`, `timeouts`, `last_error`), so one
bad completion or function never stops a run; the counts go to the log.
"""

from __future__ import annotations

import math
import pickle
import statistics
from dataclasses import dataclass
from numbers import Real
from typing import Any

from lmforge.errors import ConfigError, one_line
from lmforge.finetune.reward_worker import RewardWorker
from lmforge.finetune.rewards import resolve
from lmforge.reward_config import PREFIX, RewardConfig

IN_PROCESS = ("number", "exact_match", "length_penalty")


@dataclass
class RewardScores:
    per_function: dict[str, list[float]]
    """Each function's unweighted score of each completion (0 where it failed)."""
    total: list[float]
    """The weighted sum over functions, per completion."""

    def summary(self) -> dict[str, float]:
        """Mean and (population) standard deviation per function and of the total, to log."""
        columns = {**self.per_function, "total": self.total}
        out: dict[str, float] = {}
        for name, values in columns.items():
            out[f"reward/{name}/mean"] = statistics.fmean(values) if values else 0.0
            out[f"reward/{name}/std"] = statistics.pstdev(values) if values else 0.0
        return out


def as_reward(value: Any) -> float:
    """A function's return value as a finite float (a bool counts as 1/0), or ValueError."""
    if not isinstance(value, Real):
        raise ValueError(
            f"returned {type(value).__name__} {one_line(repr(value), 80)}, not a number"
        )
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"returned {result}, not a finite number")
    return result


def _check_sendable(name: str, function: Any) -> None:
    """The worker receives functions pickled (by module and name), so a lambda or a function
    made inside another one cannot go: refuse it now rather than fail every call."""
    try:
        pickle.dumps(function)
    except Exception as error:
        raise ConfigError(
            f"{PREFIX}.functions: {name!r} cannot be sent to the reward worker "
            f"({one_line(error, 200)}); define it with `def` at the top level of its module"
        ) from None


class RewardSet:
    """The functions of a RewardConfig with their weights. `close()` (or `with`) stops the worker."""

    def __init__(self, config: RewardConfig) -> None:
        config.validate()
        self.names = list(config.functions)
        self.weights = [config.weight_of(i) for i in range(len(self.names))]
        self.time_limit = float(config.time_limit)
        functions = [resolve(name, config) for name in self.names]  # imports user modules
        self._local = {i: f for i, f in enumerate(functions) if self.names[i] in IN_PROCESS}
        remote = [i for i in range(len(functions)) if i not in self._local]
        for i in remote:
            _check_sendable(self.names[i], functions[i])
        self._slot = {i: slot for slot, i in enumerate(remote)}
        self._worker = RewardWorker([functions[i] for i in remote]) if remote else None
        self.errors = dict.fromkeys(self.names, 0)
        self.timeouts = dict.fromkeys(self.names, 0)
        self.last_error: dict[str, str] = {}

    def _call(self, index: int, completion: str, record: dict) -> float:
        name = self.names[index]
        try:
            if index in self._local:
                return as_reward(self._local[index](completion, record))
            assert self._worker is not None
            status, value = self._worker.call(
                self._slot[index], completion, record, self.time_limit
            )
            if status == "timeout":
                self.timeouts[name] += 1
                self.last_error[name] = f"timed out after {self.time_limit:g} s"
                return 0.0
            if status == "error":
                raise RuntimeError(value)
            return as_reward(value)
        except Exception as error:
            self.errors[name] += 1
            self.last_error[name] = one_line(error, 300)
            return 0.0

    def score(self, completions: list[str], records: list[dict]) -> RewardScores:
        """Every function on every (completion, record) pair; records[i] belongs to completions[i]."""
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        per_function = {
            name: [self._call(i, c, r) for c, r in zip(completions, records, strict=True)]
            for i, name in enumerate(self.names)
        }
        total = [
            sum(w * per_function[n][j] for n, w in zip(self.names, self.weights, strict=True))
            for j in range(len(completions))
        ]
        return RewardScores(per_function, total)

    def counters(self) -> dict[str, int]:
        """Failed calls so far, per function: `reward/<name>/errors` and `.../timeouts`."""
        out = {f"reward/{n}/errors": c for n, c in self.errors.items()}
        return out | {f"reward/{n}/timeouts": c for n, c in self.timeouts.items()}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
