"""Streaming prepare: worker-count independence, resume after interruption, record formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_text

from lmforge.config import DataConfig
from lmforge.data import prepare as prepare_module
from lmforge.data.prepare import prepare, read_index
from lmforge.errors import DataError


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory) -> Path:
    """120 records of ~1 KB in one .jsonl file."""
    path = tmp_path_factory.mktemp("jsonl") / "corpus.jsonl"
    with open(path, "w") as out:
        for i in range(120):
            out.write(json.dumps({"id": i, "text": make_text(i, 15)}) + "\n")
    return path


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_DOCS", 4)  # 30 batches: the pool is used


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def config(source: Path, directory: Path, **overrides) -> DataConfig:
    settings = {"tokenizer": "bpe", "vocab_size": 300, "shard_tokens": 5000, **overrides}
    return DataConfig(source=str(source), dir=str(directory), **settings)


def test_one_and_two_workers_give_identical_shards(tmp_path, jsonl_corpus, small_batches):
    one = prepare(config(jsonl_corpus, tmp_path / "one", workers=1), progress=False)
    two = prepare(config(jsonl_corpus, tmp_path / "two", workers=2), progress=False)
    assert files(one) == files(two)
    index = read_index(one)
    assert len(index["splits"]["train"]) > 3
    assert sum(index["documents"].values()) == 120
    assert all(s["tokens"] == 5000 for s in index["splits"]["train"][:-1])


def test_interrupted_prepare_resumes_to_identical_output(
    tmp_path, jsonl_corpus, small_batches, monkeypatch
):
    whole = prepare(config(jsonl_corpus, tmp_path / "whole", workers=1), progress=False)
    save = prepare_module.save_progress
    calls = []

    def interrupt_after_two(*args):
        save(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed after the second shard

    monkeypatch.setattr(prepare_module, "save_progress", interrupt_after_two)
    target = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(config(jsonl_corpus, target, workers=1), progress=False)
    assert not target.exists()  # never taken as a finished dataset
    progress = json.loads((tmp_path / "resumed.tmp" / "progress.json").read_text())
    assert 0 < progress["emitted"] < 120

    monkeypatch.setattr(prepare_module, "save_progress", save)
    encoded = []
    real_encode = prepare_module._encode
    monkeypatch.setattr(
        prepare_module, "_encode", lambda b: encoded.append(len(b)) or real_encode(b)
    )
    resumed = prepare(config(jsonl_corpus, target, workers=1), progress=False)
    assert sum(encoded) == 120 - progress["emitted"]  # finished documents are not redone
    assert files(resumed) == files(whole)
    assert not (tmp_path / "resumed.tmp").exists()


def test_parquet_and_json_sources(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    rows = [make_text(i, 3) for i in range(10)]
    pq.write_table(pa.table({"content": rows[:6]}), source / "a.parquet")
    (source / "b.json").write_text(json.dumps([{"content": r} for r in rows[6:]]))
    directory = prepare(
        config(source, tmp_path / "d", tokenizer="byte", text_field="content"), progress=False
    )
    index = read_index(directory)
    assert sum(index["documents"].values()) == 10
    tokens = sum(s["tokens"] for split in index["splits"].values() for s in split)
    assert tokens == sum(len(r.encode()) + 1 for r in rows)


def test_missing_text_field_fails_cleanly(tmp_path, jsonl_corpus):
    with pytest.raises(DataError, match=r"no field 'body' \(fields: id, text\)"):
        prepare(config(jsonl_corpus, tmp_path / "d", text_field="body"), progress=False)
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.tmp").exists()


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError, match="contains no text"):
        prepare(config(tmp_path / "empty.jsonl", tmp_path / "d", tokenizer="byte"), False)


def test_non_utf8_is_counted_or_refused(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_bytes(b"fine " * 50)
    (source / "b.txt").write_bytes(b"caf\xe9 " * 50)
    directory = prepare(config(source, tmp_path / "d", tokenizer="byte"), progress=False)
    assert "replaced 50 non-UTF-8 bytes" in capsys.readouterr().err
    assert read_index(directory)["documents"] == {"train": 1, "val": 1}
    tokens = np.concatenate(
        [
            np.fromfile(directory / s["file"], np.uint16)
            for s in read_index(directory)["splits"]["val"]
            + read_index(directory)["splits"]["train"]
        ]
    )
    assert (tokens == 0xEF).sum() == 50  # U+FFFD is EF BF BD
    with pytest.raises(DataError, match=r"b.txt is not valid UTF-8 \(byte 3\)"):
        prepare(config(source, tmp_path / "s", tokenizer="byte", strict_utf8=True), False)


def test_tokenizer_trains_on_a_sample(tmp_path, jsonl_corpus):
    directory = prepare(
        config(jsonl_corpus, tmp_path / "d", tokenizer="char", tokenizer_train_chars=10**6),
        progress=False,
    )
    assert read_index(directory)["fingerprint"]["tokenizer_train_chars"] == 10**6
