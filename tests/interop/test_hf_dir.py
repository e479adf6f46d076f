"""HF directory import (`lmforge convert`) and export (`lmforge export --format hf`): tiny random
transformers models saved with save_pretrained give the same logits, greedy continuations and
token ids after conversion, both ways."""

from __future__ import annotations

import json

import pytest
import torch
from hf_fixtures import (
    CHAT_TEMPLATE,
    DIR_CONTEXT,
    DIR_VOCAB,
    TEXT,
    hf_greedy,
    random_tokens,
    save_hf_dir,
    trained_tokenizer,
)

from lmforge.checkpoint.directory import load_model
from lmforge.cli import main
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.tokenizer import ByteTokenizer, CharTokenizer

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
# Each architecture family once (the parity tests cover the tied/untied variants).
CASES = [
    "gpt2-tied",
    "llama-gqa-tied",
    "llama-gqa-untied",
    "llama3-scaling-untied",
    "mistral-head-dim",
    "qwen2-qkv-bias",
]


def _tokens() -> torch.Tensor:
    return random_tokens(2, 24, DIR_VOCAB)


def _convert(source, out, capsys) -> str:
    assert main(["convert", str(source), "--out", str(out)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("case", CASES)
def test_import_matches_hf_logits_generation_and_tokens(case, tmp_path, capsys):
    hf = save_hf_dir(case, tmp_path / "hf")
    printed = _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    assert "parameters" in printed and f"vocab {DIR_VOCAB}" in printed
    model, tokenizer, _ = load_model(tmp_path / "ours")
    tokens = _tokens()
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= ATOL, diff
    prompt = tokens[0, :8].tolist()
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=32, temperature=0.0))[0]
    assert ours == hf_greedy(hf, [prompt], 32)[0]
    # The tokenizer came along with its special tokens, BOS habit and chat template.
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    expected = reference(TEXT).input_ids
    start = [tokenizer.bos_id] if tokenizer.add_bos else []
    assert start + tokenizer.encode(TEXT) == expected
    assert tokenizer.add_bos == (not case.startswith("gpt2"))
    assert tokenizer.eot_id == reference.eos_token_id
    assert tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("case", CASES)
def test_export_round_trip_loads_in_transformers(case, tmp_path, capsys):
    save_hf_dir(case, tmp_path / "hf")
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "ours"), "--format", "hf", "--out", str(out)]) == 0
    model, tokenizer, _ = load_model(tmp_path / "ours")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokens = _tokens()
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= ATOL, diff
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    start = [tokenizer.bos_id] if tokenizer.add_bos else []
    assert hf_tokenizer(TEXT).input_ids == start + tokenizer.encode(TEXT)
    assert hf_tokenizer.chat_template == CHAT_TEMPLATE
    assert hf.config.eos_token_id == tokenizer.eot_id == hf_tokenizer.eos_token_id
    assert hf.config.bos_token_id == tokenizer.bos_id
    assert hf_tokenizer.model_max_length == DIR_CONTEXT


def test_pytorch_model_bin_is_read(tmp_path, capsys):
    hf = save_hf_dir("llama-gqa-untied", tmp_path / "hf", safe_serialization=False)
    assert (tmp_path / "hf" / "pytorch_model.bin").is_file()
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    model, _, _ = load_model(tmp_path / "ours")
    tokens = _tokens()
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() <= ATOL


def test_sharded_safetensors_are_read(tmp_path, capsys):
    hf = save_hf_dir("qwen2-qkv-bias", tmp_path / "staging")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        source = tmp_path / "staging" / name
        if source.is_file():
            (tmp_path / "hf" / name).write_bytes(source.read_bytes())
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    model, _, _ = load_model(tmp_path / "ours")
    tokens = _tokens()
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max().item() <= ATOL


def test_gpt2_vocab_and_merges_without_tokenizer_json(tmp_path, capsys):
    save_hf_dir("gpt2-tied", tmp_path / "hf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").unlink()
    trained_tokenizer(llama_style=False).hf.model.save(
        str(tmp_path / "hf")
    )  # vocab.json, merges.txt
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    _, tokenizer, _ = load_model(tmp_path / "ours")
    assert tokenizer.encode(TEXT) == reference(TEXT).input_ids
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert tokenizer.eot_id == reference.eos_token_id


def test_sample_runs_on_imported_checkpoint(tmp_path, capsys):
    save_hf_dir("llama-gqa-tied", tmp_path / "hf")
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    args = ["sample", "--checkpoint", str(tmp_path / "ours"), "--prompt", "the fox"]
    assert main([*args, "--max_new_tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the fox")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_export_dtype(dtype, tmp_path, capsys):
    save_hf_dir("llama-gqa-untied", tmp_path / "hf")
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    out = tmp_path / "exported"
    args = ["export", str(tmp_path / "ours"), "--format", "hf", "--out", str(out)]
    assert main([*args, "--dtype", dtype]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert hf.dtype == getattr(torch, dtype)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype


@pytest.mark.parametrize("simple", ["byte", "char"])
def test_byte_and_char_tokenizers_export_as_equivalent_hf_tokenizers(simple, tmp_path):
    from lmforge.formats.hf_tokenizer import write_hf_tokenizer

    text = TEXT + "é ü 日本\n\t  x"
    tokenizer = ByteTokenizer() if simple == "byte" else CharTokenizer.train([text])
    write_hf_tokenizer(tokenizer, tmp_path, 64)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer.encode(text)
    assert hf(text).input_ids == ids
    assert hf.decode(ids) == text
    assert hf.eos_token_id == tokenizer.eot_id


def test_trained_byte_run_exports(trained_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(out)]) == 0
    model, tokenizer, _ = load_model(trained_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    ids = torch.tensor([tokenizer.encode("def f(x): return x")])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= ATOL


PRETRAINED = {  # shared-data tokenizer files -> lmforge's tiktoken / SentencePiece tokenizers
    "gpt2-tiktoken": "gpt2",
    "llama3-tiktoken": "llama3/tokenizer.model",
    "llama2-sentencepiece": "llama2/tokenizer.model",
}
HARD_TEXT = TEXT + "Hello  world!!  12345 7.5e10\n\n  \t x \r\n naïve café 日本語 😀 don't I'LL   "


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_tokenizers_export_as_equivalent_hf_tokenizers(name, shared_data, tmp_path):
    from lmforge.formats.hf_tokenizer import write_hf_tokenizer
    from lmforge.tokenizer.pretrained import load_pretrained_tokenizer

    tokenizer = load_pretrained_tokenizer(str(shared_data / "tokenizers" / PRETRAINED[name]))
    write_hf_tokenizer(tokenizer, tmp_path, 4096)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in (HARD_TEXT, " leading space", "a" * 40, ""):
        ids = tokenizer.encode(text)
        start = [tokenizer.bos_id] if tokenizer.add_bos else []
        assert hf(text).input_ids == start + ids, text
        assert hf.decode(ids) == tokenizer.decode(ids)
    assert hf.eos_token_id == tokenizer.eot_id
    assert hf.bos_token_id == tokenizer.bos_id


def test_bfloat16_weights_import(tmp_path, capsys):
    """A bf16 checkpoint is stored as it came (half the disk) and loads into an fp32 model."""
    hf = save_hf_dir("llama-gqa-untied", tmp_path / "staging")
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "hf" / name).write_bytes((tmp_path / "staging" / name).read_bytes())
    _convert(tmp_path / "hf", tmp_path / "ours", capsys)
    model, _, _ = load_model(tmp_path / "ours")
    assert next(model.parameters()).dtype == torch.float32
    tokens = _tokens()
    with torch.no_grad():
        # The bf16-rounded weights in an fp32 model (hf.float() would keep bf16-rounded RoPE).
        reference = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "hf", dtype=torch.float32, attn_implementation="eager"
        )
        expected = reference(tokens).logits
        assert (model(tokens) - expected).abs().max().item() <= ATOL


def test_sentencepiece_only_hf_dir(shared_data, tmp_path):
    """Older Llama 2 repos have tokenizer.model but no tokenizer.json."""
    from lmforge.formats.hf_tokenizer import load_hf_dir_tokenizer

    model_file = shared_data / "tokenizers" / "llama2" / "tokenizer.model"
    (tmp_path / "tokenizer.model").write_bytes(model_file.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    tokenizer = load_hf_dir_tokenizer(tmp_path, {"model_type": "llama"})
    assert (tokenizer.kind, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eot_id) == (
        "sentencepiece",
        32000,
        1,
        2,
    )
    assert tokenizer.add_bos and tokenizer.chat_template == CHAT_TEMPLATE
