"""Text sources: resolving files, rejecting unusable input, the deterministic train/val split."""

from __future__ import annotations

import pytest

from lmforge.data.readers import iter_documents, local_files
from lmforge.data.sources import Document, python_stdlib_files, split_documents
from lmforge.errors import DataError


def load_documents(source: str) -> list[Document]:
    return list(iter_documents(source, strict_utf8=True, progress=False))


def test_file_directory_and_glob(corpus_dir):
    files = local_files(str(corpus_dir))
    assert [f.name for f in files] == [f"doc{i}.txt" for i in range(8)]  # .bin is skipped
    assert local_files(str(corpus_dir / "doc3.txt")) == [corpus_dir / "doc3.txt"]
    assert [f.name for f in local_files(str(corpus_dir / "doc[12].txt"))] == [
        "doc1.txt",
        "doc2.txt",
    ]
    documents = load_documents(str(corpus_dir))
    assert len(documents) == 8
    assert documents[0].text == (corpus_dir / "doc0.txt").read_text()


def test_python_stdlib_corpus_has_no_tests_or_site_packages():
    files = python_stdlib_files()
    assert len(files) > 100
    assert any(f.name == "dataclasses.py" for f in files)
    assert not any("site-packages" in f.parts or f.name.startswith("test_") for f in files)
    assert not any("encodings" in f.parts or "pydoc_data" in f.parts for f in files)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "matches no files"),
        (lambda p: p.write_bytes(b"text\x00\x01\x02more"), "looks binary"),
        (lambda p: p.write_bytes("caf\xe9 latin-1".encode("latin-1")), "is not valid UTF-8"),
    ],
    ids=["missing", "binary", "latin1"],
)
def test_bad_input_is_a_data_error(tmp_path, setup, message):
    path = tmp_path / "input.txt"
    setup(path)
    with pytest.raises(DataError, match=message):
        load_documents(str(path))


@pytest.mark.parametrize("content", ["", "  \n\t\n"], ids=["empty", "whitespace"])
def test_empty_files_give_no_documents(tmp_path, content):
    # An all-empty source is refused by prepare ("contains no text"; tests/data/test_prepare_scale).
    (tmp_path / "input.txt").write_text(content)
    assert load_documents(str(tmp_path / "input.txt")) == []


def test_bad_file_inside_a_directory_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00\x00")
    with pytest.raises(DataError, match="bad.txt"):
        load_documents(str(tmp_path))


def test_directory_without_text_files(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="matches no files"):
        load_documents(str(tmp_path))


def docs(n: int) -> list[Document]:
    return [Document(f"file{i}.txt", f"text {i}") for i in range(n)]


def test_split_is_deterministic_and_stable_under_additions():
    train, val = split_documents(docs(200), 0.1)
    again_train, again_val = split_documents(docs(200), 0.1)
    assert [d.name for d in train] == [d.name for d in again_train]
    assert [d.name for d in val] == [d.name for d in again_val]
    assert 5 <= len(val) <= 40 and len(train) + len(val) == 200
    assert not {d.name for d in train} & {d.name for d in val}
    # Adding documents never moves existing ones between splits.
    more_train, more_val = split_documents(docs(300), 0.1)
    assert {d.name for d in val} <= {d.name for d in more_val}
    assert {d.name for d in train} <= {d.name for d in more_train}


def test_single_document_is_split_by_characters():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val = split_documents([Document("one", text)], 0.05)
    assert train[0].text == text[:950] and val[0].text == text[950:]
    assert val[0].name == "one:val"


def test_tiny_corpus_always_gets_a_validation_document():
    for n in (2, 3):
        train, val = split_documents(docs(n), 0.01)
        assert len(val) >= 1 and len(train) >= 1 and len(train) + len(val) == n


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_val_fraction(fraction):
    with pytest.raises(DataError, match="val_fraction must be in"):
        split_documents(docs(3), fraction)
