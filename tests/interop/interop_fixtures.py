"""Fixtures and helpers for the import/export tests: tiny random transformers models saved as
HF directories with a small trained tokenizer, and the shared-data directory.

Kept out of a tests/interop/conftest.py on purpose: a second conftest module replaces
`conftest` in sys.modules and breaks the `from conftest import ...` of later test modules.
Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import processors

from lmforge.tokenizer import HuggingFaceTokenizer

transformers = pytest.importorskip("transformers")

VOCAB = 320  # model rows; the tokenizer has 302 tokens (padded vocab, as real models have)
CONTEXT = 128
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|endoftext|>{% endfor %}"
TEXT = "the quick brown fox jumps over the lazy dog; def model(tokens): return loss\n"
LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,  # small: with head_dim 16 all three bands occur
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data or $LMFORGE_SHARED_DATA; skip without it (fail if it is required)."""
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    path = Path(os.environ.get("LMFORGE_SHARED_DATA", default))
    if not path.is_dir():
        if os.environ.get("LMFORGE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared data {path} is missing and LMFORGE_REQUIRE_SHARED_DATA=1")
        pytest.skip(f"shared data {path} not found (set LMFORGE_SHARED_DATA)")
    return path


def _llama_shape(**overrides) -> dict:
    shape = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6,
    )
    return shape | overrides


HF_CASES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=4
        )
    ),
    "llama-tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**_llama_shape(tie_word_embeddings=True))
    ),
    "llama-untied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**_llama_shape(tie_word_embeddings=False))
    ),
    "llama3-scaling": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            **_llama_shape(rope_theta=500000.0), rope_scaling=dict(LLAMA3_SCALING)
        )
    ),
    "mistral": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(**_llama_shape(head_dim=32, sliding_window=None))
    ),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**_llama_shape(tie_word_embeddings=True))
    ),
}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights with std 0.2 and non-trivial norms/biases, so a swapped tensor changes logits."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim >= 2:
            param.copy_(0.2 * noise)
        elif name.endswith("weight"):
            param.copy_(1.0 + 0.1 * noise)
        else:
            param.copy_(0.1 * noise)
    return model.eval()


def hf_model(case: str):
    model = randomize(HF_CASES[case]())
    model.config._attn_implementation = "eager"
    return model


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
    """save_pretrained of a random `case` model and its tokenizer; returns the HF model."""
    model = hf_model(case)
    model.save_pretrained(directory)
    if not safe_serialization:  # transformers 5 always writes safetensors; 4.x wrote this
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    llama_style = case != "gpt2"
    tokenizer = trained_tokenizer(llama_style)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.hf,
        eos_token="<|endoftext|>",
        bos_token="<s>" if llama_style else "<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(directory)
    return model


def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """HF greedy decoding with eos off, so it always emits exactly new_tokens."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
    )
    return out[0, len(prompt) :].tolist()
