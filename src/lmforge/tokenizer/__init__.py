"""One interface over byte, char and trained-BPE tokenizers."""

from lmforge.tokenizer.base import END_OF_TEXT, Tokenizer, load_tokenizer
from lmforge.tokenizer.bpe import BPETokenizer
from lmforge.tokenizer.simple import ByteTokenizer, CharTokenizer

__all__ = [
    "END_OF_TEXT",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
]
