"""Hugging Face model directories <-> lmforge checkpoint directories.

`import_hf` reads what `save_pretrained` writes (config.json, model.safetensors or its sharded
index, or pytorch_model.bin, and the tokenizer files) and writes a normal lmforge checkpoint, so
`sample`, `train --init_from` and `export` work on it. No code from the directory is ever run:
there is no trust_remote_code, and .bin files are read with torch.load(weights_only=True).
`export_hf` writes the reverse, loadable with AutoModelForCausalLM / AutoTokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from lmforge.checkpoint.directory import (
    check_out_dir,
    load_model,
    save_checkpoint,
    writing_output,
)
from lmforge.errors import CheckpointError, ConfigError
from lmforge.formats.hf_config import hf_config_from_model_config, model_config_from_hf
from lmforge.formats.hf_tokenizer import load_hf_dir_tokenizer, read_json, write_hf_tokenizer
from lmforge.formats.hf_weights import read_hf_weights, state_dict_from_hf, state_dict_to_hf
from lmforge.models.config import ModelConfig
from lmforge.models.footprint import refuse_if_too_large
from lmforge.models.transformer import Transformer
from lmforge.tokenizer import Tokenizer

HF_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_checkpoint(
    out_dir: str | Path,
    config: ModelConfig,
    state: dict[str, Tensor],
    tokenizer: Tokenizer,
    info: dict,
) -> Path:
    """A normal lmforge checkpoint dir from a converted state dict, written atomically."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size} embedding rows; the tokenizer does not belong to these weights"
        )
    with torch.device("meta"):  # no allocation: the converted tensors are assigned as they are
        model = Transformer(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:  # assign made two Parameters; save_model must see one shared tensor
        model.lm_head.weight = model.token_embedding.weight
    staging = out_dir.with_name(out_dir.name + ".tmp")  # save_checkpoint's staging name
    try:
        return save_checkpoint(out_dir, model, tokenizer, info)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise


def import_hf(directory: str | Path, out_dir: str | Path) -> Path:
    """Convert a transformers model directory (gpt2/llama/mistral/qwen2) to an lmforge checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; give an HF model directory")
    if not (directory / "config.json").is_file():
        raise CheckpointError(
            f"{directory} has no config.json; give a directory written by save_pretrained"
        )
    check_out_dir(Path(out_dir))  # before the expensive reads
    hf_config = read_json(directory / "config.json")
    config = model_config_from_hf(hf_config, str(directory / "config.json"))
    refuse_if_too_large(config, str(directory))
    tokenizer = load_hf_dir_tokenizer(directory, hf_config)
    if tokenizer.vocab_size > config.vocab_size:  # cheap check before reading the weights
        raise CheckpointError(
            f"the tokenizer in {directory} has {tokenizer.vocab_size} tokens but config.json's "
            f"vocab_size is {config.vocab_size}; the tokenizer does not belong to this model"
        )
    model_type = hf_config["model_type"]
    state = state_dict_from_hf(
        read_hf_weights(directory), config, model_type, hf_config.get("rope_interleave")
    )
    info = {
        "source": str(directory.resolve()),
        "format": "hf",
        "architecture": (hf_config.get("architectures") or [model_type])[0],
        "model_type": model_type,
    }
    return write_checkpoint(out_dir, config, state, tokenizer, info)


def check_with_transformers(hf_config: dict) -> None:
    """Where transformers is installed, let its own config class validate the export first, so
    that a shape it refuses fails here in one line rather than when the directory is loaded."""
    try:
        import transformers
    except ImportError:
        return  # the rules in hf.py cover the known refusals
    try:
        transformers.AutoConfig.for_model(**hf_config)
    except Exception as error:  # each config class raises its own types
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"transformers {transformers.__version__} refuses the exported "
            f"{hf_config['model_type']} config ({reason.strip()}); change the model shape"
        ) from None


def export_hf(checkpoint: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write an lmforge checkpoint as an HF directory (config, safetensors, tokenizer)."""
    if dtype not in HF_DTYPES:
        raise ConfigError(
            f"--dtype {dtype} is not an HF export dtype; use one of {', '.join(HF_DTYPES)}"
        )
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    model, tokenizer, _ = load_model(checkpoint)
    config = model.config
    hf_config = hf_config_from_model_config(config)  # ConfigError for unexportable shapes
    check_with_transformers(hf_config)
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eot_id}
    # Both spellings: transformers 4 reads torch_dtype, 5 reads dtype.
    hf_config |= ids | {"torch_dtype": dtype, "dtype": dtype}
    state = {
        k: v.to(HF_DTYPES[dtype]).contiguous()
        for k, v in state_dict_to_hf(model.state_dict(), config).items()
    }
    staging = out_dir.with_name(f".{out_dir.name}.tmp")
    try:
        with writing_output(out_dir):  # a full disk or a lost permission: one line
            out_dir.parent.mkdir(parents=True, exist_ok=True)  # check_out_dir: it can be made
            shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted export
            staging.mkdir()
            write_hf_tokenizer(tokenizer, staging, config.context_length)  # may refuse it
            (staging / "config.json").write_text(json.dumps(hf_config, indent=2))
            (staging / "generation_config.json").write_text(json.dumps(ids, indent=2))
            safetensors.torch.save_file(state, str(staging / "model.safetensors"), {"format": "pt"})
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above); rename cannot replace it portably
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
