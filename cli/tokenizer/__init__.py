"""SPM and byte-level BPE tokenizers compatible with llama.cpp (spec: tokenizers.md)."""

from .stream import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["StreamDecoder", "Tokenizer"]
