"""`lmforge chat`: an interactive terminal conversation through the model's chat template."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from lmforge.checkpoint.directory import load_model
from lmforge.errors import ConfigError
from lmforge.generate import SamplingConfig, generate
from lmforge.inference import prepare_for_decoding, should_compile
from lmforge.runtime import pick_device
from lmforge.sample import StreamPrinter
from lmforge.sampling_validation import check_sampling_options
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat import encode_chat

if TYPE_CHECKING:
    from lmforge.cli import ChatCommand

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
    command: ChatCommand,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict]:
    """Run the conversation until /exit or end of input; returns the messages."""
    out = out or sys.stdout
    check_sampling_options(
        command.max_new_tokens, command.temperature, command.top_k, command.top_p
    )
    device = pick_device(command.device)
    model, tokenizer, directory = load_model(command.checkpoint, device)
    model, weights = prepare_for_decoding(model, directory, command.dtype, command.quantize)
    encode_chat(tokenizer, [{"role": "user", "content": "hi"}], command.template)  # fail early
    context = model.config.context_length
    if command.max_new_tokens >= context:
        raise ConfigError(
            f"--max_new_tokens {command.max_new_tokens} leaves no room for the conversation in "
            f"the context of {context} tokens; lower it"
        )
    system = [{"role": "system", "content": command.system}] if command.system else []
    messages = list(system)
    config = SamplingConfig(
        max_new_tokens=command.max_new_tokens,
        temperature=command.temperature,
        top_k=command.top_k,
        top_p=command.top_p,
        seed=command.seed,
        stop_tokens=tokenizer.stop_ids,
    )
    compile = should_compile(command.compile, command.max_new_tokens)
    out.write(f"chatting with {command.checkpoint}, {weights} ({HELP})\n")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return messages
        if text in ("/exit", "/quit"):
            return messages
        if text == "/reset":
            messages = list(system)
            out.write("(conversation cleared)\n")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        ids = fit_conversation(
            tokenizer, messages, command.template, context - config.max_new_tokens
        )
        out.write("assistant> ")
        printer = StreamPrinter(tokenizer, out)
        reply_ids = generate(model, [ids], config, on_tokens=printer, compile=compile)[0]
        reply_ids = [i for i in reply_ids if i not in tokenizer.stop_ids]
        reply = tokenizer.decode(reply_ids)
        out.write(reply[printer.printed :] + "\n")
        messages.append({"role": "assistant", "content": reply.strip()})
