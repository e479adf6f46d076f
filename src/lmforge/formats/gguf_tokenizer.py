"""Tokenizers <-> GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys).

A GGUF carries no tokenizer.json, only the vocabulary, merges or scores, token types and special
ids. `tokenizer.ggml.model` says which kind: "gpt2" is byte-level BPE (rebuilt here as a
`tokenizers.Tokenizer`), "llama" is a SentencePiece model (rebuilt as a ModelProto). How byte-level
BPE splits text before merging is not stored either; `tokenizer.ggml.pre` names it, and the
regexes below are llama.cpp's for those names.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import CheckpointError, ConfigError
from lmforge.tokenizer.base import Tokenizer
from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
from lmforge.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

# llama.cpp token types (the same numbers as SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Pre-tokenizer families by `tokenizer.ggml.pre`; anything else gets GPT-2's (as in transformers).
_DIGIT_SPLIT = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
_LLAMA3 = ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral")
_QWEN2 = ("qwen2", "deepseek-r1-qwen", "megrez")


def _pre_tokenizer(pre: str | None):
    if pre in _DIGIT_SPLIT:  # each digit on its own, then GPT-2's regex
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    split = _LLAMA3_SPLIT if pre in _LLAMA3 else _QWEN2_SPLIT if pre in _QWEN2 else None
    if split is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def tokenizer_from_gguf(meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF's metadata describes (values as `ReaderField.contents()` gives them)."""
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise CheckpointError("GGUF has no tokenizer.ggml.tokens; lmforge needs the vocabulary")
    if kind == "gpt2":
        return _byte_level_bpe(meta)
    if kind == "llama":
        return _sentencepiece(meta)
    raise CheckpointError(
        f"GGUF tokenizer.ggml.model {kind!r} is not supported; lmforge reads 'gpt2' (byte-level "
        "BPE) and 'llama' (SentencePiece)"
    )


def _special(meta: dict, tokens: list[str], name: str) -> str | None:
    index = meta.get(f"tokenizer.ggml.{name}_token_id")
    return tokens[index] if index is not None and 0 <= index < len(tokens) else None


def _byte_level_bpe(meta: dict) -> HuggingFaceTokenizer:
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    pre = meta.get("tokenizer.ggml.pre")
    vocab = {token: index for index, token in enumerate(tokens)}
    # Llama 3 (and llama.cpp for it) take a pre-token that is itself in the vocab whole.
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _LLAMA3)
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = _pre_tokenizer(pre)
    hf.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) stay whole and are skipped when decoding; user-defined
    # ones stay whole but are ordinary text. Both keep their ids, since they are in the vocab.
    hf.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == CONTROL
        ]
    )
    hf.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == USER_DEFINED
        ]
    )
    eos = _special(meta, tokens, "eos") or _special(meta, tokens, "eot")
    if eos is None:
        raise CheckpointError("GGUF tokenizer has no tokenizer.ggml.eos_token_id; cannot end text")
    return HuggingFaceTokenizer(
        hf,
        eot_token=eos,
        bos_token=_special(meta, tokens, "bos"),
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _sentencepiece(meta: dict) -> Tokenizer:
    from sentencepiece import sentencepiece_model_pb2 as sp_model

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    proto = sp_model.ModelProto()
    for token, score, kind in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    trainer = proto.trainer_spec
    trainer.model_type = sp_model.TrainerSpec.BPE  # llama.cpp's SPM merges by these scores
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = BYTE in types
    for name in ("unk", "bos", "eos", "pad"):
        index = meta.get(f"tokenizer.ggml.{name}_token_id")
        if name == "unk" and index is None:
            index = types.index(UNKNOWN) if UNKNOWN in types else 0
        setattr(trainer, f"{name}_id", -1 if index is None else index)
        if index is not None:
            setattr(trainer, f"{name}_piece", tokens[index])
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    charsmap = meta.get("tokenizer.ggml.precompiled_charsmap")
    if charsmap:
        normalizer.precompiled_charsmap = bytes(charsmap)
    return SentencePieceTokenizer.from_serialized(
        proto.SerializeToString(),
        chat_template=meta.get("tokenizer.chat_template"),
        # llama.cpp adds BOS to a SentencePiece vocab unless the file says otherwise.
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
    )


def _pre_name(hf: HFTokenizer) -> str:
    """The `tokenizer.ggml.pre` whose split rule is exactly this tokenizer's."""

    def rule(pre_tokenizer) -> Any:
        probe = HFTokenizer(models.BPE())
        probe.pre_tokenizer = pre_tokenizer
        return json.loads(probe.to_str())["pre_tokenizer"]

    ours = json.loads(hf.to_str())["pre_tokenizer"]
    for name in ("gpt-2", "smollm", "llama-bpe", "qwen2"):
        if rule(_pre_tokenizer(name)) == ours:
            return name
    raise ConfigError(
        "the tokenizer's pre-tokenizer matches no llama.cpp pre-tokenizer lmforge knows (gpt-2, "
        "smollm, llama-bpe, qwen2), so GGUF readers would split text differently"
    )


def tokenizer_metadata(tokenizer: Tokenizer, vocab_size: int) -> dict[str, Any]:
    """`tokenizer.ggml.*` values for a byte-level BPE HuggingFaceTokenizer, padded to vocab_size."""
    hf = getattr(tokenizer, "hf", None)
    data = json.loads(hf.to_str()) if isinstance(hf, HFTokenizer) else {}
    decoder = json.dumps(data.get("decoder"))
    if data.get("model", {}).get("type") != "BPE" or "ByteLevel" not in decoder:
        raise ConfigError(
            f"GGUF export needs a byte-level BPE Hugging Face tokenizer; this checkpoint has a "
            f"{tokenizer.kind} tokenizer"
        )
    if data.get("normalizer") is not None:
        raise ConfigError(
            "the tokenizer has a normalizer, which GGUF's byte-level BPE cannot express"
        )
    if hf.get_vocab_size() > vocab_size:
        raise ConfigError(
            f"tokenizer has {hf.get_vocab_size()} tokens but the model only {vocab_size} embeddings"
        )
    # As convert_hf_to_gguf.py does: ids the tokenizer never produces become unused [PADn].
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for token, index in data["model"]["vocab"].items():
        tokens[index], types[index] = token, NORMAL
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added["special"] else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_name(hf),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": tokenizer.eot_id,
        "tokenizer.ggml.add_bos_token": bool(tokenizer.add_bos),
    }
    if tokenizer.bos_id is not None:
        meta["tokenizer.ggml.bos_token_id"] = tokenizer.bos_id
    if tokenizer.chat_template:
        meta["tokenizer.chat_template"] = tokenizer.chat_template
    return meta
