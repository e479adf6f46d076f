"""`lmforge convert` (HF / Meta / GGUF -> lmforge checkpoint) and `lmforge export` (the reverse)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from lmforge.checkpoint.detect import detect_format
from lmforge.errors import ConfigError
from lmforge.json_files import read_json_object

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")


@dataclass
class ConvertCommand:
    """Import a Hugging Face dir, Meta Llama dir or GGUF file as an lmforge checkpoint."""

    source: tyro.conf.Positional[str]
    """HF model dir (config.json), Meta dir (params.json + consolidated.*.pth) or .gguf file."""
    out: str
    """Checkpoint directory to create (must not exist, or be empty)."""
    format: Literal["auto", "hf", "meta", "gguf"] = "auto"
    """Source format; auto tells them apart by their files."""


@dataclass
class ExportCommand:
    """Export an lmforge checkpoint as a Hugging Face dir or a GGUF file."""

    checkpoint: tyro.conf.Positional[str]
    """Checkpoint directory, or a run directory (uses its last checkpoint)."""
    format: Literal["hf", "gguf"]
    out: str
    """Directory (hf) or .gguf file to create; an existing non-empty one is refused."""
    dtype: str | None = None
    """hf: float32 (default), float16, bfloat16; gguf: f32, f16 (default), bf16, q8_0, q4_0, q4_1
    (norms, biases and routers stay f32; see docs/export.md)."""


def describe(checkpoint: Path) -> str:
    """'llama (LlamaForCausalLM), 1,234 parameters, vocab 32000 (huggingface tokenizer)'."""
    from lmforge.checkpoint.directory import INFO_FILE, read_model_config
    from lmforge.models.counting import build_on_meta, count_parameters
    from lmforge.tokenizer import load_tokenizer

    config = read_model_config(checkpoint)
    info_path = checkpoint / INFO_FILE
    info = read_json_object(info_path, default={})
    family = "gpt2-style" if config.position == "learned" else "llama-style"
    arch = info.get("architecture")
    shape = f"{config.num_layers} layers, dim {config.dim}, {config.num_heads} heads"
    if config.kv_heads != config.num_heads:
        shape += f" ({config.kv_heads} kv)"
    params = count_parameters(build_on_meta(config))
    tokenizer = load_tokenizer(checkpoint)
    return (
        f"{family}{f' ({arch})' if arch else ''}, {shape}, {params:,} parameters, "
        f"vocab {config.vocab_size} ({tokenizer.kind} tokenizer, {tokenizer.vocab_size} tokens)"
    )


def run_convert(command: ConvertCommand) -> None:
    source, out = Path(command.source), Path(command.out)
    kind = detect_format(source) if command.format == "auto" else command.format
    from lmforge.checkpoint.directory import check_out_dir

    check_out_dir(out)  # every importer: never delete or mix into an existing directory
    start = time.perf_counter()
    if kind == "hf":
        from lmforge.interop.hf_dir import import_hf

        path = import_hf(source, out)
    elif kind == "meta":
        from lmforge.interop.meta import import_meta

        path = import_meta(source, out)
    else:
        from lmforge.interop.gguf_import import import_gguf

        path = import_gguf(source, out)
    seconds = time.perf_counter() - start
    print(f"imported {kind} {source} -> {path} in {seconds:.1f}s: {describe(Path(path))}")
    print(f"sample it: lmforge sample --checkpoint {path} --prompt 'Hello'")


def run_export(command: ExportCommand) -> None:
    start = time.perf_counter()
    if command.format == "hf":
        from lmforge.interop.hf_dir import export_hf

        path = export_hf(command.checkpoint, command.out, command.dtype or "float32")
    else:
        dtype = command.dtype or "f16"
        if dtype not in GGUF_DTYPES:
            raise ConfigError(
                f"--dtype {dtype} is not a GGUF export dtype; use one of {', '.join(GGUF_DTYPES)}"
            )
        from lmforge.interop.gguf_export import export_gguf

        path = export_gguf(command.checkpoint, Path(command.out), dtype=dtype)
    seconds = time.perf_counter() - start
    print(f"exported {command.checkpoint} as {command.format} -> {path} in {seconds:.1f}s")
