"""Fixtures for the finetuning tests: a tiny random Llama checkpoint with a ChatML tokenizer,
small instruction and preference files in every supported format, and run configs.

Not a conftest.py (see tests/interop/hf_fixtures.py): test modules import from here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# The GGUF fixtures (tiny tokenizer and models, the real SmolLM2 file) live beside the interop
# tests; import them by path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from gguf_fixtures import (  # noqa: E402
    random_model,
    smollm2_gguf,  # noqa: F401 (fixture, re-exported)
    tiny_llama,
    tiny_tokenizer,
)

from lmforge.checkpoint.directory import save_checkpoint  # noqa: E402

WORDS = [
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "fox",
    "sun",
    "moon",
    "tree",
    "river",
    "stone",
    "cloud",
]


def alpaca_records(count: int) -> list[dict]:
    """Instruction -> answer pairs with a learnable pattern (the answer repeats the input)."""
    records = []
    for i in range(count):
        a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
        records.append(
            {"instruction": "Repeat the words.", "input": f"{a} {b}", "output": f"{a} {b} {a}"}
        )
    return records


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def preference_records(count: int) -> list[dict]:
    records = []
    for i in range(count):
        a, b = WORDS[i % len(WORDS)], WORDS[(5 * i + 2) % len(WORDS)]
        records.append({
            "chosen": f"\n\nHuman: say {a}\n\nAssistant: {a} {a}",
            "rejected": f"\n\nHuman: say {a}\n\nAssistant: {b} no",
        })  # fmt: skip
    return records


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A random 2-layer Llama (std-0.2 weights) with the ChatML tiny tokenizer, as a checkpoint."""
    tokenizer = tiny_tokenizer()
    config = tiny_llama(tokenizer.vocab_size, tied=False, context_length=128)
    model = random_model(config)
    directory = tmp_path_factory.mktemp("base") / "ckpt"
    return save_checkpoint(directory, model, tokenizer, {"step": 0})


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory) -> Path:
    return write_json(tmp_path_factory.mktemp("sft") / "alpaca.json", alpaca_records(48))


@pytest.fixture(scope="session")
def preference_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("dpo") / "pairs.jsonl", preference_records(40))


def finetune_toml(path: Path, method: str, data: Path, out_dir: str, **sections) -> Path:
    """A seconds-long finetune config: fp32 CPU, seq_len 64, 2 x 4 examples per step."""
    train = {
        "out_dir": out_dir, "max_steps": 6, "seq_len": 64, "micro_batch_size": 4,
        "batch_tokens": 512, "dtype": "fp32", "device": "cpu", "peak_tflops": 1.0,
        "log_interval": 1, "eval_interval": 3, "eval_batches": 2, "checkpoint_interval": 3,
        "keep_checkpoints": 5,
    } | sections.pop("train", {})  # fmt: skip
    tables = {
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1} | sections.pop("optim", {}),
        "train": train,
        "logging": {"progress_bar": False},
        "finetune": {"method": method, "data": str(data)} | sections.pop("finetune", {}),
    }
    assert not sections, sections
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lora = table.pop("lora", None)
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        if lora is not None:
            lines.append(f"[{name}.lora]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in lora.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
