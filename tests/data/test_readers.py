"""Streaming readers: txt (whole or <|endoftext|>-separated), jsonl, json, parquet, bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.data import readers
from lmforge.data.readers import ReadStats, iter_documents
from lmforge.errors import DataError


def test_endoftext_separated_txt(shared_data):
    path = shared_data / "tinystories" / "tinystories_sample_cs336.txt"
    documents = list(iter_documents(str(path)))
    assert len(documents) == 5  # 5 separators, the last one at the very end
    assert all("<|endoftext|>" not in d.text and d.text == d.text.strip() for d in documents)
    assert documents[0].name == f"{path}#0"


def test_big_txt_is_read_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "READ_CHUNK", 7)  # forces pieces and characters across chunks
    (tmp_path / "a.txt").write_text(
        "über eins<|endoftext|>zwei ß\n<|endoftext|>\n<|endoftext|>drei"
    )
    (tmp_path / "b.txt").write_text("no separators here, é" * 3)
    texts = [d.text for d in iter_documents(str(tmp_path))]
    assert texts == ["über eins", "zwei ß", "drei", "no separators here, é" * 3]


def test_jsonl_json_and_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one", "n": 1}\n\n{"text": "two"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"body": "x", "text": "three"}]))
    pq.write_table(pa.table({"text": ["four", "five"]}), tmp_path / "c.parquet")
    documents = list(iter_documents(str(tmp_path)))
    assert [d.text for d in documents] == ["one", "two", "three", "four", "five"]
    assert documents[1].name == f"{tmp_path / 'a.jsonl'}:3"
    bodies = list(iter_documents(str(tmp_path / "b.json"), text_field="body"))
    assert [d.text for d in bodies] == ["x"]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet"])
def test_missing_text_field_lists_the_fields(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "parquet":
        pq.write_table(pa.table({"content": ["a"], "id": [1]}), path)
    else:
        record = json.dumps({"content": "a", "id": 1})
        path.write_text(record if suffix == "jsonl" else f"[{record}]")
    with pytest.raises(DataError, match=r"no field 'text' \(fields: content, id\)") as error:
        list(iter_documents(str(path)))
    assert "data.text_field" in str(error.value) and "\n" not in str(error.value)


def test_bad_json_names_the_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match="a.jsonl:2 is not valid JSON"):
        list(iter_documents(str(tmp_path / "a.jsonl")))


def test_non_utf8_is_replaced_and_counted_or_strict(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good text\n")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 and \xff\xfe bytes")
    stats = ReadStats()
    texts = [d.text for d in iter_documents(str(tmp_path), stats=stats)]
    assert texts[1] == "caf\ufffd and \ufffd\ufffd bytes"
    assert stats.replaced_bytes == 3 and stats.files_with_replacements == [str(tmp_path / "b.txt")]
    with pytest.raises(DataError, match=r"b.txt is not valid UTF-8 \(byte 3\)"):
        list(iter_documents(str(tmp_path), strict_utf8=True))
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xe9"}\n')
    with pytest.raises(DataError, match=r"byte 25\)"):
        list(iter_documents(str(tmp_path / "c.jsonl"), strict_utf8=True))


def test_unknown_source_and_bad_hf_id():
    with pytest.raises(DataError, match="matches no files.*shakespeare.*hf:<id>"):
        list(iter_documents("no-such-dataset"))
    with pytest.raises(DataError, match="hf:<dataset id>"):
        list(iter_documents("hf:a:b:c:d"))
