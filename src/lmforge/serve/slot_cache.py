"""The serving engine's KV cache: one buffer of `slots` rows, each row a sequence at its own length.

`KVCache` keeps every row at the same write position (left padding lines prompts up), which is
what a static batch needs and what continuous batching cannot have: a row joins while others are
hundreds of tokens in. Here each slot has its own length. A forward pass runs on a `SlotView`, a
contiguous range of slots with one write position per row: the decode step over every running
row (one new token each), or a prefill chunk of one row (many tokens). Attention spans each
row's own slots through an explicit mask, so stale keys left behind by an earlier occupant of a
slot are never read.

The engine keeps the running rows in slots [0, D) so that a decode step's keys are a view, not a
gather; a row that finishes is replaced by the last one (`move`), and a row whose prefill is done
is moved in from its prefill slot.
"""

from __future__ import annotations

import torch

from lmforge.models.config import ModelConfig, layer_configs
from lmforge.models.kv_cache import layer_cache_widths
from lmforge.models.masks import AttentionMasks
from lmforge.models.positions import alibi_slopes

GROWTH = 256
"""Slot capacity grows in steps of this many positions, up to the context length."""

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, the two cached tensors of some positions of one row: (heads, positions, width)."""


class SlotStore:
    """Per-layer key/value buffers (slots, heads, capacity, width) and each slot's length."""

    def __init__(self, config: ModelConfig, slots: int, device: torch.device, dtype: torch.dtype):
        self.config, self.slots, self.device, self.dtype = config, slots, device, dtype
        self.widths = [layer_cache_widths(layer) for layer in layer_configs(config)]
        self.lengths = [0] * slots
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        """Back to the smallest buffers (when no row runs: a long prompt's memory is given back)."""
        self.capacity = 0
        self.keys, self.values = [], []
        self.reserve(1)

    def reserve(self, positions: int) -> None:
        """Make room for `positions` per slot, keeping what the slots hold."""
        if positions <= self.capacity:
            return
        capacity = min(-(-positions // GROWTH) * GROWTH, self.config.context_length)
        if capacity < positions:
            raise ValueError(f"{positions} positions exceed the context length {capacity}")
        old_keys, old_values, old = self.keys, self.values, self.capacity
        self.keys, self.values = [], []
        for (heads_k, width_k), (heads_v, width_v) in self.widths:
            options = dict(device=self.device, dtype=self.dtype)
            self.keys.append(torch.zeros(self.slots, heads_k, capacity, width_k, **options))
            self.values.append(torch.zeros(self.slots, heads_v, capacity, width_v, **options))
        for new, previous in zip(self.keys + self.values, old_keys + old_values, strict=False):
            new[:, :, :old] = previous
        self.capacity = capacity

    def move(self, source: int, target: int) -> None:
        """Copy slot `source`'s filled positions into slot `target`."""
        n = self.lengths[source]
        for buffer in self.keys + self.values:
            buffer[target, :, :n] = buffer[source, :, :n]
        self.lengths[target] = n

    def read(self, slot: int, start: int, end: int) -> LayerKV:
        """A copy of positions [start, end) of one slot."""
        return [
            (k[slot, :, start:end].clone(), v[slot, :, start:end].clone())
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    def write(self, slot: int, start: int, parts: LayerKV) -> None:
        """Put cached positions into a slot from `start` on (the slot's length becomes their end)."""
        end = start + parts[0][0].shape[1]
        self.reserve(end)
        for (k, v), key_buffer, value_buffer in zip(parts, self.keys, self.values, strict=True):
            key_buffer[slot, :, start:end] = k
            value_buffer[slot, :, start:end] = v
        self.lengths[slot] = end

    def view(self, slots: list[int], counts: list[int]) -> SlotView:
        """The cache for a forward pass that appends counts[i] tokens to slot slots[i]."""
        starts = [self.lengths[slot] for slot in slots]
        self.reserve(max(start + count for start, count in zip(starts, counts, strict=True)))
        return SlotView(self, slots, starts, counts)


class SlotView:
    """What `Transformer.forward` sees as its cache: some slots, each row at its own length.

    Three shapes of pass: one row's prompt chunk; one new token for each of the rows in slots
    [0, D) (the decode step, whose keys are then a view of the buffer); or chunks of several
    prompts, right-padded to the longest (the pad positions' keys are not written and their
    outputs are not used)."""

    def __init__(self, store: SlotStore, slots: list[int], starts: list[int], counts: list[int]):
        self.store, self.slots, self.starts, self.counts = store, slots, starts, counts
        self.num_new = max(counts)
        self.end = max(start + count for start, count in zip(starts, counts, strict=True))
        device = store.device
        self.start_tensor = torch.tensor(starts, device=device)
        self.first = slots[0]
        self.contiguous = slots == list(range(self.first, self.first + len(slots)))
        if self.num_new == 1 and not self.contiguous:
            raise ValueError("a decode step runs on a contiguous range of slots")

    def positions(self) -> torch.Tensor:
        """Each row's position ids (B, T): its own length onwards (pads clamped into range)."""
        offsets = torch.arange(self.num_new, device=self.store.device)
        positions = self.start_tensor[:, None] + offsets[None, :]
        return positions.clamp(max=self.store.config.context_length - 1)

    def last_positions(self) -> torch.Tensor:
        """(B,) index of each row's last real token among the T new ones."""
        return torch.tensor(self.counts, device=self.store.device) - 1

    def check_room(self, num_new: int) -> None:
        pass  # `SlotStore.view` reserved the room

    def default_positions(self, num_new: int) -> torch.Tensor:
        return self.positions()

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write each row's new (heads, T, width) pairs at its position; return the rows' slots."""
        keys, values = self.store.keys[layer], self.store.values[layer]
        if self.num_new == 1 and len(self.slots) > 1:  # decode: one token per row, at its length
            index = torch.arange(self.first, self.first + len(self.slots), device=k.device)
            keys[index, :, self.start_tensor] = k[:, :, 0]
            values[index, :, self.start_tensor] = v[:, :, 0]
        else:
            for row, (slot, start, count) in enumerate(
                zip(self.slots, self.starts, self.counts, strict=True)
            ):
                keys[slot, :, start : start + count] = k[row, :, :count]
                values[slot, :, start : start + count] = v[row, :, :count]
        if self.contiguous:
            rows = slice(self.first, self.first + len(self.slots))
            return keys[rows, :, : self.end], values[rows, :, : self.end]
        index = torch.tensor(self.slots, device=k.device)
        return keys[index, :, : self.end], values[index, :, : self.end]

    def masks(self, num_new: int) -> AttentionMasks:
        return RowMasks(self.start_tensor, num_new, self.end, self.store.device)

    def advance(self, num_new: int) -> None:
        for slot, count in zip(self.slots, self.counts, strict=True):
            self.store.lengths[slot] += count


class RowMasks(AttentionMasks):
    """Masks where row b's queries sit at slots starts[b] + [0, T) and its keys at [0, end)."""

    def __init__(self, starts: torch.Tensor, num_new: int, end: int, device: torch.device):
        super().__init__(num_new, 0, device)
        self.starts, self.end = starts, end
        if len(starts) == 1 and (num_new == 1 or int(starts[0]) == 0):
            # SDPA's fast paths: one query sees every key; a fresh prefill is plain causal
            self.base = (None, num_new > 1)
        else:
            self.base = (self._explicit(None, None), False)

    def _explicit(self, window: int | None, alibi_heads: int | None) -> torch.Tensor:
        offsets = torch.arange(self.num_new, device=self.device)
        query = (self.starts[:, None] + offsets[None, :])[:, :, None]  # (B, T, 1)
        key = torch.arange(self.end, device=self.device)[None, None, :]  # (1, 1, S)
        allowed = key <= query
        if window is not None:
            allowed = allowed & (key > query - window)
        allowed = allowed.unsqueeze(1)  # (B, 1, T, S)
        if alibi_heads is None:
            # an additive mask: SDPA on a CPU ran 5x faster with it than with a boolean one
            # over the slot buffer's strided keys (3.6 ms -> 0.65 ms, 16 rows of SmolLM2)
            return torch.zeros(allowed.shape, device=self.device).masked_fill(~allowed, -torch.inf)
        distance = (query - key).clamp(min=0).float().unsqueeze(1)  # (B, 1, T, S)
        bias = -alibi_slopes(alibi_heads).to(self.device)[None, :, None, None] * distance
        return bias.masked_fill(~allowed, float("-inf"))  # (B, H, T, S)
