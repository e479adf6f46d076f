"""SentencePiece tokenizers (Llama 2, Mistral, TinyLlama: a `tokenizer.model` protobuf)."""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm

from lmforge.errors import CheckpointError, DataError
from lmforge.tokenizer.base import write_descriptor

MODEL_FILE = "tokenizer.model"


class SentencePieceTokenizer:
    """A SentencePieceProcessor; bos / eos come from the model (Llama 2: <s>=1, </s>=2).

    SentencePiece never recognises control tokens (<s>, </s>) in text, so allow_special splits
    the text at them first and encodes each piece on its own, as Meta's Llama 2 chat code does.
    """

    kind = "sentencepiece"

    def __init__(
        self, model: str | Path | bytes, chat_template: str | None = None, add_bos: bool = True
    ):
        if not isinstance(model, bytes):
            if not Path(model).is_file():
                raise DataError(f"SentencePiece model {model} is missing; give a tokenizer.model")
            model = Path(model).read_bytes()
        self.proto = model
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load_from_serialized_proto(model)
        except (RuntimeError, OSError, TypeError):
            raise DataError("not a valid SentencePiece model; give a tokenizer.model") from None
        self.vocab_size = self.sp.get_piece_size()
        self.chat_template = chat_template
        if self.sp.eos_id() < 0:
            raise DataError("SentencePiece model has no eos token; give one that defines </s>")
        self.eot_id = self.sp.eos_id()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.add_bos = add_bos and self.bos_id is not None
        self.stop_ids = (self.eot_id,)  # Llama 2 chat ends each reply with </s>
        special = [
            i for i in range(self.vocab_size) if self.sp.is_control(i) or self.sp.is_unknown(i)
        ]
        self.special_ids = frozenset(special)
        pieces = sorted((self.sp.id_to_piece(i) for i in special), key=len, reverse=True)
        self.special_by_piece = {self.sp.id_to_piece(i): i for i in special}
        self.special_pattern = re.compile("|".join(re.escape(p) for p in pieces if p))

    @classmethod
    def from_serialized(
        cls, model_proto: bytes, chat_template: str | None = None, add_bos: bool = True
    ) -> SentencePieceTokenizer:
        """From a serialized ModelProto (e.g. one rebuilt from a GGUF vocabulary)."""
        return cls(bytes(model_proto), chat_template=chat_template, add_bos=add_bos)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if not allow_special or not self.special_pattern.pattern:
            return self.sp.encode(text)
        ids: list[int] = []
        start = 0
        for match in self.special_pattern.finditer(text):
            if match.start() > start:
                ids += self.sp.encode(text[start : match.start()])
            ids.append(self.special_by_piece[match.group()])
            start = match.end()
        if start < len(text):
            ids += self.sp.encode(text[start:])
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        # A model's vocabulary is padded past the tokenizer's (to a multiple of 64): drop such ids.
        ids = [int(i) for i in ids if 0 <= i < self.vocab_size]
        if skip_special:
            return self.sp.decode([i for i in ids if i not in self.special_ids])
        parts, run = [], []
        for i in ids:
            if i in self.special_ids:
                parts += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join([*parts, self.sp.decode(run)])

    def save(self, directory: Path) -> None:
        write_descriptor(
            directory,
            {
                "type": self.kind,
                "file": MODEL_FILE,
                "add_bos": self.add_bos,
                "chat_template": self.chat_template,
                "special_tokens": {self.sp.id_to_piece(i): i for i in sorted(self.special_ids)},
            },
        )
        (directory / MODEL_FILE).write_bytes(self.proto)

    @classmethod
    def load(cls, directory: Path, descriptor: dict) -> SentencePieceTokenizer:
        path = Path(directory) / descriptor.get("file", MODEL_FILE)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer file {path} is missing; copy it back or re-run prepare"
            )
        return cls(
            path.read_bytes(),
            chat_template=descriptor.get("chat_template"),
            add_bos=descriptor.get("add_bos", True),
        )
