"""Reusing the keys and values of a prompt's prefix across requests (a system prompt, the earlier
turns of a chat, a few-shot header).

A prompt is cut into blocks of `block` tokens. Block i is named by a hash of every token up to
its end (the hash of block i-1 and its own tokens), so a block is found only after the very same
prefix: keys and values depend on every earlier token. A new request walks its blocks from the
start and takes the longest cached run; only the rest is prefilled.

Memory is capped (`capacity_bytes`); the least recently used blocks go first. A hit refreshes
its blocks from the last one back to the first, so a chain's first blocks (the ones most prompts
share) are the newest and its tail is evicted before its head: a block whose parent is gone can
never be found again, so evicting heads first would strand memory.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable

import torch

from lmforge.serve.slot_cache import LayerKV


def block_names(tokens: list[int], block: int, count: int) -> list[bytes]:
    """The chained hashes of the first `count` full blocks of tokens."""
    names, previous = [], b""
    for i in range(count):
        chunk = array("q", tokens[i * block : (i + 1) * block]).tobytes()
        previous = hashlib.blake2b(previous + chunk, digest_size=16).digest()
        names.append(previous)
    return names


def layer_kv_bytes(parts: LayerKV) -> int:
    return sum(t.numel() * t.element_size() for pair in parts for t in pair)


class PrefixCache:
    """Blocks of cached keys/values by prefix hash, least recently used first."""

    def __init__(self, block: int, capacity_bytes: int):
        self.block, self.capacity_bytes = block, capacity_bytes
        self.blocks: OrderedDict[bytes, LayerKV] = OrderedDict()
        self.bytes = 0

    def lookup(self, tokens: list[int], limit: int) -> tuple[int, LayerKV | None]:
        """(n, keys/values of tokens[:n]) for the longest cached prefix of at most `limit` tokens
        (a whole number of blocks; n = 0 and None when nothing is cached)."""
        found = []
        for name in block_names(tokens, self.block, limit // self.block):
            if name not in self.blocks:
                break
            found.append(name)
        if not found:
            return 0, None
        self._refresh(found)
        layers = zip(*(self.blocks[name] for name in found), strict=True)
        joined = [(torch.cat([k for k, _ in parts], 1), torch.cat([v for _, v in parts], 1))
                  for parts in layers]  # fmt: skip
        return len(found) * self.block, joined

    def insert(self, tokens: list[int], read: Callable[[int, int], LayerKV]) -> None:
        """Cache every full block of `tokens` (whose keys/values `read(start, end)` returns)."""
        if self.capacity_bytes <= 0:
            return
        names = block_names(tokens, self.block, len(tokens) // self.block)
        for i, name in enumerate(names):
            if name not in self.blocks:
                parts = read(i * self.block, (i + 1) * self.block)
                size = layer_kv_bytes(parts)
                if size > self.capacity_bytes:
                    return
                self.blocks[name] = parts
                self.bytes += size
        self._refresh(names)
        while self.bytes > self.capacity_bytes:
            _, parts = self.blocks.popitem(last=False)
            self.bytes -= layer_kv_bytes(parts)

    def _refresh(self, chain: list[bytes]) -> None:
        for name in reversed(chain):
            self.blocks.move_to_end(name)

    def clear(self) -> None:
        self.blocks.clear()
        self.bytes = 0
