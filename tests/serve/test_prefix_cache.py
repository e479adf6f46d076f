"""The prefix cache: whole blocks found only after the same prefix, the memory cap, and LRU order
that evicts a chain's tail before its head."""

from __future__ import annotations

import torch

from lmforge.serve.prefix_cache import PrefixCache, layer_kv_bytes


def fake_reader(calls: list):
    """Keys/values of positions [start, end) of two layers: the values encode the position."""

    def read(start: int, end: int):
        calls.append((start, end))
        positions = torch.arange(start, end, dtype=torch.float32)
        pair = (positions[None, :, None].repeat(2, 1, 3), -positions[None, :, None].repeat(1, 1, 5))
        return [pair, pair]

    return read


BLOCK_BYTES = layer_kv_bytes(fake_reader([])(0, 4))


def test_lookup_returns_whole_blocks_of_the_same_prefix_only():
    cache, calls = PrefixCache(block=4, capacity_bytes=10**9), []
    tokens = list(range(100, 111))  # 11 tokens: 2 full blocks
    cache.insert(tokens, fake_reader(calls))
    assert calls == [(0, 4), (4, 8)]
    count, parts = cache.lookup(tokens + [7, 8], limit=12)
    assert count == 8
    assert parts[0][0][0, :, 0].tolist() == list(range(8))  # positions 0..7 in order
    assert cache.lookup(tokens, limit=7)[0] == 4  # never past the limit
    assert cache.lookup([0] + tokens[1:], limit=12) == (0, None)  # first token differs
    changed = tokens[:5] + [0] + tokens[6:]
    assert cache.lookup(changed, limit=12)[0] == 4  # second block differs
    cache.insert(tokens, fake_reader(calls))
    assert len(calls) == 2  # nothing read twice


def test_memory_cap_evicts_least_recent_chain_tail_first():
    cache = PrefixCache(block=4, capacity_bytes=3 * BLOCK_BYTES)
    first, second = list(range(12)), list(range(50, 58))
    cache.insert(first, fake_reader([]))  # 3 blocks: full
    cache.insert(second, fake_reader([]))  # 2 more: evicts 2 of the first chain's
    assert cache.bytes <= 3 * BLOCK_BYTES and len(cache.blocks) == 3
    assert cache.lookup(second, limit=8)[0] == 8
    assert cache.lookup(first, limit=12)[0] == 4  # its head survived, its tail went


def test_zero_capacity_caches_nothing():
    cache, calls = PrefixCache(block=4, capacity_bytes=0), []
    cache.insert(list(range(20)), fake_reader(calls))
    assert calls == [] and cache.lookup(list(range(20)), 19) == (0, None)
