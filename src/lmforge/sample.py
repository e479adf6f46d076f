"""`lmforge sample`: load a checkpoint, generate for one or more prompts, stream a single one."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

from lmforge.api import encode_prompt, load  # the Python API's loader (docs/python-api.md)
from lmforge.generate import SamplingConfig
from lmforge.inference import should_compile
from lmforge.sampling_validation import check_sampling_options
from lmforge.tokenizer import Tokenizer

if TYPE_CHECKING:
    from lmforge.cli import SampleCommand


class StreamPrinter:
    """Prints decoded text as tokens arrive, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, out=None):
        # Look sys.stdout up now, not at import: it may have been redirected since.
        self.tokenizer, self.out = tokenizer, out if out is not None else sys.stdout
        self.ids: list[int] = []
        self.printed = 0

    def __call__(self, token: torch.Tensor) -> None:
        self.ids.append(int(token[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.out.write(text[self.printed :])
        self.out.flush()
        self.printed = len(text)


def sample(command: SampleCommand) -> list[str]:
    check_sampling_options(
        command.max_new_tokens, command.temperature, command.top_k, command.top_p, command.prompt
    )
    model = load(command.checkpoint, command.device, command.dtype, command.quantize)
    tokenizer = model.tokenizer
    prompts = [encode_prompt(tokenizer, p, command.chat, command.template) for p in command.prompt]
    config = SamplingConfig(
        max_new_tokens=command.max_new_tokens,
        temperature=command.temperature,
        top_k=command.top_k,
        top_p=command.top_p,
        seed=command.seed,
        stop_tokens=tokenizer.stop_ids if command.stop_at_end_of_text else (),
    )
    streaming = len(prompts) == 1
    printer = StreamPrinter(tokenizer) if streaming else None
    if streaming:
        sys.stdout.write(command.prompt[0])
    compile = should_compile(command.compile, len(prompts) * command.max_new_tokens)
    outputs = model.generate_ids(prompts, config, on_tokens=printer, compile=compile)
    texts = [tokenizer.decode(ids) for ids in outputs]
    if streaming:
        sys.stdout.write(texts[0][printer.printed :] + "\n")
    else:
        for index, (prompt, text) in enumerate(zip(command.prompt, texts, strict=True)):
            print(f"--- sample {index + 1} ---\n{prompt}{text}")
    return texts
