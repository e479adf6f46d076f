"""One configurable decoder-only transformer: GPT-2, Llama 2/3/3.1, Qwen2, Mistral (sliding
window), Mixtral and DeepSeek-V2/V3 (MLA + MoE), and heterogeneous stacks where each layer has its
own attention and FFN (models/config.py layer_configs).

Shapes in comments: B batch, T new tokens, S attended positions (cache + new), C model width.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from lmforge.models.attention import Attention, LatentAttention
from lmforge.models.config import ModelConfig, layer_configs
from lmforge.models.ffn import FeedForward
from lmforge.models.kv_cache import KVCache
from lmforge.models.masks import AttentionMasks
from lmforge.models.moe import Experts, MoEFeedForward, Router
from lmforge.models.positions import rope_tables, sinusoidal_table

__all__ = ["Attention", "Block", "FeedForward", "LatentAttention", "Transformer", "document_mask"]


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


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x)); `config` is this layer's."""

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.config = config
        self.attn_norm = make_norm(config)
        attention = LatentAttention if config.attention == "mla" else Attention
        self.attn = attention(config, layer_index)
        self.ffn_norm = make_norm(config)
        self.ffn = MoEFeedForward(config) if config.ffn == "moe" else FeedForward(config)
        # Identity at p=0: no random op on a sequence-parallel activation (a DTensor)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x, rope, masks: AttentionMasks, cache: KVCache | None = None):
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, masks, cache))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        assert config.vocab_size is not None, "resolve vocab_size before building the model"
        self.config = config
        device = torch.get_default_device()
        # Built on meta and then given storage, so that the layers' own default inits draw
        # nothing from the random stream: a model built here and one built on meta and
        # materialised per rank (parallel/materialize.py) start from the same weights.
        with torch.device("meta"):
            self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
            if config.position == "learned":
                self.position_embedding = nn.Embedding(config.context_length, config.dim)
            self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
            self.layers = nn.ModuleList(
                Block(layer, i) for i, layer in enumerate(layer_configs(config))
            )
            self.final_norm = make_norm(config)
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.tie_weights()
        self._tables: dict = {}  # rope cos/sin per rotated width, sinusoidal table
        if device.type != "meta":
            self.to_empty(device=device)
            self.tie_weights()
            self.init_weights()

    def tie_weights(self) -> None:
        """The head shares the embedding's parameter (to_empty gives each module its own)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 / Llama init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 * layers)."""
        for tensor, init in self.weight_inits():
            init(tensor)

    def weight_inits(self) -> Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], object]]]:
        """(tensor, in-place init) in the order init_weights applies them, which is the order the
        random stream is drawn in. parallel/materialize.py applies the same list to full-size
        tensors and keeps each rank's shard, so a sharded model starts bitwise where one process
        does. A tied embedding is listed twice (as the embedding and as the head): the second
        draw wins, as it always has. Buffers come first (zeros, no random draws)."""
        for buffer in self.buffers():  # router biases and load counters start at zero
            yield buffer, nn.init.zeros_
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        normal = functools.partial(nn.init.normal_, mean=0.0, std=std)
        residual = functools.partial(nn.init.normal_, mean=0.0, std=residual_std)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith(("attn.out", "ffn.down", "shared.down"))
                yield module.weight, residual if is_residual else normal
                if module.bias is not None:
                    yield module.bias, nn.init.zeros_
            elif isinstance(module, Experts):
                yield module.up, normal
                yield module.down, residual
            elif isinstance(module, Router):
                yield module.weight, normal
                if hasattr(module, "selection_bias"):
                    yield module.selection_bias, nn.init.zeros_
            elif isinstance(module, nn.Embedding):
                yield module.weight, normal
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    yield module.weight, nn.init.ones_
                if getattr(module, "bias", None) is not None:
                    yield module.bias, nn.init.zeros_

    def rope(self, device: torch.device, head_dim: int | None = None):
        """cos, sin tables (context_length, head_dim) for RoPE over `head_dim` channels."""
        # Computed lazily (not a buffer) so meta-device models and state dicts stay free of it.
        key = ("rope", head_dim or self.config.rope_dim, device)
        if key not in self._tables:
            self._tables[key] = rope_tables(self.config, device, key[1])
        return self._tables[key]

    def _sinusoidal(self, device: torch.device) -> torch.Tensor:
        key = ("sinusoidal", device)
        if key not in self._tables:
            self._tables[key] = sinusoidal_table(
                self.config.context_length, self.config.dim, device
            )
        return self._tables[key]

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        last_only: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T); (B, 1, vocab) for the last position only
        with `last_only` (a prefill that only needs the next token skips T - 1 vocab projections),
        or at the position `logits_at[b]` of each row b (right-padded rows of different lengths).

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
        if cache is not None:
            cache.check_room(T)
        elif self.config.context_length < T:
            raise ValueError(
                f"sequence of {T} tokens exceeds the model's context length "
                f"{self.config.context_length}"
            )
        if positions is None and cache is not None:
            positions = cache.default_positions(T)
        elif positions is None:
            positions = torch.arange(T, device=tokens.device)
        x = self.token_embedding(tokens)  # (B, T, C)
        if self.config.position == "learned":
            x = x + self.position_embedding(positions)
        elif self.config.position == "sinusoidal":
            x = x + self._sinusoidal(tokens.device)[positions].to(x.dtype)
        x = self.dropout(x)
        ropes = {}
        if self.config.position == "rope":
            for width in {layer.config.rope_dim for layer in self.layers}:
                cos, sin = self.rope(tokens.device, width)
                cos, sin = cos[positions], sin[positions]  # (T, D) or (B, T, D)
                if cos.dim() == 3:
                    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
                ropes[width] = (cos, sin)
        if cache is not None:
            masks = cache.masks(T)
        else:
            masks = AttentionMasks(T, 0, tokens.device)
            if document_ids is not None:
                masks.base, masks.document_ids = (document_mask(document_ids), False), document_ids
        for layer in self.layers:
            x = layer(x, ropes.get(layer.config.rope_dim), masks, cache)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        elif logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at][:, None]
        return self.lm_head(self.final_norm(x))
