"""Load the tokenizer saved in a checkpoint or prepared-data directory, whatever its type."""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import CheckpointError, LmforgeError
from lmforge.json_files import read_json_object
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
    descriptor = read_json_object(path)
    loaders = {
        "byte": ByteTokenizer.load,
        "char": CharTokenizer.load,
        "huggingface": HuggingFaceTokenizer.load,
        "tiktoken": TiktokenTokenizer.load,
        "sentencepiece": SentencePieceTokenizer.load,
    }
    kind = descriptor.get("type")
    if not isinstance(kind, str) or kind not in loaders:
        raise CheckpointError(f"unknown tokenizer type {kind!r} in {path}")
    try:
        return loaders[kind](Path(directory), descriptor)
    except LmforgeError:
        raise
    except Exception as error:  # noqa: BLE001 (each tokenizer library raises its own types)
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise CheckpointError(
            f"the {kind} tokenizer in {directory} cannot be loaded ({type(error).__name__}: "
            f"{reason}); its {DESCRIPTOR} or tokenizer file is corrupt: use another checkpoint"
        ) from None
