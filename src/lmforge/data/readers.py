"""Streaming document readers: .txt, .jsonl, .json, .parquet files, directories, globs, named
and hf: datasets. Documents come one at a time, so no corpus is ever held in memory whole.

A .txt file is one document, unless it contains `<|endoftext|>` separators (the TinyStoriesV2
layout): then each piece between them is a document. .jsonl/.json/.parquet records give their
`text_field`. Bytes that are not UTF-8 are replaced (U+FFFD) and counted unless strict_utf8.
"""

from __future__ import annotations

import codecs
import glob
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data import registry
from lmforge.data.sources import Document, python_stdlib_files
from lmforge.errors import DataError
from lmforge.tokenizer.base import END_OF_TEXT

TEXT_SUFFIXES = (".txt", ".py", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
READ_CHUNK = 8 << 20


@dataclass
class ReadStats:
    """What reading skipped or repaired, for the warning at the end of prepare."""

    replaced_bytes: int = 0
    files_with_replacements: list[str] = field(default_factory=list)


_replaced = [0]


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += error.end - error.start  # bad bytes, not U+FFFD characters
    return "\ufffd", error.end


codecs.register_error("lmforge-count", _count_and_replace)


@dataclass
class _Decoder:
    """UTF-8 decoding that replaces and counts bad bytes, or raises naming the byte offset."""

    path: Path
    strict: bool
    stats: ReadStats

    def decode(self, raw: bytes, offset: int = 0) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            if self.strict:
                raise DataError(
                    f"{self.path} is not valid UTF-8 (byte {offset + error.start}); convert it "
                    f"(e.g. `iconv -f latin1 -t utf-8`) or set data.strict_utf8=false"
                ) from None
        before = _replaced[0]
        text = raw.decode("utf-8", errors="lmforge-count")
        self.stats.replaced_bytes += _replaced[0] - before
        if str(self.path) not in self.stats.files_with_replacements:
            self.stats.files_with_replacements.append(str(self.path))
        return text


def _check_binary(path: Path, head: bytes) -> None:
    if b"\x00" in head[:8192]:
        raise DataError(f"{path} looks binary (it contains NUL bytes); give UTF-8 text files")


def read_txt(path: Path, name: str, decoder: _Decoder) -> Iterator[Document]:
    """One document, or one per `<|endoftext|>`-separated piece, read in chunks."""
    with open(path, "rb") as handle:
        head = handle.read(READ_CHUNK)
        _check_binary(path, head)
        if len(head) < READ_CHUNK and END_OF_TEXT.encode() not in head:
            yield Document(name, decoder.decode(head))  # the common small-file case, exact text
            return
        separator = END_OF_TEXT.encode()
        buffer, offset, index, raw = b"", 0, 0, head
        while raw:
            buffer += raw
            pieces = buffer.split(separator)
            buffer = pieces.pop()  # may end mid-piece (or mid-character): keep for next chunk
            for piece in pieces:
                text = decoder.decode(piece, offset).strip()
                offset += len(piece) + len(separator)
                if text:
                    yield Document(f"{name}#{index}", text)
                index += 1
            raw = handle.read(READ_CHUNK)
        text = decoder.decode(buffer, offset)
        if index == 0:
            yield Document(name, text)  # a big file without separators is still one document
        elif text.strip():
            yield Document(f"{name}#{index}", text.strip())


def _field_error(path: Path, text_field: str, fields: list[str]) -> DataError:
    return DataError(
        f"{path} has no field '{text_field}' (fields: {', '.join(fields) or 'none'}); "
        "set data.text_field to one of them"
    )


def _record_text(record: object, path: Path, where: str, text_field: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f'{path}:{where} is not a JSON object; give records like {{"text": ...}}')
    if text_field not in record:
        raise _field_error(path, text_field, list(record))
    value = record[text_field]
    return value if isinstance(value, str) else "" if value is None else str(value)


def read_jsonl(path: Path, name: str, decoder: _Decoder, text_field: str) -> Iterator[Document]:
    with open(path, "rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(decoder.decode(line, start))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{number} is not valid JSON ({error.msg}); fix it"
                ) from None
            yield Document(f"{name}:{number}", _record_text(record, path, str(number), text_field))


def read_json(path: Path, name: str, decoder: _Decoder, text_field: str) -> Iterator[Document]:
    """A JSON array of records (json has no streaming parser: the array is loaded whole)."""
    try:
        records = json.loads(decoder.decode(path.read_bytes()))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if isinstance(records, dict):  # {"data": [...]}-style wrappers: take the one list inside
        lists = [v for v in records.values() if isinstance(v, list)]
        records = lists[0] if len(lists) == 1 else [records]
    for number, record in enumerate(records):
        yield Document(f"{name}:{number}", _record_text(record, path, str(number), text_field))


def read_parquet(path: Path, name: str, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq  # imported here: only parquet sources need it

    parquet = pq.ParquetFile(path)
    fields = parquet.schema_arrow.names
    if text_field not in fields:
        raise _field_error(path, text_field, fields)
    row = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            yield Document(f"{name}:{row}", value if isinstance(value, str) else str(value or ""))
            row += 1


def read_file(
    path: Path, name: str, text_field: str, strict_utf8: bool, stats: ReadStats
) -> Iterator[Document]:
    decoder = _Decoder(path, strict_utf8, stats)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, name, decoder, text_field)
    if suffix == ".json":
        return read_json(path, name, decoder, text_field)
    if suffix == ".parquet":
        return read_parquet(path, name, text_field)
    return read_txt(path, name, decoder)


def local_files(source: str) -> list[Path]:
    """A file, a directory (its text and record files, recursively) or a glob, sorted."""
    path = Path(source).expanduser()
    if path.is_dir():
        suffixes = TEXT_SUFFIXES + RECORD_SUFFIXES
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(
            f"data source '{source}' matches no files; give an existing file, directory or glob "
            f"(.txt .jsonl .json .parquet), a dataset ({', '.join(registry.DATASETS)}) or hf:<id>"
        )
    return files


def iter_documents(
    source: str,
    text_field: str = "text",
    strict_utf8: bool = False,
    stats: ReadStats | None = None,
    progress: bool = True,
) -> Iterator[Document]:
    """Every non-empty document of source, in a fixed order (Document.split set where the
    dataset defines its own train/val split)."""
    stats = stats if stats is not None else ReadStats()
    if source == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        for path in python_stdlib_files():
            try:  # a stray non-UTF-8 or binary stdlib file is skipped, not fatal
                name = str(path.relative_to(root))
                documents = list(read_txt(path, name, _Decoder(path, True, stats)))
            except DataError:
                continue
            yield from (d for d in documents if d.text.strip())
        return
    if registry.is_remote(source):
        for remote in registry.resolve(source):
            local = remote.local(progress)
            # Named by URL file name (not the cache path), so the split is the same everywhere.
            for document in read_file(local, remote.name, text_field, strict_utf8, stats):
                if document.text.strip():
                    document.split = remote.split
                    yield document
        return
    for path in local_files(source):
        for document in read_file(path, str(path), text_field, strict_utf8, stats):
            if document.text.strip():
                yield document
