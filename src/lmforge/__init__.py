"""lmforge: raw text to a trained, evaluated and exported decoder-only language model.

The Python API (docs/python-api.md): `from lmforge import load, train, finetune`. Resolved on
first use, so `import lmforge` (and the CLI's start-up) does not import torch. `train` and
`finetune` are the subpackages of those names, made callable (see _callable_package.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LanguageModel", "finetune", "load", "train"]

if TYPE_CHECKING:
    from lmforge.api import LanguageModel, finetune, load, train


def __getattr__(name: str):
    if name in ("train", "finetune"):
        return importlib.import_module(f"lmforge.{name}")  # callable packages
    if name in __all__:
        return getattr(importlib.import_module("lmforge.api"), name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
