"""The LoRA settings (`[finetune.lora]`), apart from the layers in lora.py so that the run config
and the command line read them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import ConfigError


@dataclass
class LoraConfig:
    """Low-rank adapters (LoRA): W x + (alpha / rank) * B A dropout(x), with only A and B trained."""

    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attn.qkv", "attn.out")
    """Linear layers to adapt, by module name: globs over the full name (`layers.*.attn.qkv`),
    where a pattern also matches as a dotted suffix (`attn.qkv`, `ffn.up`), or `re:<regex>`."""

    def __post_init__(self) -> None:
        # TOML gives a list; keep a tuple so that a dumped and reloaded config compares equal.
        if not isinstance(self.targets, list | tuple) or not all(
            isinstance(t, str) for t in self.targets
        ):
            raise ConfigError(
                f"finetune.lora.targets must be a list of strings, got {self.targets!r}"
            )
        self.targets = tuple(self.targets)
