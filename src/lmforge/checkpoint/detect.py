"""What a path to weights holds: a Hugging Face dir, a Meta Llama dir or a GGUF file.

No torch here: `lmforge convert` calls it before loading anything.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import CheckpointError, ConfigError


def detect_format(source: Path) -> str:
    """hf, meta or gguf, from what the path holds."""
    if not source.exists():
        raise CheckpointError(f"{source} does not exist; give an HF dir, Meta dir or .gguf file")
    if source.is_file():
        with open(source, "rb") as handle:
            if source.suffix == ".gguf" or handle.read(4) == b"GGUF":
                return "gguf"
    elif (source / "params.json").is_file() and any(source.glob("consolidated.*.pth")):
        return "meta"
    elif (source / "config.json").is_file():
        return "hf"
    raise ConfigError(
        f"cannot tell what {source} is: expected a .gguf file, a Meta dir (params.json + "
        "consolidated.*.pth) or an HF dir (config.json); or pass --format"
    )
