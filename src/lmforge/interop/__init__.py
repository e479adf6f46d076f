"""Conversion to and from other formats: Hugging Face transformers (configs, state dicts and
model directories), Meta's original Llama checkpoints and llama.cpp GGUF files.

Names are resolved lazily, so the CLI (which imports `lmforge.interop.commands`) starts
without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "hf_config_from_model_config": "lmforge.formats.hf_config",
    "model_config_from_hf": "lmforge.formats.hf_config",
    "state_dict_from_hf": "lmforge.formats.hf_weights",
    "state_dict_to_hf": "lmforge.formats.hf_weights",
    "import_hf": "lmforge.interop.hf_dir",
    "export_hf": "lmforge.interop.hf_dir",
    "import_meta": "lmforge.interop.meta",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lmforge.interop' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
