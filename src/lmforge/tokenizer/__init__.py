"""One interface over byte, char and Hugging Face (trained BPE or pretrained) tokenizers."""

from lmforge.tokenizer.base import END_OF_TEXT, Tokenizer, load_tokenizer
from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
from lmforge.tokenizer.simple import ByteTokenizer, CharTokenizer

__all__ = [
    "END_OF_TEXT",
    "HuggingFaceTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
]
