"""Tokenizers of Hugging Face model directories: read one on import, write one on export.

Import reads tokenizer.json (or GPT-2's bare vocab.json + merges.txt) plus the special tokens
and chat template that transformers spreads over tokenizer_config.json, special_tokens_map.json,
chat_template.jinja and config.json. Export writes tokenizer.json + tokenizer_config.json that
`AutoTokenizer.from_pretrained` loads as a PreTrainedTokenizerFast; BOS is added by the
tokenizer.json post-processor, because that is the one place transformers 4 and 5 both honour.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from lmforge.errors import CheckpointError, ConfigError, LmforgeError, one_line
from lmforge.formats.hf_tokenizer_convert import (
    byte_to_unicode,
    sentencepiece_to_hf,
    tiktoken_to_hf,
)
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.base import END_OF_TEXT
from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
from lmforge.tokenizer.pretrained import load_pretrained_tokenizer

EXPORTABLE = "huggingface, byte, char, tiktoken, sentencepiece (BPE)"


def read_json(path: Path) -> dict:
    """A JSON file's object, or CheckpointError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"cannot read {path}: {one_line(error, 200)}; the file is missing or corrupt"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; the file is corrupt")
    return data


def _optional_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _token_text(value) -> str | None:
    """A special token given as a string or as an AddedToken dict {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _first_id(value) -> int | None:
    return (
        value[0] if isinstance(value, list) and value else value if isinstance(value, int) else None
    )


def _adds_bos(post_processor: dict | None, bos: str) -> bool:
    """Whether tokenizer.json's post-processor puts `bos` in front of a single sequence."""
    if not post_processor:
        return False
    if post_processor.get("type") == "Sequence":
        return any(_adds_bos(p, bos) for p in post_processor.get("processors", []))
    if post_processor.get("type") != "TemplateProcessing":
        return False
    first = (post_processor.get("single") or [{}])[0]
    return first.get("SpecialToken", {}).get("id") == bos


def _chat_template(directory: Path, config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None and (directory / "chat_template.jinja").is_file():  # transformers 5
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None and (directory / "chat_template.json").is_file():
        template = read_json(directory / "chat_template.json").get("chat_template")
    return template


def _gpt2_bpe(vocab: Path, merges: Path) -> HFTokenizer:
    """GPT-2's byte-level BPE from its vocab.json + merges.txt (what GPT2TokenizerFast builds)."""
    try:
        hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as error:  # tokenizers raises plain Exception for unreadable files
        reason = one_line(error, 200)
        raise CheckpointError(f"cannot read {vocab.name} + {merges.name}: {reason}") from None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if hf.token_to_id(END_OF_TEXT) is not None:
        hf.add_special_tokens([END_OF_TEXT])  # already in the vocab: marks it special, same id
    return hf


def load_hf_dir_tokenizer(directory: Path, hf_config: dict) -> Tokenizer:
    """The tokenizer of an HF model directory, with its eos/bos, BOS habit and chat template."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file() and (directory / "tokenizer.model").is_file():
        # Older Llama 2 / Mistral repos ship only the SentencePiece model (the slow tokenizer).
        try:
            return load_pretrained_tokenizer(str(directory))
        except (OSError, LmforgeError) as error:
            raise CheckpointError(f"cannot read {directory / 'tokenizer.model'}: {error}") from None
    if (directory / "tokenizer.json").is_file():
        try:
            hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as error:  # tokenizers raises plain Exception on bad JSON
            reason = one_line(error, 200)
            raise CheckpointError(f"cannot read {directory / 'tokenizer.json'}: {reason}") from None
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        hf = _gpt2_bpe(directory / "vocab.json", directory / "merges.txt")
    else:
        raise CheckpointError(
            f"{directory} has no tokenizer.json, tokenizer.model or vocab.json + merges.txt; save the "
            "tokenizer there with transformers' save_pretrained and convert again"
        )
    config = _optional_json(directory / "tokenizer_config.json")
    special = _optional_json(directory / "special_tokens_map.json")
    generation = _optional_json(directory / "generation_config.json")

    def token(name: str) -> str | None:
        text = _token_text(config.get(f"{name}_token")) or _token_text(special.get(f"{name}_token"))
        if text is None:  # fall back to the model's ids (config.json, generation_config.json)
            ident = _first_id(hf_config.get(f"{name}_token_id"))
            ident = ident if ident is not None else _first_id(generation.get(f"{name}_token_id"))
            text = hf.id_to_token(ident) if ident is not None else None
        return text if text is not None and hf.token_to_id(text) is not None else None

    eos = token("eos") or (END_OF_TEXT if hf.token_to_id(END_OF_TEXT) is not None else None)
    if eos is None:
        raise CheckpointError(
            f"{directory}: no end-of-sequence token found (eos_token in tokenizer_config.json or "
            "eos_token_id in config.json); add one and convert again"
        )
    bos = token("bos")
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # transformers 5 / Llama 3 style: the post-processor adds it
        add_bos = bos is not None and _adds_bos(json.loads(hf.to_str()).get("post_processor"), bos)
    return HuggingFaceTokenizer(
        hf,
        eot_token=eos,
        bos_token=bos,
        add_bos=bool(add_bos) and bos is not None,
        chat_template=_chat_template(directory, config),
    )


def _byte_bpe(vocab: dict[str, int]) -> HFTokenizer:
    """A merge-free byte-level BPE over `vocab` (keys in GPT-2's byte-to-unicode alphabet)."""
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def to_hf_tokenizer(tokenizer: Tokenizer) -> tuple[HFTokenizer, str, str | None]:
    """(tokenizers.Tokenizer, eos text, bos text) encoding exactly as `tokenizer` does."""
    if isinstance(tokenizer, HuggingFaceTokenizer):
        hf = HFTokenizer.from_str(tokenizer.hf.to_str())
        hf.encode_special_tokens = False  # HF's default: special-token strings are recognised
        return hf, tokenizer.eot_token, tokenizer.bos_token
    if tokenizer.kind == "byte":  # ids 0..255 are the bytes themselves
        hf = _byte_bpe({char: byte for byte, char in byte_to_unicode().items()})
    elif tokenizer.kind == "char":  # one id per character, in order; Fuse joins without spaces
        hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tokenizer.chars)}, merges=[]))
        hf.decoder = decoders.Fuse()
    elif tokenizer.kind == "tiktoken":
        return tiktoken_to_hf(tokenizer), tokenizer.eot_token, tokenizer.bos_token
    elif tokenizer.kind == "sentencepiece":
        bos = tokenizer.sp.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id is not None else None
        return sentencepiece_to_hf(tokenizer), tokenizer.sp.id_to_piece(tokenizer.eot_id), bos
    else:
        raise ConfigError(
            f"cannot export a {tokenizer.kind} tokenizer to Hugging Face format; exportable "
            f"tokenizers: {EXPORTABLE} (or export to GGUF)"
        )
    hf.add_special_tokens([END_OF_TEXT])
    assert hf.token_to_id(END_OF_TEXT) == tokenizer.eot_id
    return hf, END_OF_TEXT, None


def write_hf_tokenizer(tokenizer: Tokenizer, directory: Path, model_max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json for AutoTokenizer (PreTrainedTokenizerFast)."""
    hf, eos, bos = to_hf_tokenizer(tokenizer)
    if tokenizer.add_bos and bos is not None:
        post = json.loads(hf.to_str()).get("post_processor")
        if not _adds_bos(post, bos):
            template = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, tokenizer.bos_id)],
            )
            hf.post_processor = (
                processors.Sequence([hf.post_processor, template]) if post else template
            )
    hf.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": eos,  # no pad token of its own; HF generation then pads with eos
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False)
    )
