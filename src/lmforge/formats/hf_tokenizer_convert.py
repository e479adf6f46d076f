"""tiktoken and SentencePiece tokenizers rebuilt as `tokenizers.Tokenizer`s for HF export.

tiktoken: the construction of transformers' TikTokenConverter (and of Llama 3's own
tokenizer.json): byte-level BPE whose vocab is the rank table, whose merges are every split of a
token into two ranked halves ordered by the merged token's rank, with the split regex as a
pre-tokenizer and `ignore_merges` (tiktoken looks a whole piece up before merging).

SentencePiece (BPE models such as Llama 2's): the construction of transformers' LlamaConverter:
pieces and scores give the vocab, merges come from the scores, "▁" replaces spaces and one is
prepended, and unknown characters fall back to <0xNN> byte pieces.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import ConfigError


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    moved = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(moved)}


def tiktoken_to_hf(tokenizer) -> HFTokenizer:
    """A byte-level BPE tokenizer encoding exactly as a TiktokenTokenizer does."""
    table = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    ranks: dict[bytes, int] = tokenizer.ranks
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], text(left), text(right)))
    merges.sort()
    vocab = {text(token): rank for token, rank in ranks.items()} | tokenizer.special_tokens
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[m[3:] for m in merges], ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    return hf


def sentencepiece_to_hf(tokenizer) -> HFTokenizer:
    """A BPE tokenizer encoding as a SentencePiece BPE model with byte fallback (Llama 2)."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.proto)
    spec = proto.normalizer_spec
    if proto.trainer_spec.model_type != model_pb2.TrainerSpec.BPE or spec.name not in (
        "identity",
        "",
    ):
        raise ConfigError(
            "only SentencePiece BPE models without normalization (Llama 2, Mistral) can be "
            "exported to Hugging Face format; export this checkpoint to GGUF instead"
        )
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: index for index, (piece, _, _) in enumerate(pieces)}
    # A merge for every way to split a piece into two pieces, ranked by the merged piece's
    # score (higher first), as SentencePiece's BPE applies them.
    ranked = []
    for index, (piece, score, kind) in enumerate(pieces):
        if kind != model_pb2.ModelProto.SentencePiece.NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, index, vocab[left], vocab[right], left, right))
    ranked.sort()
    unk = next((p for p, _, k in pieces if k == model_pb2.ModelProto.SentencePiece.UNKNOWN), None)
    hf = HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=[r[4:] for r in ranked],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    steps = [normalizers.Replace(" ", "▁")]
    if spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    hf.normalizer = normalizers.Sequence(steps)
    strip = [decoders.Strip(content=" ", left=1, right=0)] if spec.add_dummy_prefix else []
    hf.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    control = model_pb2.ModelProto.SentencePiece.CONTROL
    specials = [
        p for p, _, k in pieces if k in (control, model_pb2.ModelProto.SentencePiece.UNKNOWN)
    ]
    hf.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials])
    return hf
