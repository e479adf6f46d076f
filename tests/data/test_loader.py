"""BatchLoader: windows are a pure function of (seed, split, rank, number); exact state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.config import DataConfig
from lmforge.data.loader import BatchLoader, TokenShards
from lmforge.data.prepare import prepare
from lmforge.errors import DataError


def loader(directory, split="train", batch_size=4, seq_len=32, seed=0, rank=0):
    return BatchLoader(directory, split, batch_size, seq_len, seed, rank=rank)


def test_inputs_and_targets_shifted_by_one_from_the_data(byte_data_dir):
    data = np.concatenate(TokenShards(byte_data_dir, "train").shards).astype(np.int64)
    inputs, targets = loader(byte_data_dir).batch_at(0)
    assert inputs.shape == targets.shape == (4, 32)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    for row in range(4):
        window = torch.cat([inputs[row], targets[row, -1:]]).numpy()
        starts = [s for s in range(len(data) - 32) if data[s] == window[0]]
        assert any(np.array_equal(data[s : s + 33], window) for s in starts)


def test_batches_are_deterministic_per_seed_split_rank_and_number(byte_data_dir):
    a, b = loader(byte_data_dir, seed=5), loader(byte_data_dir, seed=5)
    for number in (0, 1, 17):
        assert all(
            torch.equal(x, y) for x, y in zip(a.batch_at(number), b.batch_at(number), strict=True)
        )
    assert not torch.equal(a.batch_at(0)[0], a.batch_at(1)[0])
    assert not torch.equal(a.batch_at(0)[0], loader(byte_data_dir, seed=6).batch_at(0)[0])
    assert not torch.equal(a.batch_at(0)[0], loader(byte_data_dir, rank=1, seed=5).batch_at(0)[0])
    val = loader(byte_data_dir, split="val", seed=5, seq_len=16)
    assert torch.equal(
        val.batch_at(3)[0], loader(byte_data_dir, "val", seed=5, seq_len=16).batch_at(3)[0]
    )


def test_next_walks_batch_numbers_and_state_round_trips(byte_data_dir):
    first = loader(byte_data_dir, seed=1)
    for _ in range(3):
        first.next()
    state = first.state_dict()
    assert state == {"batches_drawn": 3, "seed": 1, "rank": 0}
    second = loader(byte_data_dir, seed=1)
    second.load_state_dict(state)
    for _ in range(4):
        x, y = first.next()
        u, v = second.next()
        assert torch.equal(x, u) and torch.equal(y, v)
    assert torch.equal(loader(byte_data_dir, seed=1).batch_at(3)[0], loader_after(byte_data_dir, 3))


def loader_after(directory, drawn):
    fresh = loader(directory, seed=1)
    fresh.load_state_dict({"batches_drawn": drawn})
    return fresh.next()[0]


def test_windows_draw_from_every_shard(tmp_path, corpus_file):
    config = DataConfig(
        source=str(corpus_file), tokenizer="byte", dir=str(tmp_path / "d"), shard_tokens=2000
    )
    directory = prepare(config, progress=False)
    shards = TokenShards(directory, "train").shards
    assert len(shards) >= 5
    starts = {bytes(np.asarray(s[:8], dtype=np.uint8)) for s in shards}
    assert len(starts) == len(shards)
    batches = [loader(directory, batch_size=16, seq_len=8).batch_at(n)[0] for n in range(10)]
    rows = torch.cat(batches).numpy()
    # Every row is a window of exactly one shard.
    hits = set()
    for row in rows:
        for index, shard in enumerate(shards):
            data = np.asarray(shard, dtype=np.int64)
            if any(np.array_equal(data[s : s + 8], row) for s in np.flatnonzero(data == row[0])):
                hits.add(index)
                break
        else:
            pytest.fail(f"row {row} is in no shard")
    assert hits == {i for i, shard in enumerate(shards) if len(shard) > 9}


def test_too_short_split_is_a_data_error(byte_data_dir):
    val_tokens = TokenShards(byte_data_dir, "val").num_tokens
    with pytest.raises(DataError, match="too few for one window"):
        loader(byte_data_dir, split="val", seq_len=val_tokens)
    assert loader(byte_data_dir, split="val", seq_len=val_tokens - 2).batch_at(0)[0].shape == (
        4,
        val_tokens - 2,
    )
