"""GRPO rewards: the number and answer extractors, the built-ins, user functions and the config."""

from __future__ import annotations

import math

import pytest

from lmforge.errors import ConfigError
from lmforge.finetune.rewards import (
    boxed,
    exact_match,
    extract_number,
    final_answer,
    format_match,
    length_penalty,
    load_user_function,
    number,
)
from lmforge.reward_config import RewardConfig, compile_format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", 42),
        ("x = -3", -3),
        ("10 - 4 = 6", 6),  # a minus after a digit is subtraction, not a sign
        ("5-3", 3),
        ("It costs $1,234.50 in total", 1234.5),
        ("1,234,567 grains", 1234567),
        ("12,34", 34),  # not a thousands group: two numbers
        ("-0.25", -0.25),
        ("\u22124", -4),  # the Unicode minus sign
        ("about 1.5e3 m", 1500),
        ("2.5E-2", 0.025),
        ("so 3/4 of it", 0.75),
        ("so 3 / 4", 0.75),
        ("item 3. next", 3),
        ("first 7 then \\boxed{-12} then 9", -12),  # the box wins over the last number
        ("\\boxed{\\frac{3}{4}}", 0.75),
        ("\\boxed{1,234}", 1234),
        ("\\boxed{5} and later \\boxed{6}", 6),  # the last box
        ("unclosed \\boxed{5 then 8", 8),  # no closing brace: the whole text's last number
        ("no number here", None),
        ("", None),
        ("1/0", None),
    ],
)
def test_extract_number(text, expected):
    got = extract_number(text)
    assert got == expected if expected is None else math.isclose(got, expected)


def test_boxed_nested_braces():
    assert boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert boxed("none") is None


@pytest.mark.parametrize(
    ("completion", "answer", "score"),
    [
        ("so the total is 19", 19, 1.0),
        ("so the total is 19", "19", 1.0),
        ("so the total is 19", 19.0000001, 1.0),  # within the relative tolerance
        ("so the total is 19", 19.1, 0.0),
        ("\\boxed{1,234}", "1,234", 1.0),
        ("0.75", "3/4", 1.0),
        ("it is -5", -5, 1.0),
        ("it is 5", -5, 0.0),
        ("no idea", 19, 0.0),
    ],
)
def test_number_reward(completion, answer, score):
    assert number(completion, {"answer": answer}) == score


@pytest.mark.parametrize("answer", ["nineteen", True, None, [19]])
def test_number_reward_refuses_a_bad_answer(answer):
    with pytest.raises(ValueError, match="not a number"):
        number("19", {"answer": answer})


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Let me think.\nAnswer: 42.", "42"),
        ("answer: a\nANSWER:  b ", "b"),  # the last marker, any case
        ("Let me think.\n\n  42  \n\n", "42"),  # no marker: the last non-empty line
        ("", ""),
    ],
)
def test_final_answer(completion, expected):
    assert final_answer(completion) == expected


def test_exact_match():
    assert exact_match("work...\nAnswer: 19", {"answer": 19}) == 1.0
    assert exact_match("Answer: 19.", {"answer": "19"}) == 1.0
    assert exact_match("Answer: 190", {"answer": 19}) == 0.0
    assert exact_match("19\nbye", {"answer": 19}) == 0.0  # the last line is "bye"
    assert exact_match("Final: 19", {"answer": 19}, marker="Final:") == 1.0


def test_format_and_length():
    pattern = compile_format(r"<think>.*</think>\s*<answer>\d+</answer>")
    good = "  <think>step one\nstep two</think>\n<answer>7</answer>\n"
    assert format_match(good, {}, pattern) == 1.0  # `.` spans lines; outer spaces stripped
    assert format_match(good + "extra", {}, pattern) == 0.0  # the whole must match
    assert length_penalty("x" * 100, {}, target=100) == 0.0
    assert length_penalty("x" * 150, {}, target=100) == -0.5
    assert length_penalty("x" * 1000, {}, target=100) == -1.0  # capped at -1


def test_user_function_loading(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(completion, record):\n    return float(len(completion) < 5)\n"
        "class Box:\n    @staticmethod\n    def score(completion, record):\n        return 1.0\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_user_function("my_rewards:short")("abc", {}) == 1.0
    assert load_user_function("my_rewards:Box.score")("abc", {}) == 1.0
    with pytest.raises(ConfigError, match="cannot import 'no_such_mod' for 'no_such_mod:f'"):
        load_user_function("no_such_mod:f")
    with pytest.raises(ConfigError, match="'my_rewards' has no 'missing'"):
        load_user_function("my_rewards:missing")
    with pytest.raises(ConfigError, match="'my_rewards:NOT_CALLABLE' is a int, not a function"):
        load_user_function("my_rewards:NOT_CALLABLE")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"functions": []}, "functions is empty"),
        ({"functions": "number"}, "functions must be a list of strings"),
        ({"functions": ["numbr"]}, "'numbr' is neither a built-in reward"),
        ({"functions": ["number", "number"]}, "names a reward twice"),
        ({"weights": [1.0, 2.0]}, "2 values for 1 functions"),
        ({"weights": [-1.0]}, r"weights\[0\] must be >= 0, got -1.0"),
        ({"weights": [math.nan]}, r"weights\[0\] must be >= 0, got nan"),
        ({"weights": [math.inf]}, r"weights\[0\] must be >= 0, got inf"),
        ({"weights": [True]}, "weights must be a list of numbers"),
        ({"time_limit": 0}, "time_limit must be > 0"),
        ({"time_limit": -1.0}, "time_limit must be > 0"),
        ({"time_limit": math.nan}, "time_limit must be > 0, got nan"),
        ({"time_limit": math.inf}, "time_limit must be > 0, got inf"),
        ({"time_limit": "5"}, "time_limit must be a number"),
        ({"length_target": 0}, "length_target must be >= 1"),
        ({"length_target": 1.5}, "length_target must be an integer"),
        ({"functions": ["format"]}, "format reward needs finetune.rewards.format_regex"),
        ({"functions": ["format"], "format_regex": "(ab"}, "format_regex '\\(ab' is not a valid"),
    ],
)
def test_config_refusals(fields, message):
    with pytest.raises(ConfigError, match=message) as caught:
        RewardConfig(**fields)
    assert "\n" not in str(caught.value)


def test_config_accepts_and_normalises():
    config = RewardConfig(functions=["number", "my_mod:fn"], weights=[1, 0.5])
    assert config.functions == ("number", "my_mod:fn") and config.weights == (1, 0.5)
    assert [config.weight_of(i) for i in range(2)] == [1.0, 0.5]
    assert RewardConfig().weight_of(0) == 1.0
    config.time_limit = -2.0  # a command-line override sets a field without remaking the object
    with pytest.raises(ConfigError, match="time_limit must be > 0"):
        config.validate()
