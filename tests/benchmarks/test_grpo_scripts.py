"""The GRPO benchmark scripts: the TRL side scores completions exactly as lmforge's `number`
reward does (else the comparison would train on different rewards), and the demo's summary
reads a run's metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lmforge.finetune.rewards import number

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import grpo_demo  # noqa: E402
import grpo_trl  # noqa: E402  (imports TRL only when its side runs)

COMPLETIONS = [
    "The answer is 17.", "9 + 8 = 17 marbles. #### 17", "1,014 apples", "\\boxed{-3} then 5",
    "\\boxed{\\frac{3}{4}}", "5-3 leaves 2", "no number here", "3/4 of them", "1.5e3 coins",
    "Ravi has \u22124 cards", "2. Then 3.", "\\boxed{12",
]  # fmt: skip


@pytest.mark.parametrize("completion", COMPLETIONS)
@pytest.mark.parametrize("answer", [17, 1014, -3, 0.75, 2, 1500, -4, 3, 12])
def test_trl_side_reward_is_lmforges_number_reward(completion, answer):
    chat = [[{"role": "assistant", "content": completion}]]
    ours = number(completion, {"answer": answer})
    assert grpo_trl.number_reward(chat, [answer]) == [ours]
    assert grpo_trl.number_reward([completion], [answer]) == [ours]


def test_demo_summary_reads_the_run(tmp_path):
    records = [{"step": 0, "val_accuracy": 0.2}]
    for step in range(1, 11):
        records.append({
            "step": step, "reward/total/mean": step / 10, "completion_length": 60 - step,
            "generation_share": 0.6, "gen_tokens_per_s": 100.0, "train_tokens_per_s": 300.0,
        })  # fmt: skip
    records.append({"step": 10, "val_accuracy": 0.5})
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    summary = grpo_demo.summarize(tmp_path, 12.34)
    assert summary["val_accuracy"] == {0: 0.2, 10: 0.5}
    assert summary["reward_first_8"] == pytest.approx(0.45)
    assert summary["reward_last_8"] == pytest.approx(0.65)
    assert summary["completion_length_first_last"] == [59, 50]
    assert summary["steps"] == 10 and summary["wall_seconds"] == 12.3
