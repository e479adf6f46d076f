"""`lmforge prepare`: text source -> tokenizer + binary token shards + index.json.

Layout of a prepared directory:
    index.json               dtype, per-split shard files and token counts, tokenizer, source
    lmforge_tokenizer.json   (+ its files) the tokenizer: trained on the train split, or pretrained
    train-00000.bin ...      flat token ids, documents separated by end-of-text
    val-00000.bin ...
The directory is built under a temporary name and renamed into place, so a half-written dataset
is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.config import DataConfig
from lmforge.data.sources import Document, load_documents, split_documents
from lmforge.errors import DataError
from lmforge.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HuggingFaceTokenizer,
    Tokenizer,
    load_pretrained_tokenizer,
)

INDEX = "index.json"
ENCODE_CHUNK_DOCS = 256
TRAINED = ("byte", "char", "bpe")


def tokenizer_label(tokenizer: str) -> str:
    """A short, path-safe name for data.tokenizer: the spec, or a pretrained one's folder/file."""
    label = tokenizer
    if tokenizer not in TRAINED:
        path = Path(tokenizer)
        generic = path.stem in ("tokenizer", "encoder", "vocab") and path.parent.name
        label = path.parent.name if generic else path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "pretrained"


def default_data_dir(config: DataConfig) -> Path:
    if config.dir:
        return Path(config.dir)
    name = Path(config.source).stem if config.source not in ("python-stdlib",) else config.source
    vocab = str(config.vocab_size) if config.tokenizer == "bpe" else ""
    return Path("data") / f"{name}-{tokenizer_label(config.tokenizer)}{vocab}"


def fingerprint(config: DataConfig) -> dict:
    """The settings a prepared directory was built with; a mismatch means re-prepare."""
    keys = ("source", "tokenizer", "val_fraction", "shard_tokens")
    fp = {k: getattr(config, k) for k in keys}
    if config.tokenizer == "bpe":
        fp["vocab_size"] = config.vocab_size
    return fp


def train_tokenizer(config: DataConfig, documents: list[Document]) -> Tokenizer:
    texts = (d.text for d in documents)
    if config.tokenizer == "byte":
        return ByteTokenizer()
    if config.tokenizer == "char":
        return CharTokenizer.train(texts)
    if config.tokenizer == "bpe":
        return HuggingFaceTokenizer.train(texts, config.vocab_size)
    return load_pretrained_tokenizer(config.tokenizer)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shards(
    documents: list[Document],
    tokenizer: Tokenizer,
    directory: Path,
    split: str,
    shard_tokens: int,
    progress: bool = True,
) -> list[dict]:
    """Tokenize documents in batches and write them as shards of at most shard_tokens tokens."""
    dtype = token_dtype(tokenizer.vocab_size)
    shards: list[dict] = []
    buffer: list[np.ndarray] = []
    buffered = 0

    def flush() -> None:
        nonlocal buffer, buffered
        if not buffered:
            return
        tokens = np.concatenate(buffer)
        while len(tokens):
            name = f"{split}-{len(shards):05d}.bin"
            head, tokens = tokens[:shard_tokens], tokens[shard_tokens:]
            head.tofile(directory / name)
            shards.append({"file": name, "tokens": int(len(head))})
        buffer, buffered = [], 0

    total_chars = sum(len(d.text) for d in documents)
    bar = tqdm(
        total=total_chars,
        unit="char",
        unit_scale=True,
        desc=f"tokenize {split}",
        disable=not progress,
    )
    for start in range(0, len(documents), ENCODE_CHUNK_DOCS):
        chunk = documents[start : start + ENCODE_CHUNK_DOCS]
        for ids in tokenizer.encode_batch([d.text for d in chunk]):
            ids.append(tokenizer.eot_id)
            buffer.append(np.asarray(ids, dtype=dtype))
            buffered += len(ids)
        bar.update(sum(len(d.text) for d in chunk))
        if buffered >= shard_tokens:
            flush()
    flush()
    bar.close()
    return shards


def prepare(config: DataConfig, progress: bool = True) -> Path:
    """Prepare the dataset described by config (a no-op if it is already prepared)."""
    directory = default_data_dir(config)
    index_path = directory / INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == fingerprint(config):
            return directory
        raise DataError(
            f"{directory} holds data prepared with other settings ({index.get('fingerprint')}); "
            "set data.dir to a new directory or delete the old one"
        )
    if directory.exists() and any(directory.iterdir()):
        raise DataError(
            f"{directory} exists but has no {INDEX}; delete it or set data.dir elsewhere"
        )
    if config.shard_tokens <= 0:
        raise DataError(f"data.shard_tokens must be positive, got {config.shard_tokens}")

    # A pretrained tokenizer is loaded before the text, so a bad spec fails fast.
    pretrained = None
    if config.tokenizer not in TRAINED:
        pretrained = load_pretrained_tokenizer(config.tokenizer)
    documents = load_documents(config.source)
    train_docs, val_docs = split_documents(documents, config.val_fraction)
    tokenizer = pretrained or train_tokenizer(config, train_docs)

    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer.save(staging)
    splits = {
        split: write_shards(docs, tokenizer, staging, split, config.shard_tokens, progress)
        for split, docs in (("train", train_docs), ("val", val_docs))
    }
    index = {
        "fingerprint": fingerprint(config),
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokenizer": tokenizer.kind,
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "splits": splits,
    }
    (staging / INDEX).write_text(json.dumps(index, indent=2))
    if directory.exists():
        directory.rmdir()  # empty, checked above
    staging.rename(directory)
    return directory


def read_index(directory: Path) -> dict:
    path = Path(directory) / INDEX
    if not path.is_file():
        raise DataError(
            f"{directory} is not a prepared dataset ({INDEX} missing); run `lmforge prepare`"
        )
    return json.loads(path.read_text())
