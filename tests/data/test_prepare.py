"""`prepare`: shards, index.json, token dtypes, determinism, idempotence, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import DataConfig
from lmforge.data import prepare as prepare_module
from lmforge.data.prepare import default_data_dir, prepare, read_index, token_dtype
from lmforge.data.readers import iter_documents
from lmforge.data.sources import split_documents
from lmforge.errors import DataError
from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.base import write_descriptor


def read_split(directory: Path, split: str) -> np.ndarray:
    index = read_index(directory)
    parts = [
        np.fromfile(directory / s["file"], dtype=index["dtype"]) for s in index["splits"][split]
    ]
    return np.concatenate(parts)


def test_byte_shards_hold_documents_separated_by_end_of_text(tmp_path, corpus_dir):
    config = DataConfig(source=str(corpus_dir), tokenizer="byte", dir=str(tmp_path / "d"))
    directory = prepare(config, progress=False)
    assert directory == tmp_path / "d"
    index = json.loads((directory / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["vocab_size"] == 257 and index["eot_id"] == 256
    assert index["tokenizer"] == "byte"
    documents = list(iter_documents(str(corpus_dir), progress=False))
    train_docs, val_docs = split_documents(documents, 0.05)
    assert index["documents"] == {"train": len(train_docs), "val": len(val_docs)}
    for split, documents in (("train", train_docs), ("val", val_docs)):
        expected = []
        for document in documents:
            expected += [*document.text.encode("utf-8"), 256]
        tokens = read_split(directory, split)
        assert tokens.dtype == np.uint16
        assert tokens.tolist() == expected
        assert sum(s["tokens"] for s in index["splits"][split]) == len(expected)
        assert (directory / index["splits"][split][0]["file"]).stat().st_size == 2 * len(expected)
    assert load_tokenizer(directory).kind == "byte"
    assert not (tmp_path / "d.tmp").exists()


def test_bpe_prepare_trains_tokenizer_on_train_split(tmp_path, corpus_file):
    config = DataConfig(
        source=str(corpus_file), tokenizer="bpe", vocab_size=300, dir=str(tmp_path / "d")
    )
    directory = prepare(config, progress=False)
    tokenizer = load_tokenizer(directory)
    assert tokenizer.vocab_size == 300 and read_index(directory)["vocab_size"] == 300
    train = read_split(directory, "train")
    assert train[-1] == tokenizer.eot_id
    text = corpus_file.read_text()
    cut = int(len(text) * 0.95)
    assert tokenizer.decode(train.tolist()) == text[:cut]
    assert tokenizer.decode(read_split(directory, "val").tolist()) == text[cut:]


def test_char_prepare(tmp_path, corpus_file):
    config = DataConfig(source=str(corpus_file), tokenizer="char", dir=str(tmp_path / "d"))
    directory = prepare(config, progress=False)
    tokenizer = load_tokenizer(directory)
    text = corpus_file.read_text()
    assert tokenizer.vocab_size == len(set(text[: int(len(text) * 0.95)])) + 1
    assert read_split(directory, "train")[-1] == tokenizer.eot_id


def test_shard_size_limit(tmp_path, corpus_dir):
    config = DataConfig(
        source=str(corpus_dir), tokenizer="byte", dir=str(tmp_path / "d"), shard_tokens=1000
    )
    directory = prepare(config, progress=False)
    shards = read_index(directory)["splits"]["train"]
    assert len(shards) > 3
    assert all(s["tokens"] <= 1000 for s in shards)
    assert [s["file"] for s in shards] == [f"train-{i:05d}.bin" for i in range(len(shards))]
    whole = DataConfig(source=str(corpus_dir), tokenizer="byte", dir=str(tmp_path / "w"))
    assert (
        read_split(directory, "train").tolist()
        == read_split(prepare(whole, False), "train").tolist()
    )


def test_prepare_is_deterministic(tmp_path, corpus_dir):
    dirs = []
    for name in ("a", "b"):
        config = DataConfig(
            source=str(corpus_dir), tokenizer="bpe", vocab_size=300, dir=str(tmp_path / name)
        )
        dirs.append(prepare(config, progress=False))
    names = sorted(p.name for p in dirs[0].iterdir())
    assert names == sorted(p.name for p in dirs[1].iterdir())
    for name in names:
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name


def test_prepare_twice_is_a_no_op_and_other_settings_are_refused(tmp_path, corpus_file):
    config = DataConfig(source=str(corpus_file), tokenizer="byte", dir=str(tmp_path / "d"))
    directory = prepare(config, progress=False)
    stamp = (directory / "train-00000.bin").stat().st_mtime_ns
    assert prepare(config, progress=False) == directory
    assert (directory / "train-00000.bin").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="prepared with other settings"):
        prepare(DataConfig(source=str(corpus_file), tokenizer="char", dir=str(directory)), False)


def test_non_empty_directory_without_index_is_refused(tmp_path, corpus_file):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "stray.bin").write_bytes(b"x")
    config = DataConfig(source=str(corpus_file), tokenizer="byte", dir=str(tmp_path / "d"))
    with pytest.raises(DataError, match="has no index.json"):
        prepare(config, progress=False)
    (tmp_path / "d" / "stray.bin").unlink()  # an empty directory is fine
    assert (prepare(config, progress=False) / "index.json").is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "matches no files"),
        (b"", "no text"),
        (b"abc\x00def", "binary"),
        (b"\xe9t\xe9", "UTF-8"),
    ],
    ids=["missing", "empty", "binary", "latin1"],
)
def test_bad_source_fails_before_writing(tmp_path, content, message):
    path = tmp_path / "source.txt"
    if content is not None:
        path.write_bytes(content)
    # Non-UTF-8 bytes are replaced (and counted) by default; strict_utf8 makes them an error.
    config = DataConfig(
        source=str(path), tokenizer="byte", dir=str(tmp_path / "d"), strict_utf8=True
    )
    with pytest.raises(DataError, match=message):
        prepare(config, progress=False)
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.tmp").exists()


def test_token_dtype_boundary():
    assert token_dtype(257) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535 fit
    assert token_dtype(65537) == np.uint32
    assert token_dtype(128256) == np.uint32


class WideTokenizer:
    """A stand-in tokenizer with a Llama-3-sized vocabulary: ids above 65535."""

    kind = "byte"
    vocab_size = 128256
    eot_id = 128000

    def encode(self, text):
        return [70000 + b for b in text.encode()]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(i - 70000 for i in ids if i >= 70000).decode()

    def save(self, directory):
        write_descriptor(directory, {"type": "byte"})


def test_large_vocab_is_stored_as_uint32(tmp_path, corpus_file, monkeypatch):
    monkeypatch.setattr(prepare_module, "train_tokenizer", lambda config, docs: WideTokenizer())
    config = DataConfig(source=str(corpus_file), tokenizer="byte", dir=str(tmp_path / "d"))
    directory = prepare(config, progress=False)
    assert read_index(directory)["dtype"] == "uint32"
    tokens = read_split(directory, "train")
    assert tokens.dtype == np.uint32 and tokens.max() == 128000 and tokens[0] >= 70000
    text = corpus_file.read_text()
    assert len(tokens) == len(text[: int(len(text) * 0.95)].encode()) + 1


def test_default_data_dir():
    assert default_data_dir(DataConfig()) == Path("data/python-stdlib-bpe4096")
    assert default_data_dir(DataConfig(source="texts/shakespeare.txt", tokenizer="char")) == Path(
        "data/shakespeare-char"
    )
    assert default_data_dir(DataConfig(dir="elsewhere")) == Path("elsewhere")


def test_read_index_on_unprepared_directory(tmp_path):
    with pytest.raises(DataError, match="run `lmforge prepare`"):
        read_index(tmp_path)
