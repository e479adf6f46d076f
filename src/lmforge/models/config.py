"""The model config: one flat dataclass that describes every decoder lmforge builds.

Flat (no nested optional sections) so that every field is a plain `--model.x` flag and a plain
TOML key. GPT-2 and Llama differ only in the values of these fields; see `presets.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lmforge.errors import ConfigError


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only transformer."""

    preset: str | None = None
    """Named starting point (see `lmforge presets`); the other keys given override it."""
    vocab_size: int | None = None
    """Embedding rows; None takes the tokenizer's vocab rounded up to a multiple of 64."""
    context_length: int = 256
    """Longest sequence the model attends over (and the learned-position table size)."""
    dim: int = 256
    """Residual stream width."""
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention: num_heads is MHA, 1 is MQA, None means num_heads."""
    head_dim: int | None = None
    """Per-head width; None means dim // num_heads."""
    ffn_dim: int | None = None
    """Hidden width of the feed-forward block; None means 4*dim (gelu) or Llama's 8/3*dim rule (swiglu)."""
    ffn_multiple_of: int = 64
    """Llama rounds its derived SwiGLU width up to a multiple of this."""
    mlp: Literal["gelu", "swiglu"] = "swiglu"
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    position: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "llama3"] = "none"
    """Llama-3.1 frequency scaling for long context."""
    rope_scaling_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_context_length: int = 8192
    bias: bool = False
    """Biases on every linear layer and norm (GPT-2)."""
    qkv_bias: bool = False
    """Biases on the query/key/value projections only (Qwen2)."""
    tie_embeddings: bool = False
    """Share the token embedding with the LM head."""
    dropout: float = 0.0
    init_std: float = 0.02

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim:
            return self.ffn_dim
        if self.mlp == "gelu":
            return 4 * self.dim
        hidden = int(2 * (4 * self.dim) / 3)
        return self.ffn_multiple_of * -(-hidden // self.ffn_multiple_of)

    def validate(self) -> None:
        """Raise ConfigError for shapes that cannot build, before any tensor is allocated."""
        for name in ("context_length", "dim", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ConfigError(f"model.vocab_size must be positive, got {self.vocab_size}")
        if self.head_dim is None and self.dim % self.num_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} does not divide model.dim={self.dim}; "
                f"pick a head count that divides the width (e.g. {_divisor_near(self.dim, self.num_heads)})"
            )
        if self.num_kv_heads is not None and (
            self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads
        ):
            raise ConfigError(
                f"model.num_kv_heads={self.num_kv_heads} must be positive and divide "
                f"model.num_heads={self.num_heads}"
            )
        if self.position == "rope" and self.attn_head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.attn_head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def shape_dict(self) -> dict:
        """The fields that determine parameter shapes (for resume/init compatibility checks)."""
        keys = ("vocab_size", "dim", "num_layers", "num_heads", "kv_heads", "attn_head_dim")
        shape = {k: getattr(self, k) for k in keys}
        shape |= {"hidden_dim": self.hidden_dim, "mlp": self.mlp, "norm": self.norm}
        shape |= {"position": self.position, "bias": self.bias, "qkv_bias": self.qkv_bias}
        shape |= {"tie_embeddings": self.tie_embeddings}
        if self.position == "learned":
            shape["context_length"] = self.context_length
        return shape

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _divisor_near(width: int, heads: int) -> int:
    divisors = [d for d in range(1, width + 1) if width % d == 0]
    return min(divisors, key=lambda d: abs(d - heads))
