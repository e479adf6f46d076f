"""A KV cache whose decode step has fixed shapes, so `torch.compile` traces it once.

`KVCache` returns the filled prefix of each buffer, so its shapes grow every token and its write
position is a Python int; a compiled step would recompile each token. Here the write position is
a tensor (`slot`), new keys/values land with `index_copy_`, and attention always spans the whole
buffer with a mask hiding the unwritten and padding slots. The extra masked slots cost little
next to the weights a decode step reads.
"""

from __future__ import annotations

import torch

from lmforge.models.config import ModelConfig, layer_configs
from lmforge.models.kv_cache import KVCache
from lmforge.models.masks import AttentionMasks


def static_cache_supported(config: ModelConfig) -> bool:
    """True when every layer's mask is the plain causal one (no sliding window, no ALiBi) and
    every FFN is dense (MoE dispatch has data-dependent shapes)."""
    return config.position != "alibi" and all(
        layer.sliding_window is None and layer.ffn != "moe" for layer in layer_configs(config)
    )


class StaticKVCache(KVCache):
    """Same buffers as KVCache; the write position is `slot`, a tensor, advanced in place.

    Nothing inside the forward pass reads a Python int that changes per token, so a compiled
    step does not specialise on the position.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype):
        if not static_cache_supported(config):
            raise ValueError("static KV cache: sliding windows, ALiBi and MoE need KVCache")
        super().__init__(config, batch_size, max_len, device, dtype)
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        self._slots = torch.arange(max_len, device=device)

    def check_room(self, num_new: int) -> None:
        pass  # the caller rolls the context before the cache fills (checked in `advance`)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        index = self.slot + torch.arange(k.shape[2], device=k.device)
        self.keys[layer].index_copy_(2, index, k)
        self.values[layer].index_copy_(2, index, v)
        return self.keys[layer], self.values[layer]

    def masks(self, num_new: int) -> AttentionMasks:
        query = self.slot + torch.arange(num_new, device=self._slots.device)  # (T,)
        allowed = (self._slots[None, :] <= query[:, None])[None] & self.valid[:, None, :]
        # A padding query would see no key at all (SDPA returns NaN); let it see itself.
        allowed = allowed | (self._slots[None, :] == query[:, None])[None]
        base = (allowed.unsqueeze(1), False)  # (B, 1, T, S)
        return AttentionMasks(num_new, 0, self._slots.device, valid=self.valid, base=base)

    def advance(self, num_new: int) -> None:
        self.slot.add_(num_new)

    def default_positions(self, num_new: int) -> torch.Tensor:
        return self.slot + torch.arange(num_new, device=self.slot.device)

    @property
    def length(self) -> int:
        """Slots written so far (reads the slot tensor: call it outside compiled code)."""
        return int(self.slot)

    @length.setter
    def length(self, value: int) -> None:
        pass  # KVCache.__init__ sets 0; the slot tensor is the one source of truth
