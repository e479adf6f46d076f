"""Byte-level and character-level tokenizers: no training, no merges, fully reversible."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lmforge.errors import DataError
from lmforge.tokenizer.base import END_OF_TEXT, write_descriptor


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; end-of-text is 256."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256
    stop_ids = (256,)
    bos_id = None
    add_bos = False
    chat_template = None

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        if not skip_special:  # end-of-text shows as its marker string
            pieces, current = [], []
            for i in ids:
                if i < 256:
                    current.append(i)
                else:
                    pieces.append(bytes(current).decode("utf-8", errors="replace"))
                    current = []
            pieces.append(bytes(current).decode("utf-8", errors="replace"))
            return END_OF_TEXT.join(pieces)
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        write_descriptor(directory, {"type": self.kind, "special_tokens": {END_OF_TEXT: 256}})

    @classmethod
    def load(cls, directory: Path, descriptor: dict) -> ByteTokenizer:
        return cls()


class CharTokenizer:
    """One id per distinct character seen in the training text, then end-of-text."""

    kind = "char"
    bos_id = None
    add_bos = False
    chat_template = None

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.char_to_id = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars)
        self.stop_ids = (self.eot_id,)
        self.vocab_size = len(chars) + 1

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        try:
            return [self.char_to_id[c] for c in text]
        except KeyError as missing:
            raise DataError(
                f"character {missing.args[0]!r} is not in this char-level vocabulary "
                f"({len(self.chars)} characters); use only characters from the training text"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        if not skip_special:
            return "".join(self.chars[i] if i < len(self.chars) else END_OF_TEXT for i in ids)
        return "".join(self.chars[i] for i in ids if i < len(self.chars))

    def save(self, directory: Path) -> None:
        write_descriptor(
            directory,
            {"type": self.kind, "chars": self.chars, "special_tokens": {END_OF_TEXT: self.eot_id}},
        )

    @classmethod
    def load(cls, directory: Path, descriptor: dict) -> CharTokenizer:
        return cls(descriptor["chars"])
