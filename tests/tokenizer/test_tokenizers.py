"""Byte, char and BPE tokenizers: round trips, save/load, the end-of-text token."""

from __future__ import annotations

import json

import pytest
from conftest import make_text

from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.tokenizer import (
    END_OF_TEXT,
    ByteTokenizer,
    CharTokenizer,
    HuggingFaceTokenizer,
    load_tokenizer,
)
from lmforge.tokenizer.base import DESCRIPTOR

SAMPLE = "def f(x):\n    return x * 2  # héllo wörld ✓ 日本\n"


@pytest.fixture(scope="module")
def bpe() -> HuggingFaceTokenizer:
    texts = [make_text(i, 40) for i in range(10)] + [SAMPLE]
    return HuggingFaceTokenizer.train(texts, vocab_size=300)


def test_byte_round_trip_and_ids():
    tok = ByteTokenizer()
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert tok.decode(ids) == SAMPLE
    assert tok.vocab_size == 257 and tok.eot_id == 256
    assert tok.decode([104, 105, 256, 33]) == "hi!"  # end-of-text is not text
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"  # a cut UTF-8 character
    assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]


def test_char_train_round_trip_and_unknown_character():
    tok = CharTokenizer.train(["hello", "world"])
    assert tok.chars == sorted(set("helloworld"))
    assert tok.vocab_size == len(tok.chars) + 1 and tok.eot_id == len(tok.chars)
    ids = tok.encode("hello world"[:5])
    assert tok.decode(ids) == "hello"
    assert tok.decode([*ids, tok.eot_id]) == "hello"
    with pytest.raises(DataError, match="'z' is not in this char-level vocabulary"):
        tok.encode("zebra")


def test_bpe_vocab_special_token_and_round_trip(bpe):
    assert bpe.vocab_size == 300
    assert bpe.eot_id == bpe.hf.token_to_id(END_OF_TEXT) == 0
    for text in (SAMPLE, make_text(99, 5), "", "   leading spaces", "\t\n\r"):
        assert bpe.decode(bpe.encode(text)) == text
    common = make_text(3, 5)
    assert len(bpe.encode(common)) < len(common.encode()) / 1.5  # merges compress
    assert bpe.decode([*bpe.encode("ab"), bpe.eot_id]) == "ab"
    assert bpe.encode_batch(["x y", SAMPLE]) == [bpe.encode("x y"), bpe.encode(SAMPLE)]
    assert all(0 <= i < 300 for i in bpe.encode(SAMPLE))


def test_literal_end_of_text_in_text_is_ordinary_text(tmp_path, bpe):
    text = f"a {END_OF_TEXT} b"
    for tokenizer in (bpe, ByteTokenizer(), CharTokenizer.train([text])):
        ids = tokenizer.encode(text)
        assert tokenizer.eot_id not in ids, tokenizer.kind
        assert tokenizer.decode(ids) == text, tokenizer.kind
    bpe.save(tmp_path / "bpe")
    assert load_tokenizer(tmp_path / "bpe").encode_batch([text]) == [bpe.encode(text)]


def test_bpe_too_small_vocab():
    with pytest.raises(ConfigError, match="at least 258"):
        HuggingFaceTokenizer.train(["abc"], vocab_size=257)


@pytest.mark.parametrize("kind", ["byte", "char", "huggingface"])
def test_save_load_round_trip(tmp_path, bpe, kind):
    tokenizer = {
        "byte": ByteTokenizer(),
        "char": CharTokenizer.train([SAMPLE]),
        "huggingface": bpe,
    }[kind]
    tokenizer.save(tmp_path / "tok")
    descriptor = json.loads((tmp_path / "tok" / DESCRIPTOR).read_text())
    assert descriptor["type"] == kind
    assert descriptor["special_tokens"] == {END_OF_TEXT: tokenizer.eot_id}
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.kind == kind
    assert (loaded.vocab_size, loaded.eot_id) == (tokenizer.vocab_size, tokenizer.eot_id)
    assert loaded.encode(SAMPLE) == tokenizer.encode(SAMPLE)
    assert loaded.decode(loaded.encode(SAMPLE)) == SAMPLE


def test_load_errors(tmp_path, bpe):
    with pytest.raises(CheckpointError, match="lmforge_tokenizer.json is missing"):
        load_tokenizer(tmp_path)
    (tmp_path / DESCRIPTOR).write_text(json.dumps({"type": "klingon"}))
    with pytest.raises(CheckpointError, match="unknown tokenizer type 'klingon'"):
        load_tokenizer(tmp_path)
    bpe.save(tmp_path / "bpe")
    (tmp_path / "bpe" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path / "bpe")
