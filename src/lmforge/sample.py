"""`lmforge sample`: load a checkpoint, generate for one or more prompts, stream a single one."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

from lmforge.generate import SamplingConfig, generate
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import load_model
from lmforge.train.runtime import pick_device

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


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Prompt ids with the model's start marker: BOS where the tokenizer asks for one, else
    end-of-text (lmforge's pretraining puts it before every document)."""
    start = (
        tokenizer.bos_id if tokenizer.add_bos and tokenizer.bos_id is not None else tokenizer.eot_id
    )
    return [start, *tokenizer.encode(prompt)]


def sample(command: SampleCommand) -> list[str]:
    device = pick_device(command.device)
    model, tokenizer, _ = load_model(command.checkpoint, device)
    if command.dtype == "bf16":
        model = model.to(torch.bfloat16)
    prompts = [encode_prompt(tokenizer, p) for p in command.prompt]
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
    outputs = generate(model, prompts, config, on_tokens=printer)
    texts = [tokenizer.decode(ids) for ids in outputs]
    if streaming:
        sys.stdout.write(texts[0][printer.printed :] + "\n")
    else:
        for index, (prompt, text) in enumerate(zip(command.prompt, texts, strict=True)):
            print(f"--- sample {index + 1} ---\n{prompt}{text}")
    return texts
