"""Hugging Face weights <-> lmforge state dicts: reading an HF directory's weight files (one file,
sharded safetensors or a .bin read with weights_only=True) and renaming, fusing and splitting
tensors between the two layouts.

The layouts differ only in names and fusion: we fuse q/k/v into one `attn.qkv` (rows
[q; k; v]) and SwiGLU's gate/up into one `ffn.up` (rows [gate; up]); GPT-2's Conv1D stores
weights as (in, out), the transpose of nn.Linear. Our RoPE already uses HF's rotate-half layout,
so Llama q/k weights need no permutation.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from lmforge.errors import CheckpointError, one_line
from lmforge.formats.hf_config import SUPPORTED, export_type
from lmforge.formats.hf_tokenizer import read_json
from lmforge.formats.hf_zoo import (
    DEEPSEEK,
    ZOO,
    fuse_legacy_experts,
    permute_rope_rows,
    zoo_layer_rows,
)
from lmforge.models.config import ModelConfig, layer_configs
from lmforge.models.transformer import Transformer

# Non-parameter buffers some HF checkpoints carry: GPT-2's causal mask, old Llama's RoPE table.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def layout(config: ModelConfig, family: str) -> list[tuple[str, tuple[str, ...], bool, list]]:
    """(our key, the HF keys concatenated along dim 0 into it, HF stores it transposed, split sizes)."""
    rows = []
    gpt2 = family == "gpt2"

    def add(ours, hf, conv1d=False, sizes=None):
        rows.append((ours, hf if isinstance(hf, tuple) else (hf,), conv1d, sizes))

    if family == "zoo":
        add("token_embedding.weight", "model.embed_tokens.weight")
        for i, layer in enumerate(layer_configs(config)):
            zoo_layer_rows(layer, i, add)
        add("final_norm.weight", "model.norm.weight")
    elif gpt2:
        add("token_embedding.weight", "transformer.wte.weight")
        add("position_embedding.weight", "transformer.wpe.weight")
        for i in range(config.num_layers):
            ours, hf = f"layers.{i}.", f"transformer.h.{i}."
            for p in ("weight", "bias"):
                add(f"{ours}attn_norm.{p}", f"{hf}ln_1.{p}")
                add(f"{ours}attn.qkv.{p}", f"{hf}attn.c_attn.{p}", conv1d=True)  # fused q,k,v
                add(f"{ours}attn.out.{p}", f"{hf}attn.c_proj.{p}", conv1d=True)
                add(f"{ours}ffn_norm.{p}", f"{hf}ln_2.{p}")
                add(f"{ours}ffn.up.{p}", f"{hf}mlp.c_fc.{p}", conv1d=True)
                add(f"{ours}ffn.down.{p}", f"{hf}mlp.c_proj.{p}", conv1d=True)
        for p in ("weight", "bias"):
            add(f"final_norm.{p}", f"transformer.ln_f.{p}")
    else:
        q, kv = config.num_heads * config.attn_head_dim, config.kv_heads * config.attn_head_dim
        add("token_embedding.weight", "model.embed_tokens.weight")
        for i in range(config.num_layers):
            ours, hf = f"layers.{i}.", f"model.layers.{i}."
            add(f"{ours}attn_norm.weight", f"{hf}input_layernorm.weight")
            for p in ("weight", "bias") if config.qkv_bias else ("weight",):
                names = tuple(f"{hf}self_attn.{x}_proj.{p}" for x in "qkv")
                add(f"{ours}attn.qkv.{p}", names, sizes=[q, kv, kv])
            add(f"{ours}attn.out.weight", f"{hf}self_attn.o_proj.weight")
            add(f"{ours}ffn_norm.weight", f"{hf}post_attention_layernorm.weight")
            gate_up = (f"{hf}mlp.gate_proj.weight", f"{hf}mlp.up_proj.weight")
            add(f"{ours}ffn.up.weight", gate_up, sizes=[config.hidden_dim] * 2)
            add(f"{ours}ffn.down.weight", f"{hf}mlp.down_proj.weight")
        add("final_norm.weight", "model.norm.weight")
    if not config.tie_embeddings:
        add("lm_head.weight", "lm_head.weight")
    return rows


def check_shapes(state: dict[str, Tensor], config: ModelConfig, source: str) -> None:
    with torch.device("meta"):  # shapes only, nothing allocated
        expected = Transformer(config).state_dict()
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{key} is {tuple(state[key].shape)} in the {source} but the config needs "
                f"{tuple(tensor.shape)}; the config does not match these weights"
            )


def _family(model_type: str) -> str:
    return "gpt2" if model_type == "gpt2" else "zoo" if model_type in ZOO else "llama"


def state_dict_from_hf(
    hf_state: dict[str, Tensor],
    config: ModelConfig,
    model_type: str,
    rope_interleave: bool | None = None,
) -> dict[str, Tensor]:
    """Our state dict (Transformer.load_state_dict-ready) from an HF one of `model_type`.

    rope_interleave (DeepSeek only; config.json's value): None means True, HF's default for V3 and
    the only layout of V2.
    """
    if model_type not in SUPPORTED:
        raise CheckpointError(
            f"cannot import HF model_type '{model_type}' weights; supported: {', '.join(SUPPORTED)}"
        )
    gpt2 = model_type == "gpt2"
    family = (
        "zoo"
        if (model_type in ZOO or config.sliding_window or config.layers)
        else _family(model_type)
    )
    if model_type in ZOO:
        hf_state = fuse_legacy_experts(hf_state)
    prefix = "transformer." if gpt2 else "model."
    hf = {}
    for key, tensor in hf_state.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        # Checkpoints saved from the bare body (e.g. the original gpt2 weights) lack the prefix.
        if key != "lm_head.weight" and not key.startswith(prefix):
            key = prefix + key
        hf[key] = tensor
    if config.tie_embeddings:
        hf.pop("lm_head.weight", None)  # the tied alias of the embedding
    state = {}
    for ours, names, conv1d, _ in layout(config, family):
        missing = [name for name in names if name not in hf]
        if missing:
            raise CheckpointError(
                f"HF {model_type} weights lack {missing[0]}; check that config.json belongs "
                "to these weights"
            )
        tensor = torch.cat([hf.pop(name) for name in names]) if len(names) > 1 else hf.pop(names[0])
        state[ours] = tensor.t().contiguous() if conv1d and tensor.ndim == 2 else tensor
    if hf:
        raise CheckpointError(
            f"HF {model_type} weights hold tensors lmforge has no place for "
            f"({', '.join(sorted(hf)[:3])}); only plain decoders as config.json describes load"
        )
    if config.tie_embeddings:
        state["lm_head.weight"] = state["token_embedding.weight"]
    check_shapes(state, config, "converted HF weights")
    if model_type in DEEPSEEK and (model_type == "deepseek_v2" or rope_interleave is not False):
        state = permute_rope_rows(state, layer_configs(config))
    return state


def state_dict_to_hf(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """HF state dict for the architecture `hf_config_from_model_config(config)` names.

    Tied embeddings are stored once (no lm_head.weight), as HF's own checkpoints do, so the result
    can go straight to safetensors.torch.save_file. No two returned tensors share memory.
    """
    model_type = export_type(config)
    family = "zoo" if model_type in (*ZOO, "mistral") else _family(model_type)
    state = dict(state)
    if config.tie_embeddings:  # safetensors' save_model keeps only one name of a tied pair
        shared = state.get("token_embedding.weight", state.get("lm_head.weight"))
        state["token_embedding.weight"] = state["lm_head.weight"] = shared
    missing = [key for key, *_ in layout(config, family) if key not in state]
    if missing:
        raise CheckpointError(f"lmforge state dict lacks {missing[0]}; is it this config's model?")
    check_shapes(state, config, "lmforge state dict")
    if model_type == "deepseek_v2":  # V2 always rotates interleaved pairs (V3 exports without)
        state = permute_rope_rows(state, layer_configs(config), inverse=True)
    hf = {}
    for ours, names, conv1d, sizes in layout(config, family):
        tensor = state[ours].t() if conv1d and state[ours].ndim == 2 else state[ours]
        if sizes:  # split views share storage, which save_file refuses: copy them
            hf.update(zip(names, (part.clone() for part in tensor.split(sizes)), strict=True))
        else:
            hf[names[0]] = tensor.contiguous()
    return hf


# Weight files in the order transformers prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_weight_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weight file {path} is missing; download it again")
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path))
        # weights_only: a pickle can run code; this only rebuilds tensors. mmap needs the zip format.
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as error:  # safetensors, pickle and zip all raise their own types
        raise CheckpointError(
            f"cannot read {path}: {one_line(error, 300)}; the file is corrupt or truncated, "
            "download it again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """All tensors of an HF directory: one file or the shards its index lists."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return load_weight_file(path)
        weight_map = read_json(path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path} has no weight_map; the index is corrupt")
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_weight_file(directory / shard))
        return state
    raise CheckpointError(
        f"{directory} has no weights ({', '.join(WEIGHT_FILES)}); point at a complete HF model dir"
    )
