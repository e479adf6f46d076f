"""The tokenizer interface every lmforge tokenizer implements, and loading one from a directory.

A tokenizer directory (inside every prepared dataset and every checkpoint) holds
`lmforge_tokenizer.json`, which names the tokenizer type, its special tokens and chat template,
plus whatever files that type needs (`tokenizer.json` for Hugging Face tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from lmforge.errors import CheckpointError, LmforgeError
from lmforge.json_files import read_json_object

DESCRIPTOR = "lmforge_tokenizer.json"
END_OF_TEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_id: int
    """End-of-text: placed between documents, and ends a chat reply."""
    bos_id: int | None
    add_bos: bool
    """Put bos_id in front of every prompt (Llama-style models expect it)."""
    chat_template: str | None
    """Jinja chat template (Hugging Face convention), if the tokenizer came with one."""
    stop_ids: tuple[int, ...]
    """Ids that end generation: eot_id plus chat end-of-turn tokens (<|eot_id|>, <|im_end|>...)."""

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Special-token strings in text are plain text unless allow_special."""
        ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int], skip_special: bool = True) -> str: ...

    def save(self, directory: Path) -> None: ...


def write_descriptor(directory: Path, payload: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DESCRIPTOR).write_text(json.dumps(payload, indent=2, ensure_ascii=False))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in a checkpoint or prepared-data directory."""
    from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
    from lmforge.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer
    from lmforge.tokenizer.simple import ByteTokenizer, CharTokenizer
    from lmforge.tokenizer.tiktoken_tokenizer import TiktokenTokenizer

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
