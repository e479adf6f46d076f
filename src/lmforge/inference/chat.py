"""`lmforge chat`: an interactive terminal conversation through the model's chat template."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from lmforge.errors import ConfigError
from lmforge.inference.decoding import should_compile
from lmforge.inference.generate import generate
from lmforge.inference.language_model import open_for_decoding
from lmforge.inference.options import DecodeOptions
from lmforge.inference.sample import StreamPrinter
from lmforge.sampling_validation import check_sampling_options
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat import encode_chat

HELP = "commands: /reset starts over, /exit (or Ctrl-D) quits"


def fit_conversation(
    tokenizer: Tokenizer, messages: list[dict], template: str | None, budget: int
) -> list[int]:
    """Prompt ids for the conversation, dropping the oldest turns (never the system prompt or
    the newest user turn) until it leaves `budget` tokens of room in the context."""
    kept = list(messages)
    while True:
        ids = encode_chat(tokenizer, kept, template)
        if len(ids) <= budget:
            return ids
        system = 1 if kept and kept[0]["role"] == "system" else 0
        if len(kept) - system <= 1:
            raise ConfigError(
                f"the message is {len(ids)} tokens, more than the model's context allows "
                f"({budget} with room for the reply); write a shorter message or lower --max_new_tokens"
            )
        del kept[system]


def chat(
    checkpoint: str,
    options: DecodeOptions,
    *,
    system: str | None = None,
    template: str | None = None,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict]:
    """Run the conversation until /exit or end of input; returns the messages."""
    out = out or sys.stdout
    check_sampling_options(
        options.max_new_tokens, options.temperature, options.top_k, options.top_p
    )
    model, tokenizer, _, weights = open_for_decoding(
        checkpoint, options.device, options.dtype, options.quantize
    )
    encode_chat(tokenizer, [{"role": "user", "content": "hi"}], template)  # fail early
    context = model.config.context_length
    if options.max_new_tokens >= context:
        raise ConfigError(
            f"--max_new_tokens {options.max_new_tokens} leaves no room for the conversation in "
            f"the context of {context} tokens; lower it"
        )
    system_turn = [{"role": "system", "content": system}] if system else []
    messages = list(system_turn)
    config = options.sampling_config(tokenizer.stop_ids)
    compile = should_compile(options.compile, options.max_new_tokens)
    out.write(f"chatting with {checkpoint}, {weights} ({HELP})\n")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return messages
        if text in ("/exit", "/quit"):
            return messages
        if text == "/reset":
            messages = list(system_turn)
            out.write("(conversation cleared)\n")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        ids = fit_conversation(tokenizer, messages, template, context - config.max_new_tokens)
        out.write("assistant> ")
        printer = StreamPrinter(tokenizer, out)
        reply_ids = generate(model, [ids], config, on_tokens=printer, compile=compile)[0]
        reply_ids = [i for i in reply_ids if i not in tokenizer.stop_ids]
        reply = tokenizer.decode(reply_ids)
        out.write(reply[printer.printed :] + "\n")
        messages.append({"role": "assistant", "content": reply.strip()})
