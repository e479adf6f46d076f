"""One interface over byte, char, Hugging Face (trained BPE or pretrained), tiktoken and
SentencePiece tokenizers."""

from lmforge.tokenizer.base import END_OF_TEXT, Tokenizer
from lmforge.tokenizer.chat import BUILTIN_TEMPLATES, encode_chat, render_chat
from lmforge.tokenizer.huggingface import HuggingFaceTokenizer
from lmforge.tokenizer.loading import load_tokenizer
from lmforge.tokenizer.pretrained import load_pretrained_tokenizer
from lmforge.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer
from lmforge.tokenizer.simple import ByteTokenizer, CharTokenizer
from lmforge.tokenizer.tiktoken_tokenizer import TiktokenTokenizer

__all__ = [
    "BUILTIN_TEMPLATES",
    "END_OF_TEXT",
    "HuggingFaceTokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "encode_chat",
    "load_pretrained_tokenizer",
    "load_tokenizer",
    "render_chat",
]
