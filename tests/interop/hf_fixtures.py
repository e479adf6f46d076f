"""Tiny random Hugging Face models for the interop tests, and what every HF test does with them:
build one per named case, convert it to lmforge and back, draw token batches, decode greedily with
transformers, and save it as an HF directory with a small trained tokenizer.

Weights are re-drawn with std 0.2 (HF's 0.02 init makes every logit nearly zero, which would make
the comparison vacuous) and norms/biases are made non-trivial so a swapped or dropped tensor shows.

Kept out of a tests/interop/conftest.py on purpose: a second conftest module replaces
`conftest` in sys.modules and breaks the `from conftest import ...` of later test modules.
Test modules import what they use from here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import processors

from lmforge.formats.hf_config import hf_config_from_model_config, model_config_from_hf
from lmforge.formats.hf_weights import state_dict_from_hf, state_dict_to_hf
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import HuggingFaceTokenizer

transformers = pytest.importorskip("transformers")

VOCAB, CONTEXT = 96, 64  # bare models, compared without a tokenizer
# Models saved as HF directories: trained_tokenizer has 302 tokens, padded to 320 rows as real
# models pad their vocab.
DIR_VOCAB, DIR_CONTEXT = 320, 128
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|endoftext|>{% endfor %}"
TEXT = "the quick brown fox jumps over the lazy dog; def model(tokens): return loss\n"
LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    # Small, so that with head_dim 16 some frequencies are scaled, some smoothed, some kept.
    original_max_position_embeddings=16,
)
YARN = dict(
    rope_type="yarn",
    rope_theta=10000.0,
    factor=4.0,
    original_max_position_embeddings=16,
    mscale=1.0,
    mscale_all_dim=0.8,
)


def llama_shape(vocab: int = VOCAB, context: int = CONTEXT, **overrides) -> dict:
    """A 2-layer Llama-family config as HF spells it, with grouped-query attention (4 heads, 2 KV)."""
    shape = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        rms_norm_eps=1e-6,
    )
    return shape | overrides


def _gpt2(vocab: int, context: int, tied: bool):
    config = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=context,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tied,
    )
    return transformers.GPT2LMHeadModel(config)


def _mla_shape(vocab: int, context: int) -> dict:
    """3 layers of multi-head latent attention, the first with a dense FFN, then 8-expert MoE."""
    return dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,  # unused by MLA, but V3's default (128) breaks its eager path
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=8,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        max_position_embeddings=context,
    )


def _llama(tied: bool, **overrides) -> Callable[[int, int], torch.nn.Module]:
    def build(vocab: int, context: int):
        # A fresh copy each time: transformers 5 writes rope_theta into the rope_scaling dict it is
        # given, which would carry one case's theta over to the next one built.
        shape = llama_shape(vocab, context, tie_word_embeddings=tied, **copy.deepcopy(overrides))
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape))

    return build


# Each case builds an HF model of the given (vocab, context).
HF_CASES: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "gpt2-tied": lambda vocab, context: _gpt2(vocab, context, tied=True),
    "gpt2-untied": lambda vocab, context: _gpt2(vocab, context, tied=False),
    "llama-gqa-tied": _llama(tied=True),
    "llama-gqa-untied": _llama(tied=False),
    "llama3-scaling-tied": _llama(True, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING),
    "llama3-scaling-untied": _llama(False, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING),
    "mistral-head-dim": lambda vocab, context: transformers.MistralForCausalLM(
        transformers.MistralConfig(**llama_shape(vocab, context, head_dim=32, sliding_window=None))
    ),
    "qwen2-qkv-bias": lambda vocab, context: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**llama_shape(vocab, context, tie_word_embeddings=True))
    ),
}
# The architecture zoo: DeepSeek-V2 (MLA + MoE, shared experts, group-limited routing), DeepSeek-V3
# (sigmoid router with bias correction, q compression, YaRN, dense first layer), Mixtral (top-2
# MoE) and Mistral with a window shorter than the sequence.
ZOO_CASES: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "deepseek-v2": lambda vocab, context: transformers.DeepseekV2ForCausalLM(
        transformers.DeepseekV2Config(
            **_mla_shape(vocab, context),
            q_lora_rank=None,
            n_shared_experts=2,
            routed_scaling_factor=1.5,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
        )
    ),
    "deepseek-v3": lambda vocab, context: transformers.DeepseekV3ForCausalLM(
        transformers.DeepseekV3Config(
            **_mla_shape(vocab, context),
            q_lora_rank=24,
            n_shared_experts=1,
            routed_scaling_factor=2.5,
            n_group=2,
            topk_group=1,
            norm_topk_prob=True,
            rope_parameters=dict(YARN),
        )
    ),
    "mixtral": lambda vocab, context: transformers.MixtralForCausalLM(
        transformers.MixtralConfig(
            **llama_shape(vocab, context), num_local_experts=4, num_experts_per_tok=2
        )
    ),
    "mistral-window": lambda vocab, context: transformers.MistralForCausalLM(
        transformers.MistralConfig(**llama_shape(vocab, context, sliding_window=6))
    ),
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights with std 0.2, norm gains 1 +- 0.1, biases 0.1 and DeepSeek-V3's routing bias 0.3
    (so that it changes which experts are picked); other buffers (RoPE tables) are kept."""
    generator = torch.Generator().manual_seed(seed)
    buffers = dict(model.named_buffers())
    for name, tensor in [*model.named_parameters(), *buffers.items()]:  # tied weights: once
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("e_score_correction_bias"):
            tensor.copy_(0.3 * noise)
        elif name in buffers:
            continue
        elif tensor.ndim >= 2:
            tensor.copy_(0.2 * noise)
        elif name.endswith("weight"):  # norm gains
            tensor.copy_(1.0 + 0.1 * noise)
        else:  # biases
            tensor.copy_(0.1 * noise)
    return model.eval()


def as_reference(hf_model):
    """Randomized, in eval mode, with eager attention: the plain-math reference."""
    model = randomize(hf_model)
    model.config._attn_implementation = "eager"
    return model


def hf_model(case: str, vocab: int = VOCAB, context: int = CONTEXT):
    """The HF model of a case in HF_CASES or ZOO_CASES, randomized (the same on every call)."""
    torch.manual_seed(0)
    return as_reference((HF_CASES | ZOO_CASES)[case](vocab, context))


def to_lmforge(hf_model) -> Transformer:
    """The HF model's config and weights through lmforge.formats, loaded strictly."""
    hf_config = hf_model.config.to_dict()
    config = model_config_from_hf(hf_config)
    model = Transformer(config)
    state = state_dict_from_hf(
        hf_model.state_dict(), config, hf_config["model_type"], hf_config.get("rope_interleave")
    )
    model.load_state_dict(state, strict=True)
    if config.tie_embeddings:
        assert model.lm_head.weight is model.token_embedding.weight
    return model.eval()


def to_hf(model: Transformer):
    """An lmforge model exported through lmforge.formats and loaded into its transformers class."""
    hf_config = transformers.AutoConfig.for_model(**hf_config_from_model_config(model.config))
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    missing, unexpected = hf_model.load_state_dict(
        state_dict_to_hf(model.state_dict(), model.config), strict=False
    )
    assert not unexpected, unexpected
    assert missing == (["lm_head.weight"] if model.config.tie_embeddings else []), missing
    return hf_model.eval()


def assert_exports_back(hf_model, model: Transformer) -> None:
    """Exporting the imported `model` gives back the HF state dict bit for bit (a tied head is
    stored once)."""
    back = state_dict_to_hf(model.state_dict(), model.config)
    original = hf_model.state_dict()
    if model.config.tie_embeddings:
        original.pop("lm_head.weight")
    assert back.keys() == original.keys(), sorted(back.keys() ^ original.keys())
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key


def random_tokens(batch: int = 2, length: int = 20, vocab: int = VOCAB) -> torch.Tensor:
    """The same (batch, length) token ids on every call."""
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def hf_greedy(hf_model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' greedy continuations of prompts of any lengths, left-padded as lmforge pads;
    eos is off so that both sides always emit exactly new_tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    hf_model.generation_config.eos_token_id = None
    hf_model.generation_config.pad_token_id = 0
    out = hf_model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens
    )
    return out[:, width:].tolist()


def trained_tokenizer(llama_style: bool) -> HuggingFaceTokenizer:
    """Byte-level BPE (300 tokens) plus, Llama-style, a <s> BOS the post-processor prepends."""
    from conftest import make_text

    tokenizer = HuggingFaceTokenizer.train([make_text(7, 200), TEXT], vocab_size=300)
    tokenizer.hf.add_special_tokens(["<|user|>", "<s>"] if llama_style else ["<|user|>"])
    if llama_style:
        bos = tokenizer.hf.token_to_id("<s>")
        tokenizer.hf.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", bos)]
        )
    return tokenizer


def save_hf_dir(case: str, directory: Path, safe_serialization: bool = True):
    """save_pretrained of a random `case` model (DIR_VOCAB, DIR_CONTEXT) and its tokenizer;
    returns the HF model."""
    model = hf_model(case, DIR_VOCAB, DIR_CONTEXT)
    model.save_pretrained(directory)
    if not safe_serialization:  # transformers 5 always writes safetensors; 4.x wrote this
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    llama_style = not case.startswith("gpt2")
    tokenizer = trained_tokenizer(llama_style)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.hf,
        eos_token="<|endoftext|>",
        bos_token="<s>" if llama_style else "<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(directory)
    return model
