"""lmforge checkpoint -> llama.cpp GGUF file: Llama, Mixtral-style MoE (llama.cpp's `llama`
architecture with stacked experts) and GPT-2 (`gpt2`), in f32, f16, bf16, q8_0, q4_0 or q4_1.

Which tensors keep more precision follows llama.cpp (convert_hf_to_gguf.py and llama-quantize):
- 1-D tensors (norms, biases), GPT-2's position embedding and MoE routers (ffn_gate_inp) stay f32;
- in the 4-bit types the output matrix (output.weight, or the tied token embedding that serves as
  it) is q8_0: llama-quantize gives it q6_K, which the gguf package cannot write, and q8_0 is the
  nearest finer type it can;
- a matrix whose rows do not split into the type's 32-value blocks falls back to f16, as
  convert_hf_to_gguf.py does.
The tensor layouts are those gguf.py reads (`gguf_layout`), so an export imports back exactly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lmforge.checkpoint.directory import load_model, writing_output
from lmforge.config_checks import check_new_output
from lmforge.errors import ConfigError
from lmforge.formats.gguf import gguf_layout, permute_for_gguf, split_dim
from lmforge.formats.gguf_tokenizer import tokenizer_metadata
from lmforge.formats.hf_config import export_type
from lmforge.models.config import ModelConfig
from lmforge.models.positions import rope_inverse_frequencies

_Q = gguf.GGMLQuantizationType
EXPORT_DTYPES = {  # name: (type of the matrices, llama.cpp's general.file_type)
    "f32": (_Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (_Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (_Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (_Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (_Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (_Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
}
FOUR_BIT = (_Q.Q4_0, _Q.Q4_1)
ALWAYS_F32 = ("position_embd.weight", "ffn_gate_inp.weight")  # name suffixes

_TOKENIZER_WRITERS = {
    "tokenizer.ggml.model": "add_tokenizer_model",
    "tokenizer.ggml.pre": "add_tokenizer_pre",
    "tokenizer.ggml.tokens": "add_token_list",
    "tokenizer.ggml.token_type": "add_token_types",
    "tokenizer.ggml.merges": "add_token_merges",
    "tokenizer.ggml.eos_token_id": "add_eos_token_id",
    "tokenizer.ggml.bos_token_id": "add_bos_token_id",
    "tokenizer.ggml.add_bos_token": "add_add_bos_token",
    "tokenizer.chat_template": "add_chat_template",
}


def gguf_architecture(config: ModelConfig) -> str:
    """`llama` (plain or Mixtral-style MoE) or `gpt2`; a ConfigError names what llama.cpp lacks."""
    model_type = export_type(config)  # refuses flavours no architecture has
    if model_type in ("gpt2", "llama"):
        return model_type
    if model_type == "mixtral":
        mixtral_routing = (
            config.num_shared_experts == 0
            and config.moe_scoring == "softmax"
            and config.moe_norm_topk
            and config.moe_routed_scale == 1.0
            and config.moe_groups == 1
            and not config.moe_bias_balancing
            and config.moe_first_dense_layers == 0
        )
        if not mixtral_routing or config.layers:
            raise ConfigError(
                "GGUF export of MoE supports Mixtral-style routing only (softmax, top-k "
                "renormalised, no shared experts, every layer MoE)"
            )
        if config.sliding_window is None or config.sliding_window >= config.context_length:
            return "llama"
    raise ConfigError(
        f"GGUF export supports Llama, Mixtral-style MoE and GPT-2 models; this one is {model_type}"
        + (
            " with a sliding window, which llama.cpp's llama architecture lacks"
            if config.sliding_window
            else ""
        )
    )


def _add_metadata(
    writer: gguf.GGUFWriter, config: ModelConfig, arch: str, name: str, file_type: int
) -> None:
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.num_layers)
    writer.add_head_count(config.num_heads)
    writer.add_vocab_size(config.vocab_size)
    if arch == "gpt2":
        writer.add_feed_forward_length(config.hidden_dim)
        writer.add_layer_norm_eps(config.norm_eps)
        return
    moe = config.ffn == "moe"
    writer.add_feed_forward_length(config.expert_dim if moe else config.hidden_dim)
    if moe:
        writer.add_expert_count(config.num_experts)
        writer.add_expert_used_count(config.experts_per_token)
    writer.add_head_count_kv(config.kv_heads)
    if config.head_dim is not None:  # llama.cpp otherwise derives dim // heads
        writer.add_key_length(config.attn_head_dim)
        writer.add_value_length(config.attn_head_dim)
    writer.add_rope_dimension_count(config.attn_head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)


def tensor_type(name: str, array: np.ndarray, base: Any, output_matrix: str) -> Any:
    """The GGUF type `name` is stored in, for matrices of type `base` (see the module docstring)."""
    if array.ndim == 1 or not name.endswith(".weight") or name.endswith(ALWAYS_F32):
        return _Q.F32
    if base in FOUR_BIT and name == output_matrix:
        return _Q.Q8_0
    return base


def _add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, qtype: Any) -> None:
    if qtype == _Q.F32:
        writer.add_tensor(name, array.astype(np.float32))
        return
    try:
        data = gguf.quants.quantize(array, qtype)
    except gguf.quants.QuantError:  # rows not a whole number of blocks
        qtype = _Q.F16
        data = array.astype(np.float16)
    writer.add_tensor(name, data, raw_dtype=qtype)


def export_gguf(checkpoint_path: str | Path, out_path: str | Path, dtype: str = "f16") -> Path:
    """Write a checkpoint as a llama.cpp GGUF file; written under a temporary name, then renamed."""
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(
            f"GGUF dtype '{dtype}' is not supported; use one of {', '.join(EXPORT_DTYPES)}"
        )
    out_path = Path(out_path)
    check_new_output(out_path, "--out", is_file=True)  # before the checkpoint is read
    model, tokenizer, directory = load_model(checkpoint_path)
    config = model.config
    arch = gguf_architecture(config)
    tokenizer_meta = tokenizer_metadata(tokenizer, config.vocab_size)
    base, file_type = EXPORT_DTYPES[dtype]
    temporary = out_path.with_name(out_path.name + ".tmp")
    writer = gguf.GGUFWriter(str(temporary), arch)
    try:
        with writing_output(out_path):  # a full disk or a lost permission: one line
            out_path.parent.mkdir(parents=True, exist_ok=True)  # checked: it can be made
            _add_metadata(writer, config, arch, Path(directory).resolve().name, file_type)
            for key, value in tokenizer_meta.items():
                getattr(writer, _TOKENIZER_WRITERS[key])(value)
            _add_tensors(writer, model, arch, base)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(temporary, out_path)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return out_path


def _add_tensors(writer: gguf.GGUFWriter, model: Any, arch: str, base: Any) -> None:
    config = model.config
    output_matrix = "token_embd.weight" if config.tie_embeddings else "output.weight"
    if config.rope_scaling == "llama3":
        plain = rope_inverse_frequencies(dataclasses.replace(config, rope_scaling="none"))
        divisors = (plain / rope_inverse_frequencies(config)).numpy().astype(np.float32)
        writer.add_tensor("rope_freqs.weight", divisors)
    state = model.state_dict()
    for ours, parts in gguf_layout(config, arch):
        tensor = state[ours].float()
        sizes = [rows for _, rows, _ in parts]
        pieces = tensor.split(sizes, split_dim(ours)) if len(parts) > 1 else [tensor]
        for (name, _, heads), piece in zip(parts, pieces, strict=True):
            array = (permute_for_gguf(piece, heads) if heads else piece).contiguous().numpy()
            _add_tensor(writer, name, array, tensor_type(name, array, base, output_matrix))
