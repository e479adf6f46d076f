"""`lmforge chat` and `lmforge sample --chat` on a tiny random model with a chat template."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import assert_one_line_error, make_text, run_cli

from lmforge.checkpoint.directory import save_checkpoint
from lmforge.errors import ConfigError
from lmforge.inference.chat import chat, fit_conversation
from lmforge.inference.options import DecodeOptions
from lmforge.inference.sample import encode_prompt, sample
from lmforge.models.presets import model_preset
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import HuggingFaceTokenizer, encode_chat


def make_checkpoint(directory, chat_template: str | None):
    tokenizer = HuggingFaceTokenizer.train([make_text(1, 100)], vocab_size=300)
    tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny-llama", vocab_size=320, context_length=256))
    save_checkpoint(directory, model, tokenizer, {"step": 0})
    return directory, tokenizer


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt", "chatml")


def scripted(lines):
    answers = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    return read


def test_chat_keeps_the_conversation_and_resets(chat_checkpoint):
    directory, _ = chat_checkpoint
    out = io.StringIO()
    options = DecodeOptions(max_new_tokens=8, temperature=0.0)
    messages = chat(
        str(directory),
        options,
        system="be brief",
        read=scripted(["hello there", "and again", "/reset", "fresh"]),
        out=out,
    )
    # After /reset only the system prompt survives, then one new exchange.
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "fresh"
    assert out.getvalue().count("assistant> ") == 3
    assert "(conversation cleared)" in out.getvalue()


def test_chat_reply_is_the_greedy_continuation_of_the_template(chat_checkpoint):
    """The streamed reply equals decoding the chat-template prompt directly (same model, greedy)."""
    directory, tokenizer = chat_checkpoint
    out = io.StringIO()
    options = DecodeOptions(max_new_tokens=6, temperature=0.0)
    messages = chat(str(directory), options, read=scripted(["what is two plus two"]), out=out)
    expected = sample(
        str(directory),
        ["what is two plus two"],
        DecodeOptions(max_new_tokens=6, temperature=0.0),
        chat=True,
    )[0]
    assert messages[-1]["content"] == expected.strip()


def test_fit_conversation_drops_oldest_turns_but_keeps_system(chat_checkpoint):
    _, tokenizer = chat_checkpoint
    messages = [{"role": "system", "content": "sys"}]
    for turn in range(12):
        messages += [
            {"role": "user", "content": f"question {turn} " + "word " * 10},
            {"role": "assistant", "content": "answer " * 10},
        ]
    messages.append({"role": "user", "content": "last question"})
    full = encode_chat(tokenizer, messages, None)
    budget = len(full) // 3
    ids = fit_conversation(tokenizer, messages, None, budget)
    assert len(ids) <= budget
    text = tokenizer.decode(ids, skip_special=False)
    assert text.startswith("<|im_start|>system\nsys") and "last question" in text
    assert "question 0 " not in text
    with pytest.raises(ConfigError, match="more than the model's context allows"):
        fit_conversation(tokenizer, [{"role": "user", "content": "word " * 200}], None, 10)


def test_sample_chat_wraps_the_prompt_in_the_template(chat_checkpoint):
    _, tokenizer = chat_checkpoint
    ids = encode_prompt(tokenizer, "hi", chat=True)
    assert tokenizer.decode(ids, skip_special=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert encode_prompt(tokenizer, "hi")[0] == tokenizer.eot_id  # plain: document start


def test_chat_cli_end_to_end_and_missing_template(tmp_path, chat_checkpoint):
    directory, _ = chat_checkpoint
    done = run_cli("chat", "--checkpoint", str(directory), "--max_new_tokens", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # stdin is empty: the chat ends cleanly
    bare, _ = make_checkpoint(tmp_path / "bare", None)
    failed = run_cli("chat", "--checkpoint", str(bare), cwd=tmp_path)
    assert failed.returncode == 2
    assert_one_line_error(failed.stderr, "chat template")
