"""RewardSet: weighted totals, and failing user functions (raising, too slow, NaN, not a number,
killing their process) scored 0 and counted, never fatal; the worker recovers after each."""

from __future__ import annotations

import time

import pytest

from lmforge.errors import ConfigError
from lmforge.finetune.reward_set import RewardScores, RewardSet, as_reward
from lmforge.reward_config import RewardConfig

USER_MODULE = """
import os, time

def slow(completion, record):
    time.sleep(30)
    return 1.0

def raises(completion, record):
    raise KeyError("no such field")

def nan(completion, record):
    return float("nan")

def text(completion, record):
    return "1.0"

def dies(completion, record):
    os._exit(3)

def length(completion, record):
    return len(completion)

made_by_lambda = lambda completion, record: 1.0  # noqa: E731
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "grpo_user_rewards.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # the worker process inherits sys.path
    return "grpo_user_rewards"


def test_builtins_weighted_total():
    config = RewardConfig(
        functions=["number", "length_penalty"], weights=[2.0, 0.5], length_target=10
    )
    with RewardSet(config) as rewards:
        scores = rewards.score(["it is 7", "x" * 15 + " 7"], [{"answer": 7}, {"answer": 8}])
    assert scores.per_function == {"number": [1.0, 0.0], "length_penalty": [0.0, -0.7]}
    assert scores.total == pytest.approx([2.0, -0.35])
    summary = scores.summary()
    assert summary["reward/number/mean"] == 0.5 and summary["reward/number/std"] == 0.5
    assert summary["reward/total/mean"] == pytest.approx(0.825)


def test_failures_are_counted_not_fatal(user_module):
    names = ["raises", "nan", "text", "dies", "length"]
    config = RewardConfig(functions=[f"{user_module}:{n}" for n in names], time_limit=2.0)
    with RewardSet(config) as rewards:
        scores = rewards.score(["abc", "abcdef"], [{}, {}])
        for name in names[:-1]:
            assert scores.per_function[f"{user_module}:{name}"] == [0.0, 0.0]
            assert rewards.errors[f"{user_module}:{name}"] == 2
        # the worker was killed by `dies` twice and came back each time
        assert scores.per_function[f"{user_module}:length"] == [3.0, 6.0]
        assert rewards.errors[f"{user_module}:length"] == 0
        assert scores.total == [3.0, 6.0]
        last = rewards.last_error
        assert last[f"{user_module}:raises"] == "KeyError: 'no such field'"
        assert last[f"{user_module}:nan"] == "returned nan, not a finite number"
        assert last[f"{user_module}:text"] == "returned str '1.0', not a number"
        assert last[f"{user_module}:dies"] == "the reward worker exited during the call"
        assert not any(rewards.timeouts.values())


def test_a_slow_function_times_out_and_the_worker_recovers(user_module):
    config = RewardConfig(
        functions=[f"{user_module}:slow", f"{user_module}:length", "format"],
        format_regex=r"a+b",
        time_limit=0.5,
    )
    with RewardSet(config) as rewards:
        start = time.monotonic()
        scores = rewards.score(["aab", "ac"], [{}, {}])
        elapsed = time.monotonic() - start
        assert scores.per_function == {
            f"{user_module}:slow": [0.0, 0.0],
            f"{user_module}:length": [3.0, 2.0],
            "format": [1.0, 0.0],
        }
        assert rewards.timeouts[f"{user_module}:slow"] == 2
        assert rewards.errors[f"{user_module}:slow"] == 0
        assert rewards.counters()[f"reward/{user_module}:slow/timeouts"] == 2
    assert elapsed < 20  # two 0.5 s limits and worker restarts, not two 30 s sleeps


def test_a_catastrophic_format_regex_times_out():
    # (a+)+$ on "aaaa...b" backtracks for ever inside re, which holds the GIL: only a process
    # that can be killed bounds it
    config = RewardConfig(functions=["format"], format_regex=r"(a+)+$", time_limit=0.5)
    with RewardSet(config) as rewards:
        assert rewards.score(["a" * 40 + "b"], [{}]).per_function["format"] == [0.0]
        assert rewards.timeouts["format"] == 1


def test_as_reward():
    assert as_reward(True) == 1.0 and as_reward(2) == 2.0
    for bad in (float("inf"), None, "1", [1.0]):
        with pytest.raises(ValueError):
            as_reward(bad)


def test_mismatched_batch_and_empty_summary():
    with RewardSet(RewardConfig()) as rewards, pytest.raises(ValueError, match="2 completions"):
        rewards.score(["a", "b"], [{}])
    assert RewardScores({"number": []}, []).summary()["reward/number/mean"] == 0.0


def test_a_function_the_worker_cannot_receive_is_refused_up_front(user_module):
    config = RewardConfig(functions=[f"{user_module}:made_by_lambda"])
    with pytest.raises(ConfigError, match="'grpo_user_rewards:made_by_lambda' cannot be sent"):
        RewardSet(config)
