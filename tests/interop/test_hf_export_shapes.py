"""`lmforge export --format hf` over a grid of the shapes lmforge builds: each export either loads
in transformers (its own config class and model, with the same logits) or is refused up front
with one line. Nothing in between, such as a config that transformers rejects at load time."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import assert_one_line_error
from gguf_fixtures import random_model, tiny_checkpoint

from lmforge.cli import main
from lmforge.errors import ConfigError, LmforgeError
from lmforge.formats.hf_config import hf_config_from_model_config
from lmforge.formats.hf_weights import state_dict_to_hf
from lmforge.interop.hf_dir import check_with_transformers
from lmforge.models.config import ModelConfig

transformers = pytest.importorskip("transformers")

VOCAB, CONTEXT = 64, 32


def _llama_grid() -> list[dict]:
    shapes = []
    for dim, heads in itertools.product((64, 96), (1, 3, 4, 5)):
        for head_dim in (None, 24):
            if head_dim is None and dim % heads:
                continue  # lmforge needs heads to divide dim unless head_dim is given
            for kv in sorted({1, heads}):
                shapes.append(dict(dim=dim, num_heads=heads, num_kv_heads=kv, head_dim=head_dim))
    return shapes


def _grid() -> list[tuple[str, dict]]:
    cases = []
    for i, shape in enumerate(_llama_grid()):
        name = f"llama-d{shape['dim']}-h{shape['num_heads']}-kv{shape['num_kv_heads']}-hd{shape['head_dim']}"
        cases.append((name, shape | dict(tie_embeddings=i % 2 == 0, ffn_dim=40 + i)))
        if i % 3 == 0:
            cases.append((name + "-qkvbias", shape | dict(qkv_bias=True)))
        if i % 4 == 0:
            moe = dict(ffn="moe", num_experts=4, experts_per_token=2)
            cases.append((name + "-moe", shape | moe))
        if i % 5 == 0:
            cases.append((name + "-window", shape | dict(sliding_window=8)))
    gpt2 = dict(mlp="gelu", norm="layernorm", position="learned", bias=True)
    for heads, kv, head_dim in [(2, None, None), (3, None, 16), (3, None, 8), (4, 2, None)]:
        cases.append((f"gpt2-h{heads}-kv{kv}-hd{head_dim}",
                      gpt2 | dict(dim=48, num_heads=heads, num_kv_heads=kv, head_dim=head_dim)))  # fmt: skip
    for position in ("alibi", "sinusoidal", "none"):
        cases.append((f"llama-{position}", dict(dim=64, num_heads=4, position=position)))
    cases.append(("gelu-rmsnorm", dict(dim=64, num_heads=4, mlp="gelu")))
    cases.append(("llama3-scaling", dict(dim=96, num_heads=5, head_dim=24, rope_scaling="llama3",
                                         rope_original_context_length=16)))  # fmt: skip
    mla = dict(attention="mla", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
               v_head_dim=8, ffn="moe", num_experts=4, experts_per_token=2, moe_ffn_dim=32)  # fmt: skip
    cases.append(("mla-d64-h4", mla | dict(dim=64, num_heads=4)))
    cases.append(("mla-d96-h5", mla | dict(dim=96, num_heads=5)))
    cases.append(("mla-d64-h4-norm", mla | dict(dim=64, num_heads=4, moe_norm_topk=False)))
    cases.append(("mla-v3-d96-h5", mla | dict(dim=96, num_heads=5, moe_scoring="sigmoid")))
    moe = dict(dim=64, num_heads=4, ffn="moe", num_experts=4, experts_per_token=2)
    cases.append(("moe-sigmoid", moe | dict(moe_scoring="sigmoid")))
    cases.append(("moe-no-renorm", moe | dict(moe_norm_topk=False)))
    cases.append(("moe-shared", moe | dict(num_shared_experts=1)))
    return cases


CASES = _grid()


def _hf_model(hf_config: dict):
    config = transformers.AutoConfig.for_model(**hf_config)
    config._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("shape", [shape for _, shape in CASES], ids=[name for name, _ in CASES])
def test_export_loads_in_transformers_or_is_refused_in_one_line(shape):
    config = ModelConfig(vocab_size=VOCAB, context_length=CONTEXT, num_layers=1, **shape)
    try:
        config.validate()
    except LmforgeError:
        pytest.fail(f"the grid holds only shapes lmforge builds: {shape}")
    model = random_model(config)
    try:
        hf_config = hf_config_from_model_config(config)
        check_with_transformers(hf_config)
    except ConfigError as error:
        assert "\n" not in str(error) and len(str(error)) < 400, str(error)
        return
    hf = _hf_model(hf_config)  # would raise if the export were one transformers cannot build
    missing, unexpected = hf.load_state_dict(
        state_dict_to_hf(model.state_dict(), config), strict=False
    )
    params = dict(hf.named_parameters())
    # Tied heads are stored once; DeepSeek builds zero-width shared experts when there are none.
    missing = {k for k in missing if k != "lm_head.weight" and params[k].numel() > 0}
    assert not unexpected and not missing, (unexpected, missing)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert (ours - theirs).abs().max() <= 1e-4 * ours.abs().max()


def test_the_grid_has_both_outcomes():
    """The loop above is not vacuous: most shapes export, and some are refused."""
    refused = 0
    for _, shape in CASES:
        try:
            check_with_transformers(hf_config_from_model_config(
                ModelConfig(vocab_size=VOCAB, context_length=CONTEXT, num_layers=2, **shape)))  # fmt: skip
        except ConfigError:
            refused += 1
    assert 0 < refused < len(CASES) / 2, refused


def test_cli_exports_dim96_heads5_as_mistral_and_refuses_gpt2_head_dim(tmp_path, capsys):
    model, checkpoint = tiny_checkpoint(tmp_path / "odd", tied=False, dim=96, num_heads=5,
                                        num_kv_heads=5, head_dim=24)  # fmt: skip
    out = tmp_path / "hf"
    assert main(["export", str(checkpoint), "--format", "hf", "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.model_type == "mistral" and hf.config.head_dim == 24
    tokens = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator())
    with torch.no_grad():
        assert (hf(tokens).logits - model(tokens)).abs().max() <= 1e-4 * model(tokens).abs().max()

    from lmforge.checkpoint.directory import save_checkpoint
    from lmforge.tokenizer import ByteTokenizer

    gpt2 = ModelConfig(vocab_size=257, dim=48, num_layers=1, num_heads=3, head_dim=8, mlp="gelu",
                       norm="layernorm", position="learned", bias=True)  # fmt: skip
    save_checkpoint(tmp_path / "gpt2", random_model(gpt2), ByteTokenizer(), {})
    capsys.readouterr()
    args = ["export", str(tmp_path / "gpt2"), "--format", "hf", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert_one_line_error(capsys.readouterr().err, "GPT-2", "head_dim 8")
    assert not (tmp_path / "x").exists()
