"""A deterministic, offline arithmetic word-problem task for GRPO: `{"prompt", "answer"}` records.

A problem is a start ("Sam has 12 apples." or, multiplying, "Sam has 3 boxes with 4 apples in
each box.") and then additions ("buys 7 more") and subtractions ("gives 5 to a friend"), `steps`
operations in all, with operands in [1, max_value] (the first, and factors, at least 2) and a
result never below 0. The held-out split shares no problem and no pair of consecutive operands
with train: every unordered pair of numbers is assigned to one split by a fixed hash (seed-free,
so splits made with different seeds stay disjoint), and a problem is built only from pairs of
its own split. Run `python -m lmforge.data.arithmetic_task --out DIR` to write train.jsonl and
test.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from lmforge.errors import ConfigError, LmforgeError, one_line

Split = Literal["train", "test"]
NAMES = ("Sam", "Ava", "Liam", "Mia", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Yuki")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards")
MAX_STEPS = 4
ATTEMPTS_PER_PROBLEM = 50
DRAWS = 64  # tries for a number of the right split; with a 0.2 split all fail 6e-7 of the time
Accept = Callable[[int, int], bool]


def pair_split(x: int, y: int, held_out_fraction: float) -> Split:
    """The split a pair of numbers belongs to (unordered, the same for every seed)."""
    low, high = sorted((x, y))
    digest = hashlib.blake2b(f"{low}:{high}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest) / 2**64 < held_out_fraction else "train"


def _draw(rng: random.Random, low: int, high: int, previous: int, accept: Accept) -> int | None:
    """A number in [low, high] whose pair with `previous` is of the split, or None."""
    for _ in range(DRAWS):
        n = rng.randint(low, high)
        if accept(previous, n):
            return n
    return None


def _operands(
    rng: random.Random, steps: int, max_value: int, accept: Accept
) -> tuple[list[str], list[int]] | None:
    """Operation kinds and operands of one problem, each consecutive pair accepted (drawn one
    number at a time, so that long problems of a small split are still found quickly), and the
    result never below 0; None when a number could not be drawn."""
    first = rng.randint(2, max_value)
    if rng.random() < 1 / 3:
        second = _draw(rng, 2, max_value, first, accept)
        if second is None:
            return None
        kinds, numbers, value = ["multiply"], [first, second], first * second
    else:
        kinds, numbers, value = [], [first], first
    while len(kinds) < steps:
        kind = "subtract" if value >= 1 and rng.random() < 0.5 else "add"
        high = min(value, max_value) if kind == "subtract" else max_value
        n = _draw(rng, 1, high, numbers[-1], accept)
        if n is None:
            return None
        kinds.append(kind)
        numbers.append(n)
        value += n if kind == "add" else -n
    return kinds, numbers


def _answer(kinds: list[str], numbers: list[int]) -> int:
    value = numbers[0] * numbers[1] if kinds[0] == "multiply" else numbers[0]
    rest = numbers[2:] if kinds[0] == "multiply" else numbers[1:]
    for kind, n in zip(kinds[1:] if kinds[0] == "multiply" else kinds, rest, strict=True):
        value = value + n if kind == "add" else value - n
    return value


def _count(n: int, item: str) -> str:
    return f"{n} {item.removesuffix('s') if n == 1 else item}"  # every ITEMS plural ends in s


def _prompt(kinds: list[str], numbers: list[int], name: str, item: str) -> str:
    if kinds[0] == "multiply":
        parts = [f"{name} has {numbers[0]} boxes with {numbers[1]} {item} in each box."]
        ops = zip(kinds[1:], numbers[2:], strict=True)
    else:
        parts = [f"{name} has {_count(numbers[0], item)}."]
        ops = zip(kinds, numbers[1:], strict=True)
    for kind, n in ops:
        verb = f"buys {n} more" if kind == "add" else f"gives {_count(n, item)} to a friend"
        parts.append(f"Then {name} {verb}.")
    parts.append(f"How many {item} does {name} have now?")
    return " ".join(parts)


def _check(count: int, max_value: int, steps: int, held_out_fraction: float) -> None:
    if count < 0:
        raise ConfigError(f"arithmetic task: count must be >= 0, got {count}")
    if max_value < 2:
        raise ConfigError(f"arithmetic task: max_value must be >= 2, got {max_value}")
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"arithmetic task: steps must be in [1, {MAX_STEPS}], got {steps}")
    if not 0 < held_out_fraction < 1:
        raise ConfigError(
            f"arithmetic task: held_out_fraction must be in (0, 1), got {held_out_fraction}"
        )


def generate_problems(
    count: int,
    split: Split = "train",
    seed: int = 0,
    max_value: int = 100,
    steps: int = 1,
    held_out_fraction: float = 0.2,
) -> list[dict]:
    """`count` distinct problems of `split`, the same for the same arguments."""
    _check(count, max_value, steps, held_out_fraction)
    rng = random.Random(f"arithmetic:{seed}:{split}:{max_value}:{steps}")
    records: list[dict] = []
    seen: set[tuple] = set()

    def accept(x: int, y: int) -> bool:
        return pair_split(x, y, held_out_fraction) == split

    attempts = 0
    while len(records) < count:
        attempts += 1
        if attempts > ATTEMPTS_PER_PROBLEM * (count + 10):
            raise ConfigError(
                f"arithmetic task: only {len(records)} distinct {split} problems found for "
                f"max_value={max_value}, steps={steps}; raise max_value or ask for fewer"
            )
        drawn = _operands(rng, steps, max_value, accept)
        if drawn is None or (key := (tuple(drawn[0]), tuple(drawn[1]))) in seen:
            continue
        kinds, numbers = drawn
        seen.add(key)
        prompt = _prompt(kinds, numbers, rng.choice(NAMES), rng.choice(ITEMS))
        records.append({"prompt": prompt, "answer": _answer(kinds, numbers)})
    return records


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """One JSON object per line (the prompts-file format of `finetune grpo`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_task(out_dir: str | Path, train: int = 2000, test: int = 200, **options) -> list[Path]:
    """train.jsonl and test.jsonl under `out_dir`; options as for generate_problems."""
    out = Path(out_dir)
    return [
        write_jsonl(generate_problems(train, "train", **options), out / "train.jsonl"),
        write_jsonl(generate_problems(test, "test", **options), out / "test.jsonl"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for train.jsonl and test.jsonl")
    parser.add_argument("--train", type=int, default=2000, help="train problems")
    parser.add_argument("--test", type=int, default=200, help="held-out problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_value", type=int, default=100, help="largest operand")
    parser.add_argument("--steps", type=int, default=1, help=f"operations, 1 to {MAX_STEPS}")
    args = parser.parse_args(argv)
    options = {"seed": args.seed, "max_value": args.max_value, "steps": args.steps}
    try:
        paths = list(write_task(args.out, args.train, args.test, **options))
    except LmforgeError as error:  # one line and exit 2, as the lmforge command does
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
