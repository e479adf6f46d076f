"""Any Hugging Face `tokenizer.json` (pretrained or trained here as byte-level BPE)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.tokenizer.base import END_OF_TEXT, write_descriptor

HF_FILE = "tokenizer.json"
# End-of-turn markers of common chat formats (ChatML, Llama 3, GPT-2 style, Phi-3).
CHAT_STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>")


class HuggingFaceTokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and chat template lmforge needs.

    eot_token ends a document (pretraining) or a reply (chat); bos_token, when set and add_bos
    is true, is put in front of every encoded prompt, as Llama expects.
    """

    kind = "huggingface"

    def __init__(
        self,
        hf: HFTokenizer,
        eot_token: str = END_OF_TEXT,
        bos_token: str | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
    ):
        self.hf = hf
        self.vocab_size = hf.get_vocab_size()
        self.eot_token, self.bos_token = eot_token, bos_token
        self.add_bos, self.chat_template = add_bos, chat_template
        eot = hf.token_to_id(eot_token)
        if eot is None:
            raise CheckpointError(f"tokenizer has no end-of-text token {eot_token!r}")
        self.eot_id = eot
        self.bos_id = hf.token_to_id(bos_token) if bos_token else None
        stops = [hf.token_to_id(t) for t in CHAT_STOP_TOKENS]
        self.stop_ids = tuple(dict.fromkeys([eot, *(i for i in stops if i is not None)]))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> HuggingFaceTokenizer:
        """Byte-level BPE (GPT-2 style) with <|endoftext|> as its one special token."""
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

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of text. Special-token strings in it are plain text unless allow_special
        (chat templates render their markers as text and need them recognised)."""
        self.hf.encode_special_tokens = not allow_special
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.hf.encode_special_tokens = True
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, directory: Path) -> None:
        write_descriptor(
            directory,
            {
                "type": self.kind,
                "file": HF_FILE,
                "eot_token": self.eot_token,
                "bos_token": self.bos_token,
                "add_bos": self.add_bos,
                "chat_template": self.chat_template,
                "special_tokens": {self.eot_token: self.eot_id},
            },
        )
        self.hf.save(str(directory / HF_FILE))

    @classmethod
    def load(cls, directory: Path, descriptor: dict) -> HuggingFaceTokenizer:
        path = directory / descriptor.get("file", HF_FILE)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer file {path} is missing; copy it back or re-run prepare"
            )
        return cls(
            HFTokenizer.from_file(str(path)),
            eot_token=descriptor.get("eot_token", END_OF_TEXT),
            bos_token=descriptor.get("bos_token"),
            add_bos=descriptor.get("add_bos", False),
            chat_template=descriptor.get("chat_template"),
        )

    @classmethod
    def from_pretrained_dir(cls, directory: Path) -> HuggingFaceTokenizer:
        """tokenizer.json plus tokenizer_config.json (special tokens, chat template) of an HF dir."""
        path = Path(directory) / HF_FILE
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {HF_FILE}; give a directory that holds one")
        config_path = Path(directory) / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}

        def token_text(value):  # a string, or an AddedToken dict {"content": ...}
            return value.get("content") if isinstance(value, dict) else value

        eos = token_text(config.get("eos_token")) or END_OF_TEXT
        bos = token_text(config.get("bos_token"))
        template = config.get("chat_template")
        if isinstance(template, list):  # older multi-template form: [{"name", "template"}]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default")
        jinja_path = Path(directory) / "chat_template.jinja"  # where transformers >= 4.43 saves it
        if template is None and jinja_path.is_file():
            template = jinja_path.read_text()
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on a malformed file
            raise DataError(f"{path} is not a Hugging Face tokenizer.json ({error})") from None
        return cls(
            hf,
            eot_token=eos,
            bos_token=bos,
            add_bos=bool(config.get("add_bos_token", False)),
            chat_template=template,
        )
