"""The decode settings `sample` and `chat` share: how to load the weights for decoding and how
to sample. A plain dataclass, so the functions take no command-line class; the CLI builds it from
its commands (cli.py `decode_options`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.inference.generate import SamplingConfig


@dataclass
class DecodeOptions:
    max_new_tokens: int = 200
    temperature: float = 0.8
    """0 is greedy decoding."""
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    """auto, fp32 or bf16 (auto: bf16 on a GPU, fp32 on a CPU)."""
    quantize: str = "auto"
    """auto, none, int8 or int4 (auto keeps an imported GGUF's precision)."""
    compile: str = "auto"
    """auto, on or off: torch.compile the one-token decode step."""

    def sampling_config(self, stop_tokens: Sequence[int] = ()) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            stop_tokens=stop_tokens,
        )
