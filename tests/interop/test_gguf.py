"""GGUF import/export: round trips through our own files, transformers reading our exports, the
real SmolLM2-135M-Instruct Q4_1 file against transformers, tokenizers from GGUF metadata, errors."""

from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf_fixtures import (
    TEXT,
    random_model,
    smollm2_gguf,  # noqa: F401 (fixture)
    smollm2_lmforge,
    smollm2_transformers,
    tiny_checkpoint,
    tiny_tokenizer,
)

from lmforge.checkpoint.directory import load_model, save_checkpoint
from lmforge.cli import main
from lmforge.errors import CheckpointError, ConfigError
from lmforge.formats.gguf import (
    gguf_layout,
    gguf_quantization_plan,
    load_gguf,
    model_from_state,
    read_gguf,
)
from lmforge.formats.gguf_tokenizer import tokenizer_from_gguf, tokenizer_metadata
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.interop.gguf_export import _TOKENIZER_WRITERS, export_gguf
from lmforge.interop.gguf_import import import_gguf
from lmforge.models.config import ModelConfig
from lmforge.models.quantize import Int4Linear, quantize_weights
from lmforge.runtime import bf16_is_fast
from lmforge.tokenizer import ByteTokenizer
from lmforge.tokenizer.chat import encode_chat

transformers = pytest.importorskip("transformers")

# Largest weight error relative to the tensor's largest |value|: half a unit in the last place for
# f16 (11 bits) and bf16 (8 bits); q8_0 rounds to 1/127 of each 32-value block's max, so <= 1/254.
WEIGHT_RTOL = {"f16": 2**-11, "bf16": 2**-8, "q8_0": 1 / 254}
# Logits of the std-0.2 random model (|logit| up to ~7) move by at most this share of max |logit|.
LOGIT_RTOL = {"f16": 0.01, "bf16": 0.1, "q8_0": 0.2}


def hf_gguf_model(path):
    """transformers' own GGUF loader on `path`, fp32 (it needs accelerate for that)."""
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def _tokens(vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 48), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_f32_round_trip_is_exact_and_transformers_agrees(tmp_path, tied):
    model, checkpoint = tiny_checkpoint(tmp_path / "ours", tied)
    path = export_gguf(checkpoint, tmp_path / "model.gguf", dtype="f32")
    assert not (tmp_path / "model.gguf.tmp").exists()
    config, state, tokenizer = read_gguf(path)
    assert config.shape_dict() == model.config.shape_dict()
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        ours = model(tokens)
        assert torch.equal(model_from_state(config, state)(tokens), ours)
        assert (hf_gguf_model(path)(tokens).logits - ours).abs().max() <= 1e-4

    original = tiny_tokenizer()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    chat = "<|im_start|>user\n" + TEXT + "<|im_end|>\n"
    expected = original.encode(chat, allow_special=True)
    assert tokenizer.encode(chat, allow_special=True) == expected
    assert hf_tokenizer.encode(chat, add_special_tokens=False) == expected
    assert tokenizer.decode(expected, skip_special=False) == chat
    assert (tokenizer.eot_id, tokenizer.bos_id) == (original.eot_id, original.bos_id)
    assert tokenizer.chat_template == original.chat_template


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_lossy_exports_stay_close(tmp_path, dtype):
    model, checkpoint = tiny_checkpoint(tmp_path / "ours", tied=False)
    path = export_gguf(checkpoint, tmp_path / f"model-{dtype}.gguf", dtype=dtype)
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # norms stay f32, as llama.cpp keeps them
    assert kinds["blk.0.ffn_down.weight"] == kinds["token_embd.weight"] == dtype.upper()
    config, state, _ = read_gguf(path)
    for key, value in model.state_dict().items():
        scale = value.abs().max()
        assert (state[key] - value).abs().max() <= WEIGHT_RTOL[dtype] * scale * 1.01, key
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        ours = model(tokens)
        error = (model_from_state(config, state)(tokens) - ours).abs().max()
    assert error <= LOGIT_RTOL[dtype] * ours.abs().max()
    # `--quantize auto` decodes the file at its precision: q8_0 -> int8, floats unquantized.
    expected = {"default": "int8"} if dtype == "q8_0" else {"default": "none"}
    assert gguf_quantization_plan(path) == expected


@pytest.mark.parametrize(
    "shape",
    [
        dict(rope_original_context_length=16),  # head_dim 16: one frequency in the smooth band
        dict(dim=128, num_heads=2, num_kv_heads=1, rope_high_freq_factor=2.0),  # several there
    ],
    ids=["one-smooth", "several-smooth"],
)
def test_llama3_rope_scaling_round_trips(tmp_path, shape):
    # GGUF keeps only llama.cpp's per-frequency divisors (rope_freqs); the parameters are refitted.
    scaling = dict(rope_scaling="llama3", rope_theta=500000.0, **shape)
    model, checkpoint = tiny_checkpoint(tmp_path / "ours", tied=True, **scaling)
    config, state, _ = read_gguf(export_gguf(checkpoint, tmp_path / "m.gguf", dtype="f32"))
    fields = ("rope_scaling", "rope_scaling_factor", "rope_low_freq_factor")
    fields += ("rope_high_freq_factor", "rope_original_context_length")
    assert [getattr(config, f) for f in fields] == [getattr(model.config, f) for f in fields]
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        assert torch.equal(model_from_state(config, state)(tokens), model(tokens))


def test_import_writes_a_checkpoint_that_samples(tmp_path, capsys):
    model, checkpoint = tiny_checkpoint(tmp_path / "ours", tied=True)
    path = export_gguf(checkpoint, tmp_path / "m.gguf", dtype="f32")
    out = import_gguf(path, tmp_path / "imported")
    loaded, tokenizer, _ = load_model(out)
    tokens = _tokens(loaded.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert tokenizer.encode(TEXT) == tiny_tokenizer().encode(TEXT)
    args = ["sample", "--checkpoint", str(out), "--prompt", "the", "--max_new_tokens", "5"]
    assert main([*args, "--temperature", "0"]) == 0, capsys.readouterr().err


def _write_gpt2_gguf(path, model) -> None:
    """A GPT-2 GGUF laid out as convert_hf_to_gguf.py writes one (Linear-oriented weights)."""
    config, state = model.config, model.state_dict()
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_block_count(config.num_layers)
    writer.add_head_count(config.num_heads)
    writer.add_layer_norm_eps(config.norm_eps)
    for key, value in tokenizer_metadata(tiny_tokenizer(), config.vocab_size).items():
        getattr(writer, _TOKENIZER_WRITERS[key])(value)
    for ours, [(name, _, _)] in gguf_layout(config, "gpt2"):
        writer.add_tensor(name, state[ours].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gpt2_gguf_imports_like_transformers(tmp_path):
    # transformers reads gpt2.context_length as n_ctx, not n_positions (1024): use 1024.
    gpt2 = dict(mlp="gelu", norm="layernorm", position="learned", bias=True, context_length=1024)
    config = ModelConfig(vocab_size=tiny_tokenizer().vocab_size, dim=64, num_layers=2, **gpt2)
    model = random_model(config)
    _write_gpt2_gguf(tmp_path / "gpt2.gguf", model)
    loaded, _ = load_gguf(tmp_path / "gpt2.gguf")
    tokens = _tokens(config.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
        hf = hf_gguf_model(tmp_path / "gpt2.gguf")
        assert (hf(tokens).logits - model(tokens)).abs().max() <= 1e-4


def test_sentencepiece_vocab_rebuilds_the_same_tokenizer(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from conftest import make_text

    (tmp_path / "corpus.txt").write_text(make_text(5, 300) + TEXT)
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"),
        model_prefix=str(tmp_path / "sp"),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    kinds = [
        2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
        for i in range(sp.get_piece_size())
    ]
    meta = {  # what convert_hf_to_gguf.py stores for a SentencePiece (Llama 2) vocabulary
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
        "tokenizer.ggml.token_type": kinds,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    }
    tokenizer = tokenizer_from_gguf(meta)
    text = TEXT + " ünïcödé 中文 \t tabs  and  spaces"
    assert tokenizer.encode(text) == sp.encode(text)
    assert tokenizer.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert (tokenizer.bos_id, tokenizer.eot_id, tokenizer.add_bos) == (
        sp.bos_id(),
        sp.eos_id(),
        True,
    )


# --- errors ------------------------------------------------------------------------------------


def test_truncated_or_corrupt_file_is_a_checkpoint_error_and_writes_nothing(tmp_path):
    _, checkpoint = tiny_checkpoint(tmp_path / "ours", tied=True)
    data = export_gguf(checkpoint, tmp_path / "m.gguf", dtype="q8_0").read_bytes()
    for name, content in [("empty", b""), ("header", data[:200]), ("half", data[: len(data) // 2])]:
        (tmp_path / f"{name}.gguf").write_bytes(content)
        with pytest.raises(CheckpointError, match="is truncated or corrupt") as error:
            import_gguf(tmp_path / f"{name}.gguf", tmp_path / f"out-{name}")
        assert "\n" not in str(error.value)
        assert not list(tmp_path.glob("out-*"))
    (tmp_path / "text.gguf").write_text("not a gguf file at all")
    with pytest.raises(CheckpointError, match=r"is not a GGUF file \(it does not"):
        read_gguf(tmp_path / "text.gguf")


def _minimal_gguf(path, arch: str, dtype=None) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=dtype or np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture_and_tensor_type_are_one_line_errors(tmp_path):
    _minimal_gguf(tmp_path / "falcon.gguf", "falcon")
    with pytest.raises(ConfigError, match="architecture 'falcon' is not supported") as error:
        read_gguf(tmp_path / "falcon.gguf")
    assert "\n" not in str(error.value) and "llama" in str(error.value)

    from lmforge.formats.gguf import _dequantize

    _minimal_gguf(tmp_path / "int.gguf", "llama", dtype=np.int32)
    (tensor,) = gguf.GGUFReader(tmp_path / "int.gguf").tensors
    with pytest.raises(CheckpointError, match="I32.*supported: .*Q4_K") as error:
        _dequantize(tensor)
    assert "\n" not in str(error.value)


def test_export_refuses_what_gguf_cannot_hold(tmp_path):
    _, checkpoint = tiny_checkpoint(tmp_path / "ours", tied=True)
    with pytest.raises(ConfigError, match="q4_k"):
        export_gguf(checkpoint, tmp_path / "a.gguf", dtype="q4_k")
    _, windowed = tiny_checkpoint(tmp_path / "mistral", tied=True, sliding_window=16)
    with pytest.raises(ConfigError, match="sliding window"):
        export_gguf(windowed, tmp_path / "b.gguf")
    llama = ModelConfig(vocab_size=257, dim=32, num_layers=1, num_heads=2)
    save_checkpoint(tmp_path / "byte", random_model(llama), ByteTokenizer(), {})
    with pytest.raises(ConfigError, match="byte-level BPE"):
        export_gguf(tmp_path / "byte", tmp_path / "c.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


# --- SmolLM2-135M-Instruct (Q4_1) against transformers -------------------------------------------

ENGLISH = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
    "produce books far faster than any scribe. Before his invention, most books in Europe were "
    "copied by hand, a slow and expensive process that kept literacy within the reach of a small "
    "elite. Within a few decades, printing shops had spread to more than two hundred cities, and "
    "millions of volumes were in circulation. The press changed how ideas travelled: scientists "
    "could share results with colleagues in distant countries, reformers could spread pamphlets "
    "to ordinary readers, and governments began to worry about what people were reading. Historians "
    "still debate how quickly these changes happened, but few doubt that the printed page helped "
    "to shape the modern world, from the scientific revolution to the rise of newspapers. Today "
    "the same questions return with every new technology that makes copying cheaper and faster."
)
VARIED = (
    "Héllo wörld! ñandú — “quotes” 😀🚀 中文字符 日本語\n\n\n   spaces\t\ttabs  \r\n"
    "Numbers: 1234567890 3.14159 -42 1e10 0x1F\n"
    "def f(x):\n    return x**2  # comment\n\n"
    "<|im_start|>user\nWhat's up?<|im_end|>\n<|im_start|>assistant\nI'm fine.<|endoftext|>  end  "
)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):  # noqa: F811
    return smollm2_lmforge(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):  # noqa: F811
    return smollm2_transformers(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer(smollm2_gguf):  # noqa: F811
    return transformers.AutoTokenizer.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name
    )


def test_smollm2_logits_and_greedy_match_transformers(smollm2, smollm2_hf):
    (model, tokenizer), hf = smollm2, smollm2_hf
    ids = tokenizer.encode(ENGLISH)
    assert 180 <= len(ids) <= 260
    with torch.no_grad():
        diff = (model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max()
    assert diff <= 1e-3

    prompt = ids[:24]
    hf.generation_config.eos_token_id = None  # exactly 32 tokens from both
    expected = hf.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False, max_new_tokens=32, pad_token_id=0,
    )[0, len(prompt) :].tolist()  # fmt: skip
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=32, temperature=0))[0]
    assert ours == expected


def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_hf_tokenizer):
    (_, tokenizer), hf_tokenizer = smollm2, smollm2_hf_tokenizer
    ids = tokenizer.encode(VARIED, allow_special=True)
    assert ids == hf_tokenizer.encode(VARIED, add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special=False) == VARIED
    assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)
    # Without allow_special the markers are plain text, as in any pretraining document.
    assert 1 not in tokenizer.encode("<|im_start|>user")
    assert tokenizer.eot_id == 2 and tokenizer.eot_id in tokenizer.stop_ids  # <|im_end|>
    # Exporting it writes the same vocabulary and split rule back.
    meta = tokenizer_metadata(tokenizer, tokenizer.vocab_size)
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert tokenizer_from_gguf(meta).encode(VARIED, allow_special=True) == ids


def test_smollm2_chat_answers_paris(smollm2):
    model, tokenizer = smollm2
    prompt = encode_chat(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    config = SamplingConfig(max_new_tokens=30, temperature=0, stop_tokens=tokenizer.stop_ids)
    reply = tokenizer.decode(generate(model, [prompt], config)[0])
    assert "Paris" in reply, reply


@pytest.mark.parametrize("compute", ["fp32", "this machine's"])
def test_smollm2_decodes_at_the_files_precision(smollm2, smollm2_gguf, compute):  # noqa: F811
    # The Q4_1 file's linears become int4 (the Q8_0 embedding, tied to the head, int8), and the
    # quantized model stays close to the fp32 one: perplexity within 5%, and it still answers.
    # fp32 matmuls are what a CPU without native bf16 uses; every CPU checks that path, and its
    # own choice (bf16 on AMX) too.
    model, tokenizer = smollm2
    plan = gguf_quantization_plan(smollm2_gguf)
    assert plan == {"default": "int4", "lm_head": "int8"}
    fast = bf16_is_fast(torch.device("cpu"))
    if compute != "fp32" and not fast:
        pytest.skip("this CPU computes quantized matmuls in fp32: the fp32 case covers it")
    dtype = torch.bfloat16 if compute != "fp32" else torch.float32
    quantized = copy.deepcopy(model)  # fp32 residual stream: bf16 would lose "Paris"
    assert quantize_weights(quantized, plan, dtype) == 30 * 4 + 1
    assert isinstance(quantized.layers[0].ffn.up, Int4Linear)
    assert quantized.layers[0].ffn.up.compute_dtype == dtype
    ids = torch.tensor([tokenizer.encode(ENGLISH)])
    with torch.no_grad():
        nll = {
            name: F.cross_entropy(m(ids[:, :-1])[0].float(), ids[0, 1:]).item()
            for name, m in (("fp32", model), ("int4", quantized))
        }
    assert abs(nll["int4"] - nll["fp32"]) < 0.05, nll
    test_smollm2_chat_answers_paris((quantized, tokenizer))
