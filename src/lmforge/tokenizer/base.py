"""The tokenizer interface every lmforge tokenizer implements, and its directory descriptor.

A tokenizer directory (inside every prepared dataset and every checkpoint) holds
`lmforge_tokenizer.json`, which names the tokenizer type, its special tokens and chat template,
plus whatever files that type needs (`tokenizer.json` for Hugging Face tokenizers). Loading one
back is `lmforge.tokenizer.loading.load_tokenizer`, which knows every type; this module knows none,
so each tokenizer class can import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

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
