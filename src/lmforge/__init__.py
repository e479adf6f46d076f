"""lmforge: raw text to a trained, evaluated and exported decoder-only language model."""

__version__ = "0.1.0"
