"""BatchLoader: row k is a pure function of (seed, split, k); ranks split global batches; exact resume."""

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
    # Rows, not batches, are the unit: batch 1 of size 2 is rows 2..3 of batch 0 of size 4.
    halves = BatchLoader(byte_data_dir, "train", 2, 32, seed=5).batch_at(1)
    assert all(torch.equal(x[2:4], y) for x, y in zip(a.batch_at(0), halves, strict=True))
    val = loader(byte_data_dir, split="val", seed=5, seq_len=16)
    assert torch.equal(
        val.batch_at(3)[0], loader(byte_data_dir, "val", seed=5, seq_len=16).batch_at(3)[0]
    )


def test_next_walks_batch_numbers_and_state_round_trips(byte_data_dir):
    first = loader(byte_data_dir, seed=1)
    for _ in range(3):
        first.next()
    state = first.state_dict()
    assert state == {"rows_drawn": 12, "seed": 1, "sampling": "random"}
    second = loader(byte_data_dir, seed=1)
    second.load_state_dict(state)
    for _ in range(4):
        x, y = first.next()
        u, v = second.next()
        assert torch.equal(x, u) and torch.equal(y, v)
    assert torch.equal(loader(byte_data_dir, seed=1).batch_at(3)[0], loader_after(byte_data_dir, 3))


def loader_after(directory, drawn):
    fresh = loader(directory, seed=1)
    fresh.load_state_dict({"rows_drawn": 4 * drawn})
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


@pytest.fixture(scope="module")
def multi_doc_dir(tmp_path_factory, corpus_dir):
    """corpus_dir's 8 documents, byte-tokenized: windows cross document boundaries."""
    directory = tmp_path_factory.mktemp("multi") / "byte"
    config = DataConfig(source=str(corpus_dir), tokenizer="byte", dir=str(directory))
    return prepare(config, progress=False)


def stream(directory, split="train"):
    return np.concatenate(TokenShards(directory, split).shards).astype(np.int64)


def test_sequential_walks_the_stream_in_order_and_wraps(byte_data_dir):
    data = stream(byte_data_dir)
    seq = BatchLoader(byte_data_dir, "train", 4, 32, seed=0, sampling="sequential")
    windows = seq.windows_per_epoch
    assert windows == (len(data) - 1) // 32
    for number in (0, 1, 5):
        inputs, targets = seq.batch_at(number)
        for row in range(4):
            start = (number * 4 + row) * 32
            assert np.array_equal(inputs[row].numpy(), data[start : start + 32])
            assert np.array_equal(targets[row].numpy(), data[start + 1 : start + 33])
    # Epoch wrap-around: window `windows` is window 0 again.
    last_batch = seq.batch_at(windows // 4)
    assert torch.equal(last_batch[0][windows % 4], seq.batch_at(0)[0][0])
    assert seq.batch_at(0)[0].shape == (4, 32)


def test_sequential_reads_across_shard_boundaries(tmp_path, corpus_file):
    config = DataConfig(
        source=str(corpus_file), tokenizer="byte", dir=str(tmp_path / "d"), shard_tokens=100
    )
    directory = prepare(config, progress=False)
    data = stream(directory)
    seq = BatchLoader(directory, "train", 8, 48, seed=0, sampling="sequential")
    rows = torch.cat([seq.batch_at(n)[0] for n in range(3)]).numpy()
    assert np.array_equal(rows.reshape(-1), data[: 3 * 8 * 48])


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_ranks_split_each_global_batch_like_accumulation_steps(byte_data_dir, sampling):
    """Micro-step m of rank r of 2 reads the rows one process reads at micro-step 2m + r."""

    def rank_loader(rank, world_size=2):
        return BatchLoader(
            byte_data_dir,
            "train",
            4,
            32,
            seed=3,
            rank=rank,
            world_size=world_size,
            sampling=sampling,
        )

    single, zero, one = rank_loader(0, world_size=1), rank_loader(0), rank_loader(1)
    for _ in range(3):
        assert torch.equal(zero.next()[0], single.next()[0])
        assert torch.equal(one.next()[0], single.next()[0])
    assert zero.state_dict() == one.state_dict() == single.state_dict()
    if sampling == "sequential":  # the two ranks interleave contiguous slices of the stream
        data = stream(byte_data_dir)
        assert np.array_equal(rank_loader(1).next()[0][0].numpy(), data[4 * 32 : 5 * 32])


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_with_other_ranks_and_micro_batch_continues_the_row_stream(byte_data_dir, sampling):
    def make(batch_size, rank=0, world_size=1):
        return BatchLoader(
            byte_data_dir, "train", batch_size, 32, seed=3, rank=rank, world_size=world_size,
            sampling=sampling,
        )  # fmt: skip

    one_rank = make(4)
    one_rank.next()
    one_rank.next()  # rows 0..7 consumed
    expected = make(8).batch_at(1)[0]  # rows 8..15
    resumed = [make(2, rank, world_size=2) for rank in (0, 1)]
    for r in resumed:
        r.load_state_dict(one_rank.state_dict())
    first = [r.next()[0] for r in resumed]  # rows 8-9 and 10-11
    second = [r.next()[0] for r in resumed]  # rows 12-13 and 14-15
    assert torch.equal(torch.cat(first + second), expected)


@pytest.mark.parametrize("masking", [False, True])
@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_matches_an_uninterrupted_loader(multi_doc_dir, sampling, masking):
    def fresh():
        return BatchLoader(
            multi_doc_dir, "train", 4, 32, seed=7, sampling=sampling, document_masking=masking
        )

    straight, interrupted = fresh(), fresh()
    expected = [straight.next() for _ in range(6)]
    for _ in range(2):
        interrupted.next()
    state = interrupted.state_dict()
    if sampling == "sequential":
        assert state["position"] == 2 * 4 * 32
    resumed = fresh()
    resumed.load_state_dict(state)
    got = [interrupted.next(), interrupted.next()] + [resumed.next() for _ in range(4)]
    assert [len(b) for b in expected] == [4 if masking else 2] * 6
    for want, have in zip(expected[2:4] + expected[2:], got, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(want, have, strict=True))


def test_document_masking_batches_carry_ids_and_positions(multi_doc_dir):
    masked = BatchLoader(
        multi_doc_dir, "train", 8, 64, seed=0, sampling="sequential", document_masking=True
    )
    eot = masked.eot_id
    batches = [masked.batch_at(n) for n in range(masked.windows_per_epoch // 8)]
    inputs, _, document_ids, positions = (
        torch.cat(parts).tolist() for parts in zip(*batches, strict=True)
    )
    assert sum(row.count(eot) for row in inputs) >= 3, "windows must cross document boundaries"
    for row in range(len(inputs)):
        doc, pos = 0, 0
        for t in range(64):
            assert (document_ids[row][t], positions[row][t]) == (doc, pos)
            pos += 1
            if inputs[row][t] == eot:
                doc, pos = doc + 1, 0


def test_unknown_sampling_is_a_data_error(byte_data_dir):
    with pytest.raises(DataError, match="data.sampling='shuffled'"):
        BatchLoader(byte_data_dir, "train", 4, 32, seed=0, sampling="shuffled")
