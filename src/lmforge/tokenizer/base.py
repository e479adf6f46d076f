"""The tokenizer interface every lmforge tokenizer implements, and loading one from a directory.

A tokenizer directory (inside every prepared dataset and every checkpoint) holds
`lmforge_tokenizer.json`, which names the tokenizer type and its special tokens, plus whatever
files that type needs (`tokenizer.json` for BPE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from lmforge.errors import CheckpointError

DESCRIPTOR = "lmforge_tokenizer.json"
END_OF_TEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_id: int
    """End-of-text token placed between documents."""

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


def write_descriptor(directory: Path, payload: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DESCRIPTOR).write_text(json.dumps(payload, indent=2, ensure_ascii=False))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in a checkpoint or prepared-data directory."""
    from lmforge.tokenizer.bpe import BPETokenizer
    from lmforge.tokenizer.simple import ByteTokenizer, CharTokenizer

    path = Path(directory) / DESCRIPTOR
    if not path.is_file():
        raise CheckpointError(
            f"no tokenizer in {directory} ({DESCRIPTOR} is missing); "
            "point at a checkpoint or prepared-data directory written by lmforge"
        )
    descriptor = json.loads(path.read_text())
    loaders = {"byte": ByteTokenizer.load, "char": CharTokenizer.load, "bpe": BPETokenizer.load}
    kind = descriptor.get("type")
    if kind not in loaders:
        raise CheckpointError(f"unknown tokenizer type {kind!r} in {path}")
    return loaders[kind](Path(directory), descriptor)
