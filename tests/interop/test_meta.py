"""Meta's original Llama format: a tiny random transformers Llama is written out the way Meta
ships weights (interleaved-pair RoPE rows, Meta names, params.json, model-parallel shards), then
`lmforge convert` must give back the HF model's logits and greedy continuations."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hf_fixtures import LLAMA3_SCALING, as_reference, hf_greedy, llama_shape

from lmforge.checkpoint.directory import load_model
from lmforge.cli import main
from lmforge.inference.generate import SamplingConfig, generate
from lmforge.interop.meta import ffn_hidden_dim, to_rotate_half

transformers = pytest.importorskip("transformers")

_SHAPE = llama_shape()  # the tiny Llama that _hf_llama builds
DIM, HEADS, KV_HEADS, LAYERS = (
    _SHAPE[key]
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
)
LLAMA2 = dict(vocab_size=-1, multiple_of=32, norm_eps=1e-5)  # Llama 2 leaves vocab_size -1
LLAMA3 = dict(
    vocab_size=128256,
    multiple_of=32,
    ffn_dim_multiplier=1.3,
    norm_eps=1e-5,
    rope_theta=500000.0,
    use_scaled_rope=True,
)
# Meta's model.py apply_scaling constants for use_scaled_rope: the tiny tests' factors, but the
# real original context.
META_SCALING = LLAMA3_SCALING | dict(original_max_position_embeddings=8192)
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def _hf_llama(params: dict, vocab: int):
    hidden = ffn_hidden_dim(DIM, params["multiple_of"], params.get("ffn_dim_multiplier"))
    scaled = params.get("use_scaled_rope")
    shape = llama_shape(
        vocab,
        256,
        intermediate_size=hidden,
        rms_norm_eps=params["norm_eps"],
        rope_theta=params.get("rope_theta", 10000.0),
        rope_scaling=dict(META_SCALING) if scaled else None,
    )
    return as_reference(transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape)))


def _to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of to_rotate_half: HF rows back to Meta's interleaved RoPE pairs."""
    rows, cols = weight.shape
    return weight.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _meta_state(hf) -> dict[str, torch.Tensor]:
    sd = hf.state_dict()
    meta = {
        "tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
        "rope.freqs": torch.ones(DIM // HEADS // 2),  # Llama 2 ships this unused table
    }
    for i in range(LAYERS):
        hf_layer, layer = f"model.layers.{i}.", f"layers.{i}."
        attn, mlp = hf_layer + "self_attn.", hf_layer + "mlp."
        meta |= {
            layer + "attention.wq.weight": _to_interleaved(sd[attn + "q_proj.weight"], HEADS),
            layer + "attention.wk.weight": _to_interleaved(sd[attn + "k_proj.weight"], KV_HEADS),
            layer + "attention.wv.weight": sd[attn + "v_proj.weight"],
            layer + "attention.wo.weight": sd[attn + "o_proj.weight"],
            layer + "feed_forward.w1.weight": sd[mlp + "gate_proj.weight"],
            layer + "feed_forward.w3.weight": sd[mlp + "up_proj.weight"],
            layer + "feed_forward.w2.weight": sd[mlp + "down_proj.weight"],
            layer + "attention_norm.weight": sd[hf_layer + "input_layernorm.weight"],
            layer + "ffn_norm.weight": sd[hf_layer + "post_attention_layernorm.weight"],
        }
    return meta


def _write_meta_dir(directory, hf, params, tokenizer_model, shards, vocab_parallel):
    """consolidated.NN.pth split the way fairscale splits them, plus params.json and tokenizer."""
    directory.mkdir()
    state = _meta_state(hf)
    parts: list[dict] = [{} for _ in range(shards)]
    for key, tensor in state.items():
        name = key.rsplit(".", 2)[-2]
        if tensor.ndim < 2:
            pieces = [tensor.clone() for _ in range(shards)]  # replicated on every rank
        else:
            dim = SPLIT_DIM.get(name, 0 if vocab_parallel else 1)  # tok_embeddings by version
            pieces = [p.clone() for p in tensor.chunk(shards, dim=dim)]
        for part, piece in zip(parts, pieces, strict=True):
            part[key] = piece
    for index, part in enumerate(parts):
        torch.save(part, directory / f"consolidated.{index:02d}.pth")
    params = dict(dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=KV_HEADS, **params)
    (directory / "params.json").write_text(json.dumps(params))
    shutil.copy(tokenizer_model, directory / "tokenizer.model")


CASES = {
    # (params, tokenizer dir, vocab, shards, tok_embeddings split on the vocab dim)
    "llama2-1-shard": (LLAMA2, "llama2", 32000, 1, False),
    "llama2-2-shards": (LLAMA2, "llama2", 32000, 2, False),
    "llama3.1-scaled-2-shards": (LLAMA3, "llama3", 128256, 2, True),
}


@pytest.mark.parametrize("case", CASES)
def test_meta_import_matches_hf(case, shared_data, tmp_path, capsys):
    params, tokenizer_name, vocab, shards, vocab_parallel = CASES[case]
    tokenizer_model = shared_data / "tokenizers" / tokenizer_name / "tokenizer.model"
    torch.manual_seed(0)
    hf = _hf_llama(params, vocab)
    _write_meta_dir(tmp_path / "meta", hf, params, tokenizer_model, shards, vocab_parallel)
    assert main(["convert", str(tmp_path / "meta"), "--out", str(tmp_path / "ours")]) == 0
    assert "imported meta" in capsys.readouterr().out
    model, tokenizer, _ = load_model(tmp_path / "ours")
    assert tokenizer.vocab_size == vocab and tokenizer.add_bos
    assert tokenizer.kind == ("sentencepiece" if tokenizer_name == "llama2" else "tiktoken")
    assert model.config.rope_scaling == ("llama3" if params.get("use_scaled_rope") else "none")
    tokens = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max().item()
    assert diff <= 1e-4, diff
    prompt = [tokenizer.bos_id, *tokenizer.encode("The quick brown fox")]
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=32, temperature=0.0))[0]
    assert ours == hf_greedy(hf, [prompt], 32)[0]
    # And on to HF: the exported model and tokenizer load in transformers and agree.
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "ours"), "--format", "hf", "--out", str(out)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    with torch.no_grad():
        assert (exported(tokens).logits - hf(tokens).logits).abs().max().item() <= 1e-4
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer("The quick brown fox").input_ids == prompt


def test_rotate_half_permutation_inverts():
    weight = torch.randn(HEADS * 16, DIM)
    assert torch.equal(to_rotate_half(_to_interleaved(weight, HEADS), HEADS), weight)
    # Head 0, Meta rows (0, 1) are one RoPE pair; rotate-half puts them at rows 0 and 8.
    meta = torch.arange(16.0)[:, None]
    assert to_rotate_half(meta, 1)[:, 0].tolist() == [*range(0, 16, 2), *range(1, 16, 2)]


def test_ffn_hidden_dim_matches_meta_models():
    assert ffn_hidden_dim(4096, 256, None) == 11008  # Llama 2 7B
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672  # Llama 2 70B
    assert ffn_hidden_dim(4096, 1024, 1.3) == 14336  # Llama 3 8B
    assert ffn_hidden_dim(2048, 256, 1.5) == 8192  # Llama 3.2 1B


def _tiny_meta(tmp_path, shared_data, shards=2):
    torch.manual_seed(0)
    hf = _hf_llama(LLAMA2, 32000)
    tokenizer = shared_data / "tokenizers" / "llama2" / "tokenizer.model"
    _write_meta_dir(tmp_path / "meta", hf, LLAMA2, tokenizer, shards, False)
    return tmp_path / "meta"


def _convert_fails(source, out, capsys, *fragments):
    from conftest import assert_one_line_error

    assert main(["convert", str(source), "--out", str(out), "--format", "meta"]) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_missing_shard_is_one_line_error(shared_data, tmp_path, capsys):
    meta = _tiny_meta(tmp_path, shared_data, shards=2)
    (meta / "consolidated.01.pth").rename(meta / "consolidated.02.pth")
    _convert_fails(meta, tmp_path / "out", capsys, "some are missing")


def test_truncated_shard_is_one_line_error(shared_data, tmp_path, capsys):
    meta = _tiny_meta(tmp_path, shared_data, shards=2)
    data = (meta / "consolidated.01.pth").read_bytes()
    (meta / "consolidated.01.pth").write_bytes(data[: len(data) // 2])
    _convert_fails(meta, tmp_path / "out", capsys, "consolidated.01.pth", "corrupt or truncated")


def test_missing_tokenizer_model_is_one_line_error(shared_data, tmp_path, capsys):
    meta = _tiny_meta(tmp_path, shared_data, shards=1)
    (meta / "tokenizer.model").unlink()
    _convert_fails(meta, tmp_path / "out", capsys, "tokenizer.model")


def test_wrong_params_is_one_line_error(shared_data, tmp_path, capsys):
    meta = _tiny_meta(tmp_path, shared_data, shards=1)
    params = json.loads((meta / "params.json").read_text())
    (meta / "params.json").write_text(json.dumps(params | {"n_layers": 3}))
    _convert_fails(meta, tmp_path / "out", capsys, "lack")
