"""Preallocated key/value cache for incremental decoding, with left padding for batched prompts."""

from __future__ import annotations

import torch

from lmforge.models.config import ModelConfig


class KVCache:
    """Keys and values of every layer for positions [0, length), shape (B, KV, max_len, D) each.

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
        shape = (config.num_layers, batch_size, config.kv_heads, max_len, config.attn_head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.has_padding = False
        self.max_len = max_len
        self.length = 0

    def set_padding(self, pad_lengths: torch.Tensor) -> None:
        """Mark the first pad_lengths[b] slots of row b as padding (call before the prefill)."""
        slots = torch.arange(self.max_len, device=self.valid.device)
        self.valid = slots[None, :] >= pad_lengths.to(self.valid.device)[:, None]
        self.has_padding = bool((pad_lengths > 0).any())

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write the new (B, KV, T, D) keys/values after the cached ones and return all of them."""
        end = self.length + k.shape[2]
        assert end <= self.max_len, "KV cache overflow: the caller must roll the context"
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

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
