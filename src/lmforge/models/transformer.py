"""One configurable decoder-only transformer covering GPT-2 and Llama 2/3/3.1 (and Qwen2-style qkv bias).

Shapes in comments: B batch, T new tokens, S attended positions (cache + new), H query heads,
KV key/value heads, D head_dim, C model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.config import ModelConfig
from lmforge.models.kv_cache import KVCache
from lmforge.models.positions import apply_rope, rope_tables


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.dim, eps=config.norm_eps)
    return nn.LayerNorm(config.dim, eps=config.norm_eps, bias=config.bias)


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask (B, 1, T, T): True where query t may attend to key s."""
    T = document_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    return (same & causal).unsqueeze(1)


class Attention(nn.Module):
    """Causal self-attention with grouped-query heads (MHA when KV == H, MQA when KV == 1)."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_heads
        self.num_kv_heads = config.kv_heads
        self.head_dim = config.attn_head_dim
        self.use_rope = config.position == "rope"
        self.dropout = config.dropout
        qkv_width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        # One fused projection: a single large matmul is faster than three small ones.
        self.qkv = nn.Linear(config.dim, qkv_width, bias=config.bias or config.qkv_bias)
        self.out = nn.Linear(self.num_heads * self.head_dim, config.dim, bias=config.bias)

    def forward(self, x, cos, sin, attn_mask=None, is_causal=True, cache: KVCache | None = None):
        B, T, _ = x.shape
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, KV, S, D)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """GELU MLP (GPT-2) or SwiGLU (Llama); SwiGLU's gate and up projections are fused."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.hidden_dim
        self.up = nn.Linear(config.dim, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.dim, bias=config.bias)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.down(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer_index)
        self.ffn_norm = make_norm(config)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, attn_mask=None, is_causal=True, cache=None):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, attn_mask, is_causal, cache))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        assert config.vocab_size is not None, "resolve vocab_size before building the model"
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        if config.position == "learned":
            self.position_embedding = nn.Embedding(config.context_length, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self._rope_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if not self.token_embedding.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 / Llama init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith("attn.out") or name.endswith("ffn.down")
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def rope(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Computed lazily (not a buffer) so meta-device models and state dicts stay free of it.
        if self._rope_cache is None or self._rope_cache[0].device != device:
            self._rope_cache = rope_tables(self.config, device)
        return self._rope_cache

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T).

        Without a cache this is plain causal attention over the T tokens. With a cache the new
        tokens attend to everything cached so far (respecting the cache's left padding), and their
        keys/values are appended. `positions` (B, T) overrides the default position ids
        (cache length + arange(T)); generation passes them for left-padded rows.
        `document_ids` (B, T) packs several documents per row: a token attends only to earlier
        tokens of its own document (pass per-document `positions` too; see data.loader).
        """
        B, T = tokens.shape
        if document_ids is not None and cache is not None:
            raise ValueError("document_ids (packed training) cannot be combined with a KV cache")
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the model's context length "
                f"{self.config.context_length}"
            )
        if positions is None:
            positions = torch.arange(start, start + T, device=tokens.device)
        x = self.token_embedding(tokens)  # (B, T, C)
        if self.config.position == "learned":
            x = x + self.position_embedding(positions)
        x = self.dropout(x)
        cos = sin = None
        if self.config.position == "rope":
            cos, sin = self.rope(tokens.device)
            cos, sin = cos[positions], sin[positions]  # (T, D) or (B, T, D)
            if cos.dim() == 3:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        attn_mask, is_causal = None, True
        if cache is not None:
            attn_mask, is_causal = cache.attention_mask(T)
        elif document_ids is not None:
            attn_mask, is_causal = document_mask(document_ids), False
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask, is_causal, cache)
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.final_norm(x))
