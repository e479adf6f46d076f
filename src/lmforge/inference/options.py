"""The decode settings `sample`, `chat` and `serve` share: how to load the weights for decoding
and how to sample. Plain dataclasses, so the functions take no command-line class; the
`lmforge sample` and `lmforge chat` commands (inference/commands.py) nest `DecodeOptions` as
their flags. No torch here: the command line imports this module to list its flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Dtype = Literal["auto", "fp32", "bf16"]
Quantize = Literal["auto", "none", "int8", "int4"]
Compile = Literal["auto", "on", "off"]


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8
    """0 means greedy."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_tokens: tuple[int, ...] = ()
    """Stop a row when it emits any of these (e.g. end-of-text, a chat end-of-turn token)."""


@dataclass
class DecodeOptions:
    max_new_tokens: int = 200
    temperature: float = 0.8
    """0 is greedy decoding."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: Dtype = "auto"
    """auto: bf16 on a GPU, fp32 on a CPU (quantized layers still multiply in bf16)."""
    quantize: Quantize = "auto"
    """Weight-only int8/int4 for CPU decoding; auto keeps an imported GGUF's precision (Q4_1 ->
    int4, Q8_0 -> int8) and leaves other checkpoints unquantized."""
    compile: Compile = "auto"
    """torch.compile the one-token decode step; auto compiles when a call generates >= 1024
    tokens (compiling takes ~6-30 s on a CPU)."""

    def sampling_config(self, stop_tokens: Sequence[int] = ()) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            stop_tokens=stop_tokens,
        )
