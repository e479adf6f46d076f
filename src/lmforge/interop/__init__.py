"""Conversion to and from other frameworks' checkpoint formats (Hugging Face transformers)."""

from lmforge.interop.hf import (
    hf_config_from_model_config,
    model_config_from_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)

__all__ = [
    "hf_config_from_model_config",
    "model_config_from_hf",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
