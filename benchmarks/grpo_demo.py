"""The GRPO demonstration: SmolLM2-135M-Instruct with LoRA on the offline arithmetic task.

    .venv/bin/python benchmarks/grpo_demo.py --out /tmp/grpo-demo [extra `lmforge finetune` flags]

Writes the task (`python -m lmforge.data.arithmetic_task`, one operation on numbers up to 20,
600 train and 100 held-out problems), runs `lmforge finetune grpo --config grpo-smollm2` (the
shipped config: greedy held-out accuracy at steps 0, 16 and 32) in OUT, and prints a JSON
summary: the machine, wall time, held-out accuracy at each evaluation, the sampled reward of the
first and last 8 steps, and the generation share of the time. The reward curve is
OUT/runs/grpo-smollm2/reward.png. Needs ~/.cache/lmforge/SmolLM2-135M-Instruct.Q4_1.gguf (see
docs/interop.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lmforge.runtime import machine_summary

TASK = ["--steps", "1", "--max_value", "20", "--train", "600", "--test", "100"]


def run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed (exit {done.returncode})")
    return time.perf_counter() - started


def summarize(run_dir: Path, seconds: float) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/total/mean" in r]
    rewards = [r["reward/total/mean"] for r in steps]
    return {
        "machine": machine_summary(),
        "wall_seconds": round(seconds, 1),
        "steps": len(steps),
        "val_accuracy": {r["step"]: r["val_accuracy"] for r in records if "val_accuracy" in r},
        "reward_first_8": round(statistics.fmean(rewards[:8]), 4),
        "reward_last_8": round(statistics.fmean(rewards[-8:]), 4),
        "completion_length_first_last": [
            steps[0]["completion_length"],
            steps[-1]["completion_length"],
        ],
        "generation_share": round(statistics.fmean(r["generation_share"] for r in steps), 3),
        "gen_tokens_per_s": round(statistics.median(r["gen_tokens_per_s"] for r in steps), 1),
        "train_tokens_per_s": round(statistics.median(r["train_tokens_per_s"] for r in steps), 1),
        "reward_png": str(run_dir / "reward.png"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new directory")
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True)
    run(["lmforge.data.arithmetic_task", "--out", "data/arith", *TASK], args.out)
    seconds = run(["lmforge", "finetune", "grpo", "--config", "grpo-smollm2", *extra], args.out)
    summary = summarize(args.out / "runs" / "grpo-smollm2", seconds)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
