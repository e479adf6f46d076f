"""The options of `lmforge sample` and `lmforge chat` (the command line's dataclasses). Their
decode flags are one `DecodeOptions`, flattened (`--max_new_tokens`, `--dtype`, ...); the CLI
passes `command.decode` to `sample` and `chat`. No torch here, so `lmforge --help` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import tyro

from lmforge.inference.options import DecodeOptions


def chat_decode_defaults() -> DecodeOptions:
    """Chat replies are longer and greedy by default (sample's are 200 tokens at temperature 0.8)."""
    return DecodeOptions(max_new_tokens=256, temperature=0.0)


@dataclass
class SampleCommand:
    """Generate text from a checkpoint."""

    checkpoint: str
    """An lmforge checkpoint or run directory (its last checkpoint), a .gguf file or a Hugging
    Face model directory."""
    prompt: tuple[str, ...] = ("",)
    """One or more prompts, decoded as one batch."""
    stop_at_end_of_text: bool = True
    """Stop a sample at the tokenizer's end-of-text or end-of-turn tokens."""
    chat: bool = False
    """Wrap each prompt in the chat template as a user message (for instruction-tuned models)."""
    template: str | None = None
    """Chat template: a built-in name (chatml, llama3, llama2, alpaca) or Jinja source;
    default: the tokenizer's own."""
    # name="": the decode fields are top-level flags (--temperature, not --decode.temperature)
    decode: Annotated[DecodeOptions, tyro.conf.arg(name="")] = field(default_factory=DecodeOptions)


@dataclass
class ChatCommand:
    """Chat with a model in the terminal, through its chat template, streaming the replies."""

    checkpoint: str
    """An lmforge checkpoint or run directory (its last checkpoint), a .gguf file or a Hugging
    Face model directory."""
    system: str | None = None
    """System prompt put at the start of the conversation."""
    template: str | None = None
    """Chat template: a built-in name (chatml, llama3, llama2, alpaca) or Jinja source;
    default: the tokenizer's own."""
    decode: Annotated[DecodeOptions, tyro.conf.arg(name="")] = field(
        default_factory=chat_decode_defaults
    )
