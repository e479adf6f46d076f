"""Load an existing (pretrained) tokenizer from a name, a file or a model directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer.base import Tokenizer
from lmforge.tokenizer.chat import BUILTIN_TEMPLATES
from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
from lmforge.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer
from lmforge.tokenizer.tiktoken_tokenizer import TiktokenTokenizer

NAMED = ("cl100k_base",)
LLAMA3_RANKS = 128_000
# A tiktoken rank file starts with `<base64 token> <rank>` lines; a SentencePiece model is protobuf.
TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+=* \d+\r?\n")
# End-of-text candidates for a bare tokenizer.json that comes without a tokenizer_config.json.
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


def load_pretrained_tokenizer(spec: str) -> Tokenizer:
    """spec: cl100k_base; a tokenizer.json or tokenizer.model file; or a directory holding
    tokenizer.json (+ tokenizer_config.json), tokenizer.model, or GPT-2's encoder.json + vocab.bpe.
    """
    if spec == "cl100k_base":
        return TiktokenTokenizer.cl100k()
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        if path.suffix == ".json":
            return _from_tokenizer_json(path)
        return _from_model_file(path)
    raise ConfigError(
        f"tokenizer {spec!r} is neither byte, char, bpe, {', '.join(NAMED)} nor an existing "
        "path; give one of those names, a tokenizer.json / tokenizer.model path or a directory "
        "holding one"
    )


def _from_directory(directory: Path) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return _from_tokenizer_json(directory / "tokenizer.json")
    if (directory / "encoder.json").is_file() and (directory / "vocab.bpe").is_file():
        return TiktokenTokenizer.gpt2(directory / "encoder.json", directory / "vocab.bpe")
    if (directory / "tokenizer.model").is_file():
        return _from_model_file(directory / "tokenizer.model", _chat_template(directory))
    raise DataError(
        f"{directory} holds no tokenizer.json, tokenizer.model or encoder.json + vocab.bpe; "
        "point data.tokenizer at a directory or file that has one"
    )


def _chat_template(directory: Path) -> str | None:
    """The chat template in a model directory's tokenizer_config.json, if any."""
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    template = json.loads(config_path.read_text()).get("chat_template")
    return template if isinstance(template, str) else None


def _from_tokenizer_json(path: Path) -> Tokenizer:
    if path.name == "tokenizer.json" and (path.parent / "tokenizer_config.json").is_file():
        return HuggingFaceTokenizer.from_pretrained_dir(path.parent)  # eos, bos, chat template
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception on a malformed file
        raise DataError(f"{path} is not a Hugging Face tokenizer.json ({error})") from None
    eot = next((t for t in EOT_CANDIDATES if hf.token_to_id(t) is not None), None)
    if eot is None:
        raise DataError(
            f"{path} has none of the end-of-text tokens {', '.join(EOT_CANDIDATES)}; put it in a "
            "directory with a tokenizer_config.json that names its eos_token"
        )
    return HuggingFaceTokenizer(hf, eot_token=eot)


def _from_model_file(path: Path, chat_template: str | None = None) -> Tokenizer:
    """A `tokenizer.model`: Llama 3's tiktoken ranks, or a SentencePiece model (Llama 2)."""
    data = path.read_bytes()
    if TIKTOKEN_LINE.match(data):
        ranks = data.count(b"\n") + (not data.endswith(b"\n"))
        if ranks != LLAMA3_RANKS:
            raise DataError(
                f"{path} is a tiktoken file with {ranks} ranks, but only Llama 3's "
                f"({LLAMA3_RANKS}) has known special tokens; use cl100k_base or a tokenizer.json"
            )
        return TiktokenTokenizer.llama3(path, chat_template or BUILTIN_TEMPLATES["llama3"])
    return SentencePieceTokenizer(data, chat_template=chat_template or BUILTIN_TEMPLATES["llama2"])
