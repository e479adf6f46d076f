"""`lmforge convert FILE.gguf`: a GGUF file -> an lmforge checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from lmforge.checkpoint.directory import check_out_dir, save_checkpoint
from lmforge.formats.gguf import gguf_quantization_plan, load_gguf


def import_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF file into an lmforge checkpoint directory (nothing is written on error)."""
    check_out_dir(Path(out_dir))  # before the file is read and dequantized
    model, tokenizer = load_gguf(path)
    arch = "gpt2" if model.config.position == "learned" else "llama"
    info = {"step": 0, "source": str(path), "format": "gguf", "architecture": arch}
    info["quantization"] = gguf_quantization_plan(path)
    return save_checkpoint(Path(out_dir), model, tokenizer, info)
