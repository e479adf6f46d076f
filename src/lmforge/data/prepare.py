"""`lmforge prepare`: text source -> tokenizer + binary token shards + index.json, streaming.

Layout of a prepared directory:
    index.json               dtype, per-split shard files and token counts, tokenizer, source
    lmforge_tokenizer.json   (+ its files) the tokenizer: trained on the train split, or pretrained
    train-00000.bin ...      flat token ids, documents separated by end-of-text
    val-00000.bin ...
Documents stream from the source (readers.py) in batches to `data.workers` tokenizer processes
(an ordered imap, so any worker count gives the same bytes). Work happens in `<dir>.tmp`: each
finished shard is written as .tmp and renamed, then progress.json records the shards, the
partial-shard remainders and the document position. An interrupted prepare resumes from there
and produces the same bytes as an uninterrupted one. index.json is written last and the
directory renamed into place, so a half-written dataset is never taken as complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.config import DataConfig
from lmforge.data import registry
from lmforge.data.readers import ReadStats, iter_documents
from lmforge.data.shards import PROGRESS, ShardWriter, load_progress, save_progress
from lmforge.data.sources import Document, is_val_document, split_documents
from lmforge.errors import DataError
from lmforge.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HuggingFaceTokenizer,
    Tokenizer,
    load_pretrained_tokenizer,
    load_tokenizer,
)

INDEX = "index.json"
BATCH_DOCS = 256
BATCH_CHARS = 4 << 20  # bounds the memory a batch takes (a few huge documents)
POOL_MIN_BATCHES = 8  # fewer batches than this are tokenized in-process
TRAINED = ("byte", "char", "bpe")
SPLITS = ("train", "val")
DEFAULT_TRAIN_CHARS = DataConfig.tokenizer_train_chars


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
    source = config.source
    if source.startswith("hf:"):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", source[3:].split("/")[-1])
    else:
        name = source if source in registry.DATASETS else Path(source).stem
    vocab = str(config.vocab_size) if config.tokenizer == "bpe" else ""
    return Path("data") / f"{name}-{tokenizer_label(config.tokenizer)}{vocab}"


def fingerprint(config: DataConfig) -> dict:
    """The settings a prepared directory was built with; a mismatch means re-prepare. Settings
    at their defaults are left out, so directories prepared before they existed stay valid."""
    keys = ("source", "tokenizer", "val_fraction", "shard_tokens")
    fp = {k: getattr(config, k) for k in keys}
    if config.tokenizer == "bpe":
        fp["vocab_size"] = config.vocab_size
    if config.text_field != "text":
        fp["text_field"] = config.text_field
    if config.strict_utf8:
        fp["strict_utf8"] = True
    if config.tokenizer in ("bpe", "char") and config.tokenizer_train_chars != DEFAULT_TRAIN_CHARS:
        fp["tokenizer_train_chars"] = config.tokenizer_train_chars
    return fp


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def split_stream(
    config: DataConfig, stats: ReadStats, progress: bool = True
) -> Iterator[tuple[str, Document]]:
    """(split, document) in a fixed order. A lone document is split by characters (its tail is
    val); the last train document is held back so that it can become val if no other is."""
    if not 0.0 < config.val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {config.val_fraction}")
    documents = iter_documents(
        config.source, config.text_field, config.strict_utf8, stats, progress
    )
    head = list(islice(documents, 2))
    if not head:
        raise DataError(f"data source '{config.source}' contains no text (all files are empty)")
    if len(head) == 1 and head[0].split is None:
        train, val = split_documents(head, config.val_fraction)
        yield "train", train[0]
        yield "val", val[0]
        return
    held, any_val = None, False
    for document in chain(head, documents):
        split = document.split or (
            "val" if is_val_document(document.name, config.val_fraction) else "train"
        )
        if split == "val":
            any_val = True
            yield split, document
            continue
        if held is not None:
            yield "train", held
        held = document
    if held is None:
        raise DataError(f"data source '{config.source}' has no training documents")
    yield ("train" if any_val else "val"), held


def train_tokenizer(config: DataConfig, documents: Iterator[Document]) -> Tokenizer:
    """Train on the first data.tokenizer_train_chars characters of the train split."""

    def sample() -> Iterator[str]:
        left = config.tokenizer_train_chars
        for document in documents:
            if left <= 0:
                return
            yield document.text[:left]
            left -= len(document.text)

    if config.tokenizer == "byte":
        return ByteTokenizer()
    if config.tokenizer == "char":
        return CharTokenizer.train(sample())
    if config.tokenizer == "bpe":
        return HuggingFaceTokenizer.train(sample(), config.vocab_size)
    return load_pretrained_tokenizer(config.tokenizer)


_tokenizer: Tokenizer | None = None  # the tokenizer of this (worker) process


def _init_worker(directory: str) -> None:
    global _tokenizer
    _tokenizer = load_tokenizer(directory)


def _encode(batch: list[tuple[str, str]]) -> tuple[dict[str, np.ndarray], int, int]:
    """Token ids per split for one batch of (split, text), end-of-text after each document."""
    assert _tokenizer is not None
    dtype = token_dtype(_tokenizer.vocab_size)
    ids = _tokenizer.encode_batch([text for _, text in batch])
    out = {}
    for split in SPLITS:
        parts = [
            np.asarray([*tokens, _tokenizer.eot_id], dtype)
            for (s, _), tokens in zip(batch, ids, strict=True)
            if s == split
        ]
        out[split] = np.concatenate(parts) if parts else np.zeros(0, dtype)
    nbytes = sum(len(text.encode("utf-8", "surrogatepass")) for _, text in batch)
    return out, nbytes, len(batch)


def _batches(stream: Iterator[tuple[str, Document]]) -> Iterator[list[tuple[str, str]]]:
    batch, chars = [], 0
    for split, document in stream:
        batch.append((split, document.text))
        chars += len(document.text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def prepare(config: DataConfig, progress: bool = True) -> Path:
    """Prepare the dataset described by config (a no-op if it is already prepared)."""
    directory = default_data_dir(config)
    fp = fingerprint(config)
    index_path = directory / INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == fp:
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
    if config.workers < 0:
        raise DataError(f"data.workers must be >= 0 (0: one per CPU), got {config.workers}")

    staging = directory.with_name(directory.name + ".tmp")
    parent_existed = staging.parent.exists()
    state = load_progress(staging, fp)
    try:
        return _prepare(config, directory, staging, state, progress)
    except DataError:
        if not (staging / PROGRESS).is_file():  # nothing worth resuming: leave no trace
            shutil.rmtree(staging, ignore_errors=True)
            if not parent_existed and staging.parent.is_dir() and not any(staging.parent.iterdir()):
                staging.parent.rmdir()
        raise


def _start(config: DataConfig, staging: Path, state: dict | None, progress: bool):
    """The tokenizer and the progress state: on resume the ones the finished shards were made
    with, else a trained or pretrained tokenizer saved into a fresh `staging`."""
    if state is not None:
        return load_tokenizer(staging), state
    # A pretrained tokenizer is loaded before the text, so a bad spec fails fast.
    pretrained = (
        None if config.tokenizer in TRAINED else load_pretrained_tokenizer(config.tokenizer)
    )
    stream = split_stream(config, ReadStats(), progress)
    if pretrained is None:
        tokenizer = train_tokenizer(config, (d for s, d in stream if s == "train"))
    else:
        next(stream)  # an empty source fails here, before anything is written
        tokenizer = pretrained
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer.save(staging)
    state = {"fingerprint": fingerprint(config), "emitted": 0, "checkpoint": 0}
    return tokenizer, state | {"splits": {s: [] for s in SPLITS}}


def _prepare(
    config: DataConfig, directory: Path, staging: Path, state: dict | None, progress: bool
) -> Path:
    stats = ReadStats()
    tokenizer, state = _start(config, staging, state, progress)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {}
    for split in SPLITS:
        pending_path = staging / f"{split}.pending-{state['checkpoint']}"
        pending = np.fromfile(pending_path, dtype) if pending_path.is_file() else np.zeros(0, dtype)
        writers[split] = ShardWriter(
            staging, split, config.shard_tokens, state["splits"][split], pending
        )

    stream = split_stream(config, stats, progress)
    counts = {s: 0 for s in SPLITS}
    for split, _ in islice(stream, state["emitted"]):  # documents already in finished shards
        counts[split] += 1
    emitted = state["emitted"]

    def counted(items: Iterator[tuple[str, Document]]) -> Iterator[tuple[str, Document]]:
        for split, document in items:
            counts[split] += 1
            yield split, document

    workers = config.workers or os.cpu_count() or 1
    batches = _batches(counted(stream))
    head = list(islice(batches, POOL_MIN_BATCHES))
    if len(head) < POOL_MIN_BATCHES:
        workers = 1  # a small corpus: starting processes would cost more than it saves
    batches = chain(head, batches)
    bar = tqdm(unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    start, tokens_done = time.perf_counter(), 0
    pool = None
    if workers > 1:
        # spawn: a fresh interpreter per worker, with no forked tokenizer thread state.
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(workers, initializer=_init_worker, initargs=(str(staging),))
        results = pool.imap(_encode, batches, chunksize=1)
    else:
        global _tokenizer
        _tokenizer = tokenizer
        results = map(_encode, batches)
    try:
        for tokens, nbytes, ndocs in results:
            wrote = [writers[s].add(tokens[s]) for s in SPLITS]
            emitted += ndocs  # not counts: the reader runs ahead of the finished batches
            tokens_done += sum(len(t) for t in tokens.values())
            bar.update(nbytes)
            bar.set_postfix(
                tok_s=f"{tokens_done / (time.perf_counter() - start):.3g}", refresh=False
            )
            if any(wrote):
                state = {**state, "emitted": emitted}
                save_progress(staging, state, writers)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    splits = {s: writers[s].finish() for s in SPLITS}
    return _finish(config, directory, staging, tokenizer, counts, splits, stats)


def _finish(
    config: DataConfig,
    directory: Path,
    staging: Path,
    tokenizer,
    counts: dict,
    splits: dict,
    stats: ReadStats,
) -> Path:
    """Report replaced bytes, write the index and move the finished shards into place."""
    if stats.replaced_bytes:
        print(
            f"warning: replaced {stats.replaced_bytes} non-UTF-8 bytes with U+FFFD in "
            f"{len(stats.files_with_replacements)} file(s), e.g. {stats.files_with_replacements[0]}"
            "; set data.strict_utf8=true to fail instead",
            file=sys.stderr,
        )
    index = {
        "fingerprint": fingerprint(config),
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokenizer": tokenizer.kind,
        "documents": counts,
        "splits": splits,
    }
    for leftover in [*staging.glob("*.pending-*"), staging / PROGRESS]:
        leftover.unlink(missing_ok=True)
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
