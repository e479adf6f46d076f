"""`lmforge sample`: load a checkpoint, generate for one or more prompts, stream a single one."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from lmforge.inference.decoding import should_compile
from lmforge.inference.language_model import encode_prompt, load  # what lmforge.load is
from lmforge.inference.options import DecodeOptions
from lmforge.sampling_validation import check_sampling_options
from lmforge.tokenizer import Tokenizer


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


def sample(
    checkpoint: str,
    prompts: Sequence[str],
    options: DecodeOptions,
    *,
    chat: bool = False,
    template: str | None = None,
    stop_at_end_of_text: bool = True,
) -> list[str]:
    """Generate for every prompt in one batch; a single prompt streams to stdout as it decodes.
    chat: wrap each prompt in the chat template (`template`, default the tokenizer's own)."""
    check_sampling_options(
        options.max_new_tokens, options.temperature, options.top_k, options.top_p, prompts
    )
    model = load(checkpoint, options.device, options.dtype, options.quantize)
    tokenizer = model.tokenizer
    prompt_ids = [encode_prompt(tokenizer, p, chat, template) for p in prompts]
    config = options.sampling_config(tokenizer.stop_ids if stop_at_end_of_text else ())
    streaming = len(prompt_ids) == 1
    printer = StreamPrinter(tokenizer) if streaming else None
    if streaming:
        sys.stdout.write(prompts[0])
    compile = should_compile(options.compile, len(prompt_ids) * options.max_new_tokens)
    outputs = model.generate_ids(prompt_ids, config, on_tokens=printer, compile=compile)
    texts = [tokenizer.decode(ids) for ids in outputs]
    if streaming:
        sys.stdout.write(texts[0][printer.printed :] + "\n")
    else:
        for index, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            print(f"--- sample {index + 1} ---\n{prompt}{text}")
    return texts
