"""Preallocated key/value cache for incremental decoding, with left padding for batched prompts.

Each layer holds two tensors shaped for that layer: keys and values (B, KV, max_len, D) for
grouped-query attention, or for MLA the compressed latent (B, 1, max_len, kv_lora_rank) and the
shared RoPE key (B, 1, max_len, qk_rope_head_dim), which is all MLA needs to rebuild K and V.
"""

from __future__ import annotations

import torch

from lmforge.models.config import ModelConfig, layer_configs
from lmforge.models.masks import AttentionMasks


def layer_cache_widths(layer: ModelConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """(heads, width) of the two cached tensors of one layer."""
    if layer.attention == "mla":
        return (1, layer.kv_lora_rank), (1, layer.qk_rope_head_dim)
    return (layer.kv_heads, layer.attn_head_dim), (layer.kv_heads, layer.attn_head_dim)


def kv_cache_bytes_per_token(config: ModelConfig, bytes_per_element: int = 2) -> int:
    """Cache bytes one token costs across all layers (bf16 by default): 2 * KV * D per GQA layer
    (MHA: KV = H, MQA: KV = 1), kv_lora_rank + qk_rope_head_dim per MLA layer."""
    elements = 0
    for layer in layer_configs(config):
        (heads_a, width_a), (heads_b, width_b) = layer_cache_widths(layer)
        elements += heads_a * width_a + heads_b * width_b
    return elements * bytes_per_element


class KVCache:
    """Per-layer cached tensors for positions [0, length) (see the module docstring for shapes).

    `valid[b, s]` is False where row b holds left padding at slot s; those slots are never
    attended to. Slots are cache positions, not token positions: a row with p pads has its
    first real token at slot p and RoPE position 0.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in layer_configs(config):
            (heads_a, width_a), (heads_b, width_b) = layer_cache_widths(layer)
            options = dict(device=device, dtype=dtype)
            self.keys.append(torch.zeros(batch_size, heads_a, max_len, width_a, **options))
            self.values.append(torch.zeros(batch_size, heads_b, max_len, width_b, **options))
        if max_len > config.context_length:
            raise ValueError(f"a KV cache of {max_len} slots exceeds the context length")
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.has_padding = False
        self.max_len = max_len
        self.length = 0

    def set_padding(self, pad_lengths: torch.Tensor) -> None:
        """Mark the first pad_lengths[b] slots of row b as padding (call before the prefill)."""
        slots = torch.arange(self.max_len, device=self.valid.device)
        self.valid = slots[None, :] >= pad_lengths.to(self.valid.device)[:, None]
        self.has_padding = bool((pad_lengths > 0).any())

    def select_rows(self, index: torch.Tensor) -> None:
        """Make row b a copy of row index[b] (the batch may grow: rows that share a prompt are
        prefilled once and then copied)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.valid = self.valid.index_select(0, index)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write the new (B, heads, T, width) pair after the cached ones and return all of them."""
        end = self.length + k.shape[2]
        assert end <= self.max_len, "KV cache overflow: the caller must roll the context"
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def check_room(self, num_new: int) -> None:
        """Refuse a forward pass that would run past the cache (and so past the context)."""
        if self.length + num_new > self.max_len:
            raise ValueError(
                f"sequence of {self.length + num_new} tokens exceeds the KV cache's "
                f"{self.max_len} slots (the model's context length is at most that)"
            )

    def default_positions(self, num_new: int) -> torch.Tensor:
        """Position ids (T,) of num_new tokens appended to an unpadded cache."""
        return torch.arange(self.length, self.length + num_new, device=self.valid.device)

    def masks(self, num_new: int) -> AttentionMasks:
        """The attention masks for num_new queries appended after the cached slots."""
        device = self.valid.device
        base = self.attention_mask(num_new)
        return AttentionMasks(num_new, self.length, device, valid=self.valid, base=base)

    def bytes_per_token(self) -> int:
        """Measured from the allocated tensors (for checking kv_cache_bytes_per_token)."""
        total = sum(t.numel() * t.element_size() for t in self.keys + self.values)
        return total // (self.valid.shape[0] * self.max_len)

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens

    def attention_mask(self, num_new: int) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for num_new queries at slots [length, length + num_new).

        Fast paths avoid building a mask: a fresh unpadded prefill is plain causal attention, and
        a single unpadded query attends to every cached slot.
        """
        if not self.has_padding:
            if self.length == 0:
                return None, True
            if num_new == 1:
                return None, False
        end = self.length + num_new
        device = self.valid.device
        query_slots = torch.arange(self.length, end, device=device)
        key_slots = torch.arange(end, device=device)
        causal = key_slots[None, :] <= query_slots[:, None]  # (T, S)
        mask = causal[None] & self.valid[:, None, :end]  # (B, T, S)
        # A padding query would see no key at all (SDPA returns NaN); let it see itself.
        mask |= key_slots[None, None, :] == query_slots[None, :, None]
        return mask.unsqueeze(1), False  # (B, 1, T, S)
