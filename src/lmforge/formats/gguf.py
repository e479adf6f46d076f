"""GGUF (llama.cpp's file format) -> lmforge: read `llama` (also Mixtral-style MoE) and `gpt2`
files into a config, a state dict and a tokenizer. Writing one as a checkpoint directory is
interop/gguf_import.py; the reverse direction is interop/gguf_export.py, on the same layout.

Layout differences handled here:
- GGUF lists tensor dims innermost first, so a (rows, cols) torch weight has GGUF shape [cols, rows];
  the reader's numpy arrays are already in torch order.
- convert_hf_to_gguf.py permutes the rows of Llama's q/k weights from HF's rotate-half RoPE layout
  (ours) to the interleaved-pairs layout llama.cpp rotates in; we undo that on import, redo on export.
- We fuse q/k/v into `attn.qkv` and gate/up into `ffn.up` (and `ffn.experts.up`); GGUF keeps them
  apart (except GPT-2's attn_qkv). Tied embeddings are a file without `output.weight`.
- Llama 3.1 RoPE scaling is stored as a `rope_freqs` tensor of per-frequency divisors, not as keys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import Tensor

from lmforge.errors import CheckpointError, ConfigError
from lmforge.formats.gguf_tokenizer import tokenizer_from_gguf
from lmforge.formats.hf_weights import check_shapes
from lmforge.models.config import ModelConfig
from lmforge.models.footprint import refuse_if_too_large
from lmforge.models.positions import rope_inverse_frequencies
from lmforge.models.ranges import check_model_file, check_source_numbers
from lmforge.models.transformer import Transformer
from lmforge.tokenizer.base import Tokenizer

ARCHITECTURES = ("llama", "gpt2")
DEQUANTIZABLE = ("F32", "F16", *sorted(q.name for q in getattr(gguf.quants, "_type_traits", {})))


def permute_for_gguf(w: Tensor, heads: int) -> Tensor:
    """HF rotate-half rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's permute)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
    )


def _unpermute(w: Tensor, heads: int) -> Tensor:
    return (
        w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
    )


# One GGUF tensor inside one of ours: its name, its row count, and the head count to (un)permute
# its rows by (q and k of Llama only). Several parts are concatenated along their row dim: dim 0,
# or dim 1 of stacked experts (E, rows, cols).
Part = tuple[str, int, "int | None"]


def gguf_layout(config: ModelConfig, arch: str) -> list[tuple[str, list[Part]]]:
    """(our key, its GGUF parts) for every tensor of the model."""
    q, kv = config.num_heads * config.attn_head_dim, config.kv_heads * config.attn_head_dim
    hidden = config.expert_dim if config.ffn == "moe" else config.hidden_dim

    def whole(name: str) -> list[Part]:
        return [(name, 0, None)]  # 0: all rows

    rows = [("token_embedding.weight", whole("token_embd.weight"))]
    params = ("weight", "bias") if arch == "gpt2" else ("weight",)
    if arch == "gpt2":
        rows.append(("position_embedding.weight", whole("position_embd.weight")))
    for i in range(config.num_layers):
        blk, ours = f"blk.{i}.", f"layers.{i}."
        for p in params:
            qkv, up = whole(f"{blk}attn_qkv.{p}"), whole(f"{blk}ffn_up.{p}")
            if arch == "llama":
                qkv = [(f"{blk}attn_q.{p}", q, config.num_heads)]
                qkv += [(f"{blk}attn_k.{p}", kv, config.kv_heads), (f"{blk}attn_v.{p}", kv, None)]
                up = [(f"{blk}ffn_gate.{p}", hidden, None), (f"{blk}ffn_up.{p}", hidden, None)]
            rows += [
                (f"{ours}attn_norm.{p}", whole(f"{blk}attn_norm.{p}")),
                (f"{ours}attn.qkv.{p}", qkv),
                (f"{ours}attn.out.{p}", whole(f"{blk}attn_output.{p}")),
                (f"{ours}ffn_norm.{p}", whole(f"{blk}ffn_norm.{p}")),
            ]
            if config.ffn == "moe":  # Mixtral: router, then experts stacked (E, rows, cols)
                experts = [(f"{blk}ffn_gate_exps.{p}", hidden, None)]
                experts.append((f"{blk}ffn_up_exps.{p}", hidden, None))
                rows += [
                    (f"{ours}ffn.router.{p}", whole(f"{blk}ffn_gate_inp.{p}")),
                    (f"{ours}ffn.experts.up", experts),
                    (f"{ours}ffn.experts.down", whole(f"{blk}ffn_down_exps.{p}")),
                ]
                continue
            rows += [
                (f"{ours}ffn.up.{p}", up),
                (f"{ours}ffn.down.{p}", whole(f"{blk}ffn_down.{p}")),
            ]
    rows += [(f"final_norm.{p}", whole(f"output_norm.{p}")) for p in params]
    if not config.tie_embeddings:
        rows.append(("lm_head.weight", whole("output.weight")))
    return rows


def split_dim(key: str) -> int:
    """The dim along which `key`'s GGUF parts are concatenated (rows; experts are stacked)."""
    return 1 if key.endswith("experts.up") else 0


# GGUF metadata numbers -> ModelConfig fields, checked before any arithmetic on them. Not
# expert_count: 0 there means a dense model (the MoE fields are checked once mapped).
_NUMBERS = {
    "embedding_length": "dim",
    "block_count": "num_layers",
    "context_length": "context_length",
    "feed_forward_length": "ffn_dim",
    "attention.head_count": "num_heads",
    "attention.head_count_kv": "num_kv_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_epsilon": "norm_eps",
    "attention.layer_norm_rms_epsilon": "norm_eps",
    "rope.freq_base": "rope_theta",
}


def _tidy(value: Any) -> Any:
    # float32 metadata (1e-5 reads back as 9.9999997e-06): keep the shortest float32 spelling.
    return float(str(np.float32(value))) if isinstance(value, float) else value


def _config(meta: dict[str, Any], arch: str, tensors: dict[str, Any]) -> ModelConfig:
    def key(name: str, default: Any = KeyError) -> Any:
        if f"{arch}.{name}" in meta:
            return _tidy(meta[f"{arch}.{name}"])
        if default is KeyError:
            raise CheckpointError(
                f"GGUF {arch} metadata lacks {arch}.{name}; the file is incomplete"
            )
        return default

    dim, heads = key("embedding_length"), key("attention.head_count")
    common = dict(
        vocab_size=int(tensors["token_embd.weight"].shape[-1]),  # GGUF order: [dim, vocab]
        context_length=key("context_length"),
        dim=dim,
        num_layers=key("block_count"),
        num_heads=heads,
        ffn_dim=key("feed_forward_length"),
        tie_embeddings="output.weight" not in tensors,
    )
    if arch == "gpt2":
        eps = key("attention.layer_norm_epsilon", 1e-5)
        return ModelConfig(
            **common, mlp="gelu", norm="layernorm", norm_eps=eps, position="learned", bias=True
        )
    moe = {}
    if key("expert_count", 0):  # Mixtral: softmax router, top-k renormalised, no shared experts
        if "blk.0.ffn_gate_exps.weight" not in tensors:
            raise ConfigError(
                "GGUF llama MoE file without stacked experts (ffn_*_exps) is not supported"
            )
        moe = dict(
            ffn="moe", num_experts=key("expert_count"), experts_per_token=key("expert_used_count")
        )
    head_dim = key("attention.key_length", dim // heads)
    if key("rope.dimension_count", head_dim) != head_dim:
        raise ConfigError(
            f"GGUF rotates {key('rope.dimension_count')} of {head_dim} head dims (partial RoPE); "
            "lmforge rotates whole heads only"
        )
    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", "linear") or (
        scaling == "linear" and key("rope.scaling.factor") != 1
    ):
        raise ConfigError(f"GGUF rope.scaling.type '{scaling}' is not supported (lmforge: llama3)")
    config = ModelConfig(
        **common,
        num_kv_heads=key("attention.head_count_kv", heads),
        head_dim=None if head_dim * heads == dim else head_dim,
        norm_eps=key("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=key("rope.freq_base", 10000.0),
        **moe,
    )
    if "rope_freqs.weight" in tensors:
        _fit_llama3_scaling(config, torch.from_numpy(_dequantize(tensors["rope_freqs.weight"])))
    return config


def _fit_llama3_scaling(config: ModelConfig, divisors: Tensor) -> None:
    """Llama-3.1 scaling from llama.cpp's rope_freqs, the per-frequency divisors it stores instead
    of the parameters. The largest divisor is the factor; on the smoothly scaled band the divisors
    give s = a / wavelength - b, with a = original_context / (high - low), b = low / (high - low).
    Taking Meta's low_freq_factor = 1, we solve for the rest (any solution rotates the same)."""
    factor = float(divisors.max())
    if factor <= 1.0 + 1e-6:
        return  # all ones: no scaling
    plain = rope_inverse_frequencies(config).double()
    wavelength, divisors = 2 * math.pi / plain, divisors.double()
    smooth = (divisors > 1 + 1e-4) & (divisors < factor * (1 - 1e-4))
    s = (1 / divisors[smooth] - 1 / factor) / (1 - 1 / factor)
    low, high, original = 1.0, 4.0, 8192.0  # Meta's values, kept where the file cannot tell
    if int(smooth.sum()) >= 2:
        design = torch.stack([1 / wavelength[smooth], -torch.ones_like(s)], dim=1)
        a, b = torch.linalg.lstsq(design, s[:, None]).solution.flatten().tolist()
        high, original = 1 + 1 / b, a / b
    elif int(smooth.sum()) == 1:  # with low 1, high 4: s = (original / wavelength - 1) / 3
        original = float(wavelength[smooth] * (3 * s + 1))
    config.rope_scaling, config.rope_scaling_factor = "llama3", factor
    config.rope_low_freq_factor, config.rope_high_freq_factor = low, round(high, 6)
    config.rope_original_context_length = (
        round(original) if abs(original - round(original)) < 1e-3 else original
    )
    if not torch.allclose(rope_inverse_frequencies(config).double(), plain / divisors, rtol=1e-4):
        raise ConfigError("GGUF rope_freqs is not Llama-3.1 RoPE scaling, the only kind supported")


def _dequantize(tensor: Any) -> np.ndarray:
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise CheckpointError(
            f"GGUF tensor {tensor.name} is {tensor.tensor_type.name}, which lmforge (gguf "
            f"package) cannot dequantize; supported: {', '.join(DEQUANTIZABLE)}"
        ) from None
    expected = tuple(int(d) for d in reversed(tensor.shape))
    if array.shape != expected:
        raise CheckpointError(
            f"GGUF tensor {tensor.name} is cut short; the file is truncated or corrupt"
        )
    return np.array(array, dtype=np.float32)  # a writable copy, not a view of the mapped file


def read_gguf(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor], Tokenizer]:
    """Config, state dict (fp32, load_state_dict-ready) and tokenizer of a `llama`/`gpt2` GGUF."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist; check the path")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if len(magic) == 4 and magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = gguf.GGUFReader(str(path))
        meta = {name: field.contents() for name, field in reader.fields.items()}
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as error:
        # The reader fails on a cut-off file with numpy shape errors; name the likely cause.
        raise CheckpointError(
            f"{path} is truncated or corrupt ({path.stat().st_size:,} bytes; the GGUF reader "
            f"failed with {type(error).__name__}: {error}); download or export it again"
        ) from None
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"GGUF architecture '{arch}' is not supported; lmforge imports {', '.join(ARCHITECTURES)}"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path} has no token_embd.weight; the file is incomplete")
    check_source_numbers(meta, {f"{arch}.{k}": v for k, v in _NUMBERS.items()}, str(path))
    config = _config(meta, arch, tensors)
    check_model_file(config, str(path))
    refuse_if_too_large(config, str(path))  # before any tensor is dequantized
    state = {}
    for ours, parts in gguf_layout(config, arch):
        pieces = []
        for name, _, heads in parts:
            if name not in tensors:
                raise CheckpointError(
                    f"GGUF {arch} file lacks tensor {name}; the file is incomplete"
                )
            piece = torch.from_numpy(_dequantize(tensors.pop(name)))
            pieces.append(_unpermute(piece, heads) if heads else piece)
        state[ours] = torch.cat(pieces, split_dim(ours)) if len(pieces) > 1 else pieces[0]
    tensors.pop("rope_freqs.weight", None)  # read into the config already
    if tensors:
        raise CheckpointError(
            f"GGUF has tensors lmforge has no place for ({', '.join(sorted(tensors)[:3])}); only "
            f"plain {arch} decoders are supported"
        )
    if config.tie_embeddings:
        state["lm_head.weight"] = state["token_embedding.weight"]
    check_shapes(state, config, "GGUF file")
    return config, state, tokenizer_from_gguf(meta)


# The weight-only scheme (models/quantize.py) that keeps a GGUF tensor's precision: 4-bit types
# become int4, 5- to 8-bit types int8, float types stay as they are.
_SCHEME_OF_TYPE = {"Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4", "IQ4_NL": "int4"}
_SCHEME_OF_TYPE |= dict.fromkeys(("Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q8_K"), "int8")
_FINER = {"int4": 0, "int8": 1, "none": 2}


def gguf_quantization_plan(path: str | Path) -> dict[str, str]:
    """{"default": scheme, module: scheme, ...}: the scheme per linear layer that matches the
    file's tensor types (a fused layer takes the finest of its parts, so nothing is coarser than
    in the file). `lmforge sample/chat --quantize auto` decodes an imported GGUF with it."""
    reader = gguf.GGUFReader(str(path))
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    tensors = {t.name: t for t in reader.tensors}
    config = _config(meta, arch, tensors)
    schemes = {}
    for ours, parts in gguf_layout(config, arch):
        if (
            not ours.endswith(".weight")
            or "norm" in ours
            or "embedding" in ours
            or "router" in ours
        ):
            continue  # stacked experts (no .weight) are not nn.Linear layers either
        found = [_SCHEME_OF_TYPE.get(tensors[name].tensor_type.name, "none") for name, *_ in parts]
        schemes[ours.removesuffix(".weight")] = max(found, key=_FINER.get)
    head = "token_embd.weight" if config.tie_embeddings else "output.weight"
    schemes["lm_head"] = _SCHEME_OF_TYPE.get(tensors[head].tensor_type.name, "none")
    default = max(set(schemes.values()), key=list(schemes.values()).count)
    return {"default": default} | {k: v for k, v in schemes.items() if v != default}


def model_from_state(config: ModelConfig, state: dict[str, Tensor]) -> Transformer:
    """A Transformer (eval mode) holding `state`'s tensors, without a random init first."""
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, assign=True)
    if config.tie_embeddings:  # assign made two Parameters; make them one again
        model.lm_head.weight = model.token_embedding.weight
    return model.eval()


def load_gguf(path: str | Path) -> tuple[Transformer, Tokenizer]:
    """The model (fp32, eval mode) and tokenizer of a GGUF file."""
    config, state, tokenizer = read_gguf(path)
    return model_from_state(config, state), tokenizer
