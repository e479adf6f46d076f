"""`lmforge finetune` bad input: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations

import json

from conftest import assert_one_line_error, run_cli
from finetune_fixtures import alpaca_file, tiny_base, write_jsonl  # noqa: F401


def finetune(tmp_path, method: str, data, *flags: str):
    return run_cli(
        "finetune", method, "--finetune.data", str(data), "--train.out_dir", "out",
        "--train.device", "cpu", "--train.seq_len", "64", "--train.micro_batch_size", "2",
        "--train.batch_tokens", "128", "--train.max_steps", "1", "--logging.no_progress_bar",
        *flags, cwd=tmp_path,
    )  # fmt: skip


def test_unknown_data_format(tmp_path, tiny_base):  # noqa: F811
    data = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "a", "completion": "b"}])
    result = finetune(tmp_path, "sft", data, "--init_from", str(tiny_base))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "unknown data format", "alpaca", "sharegpt", "messages")


def test_conversation_without_assistant_turn(tmp_path, tiny_base):  # noqa: F811
    messages = [{"messages": [{"role": "user", "content": "hello?"}]}]
    data = write_jsonl(tmp_path / "m.jsonl", messages * 3)
    result = finetune(tmp_path, "sft", data, "--init_from", str(tiny_base))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "record 0 has no assistant turn")


def test_lora_target_that_matches_nothing(tmp_path, tiny_base, alpaca_file):  # noqa: F811
    result = finetune(
        tmp_path, "sft", alpaca_file, "--init_from", str(tiny_base),
        "--finetune.lora.enabled", "--finetune.lora.targets", "attn.q_proj",
    )  # fmt: skip
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "'attn.q_proj' matches no linear layer", "attn.qkv")


def test_teacher_student_vocab_mismatch(tmp_path, tiny_base, alpaca_file):  # noqa: F811
    vocab = json.loads((tiny_base / "config.json").read_text())["vocab_size"]
    result = finetune(
        tmp_path, "distill", alpaca_file, "--finetune.teacher", str(tiny_base),
        "--model.preset", "tiny-llama", "--model.vocab_size", str(vocab + 64),
    )  # fmt: skip
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "vocabularies differ", str(vocab + 64), str(vocab))


def test_sft_without_starting_weights(tmp_path, alpaca_file):  # noqa: F811
    result = finetune(tmp_path, "sft", alpaca_file)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "needs starting weights", "--init_from")
