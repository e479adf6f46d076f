"""Meta's original Llama 2 / 3 / 3.1 / 3.2 checkpoint format -> lmforge checkpoint directory.

A Meta directory holds params.json, consolidated.NN.pth (one per model-parallel rank) and
tokenizer.model (SentencePiece for Llama 2, tiktoken ranks for Llama 3). The weights are renamed
to Hugging Face Llama names and then go through the same mapping and shape checks as an HF
import (`hf.state_dict_from_hf`); the two differences from HF are undone here: shards are merged,
and q/k rows are permuted from Meta's interleaved RoPE pairs to the rotate-half layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from lmforge._validate import POSITIVE, check_number
from lmforge.checkpoint.directory import check_out_dir
from lmforge.errors import CheckpointError, ConfigError, one_line
from lmforge.formats.hf_tokenizer import read_json
from lmforge.formats.hf_weights import load_weight_file, state_dict_from_hf
from lmforge.interop.hf_dir import write_checkpoint
from lmforge.models.config import ModelConfig
from lmforge.models.footprint import refuse_if_too_large
from lmforge.models.ranges import FILE_FIX, check_model_file, check_source_numbers
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.pretrained import load_pretrained_tokenizer

# Model-parallel split dims (fairscale ColumnParallelLinear: dim 0, RowParallelLinear: dim 1).
CONCAT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}
HF_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """FeedForward.__init__ in Meta's model.py: 2/3 of 4*dim, scaled, rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def to_rotate_half(weight: Tensor, heads: int) -> Tensor:
    """Rows of q/k from Meta's interleaved (x0, x1) RoPE pairs to HF's rotate-half halves.

    The `permute` of transformers' convert_llama_weights_to_hf.py: within each head, even rows
    first, then odd rows.
    """
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


# params.json numbers -> ModelConfig fields, checked before any arithmetic on them (vocab_size
# too, unless it is Llama 2's -1: "as many as the embedding has rows").
META_NUMBERS = {
    "dim": "dim",
    "n_layers": "num_layers",
    "n_heads": "num_heads",
    "n_kv_heads": "num_kv_heads",
    "multiple_of": "ffn_multiple_of",
    "norm_eps": "norm_eps",
    "rope_theta": "rope_theta",
    "max_seq_len": "context_length",
    "rope_scaling_factor": "rope_scaling_factor",
    "rope_low_freq_factor": "rope_low_freq_factor",
    "rope_high_freq_factor": "rope_high_freq_factor",
    "original_max_seq_len": "rope_original_context_length",
}


def check_params(params: dict, source: str) -> None:
    """The numbers of a params.json, against the model range table."""
    names = META_NUMBERS | ({} if params.get("vocab_size") == -1 else {"vocab_size": "vocab_size"})
    check_source_numbers(params, names, source)
    multiplier = params.get("ffn_dim_multiplier")
    if multiplier is not None and (
        isinstance(multiplier, bool) or not isinstance(multiplier, int | float)
    ):
        raise ConfigError(f"{source}: ffn_dim_multiplier must be a number, got {multiplier!r}")
    check_number(f"{source}: ffn_dim_multiplier", multiplier, POSITIVE, FILE_FIX)


def config_from_params(
    params: dict, vocab_size: int, tied: bool, source: str = "params.json"
) -> ModelConfig:
    """Our ModelConfig for a Meta params.json (vocab_size -1 in Llama 2 comes from the weights)."""
    check_params(params, source)
    try:
        dim, heads = params["dim"], params["n_heads"]
        hidden = ffn_hidden_dim(
            dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")
        )
        theta = float(params.get("rope_theta", 10000.0))
        scaled = bool(params.get("use_scaled_rope", False))
        # Meta's files do not say: Llama 2 was trained on 4096, 3 on 8192, 3.1/3.2 reach 131072.
        context = params.get("max_seq_len") or (
            131072 if scaled else 8192 if theta >= 5e5 else 4096
        )
        scaling = {}
        if scaled:  # apply_scaling in Meta's model.py; Llama 3.2 1B/3B use factor 32
            scaling = dict(
                rope_scaling="llama3",
                rope_scaling_factor=float(params.get("rope_scaling_factor") or 8.0),
                rope_low_freq_factor=float(params.get("rope_low_freq_factor", 1.0)),
                rope_high_freq_factor=float(params.get("rope_high_freq_factor", 4.0)),
                rope_original_context_length=int(params.get("original_max_seq_len", 8192)),
            )
        config = ModelConfig(
            vocab_size=vocab_size,
            context_length=context,
            dim=dim,
            num_layers=params["n_layers"],
            num_heads=heads,
            num_kv_heads=params.get("n_kv_heads") or heads,
            ffn_dim=hidden,
            mlp="swiglu",
            norm="rmsnorm",
            norm_eps=float(params.get("norm_eps", 1e-5)),
            position="rope",
            rope_theta=theta,
            tie_embeddings=tied,
            **scaling,
        )
    except (KeyError, TypeError) as error:
        raise ConfigError(
            f"params.json lacks or mistypes {error}; pass Meta's own params.json"
        ) from None
    check_model_file(config, source)
    return config


def _shard_paths(directory: Path) -> list[Path]:
    numbered = {}
    for path in directory.glob("consolidated.*.pth"):
        match = re.fullmatch(r"consolidated\.(\d+)\.pth", path.name)
        if match:
            numbered[int(match.group(1))] = path
    if not numbered:
        raise CheckpointError(
            f"{directory} has no consolidated.NN.pth; give a Meta Llama directory"
        )
    if sorted(numbered) != list(range(len(numbered))):
        raise CheckpointError(
            f"{directory} has consolidated shards {sorted(numbered)}; some are missing, "
            f"expected 00..{len(numbered) - 1:02d}"
        )
    return [numbered[i] for i in range(len(numbered))]


def merge_shards(shards: list[dict[str, Tensor]], dim: int) -> dict[str, Tensor]:
    """One state dict from model-parallel shards; norms are replicated, so one copy is kept."""
    keys = set(shards[0])
    for index, shard in enumerate(shards[1:], 1):
        if set(shard) != keys:
            raise CheckpointError(
                f"consolidated.{index:02d}.pth holds other tensors than consolidated.00.pth; "
                "the shards do not belong together"
            )
    merged = {}
    for key in shards[0]:
        parts = [shard[key] for shard in shards]
        name = key.rsplit(".", 2)[-2]  # "layers.0.attention.wq.weight" -> "wq"
        if len(parts) == 1 or parts[0].ndim < 2:
            merged[key] = parts[0]
        elif name == "tok_embeddings":
            # Llama 2's ParallelEmbedding splits the width, Llama 3's VocabParallelEmbedding the rows.
            merged[key] = torch.cat(parts, dim=1 if parts[0].shape[1] != dim else 0)
        elif name in CONCAT_DIM:
            merged[key] = torch.cat(parts, dim=CONCAT_DIM[name])
        else:
            raise CheckpointError(f"unknown tensor {key} in the Meta checkpoint; cannot merge it")
    return merged


def hf_names(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Meta names -> HF Llama names, with q/k rows permuted to rotate-half."""
    hf = {}
    for key, tensor in state.items():
        if key == "rope.freqs":  # Llama 2's precomputed RoPE table: not a parameter
            continue
        if key == "tok_embeddings.weight":
            hf["model.embed_tokens.weight"] = tensor
        elif key == "norm.weight":
            hf["model.norm.weight"] = tensor
        elif key == "output.weight":
            hf["lm_head.weight"] = tensor
        elif match := re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", key):
            layer, name = match.groups()
            if name not in HF_NAMES:
                raise CheckpointError(f"unknown tensor {key} in the Meta checkpoint")
            if name == "attention.wq":
                tensor = to_rotate_half(tensor, config.num_heads)
            elif name == "attention.wk":
                tensor = to_rotate_half(tensor, config.kv_heads)
            hf[f"model.layers.{layer}.{HF_NAMES[name]}.weight"] = tensor
        else:
            raise CheckpointError(f"unknown tensor {key} in the Meta checkpoint")
    return hf


def load_meta_tokenizer(path: Path) -> Tokenizer:
    """tokenizer.model: SentencePiece (Llama 2) or tiktoken ranks (Llama 3), told apart by content."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; a Meta directory ships its tokenizer.model")
    try:
        return load_pretrained_tokenizer(str(path))
    except CheckpointError:
        raise
    except Exception as error:  # DataError from the loaders, protobuf errors
        raise CheckpointError(f"cannot read {path}: {one_line(error, 200)}") from None


def import_meta(directory: str | Path, out_dir: str | Path) -> Path:
    """Convert a Meta Llama directory (params.json, consolidated.*.pth, tokenizer.model)."""
    directory = Path(directory)
    source = directory / "params.json"
    if not source.is_file():
        raise CheckpointError(f"{directory} has no params.json; give a Meta Llama directory")
    check_out_dir(Path(out_dir))  # before the expensive reads
    params = read_json(source)
    if "dim" not in params:
        raise ConfigError(f"{source} has no 'dim'; pass Meta's own params.json")
    # Checked before the shards are read: with Llama 2's vocab_size -1 one row stands in for the
    # vocabulary, so the memory check is a lower bound until the embedding's rows are known.
    check_params(params, str(source))
    vocab = params.get("vocab_size") or -1
    refuse_if_too_large(config_from_params(params, max(vocab, 1), False, str(source)), str(source))
    paths = _shard_paths(directory)
    tokenizer = load_meta_tokenizer(directory / "tokenizer.model")
    state = merge_shards([load_weight_file(p) for p in paths], params["dim"])
    embedding = state.get("tok_embeddings.weight")
    if embedding is None:
        raise CheckpointError(
            f"{paths[0]} has no tok_embeddings.weight; it is not a Llama checkpoint"
        )
    vocab = embedding.shape[0] if vocab <= 0 else vocab
    config = config_from_params(params, vocab, "output.weight" not in state, str(source))
    ours = state_dict_from_hf(hf_names(state, config), config, "llama")
    info = {"source": str(directory.resolve()), "format": "meta", "architecture": "Meta Llama"}
    return write_checkpoint(out_dir, config, ours, tokenizer, info)
