"""Byte-level BPE trained on the corpus with Hugging Face `tokenizers` (GPT-2 style)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.errors import CheckpointError, ConfigError
from lmforge.tokenizer.base import END_OF_TEXT, write_descriptor

HF_FILE = "tokenizer.json"


class BPETokenizer:
    kind = "bpe"

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # Text that happens to contain "<|endoftext|>" is encoded as ordinary text: only the
        # data pipeline places the end-of-text id (not persisted in tokenizer.json, so set here).
        self.hf.encode_special_tokens = True
        self.vocab_size = hf.get_vocab_size()
        eot = hf.token_to_id(END_OF_TEXT)
        assert eot is not None, f"BPE vocabulary has no {END_OF_TEXT} token"
        self.eot_id = eot

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        if vocab_size < 257 + 1:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too small for byte-level BPE; use at least 258 "
                "(256 bytes + end-of-text + merges)"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: Path) -> None:
        write_descriptor(
            directory,
            {"type": self.kind, "file": HF_FILE, "special_tokens": {END_OF_TEXT: self.eot_id}},
        )
        self.hf.save(str(directory / HF_FILE))

    @classmethod
    def load(cls, directory: Path, descriptor: dict) -> BPETokenizer:
        path = directory / descriptor.get("file", HF_FILE)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer file {path} is missing; copy it back or re-run prepare"
            )
        return cls(HFTokenizer.from_file(str(path)))
