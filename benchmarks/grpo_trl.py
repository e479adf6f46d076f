"""GRPO per-step cost: `lmforge finetune grpo` vs TRL's GRPOTrainer, same model, data and settings.

Run with the TRL venv's python (torch, trl, peft, transformers, datasets; lmforge is not
imported: its side runs first, as a subprocess of --lmforge):

    TRL_VENV/bin/python benchmarks/grpo_trl.py --side both --steps 5 \\
        --model HF_DIR --data data/arith --out grpo_trl.json

HF_DIR: `lmforge convert SmolLM2-135M-Instruct.Q4_1.gguf --out ckpt` then `lmforge export ckpt
--format hf --dtype float32 --out HF_DIR`; data/arith: `python -m lmforge.data.arithmetic_task
--out data/arith --steps 1 --max_value 20 --train 600 --test 100` (the demonstration's task).

Settings (lmforge's grpo-smollm2 config): 4 prompts x 8 completions = 32 per optimizer step, no
accumulation; up to 64 new tokens, temperature 0.8, top_p 1; beta 0 (no reference pass); clip
band [1 - 0.2, 1 + 0.28]; num_iterations (mu) 1; rewards not divided by the group std; the loss
is the mean over all of the step's completion tokens (TRL's loss_type "dapo" = lmforge's
normalization "token" with one micro-batch per step); LoRA rank 16, alpha 32, no dropout; AdamW
lr 3e-4, betas (0.9, 0.95), no weight decay, clip 1.0, 3 warmup steps then cosine to 3e-5; no
gradient checkpointing (TRL's default is on); bf16 autocast over fp32 weights where
/proc/cpuinfo lists avx512_bf16 or amx_bf16, else fp32 (lmforge gets it via --train.dtype);
--threads on both sides (OMP_NUM_THREADS for lmforge); stop at <|im_end|> or <|endoftext|>;
prompts through the model's chat template (the same token ids on both sides); reward 1.0 when
the completion's number equals the answer (a copy of lmforge's `number` extraction).

Timing. TRL: a TrainerCallback times on_step_begin -> on_step_end: generation, reward, forward,
backward and optimizer step, not logging. lmforge: with train.log_interval 1 each metrics.jsonl
record has tokens_per_s = train.batch_tokens / that step's wall time (its ThroughputWindow runs
from the end of the previous log to this one; evaluation and checkpoints are left out:
train/loop.py, train/periodic.py), so step seconds = (tokens - previous tokens) / tokens_per_s.
Generated tokens per step = mean completion length x 32 (TRL's completions/mean_length,
lmforge's completion_length; both count the stop token). Medians leave out step 1 (warm-up).
lmforge evaluates (1 batch) and saves once, after its last step, untimed.

Differences left: lmforge's adapters sit on its fused attn.qkv (q;k;v) and ffn.up (gate;up)
matrices, PEFT's on q, k, v, gate and up separately (rank 16 each, so more trainable
parameters; both counts are in the output); TRL also computes per-token entropies in its loss
forward; transformers' generate vs lmforge's own; each side shuffles the prompts with its own
seed, so the steps see different prompts (same distribution) and completion lengths.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPTS, GROUP = 4, 8
_SIGN = r"(?<![\w)])[-\u2212]"
_PLAIN = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(rf"(?:{_SIGN})?\d+\s*/\s*\d+(?![\d.])|(?:{_SIGN})?{_PLAIN}")
_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?[\d.]+)\s*\}\{\s*(-?[\d.]+)\s*\}")


def last_number(text: str) -> float | None:
    """As lmforge's finetune/rewards.py: the last number of the last \\boxed{...}, else of the
    text ("1,000." is 1000; "5-3" is 5 and 3; 3/4 and \\frac{3}{4} are 0.75)."""
    start, depth = text.rfind("\\boxed{"), 0
    for i in range(start + 7, len(text)) if start >= 0 else ():
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:  # its closing brace; an unclosed \boxed{ reads the whole text
            text = text[start + 7 : i]
            break
    found = [m[0] for m in _NUMBER.finditer(_FRAC.sub(lambda m: f" {m[1]}/{m[2]} ", text))]
    value = found[-1].replace("\u2212", "-").replace(",", "").replace(" ", "") if found else ""
    try:
        top, _, bottom = value.partition("/")
        return float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        return None


def number_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """TRL reward function: conversational completions are [{"role", "content"}] lists."""
    got = [last_number(c[-1]["content"] if isinstance(c, list) else c) for c in completions]
    return [
        float(g is not None and math.isfinite(g) and math.isclose(g, a, rel_tol=1e-6, abs_tol=1e-9))
        for g, a in zip(got, map(float, answer), strict=True)
    ]


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [s["seconds"] for s in steps[1:]] or [s["seconds"] for s in steps]
    return {"median_step_s": statistics.median(timed), "steps": steps}


def run_trl(args: argparse.Namespace, bf16: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in (args.data / "train.jsonl").read_text().splitlines()]
    chats = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows]  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.generation_config.eos_token_id = [2, 0]  # lmforge's stops: <|im_end|>, <|endoftext|>
    steps: list[dict[str, Any]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, *_: Any, **__: Any) -> None:
            steps.append({"step": state.global_step, "seconds": time.perf_counter() - self.start})

        def on_log(self, _args: Any, _state: Any, _c: Any, logs: Any = None, **_: Any) -> None:
            if steps and logs and "completions/mean_length" in logs:
                tokens = logs["completions/mean_length"] * PROMPTS * GROUP
                steps[-1] |= {"gen_tokens": tokens, "reward": logs.get("reward")}
                print(json.dumps({"side": "trl", **steps[-1]}), flush=True)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="grpo-trl-"), max_steps=args.steps,
        per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        num_generations=GROUP, max_completion_length=64, temperature=0.8, top_p=1.0,
        beta=0.0, epsilon=0.2, epsilon_high=0.28, num_iterations=1, loss_type="dapo",
        scale_rewards=False, learning_rate=3e-4, adam_beta2=0.95, weight_decay=0.0,
        max_grad_norm=1.0, warmup_steps=3, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 3e-5}, gradient_checkpointing=False, bf16=bf16,
        use_cpu=True, use_vllm=False, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", seed=args.seed,
    )  # fmt: skip
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"
    )

    class Trainer(GRPOTrainer):
        def _generate_single_turn(self, *a: Any, **k: Any) -> Any:  # TRL 1.16's sampling call
            if not args.trl_autocast_generate:
                return super()._generate_single_turn(*a, **k)  # stock TRL: fp32 generate
            with self.accelerator.autocast():  # bf16 sampling, as lmforge's under train.dtype
                return super()._generate_single_turn(*a, **k)

    trainer = Trainer(
        model=model, reward_funcs=[number_reward], args=config,
        train_dataset=Dataset.from_list(chats), peft_config=lora, callbacks=[StepTimer()],
        processing_class=AutoTokenizer.from_pretrained(args.model),
    )  # fmt: skip
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    return {"trainable_params": trainable} | summarize(steps)


def run_lmforge(args: argparse.Namespace, bf16: bool) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix="grpo-lmforge-")) / "run"
    command = [
        args.lmforge, "finetune", "grpo", "--config", "grpo-smollm2",
        "--train.max_steps", str(args.steps), "--train.log_interval", "1",
        "--train.no_eval_at_start", "--train.eval_interval", "1000",
        "--train.eval_batches", "1", "--train.checkpoint_interval", "1000",
        "--train.seed", str(args.seed), "--train.dtype", "bf16" if bf16 else "fp32",
        "--finetune.data", str(args.data.resolve() / "train.jsonl"), "--train.out_dir", str(out_dir),
        "--finetune.val_data", str(args.data.resolve() / "test.jsonl"),
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    run = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    (out_dir.parent / "lmforge.log").write_text(run.stdout)
    if run.returncode:
        sys.exit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stdout[-4000:]}")
    trainable = re.search(r"([\d,]+) trainable parameters", run.stdout)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps, previous = [], 0
    for r in (r for r in records if "tokens_per_s" in r):
        step = {"step": r["step"], "seconds": (r["tokens"] - previous) / r["tokens_per_s"]}
        step |= {"gen_tokens": r["completion_length"] * PROMPTS * GROUP}
        step |= {"reward": r.get("reward/total/mean"), "gen_seconds": r.get("gen_seconds")}
        previous = r["tokens"]
        steps.append(step)
        print(json.dumps({"side": "lmforge", **step}), flush=True)
    count = int(trainable[1].replace(",", "")) if trainable else None
    return {"trainable_params": count, "out_dir": str(out_dir)} | summarize(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", choices=["trl", "lmforge", "both"], default="both")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per side")
    parser.add_argument("--model", required=True, help="the HF model dir, for TRL's side")
    parser.add_argument("--data", type=Path, default=Path("data/arith"), help="train/test.jsonl")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--lmforge", default=str(REPO / ".venv" / "bin" / "lmforge"))
    parser.add_argument("--out", type=Path, default=Path("grpo_trl.json"))
    parser.add_argument(
        "--trl_autocast_generate",
        action="store_true",
        help="sample under the bf16 autocast too (stock TRL generates in fp32; lmforge in bf16)",
    )
    args = parser.parse_args()
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    result: dict[str, Any] = {"steps": args.steps, "dtype": "bf16" if bf16 else "fp32"}
    result |= {"threads": args.threads, "python": sys.version.split()[0]}
    result["trl_generate_autocast"] = bf16 and args.trl_autocast_generate
    if args.side in ("lmforge", "both"):
        result["lmforge"] = run_lmforge(args, bf16)
    if args.side in ("trl", "both"):
        import peft
        import torch
        import transformers
        import trl

        result["versions"] = {m.__name__: m.__version__ for m in (torch, trl, transformers, peft)}
        result["trl"] = run_trl(args, bf16)
    if args.side == "both":
        result["trl_over_lmforge"] = result["trl"]["median_step_s"] / result["lmforge"]["median_step_s"]  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("trl", "lmforge")}))
    for side in ("lmforge", "trl"):
        if side in result:
            print(f"{side}: median step {result[side]['median_step_s']:.2f} s (without step 1)")


if __name__ == "__main__":
    main()
