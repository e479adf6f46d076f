"""Load the tokenizer saved in a checkpoint or prepared-data directory, whatever its type."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.errors import CheckpointError
from lmforge.tokenizer.base import DESCRIPTOR, Tokenizer
from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
from lmforge.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer
from lmforge.tokenizer.simple import ByteTokenizer, CharTokenizer
from lmforge.tokenizer.tiktoken_tokenizer import TiktokenTokenizer


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in a checkpoint or prepared-data directory."""
    path = Path(directory) / DESCRIPTOR
    if not path.is_file():
        raise CheckpointError(
            f"no tokenizer in {directory} ({DESCRIPTOR} is missing); "
            "point at a checkpoint or prepared-data directory written by lmforge"
        )
    descriptor = json.loads(path.read_text())
    loaders = {
        "byte": ByteTokenizer.load,
        "char": CharTokenizer.load,
        "huggingface": HuggingFaceTokenizer.load,
        "tiktoken": TiktokenTokenizer.load,
        "sentencepiece": SentencePieceTokenizer.load,
    }
    kind = descriptor.get("type")
    if kind not in loaders:
        raise CheckpointError(f"unknown tokenizer type {kind!r} in {path}")
    return loaders[kind](Path(directory), descriptor)
