"""The arithmetic task: answers right, deterministic by seed, held-out disjoint from train."""

from __future__ import annotations

import json
import re

import pytest

from lmforge.data.arithmetic_task import generate_problems, main, pair_split
from lmforge.errors import ConfigError

NUMBER = re.compile(r"\d+")


def solve(prompt: str) -> int:
    """An independent reading of a prompt: the sentence shapes, not the generator's operands."""
    boxes = re.match(r"\w+ has (\d+) boxes with (\d+) ", prompt)
    value = int(boxes[1]) * int(boxes[2]) if boxes else int(NUMBER.search(prompt)[0])
    for verb, n in re.findall(r"Then \w+ (buys|gives) (\d+)", prompt):
        value += int(n) if verb == "buys" else -int(n)
    return value


def operands(prompt: str) -> list[int]:
    return [int(n) for n in NUMBER.findall(prompt)]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_answers_are_right(steps):
    records = generate_problems(300, "train", seed=3, max_value=30, steps=steps)
    assert len(records) == 300
    for record in records:
        assert set(record) == {"prompt", "answer"} and isinstance(record["answer"], int)
        assert record["answer"] == solve(record["prompt"]) >= 0
        assert record["prompt"].count("Then") == steps - ("boxes" in record["prompt"])
        assert all(1 <= n <= 30 for n in operands(record["prompt"]))
    kinds = " ".join(r["prompt"] for r in records)
    assert "boxes" in kinds and "buys" in kinds and ("gives" in kinds or steps == 1)


def test_grammar_of_one():
    prompts = [r["prompt"] for r in generate_problems(200, "train", max_value=5, steps=2)]
    assert not any(re.search(r"\b1 (apples|marbles|books|coins|cards)\b", p) for p in prompts)
    assert any(re.search(r"\b1 (apple|marble|book|coin|card)\b", p) for p in prompts)


def test_deterministic_by_seed():
    assert generate_problems(50, seed=1) == generate_problems(50, seed=1)
    assert generate_problems(50, seed=1) != generate_problems(50, seed=2)


@pytest.mark.parametrize("steps", [1, 3])
def test_held_out_shares_no_problem_or_pair(steps):
    train = generate_problems(1000, "train", seed=0, max_value=40, steps=steps)
    test = generate_problems(200, "test", seed=1, max_value=40, steps=steps)  # seeds differ too
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}

    def pairs(records):  # consecutive operands, unordered
        return {
            tuple(sorted((a, b)))
            for r in records
            for a, b in zip(operands(r["prompt"]), operands(r["prompt"])[1:], strict=False)
        }

    assert not pairs(train) & pairs(test)
    assert all(pair_split(a, b, 0.2) == "test" for a, b in pairs(test))
    assert len({r["prompt"] for r in test}) == 200  # no duplicates within a split


def test_refusals():
    with pytest.raises(ConfigError, match="only .* distinct test problems .* raise max_value"):
        generate_problems(100, "test", max_value=3)
    with pytest.raises(ConfigError, match="steps must be in"):
        generate_problems(5, steps=0)
    with pytest.raises(ConfigError, match="max_value must be >= 2"):
        generate_problems(5, max_value=1)
    with pytest.raises(ConfigError, match="held_out_fraction"):
        generate_problems(5, held_out_fraction=1.0)


def test_main_writes_jsonl(tmp_path, capsys):
    main(["--out", str(tmp_path / "task"), "--train", "20", "--test", "5", "--steps", "2"])
    train = [json.loads(line) for line in (tmp_path / "task/train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "task/test.jsonl").read_text().splitlines()]
    assert len(train) == 20 and len(test) == 5
    assert train == generate_problems(20, "train", steps=2)
    assert "wrote" in capsys.readouterr().out


def test_the_module_command_refuses_an_impossible_task_in_one_line(tmp_path, capsys):
    from lmforge.data.arithmetic_task import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--steps", "1", "--max_value", "20"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "raise max_value" in err
